import Dispatch
import Foundation
import Synchronization

/// Work distribution over the machine's cores.
///
/// Work is split into items; worker threads take items from a shared atomic counter (dynamic
/// scheduling, as ggml's CPU backend does), so uneven items — such as the causal triangle's row
/// blocks — balance on their own. The body gets the item and the index of the worker running it,
/// so it can use per-worker scratch memory without locks.
public enum Parallel {
  /// Threads used when a call does not say: `SUBQ_THREADS` from the environment if set, else the
  /// number of active processors.
  public static let defaultThreads: Int = {
    if let s = ProcessInfo.processInfo.environment["SUBQ_THREADS"], let n = Int(s), n > 0 { return n }
    return max(1, ProcessInfo.processInfo.activeProcessorCount)
  }()

  /// Runs `body(item, worker)` for every `item` in `0..<count` on up to `threads` workers
  /// (`worker` in `0..<min(threads, count)`). Returns when all items are done.
  public static func forEach(
    _ count: Int, threads: Int = Parallel.defaultThreads, _ body: @Sendable (_ item: Int, _ worker: Int) -> Void
  ) {
    guard let workers = workersOrRunHere(count, threads: threads, body) else { return }
    let next = Atomic<Int>(0)
    DispatchQueue.concurrentPerform(iterations: workers) { worker in
      while true {
        let i = next.wrappingAdd(1, ordering: .relaxed).oldValue
        if i >= count { break }
        body(i, worker)
      }
    }
  }

  /// Runs `body(item, worker)` for every `item` in `0..<count` on up to `threads` workers, each
  /// worker walking a contiguous run of items in order: worker w starts with the w-th of `workers`
  /// equal runs, and a worker whose run is done takes the back half of the largest run left (work
  /// stealing), and so on until no run has an item left. Returns when all items are done.
  ///
  /// For fine-grained items whose neighbours share data (consecutive bands of rows of one head):
  /// a worker mostly runs consecutive items, so it can keep what an item loaded for the next one,
  /// while the load still balances to within about one item at the end — ``forEach``'s shared
  /// counter would hand consecutive items to different workers, and coarse items leave a worker
  /// idle for up to a whole item when the other is slowed.
  public static func forEachContiguous(
    _ count: Int, threads: Int = Parallel.defaultThreads, _ body: @Sendable (_ item: Int, _ worker: Int) -> Void
  ) {
    guard let workers = workersOrRunHere(count, threads: threads, body) else { return }
    // Run of worker w: items runs[w].0 ..< runs[w].1. Items are coarse enough (a band of rows)
    // that one uncontended lock per item costs nothing measurable.
    let runs = Mutex((0..<workers).map { w in (count * w / workers, count * (w + 1) / workers) })
    DispatchQueue.concurrentPerform(iterations: workers) { worker in
      while true {
        let item: Int? = runs.withLock { r in
          if r[worker].0 < r[worker].1 {
            r[worker].0 += 1
            return r[worker].0 - 1
          }
          // Own run done: take the back half (rounded up) of the largest run left.
          var victim = -1, most = 0
          for w in r.indices where r[w].1 - r[w].0 > most { victim = w; most = r[w].1 - r[w].0 }
          if victim < 0 { return nil }
          let middle = r[victim].0 + most / 2
          r[worker] = (middle + 1, r[victim].1)
          r[victim].1 = middle
          return middle
        }
        guard let item else { return }
        body(item, worker)
      }
    }
  }

  /// The number of workers for `count` items, or nil when there is at most one: then the items
  /// (if any) have already run in order on the calling thread, as worker 0.
  private static func workersOrRunHere(
    _ count: Int, threads: Int, _ body: (_ item: Int, _ worker: Int) -> Void
  ) -> Int? {
    let n = Parallel.workers(for: count, threads: threads)
    if count <= 0 { return nil }
    if n == 1 {
      for i in 0..<count { body(i, 0) }
      return nil
    }
    return n
  }

  /// `floats` rounded up to whole 64-byte lines (16 floats): the stride between per-worker
  /// scratch areas carved from one ``AlignedBuffer``. Kernels bind parts of their area to `Lane`,
  /// whose loads the compiler may emit in forms that require 16- or 64-byte alignment (a masked
  /// `vmovaps` faults on a misaligned address), so every worker's area must start as aligned as
  /// the buffer — a stride that is not a multiple of 16 floats breaks that for worker 1 onwards.
  @inlinable public static func scratchStride(floats: Int) -> Int { (floats + 15) / 16 * 16 }

  /// Number of workers `forEach` and `forEachContiguous` use for `count` items.
  public static func workers(for count: Int, threads: Int = Parallel.defaultThreads) -> Int {
    Swift.max(1, Swift.min(threads, count))
  }
}

/// An owning, 64-byte aligned, uninitialized-then-zeroed buffer of trivial scalars, for kernel
/// workspace. Not copyable: it frees its memory when it goes out of scope.
public struct AlignedBuffer<Element: BitwiseCopyable>: ~Copyable, @unchecked Sendable {
  public let pointer: UnsafeMutablePointer<Element>
  public let count: Int

  /// Allocates `count` elements, zero-filled.
  public init(count: Int) {
    self.count = count
    let bytes = Swift.max(count, 1) * MemoryLayout<Element>.stride
    let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
    raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
    pointer = raw.bindMemory(to: Element.self, capacity: Swift.max(count, 1))
  }

  deinit { UnsafeMutableRawPointer(pointer).deallocate() }
}

/// A raw pointer that may cross into `@Sendable` closures. The code that creates it promises that
/// concurrent workers write disjoint parts of the memory.
public struct SendablePointer<Pointee>: @unchecked Sendable {
  public let pointer: UnsafeMutablePointer<Pointee>
  @inlinable public init(_ pointer: UnsafeMutablePointer<Pointee>) { self.pointer = pointer }
  @inlinable public init(_ pointer: UnsafePointer<Pointee>) { self.pointer = UnsafeMutablePointer(mutating: pointer) }
}
