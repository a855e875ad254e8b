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
    let workers = Swift.max(1, Swift.min(threads, count))
    if count <= 0 { return }
    if workers == 1 {
      for i in 0..<count { body(i, 0) }
      return
    }
    let next = Atomic<Int>(0)
    DispatchQueue.concurrentPerform(iterations: workers) { worker in
      while true {
        let i = next.wrappingAdd(1, ordering: .relaxed).oldValue
        if i >= count { break }
        body(i, worker)
      }
    }
  }

  /// Number of workers `forEach` uses for `count` items.
  /// `floats` rounded up to whole 64-byte lines (16 floats): the stride between per-worker
  /// scratch areas carved from one ``AlignedBuffer``. Kernels bind parts of their area to `Lane`,
  /// whose loads the compiler may emit in forms that require 16- or 64-byte alignment (a masked
  /// `vmovaps` faults on a misaligned address), so every worker's area must start as aligned as
  /// the buffer — a stride that is not a multiple of 16 floats breaks that for worker 1 onwards.
  @inlinable public static func scratchStride(floats: Int) -> Int { (floats + 15) / 16 * 16 }

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
