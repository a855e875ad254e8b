import Dispatch
import Foundation
import SubqCore
import Synchronization
import Testing

@Suite struct ParallelTests {
  /// (item, worker) in the order each worker ran them.
  func record(_ count: Int, threads: Int) -> [[Int]] {
    let log = Mutex([[Int]](repeating: [], count: max(1, threads)))
    Parallel.forEachContiguous(count, threads: threads) { item, worker in
      log.withLock { $0[worker].append(item) }
    }
    return log.withLock { $0 }
  }

  @Test("forEachContiguous runs every item once, on workers 0 ..< min(threads, count)",
        arguments: [0, 1, 2, 3, 7, 64, 1001], [1, 2, 3, 8])
  func everyItemOnce(count: Int, threads: Int) {
    let runs = record(count, threads: threads)
    #expect(runs.joined().sorted() == Array(0..<count))
    let workers = Parallel.workers(for: count, threads: threads)
    for w in workers..<runs.count { #expect(runs[w].isEmpty) }
  }

  /// Each worker walks runs of consecutive items: a break (an item that is not the previous
  /// item + 1) happens only when it starts its own run or steals. Each steal halves the largest
  /// run left, so there are O(workers · log count) of them, not the ~count breaks a shared
  /// counter gives.
  @Test(arguments: [2, 3, 4])
  func workersRunConsecutiveItems(threads: Int) {
    let count = 4000
    let runs = record(count, threads: threads)
    #expect(runs.joined().sorted() == Array(0..<count))
    let breaks = runs.reduce(0) { total, items in
      total + zip(items.dropFirst(), items).filter { $0 != $1 + 1 }.count + (items.isEmpty ? 0 : 1)
    }
    #expect(breaks <= threads * (2 + Int(log2(Double(count)))), "\(breaks) breaks")
  }

  /// While a worker is held up on its first item, the other one runs every other item: its own
  /// run, then the stalled worker's, stolen half by half.
  @Test func stalledWorkerIsRobbed() {
    let count = 200
    let done = Atomic<Int>(0), waiting = Atomic<Bool>(false), duringWait = Atomic<Int>(0)
    let log = Mutex([[Int]](repeating: [], count: 2))
    Parallel.forEachContiguous(count, threads: 2) { item, worker in
      log.withLock { $0[worker].append(item) }
      if item == 0 {
        // Wait for the others (at most 2 s: the two workers may also run one after the other).
        waiting.store(true, ordering: .relaxed)
        let deadline = Date().addingTimeInterval(2)
        while done.load(ordering: .relaxed) < count - 1 && Date() < deadline { usleep(1000) }
        waiting.store(false, ordering: .relaxed)
      } else {
        if waiting.load(ordering: .relaxed) { duringWait.add(1, ordering: .relaxed) }
        done.add(1, ordering: .relaxed)
      }
    }
    let runs = log.withLock { $0 }
    #expect(runs.joined().sorted() == Array(0..<count))
    if duringWait.load(ordering: .relaxed) > 0 {
      // The other worker ran while item 0 was held up: it must have taken every other item,
      // including the rest of the stalled worker's run (without stealing it would stop at 100).
      let stalled = runs.firstIndex { $0.contains(0) }!
      #expect(runs[stalled] == [0])
      #expect(runs[1 - stalled].count == count - 1)
    }
  }
}
