import Foundation
import Subquadratic
import Synchronization

/// A `Communicator` whose ranks are threads of one process, for testing the sequence-parallel
/// algorithms without MPI. Messages follow MPI's matching rules (by source, tag, in order); a
/// send copies its bytes at once (like a buffered send), a receive completes when a matching
/// message has been copied in.
final class InProcessWorld: Sendable {
  let size: Int
  private let state = Mutex<[Key: [Data]]>([:])
  private let bytesSent = Mutex<[Int]>([])

  struct Key: Hashable { var from: Int; var to: Int; var tag: Int }

  init(size: Int) {
    self.size = size
    bytesSent.withLock { $0 = [Int](repeating: 0, count: size) }
  }

  func post(_ data: Data, from: Int, to: Int, tag: Int) {
    state.withLock { $0[Key(from: from, to: to, tag: tag), default: []].append(data) }
    bytesSent.withLock { $0[from] += data.count }
  }

  func take(from: Int, to: Int, tag: Int) -> Data? {
    state.withLock { s -> Data? in
      let key = Key(from: from, to: to, tag: tag)
      guard var q = s[key], !q.isEmpty else { return nil }
      let d = q.removeFirst()
      s[key] = q
      return d
    }
  }

  /// Messages sent but never received (a protocol bug if not empty at the end).
  var undelivered: Int { state.withLock { $0.values.reduce(0) { $0 + $1.count } } }
  func sent(by rank: Int) -> Int { bytesSent.withLock { $0[rank] } }

  /// Runs `body(communicator)` on `size` threads, one per rank, and returns their results by rank.
  func run<R: Sendable>(_ body: @escaping @Sendable (InProcessCommunicator) throws -> R) throws -> [R] {
    let results = Mutex<[Int: Result<R, any Error>]>([:])
    let group = DispatchGroup()
    for r in 0..<size {
      let t = Thread { [self] in
        let c = InProcessCommunicator(world: self, rank: r)
        let res = Result { try body(c) }
        results.withLock { $0[r] = res }
        group.leave()
      }
      t.stackSize = 8 << 20
      group.enter()
      t.start()
    }
    if group.wait(timeout: .now() + 120) == .timedOut { fatalError("InProcessWorld: ranks deadlocked") }
    return try (0..<size).map { r in try results.withLock { $0[r]! }.get() }
  }
}

final class InProcessCommunicator: Communicator {
  let world: InProcessWorld
  let rank: Int
  var size: Int { world.size }
  private var pending: [Int: [Transfer]] = [:]
  private var next = 0

  init(world: InProcessWorld, rank: Int) {
    self.world = world
    self.rank = rank
  }

  func start(_ transfers: [Transfer]) -> Int {
    var receives: [Transfer] = []
    for t in transfers {
      precondition(t.peer >= 0 && t.peer < size && t.peer != rank, "bad peer \(t.peer) from \(rank)")
      if t.direction == .send {
        world.post(Data(UnsafeRawBufferPointer(t.buffer)), from: rank, to: t.peer, tag: t.tag)
      } else {
        receives.append(t)
      }
    }
    next += 1
    pending[next] = receives
    return next
  }

  private func poll(_ handle: Int) -> Bool {
    var left: [Transfer] = []
    for t in pending[handle]! {
      if let d = world.take(from: t.peer, to: rank, tag: t.tag) {
        precondition(d.count == t.buffer.count, "rank \(rank): message from \(t.peer) tag \(t.tag) has \(d.count) bytes, receive expects \(t.buffer.count)")
        d.withUnsafeBytes { t.buffer.copyMemory(from: $0) }
      } else {
        left.append(t)
      }
    }
    pending[handle] = left
    return left.isEmpty
  }

  func test(_ handle: Int) -> Bool { poll(handle) }

  func wait(_ handle: Int) {
    while !poll(handle) { usleep(50) }
    pending[handle] = nil
  }

  func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) {
    if size == 1 { return }
    if rank == root {
      wait(start((0..<size).filter { $0 != root }.map { .send(UnsafeRawBufferPointer(buffer), to: $0, tag: 999) }))
    } else {
      wait(start([.receive(into: buffer, from: root, tag: 999)]))
    }
  }
}
