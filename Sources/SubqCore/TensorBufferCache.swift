import Foundation
import Synchronization

/// A bounded cache of large, freed tensor buffers, so that the next tensor of about the same size
/// reuses memory the process already has instead of faulting in fresh pages.
///
/// Why it exists: a buffer above glibc's mmap limit (at most 32 MiB) is a fresh mapping on every
/// allocation, and the kernel must fault in and zero every page of it on first touch. A method
/// writing a 64 MiB output spends a large part of its time in that fault handler (36% of a
/// neighborhood-attention call at 16K tokens × 16 heads, see `docs/sparse-attention.md`), and
/// the cost grows with the data, not with the work. PyTorch's caching allocator and MLX's buffer
/// cache keep freed buffers for the same reason.
///
/// Policy:
/// - Only buffers of at least ``minimumBytes`` are cached; smaller ones go straight to `malloc`,
///   which reuses them well. Cached-size requests are rounded up to a multiple of 64 KiB.
/// - A request takes the smallest cached buffer whose capacity is at least the request and at
///   most 1/8 larger (so a small tensor never pins a huge buffer); otherwise it allocates.
/// - A freed buffer is kept while the cache holds at most ``limitBytes``; to make room the
///   least recently freed buffers are released first. A buffer larger than the limit is released.
/// - A new buffer of 4 MiB or more (``hugePageMinimum``) that the cache may keep is 2 MiB-aligned
///   and marked for transparent huge pages: one TLB entry covers 2 MiB instead of 4 KiB, which
///   made neighborhood attention at 16K tokens about 4% faster. Only with the cache: a fresh
///   huge-page buffer per call costs more to fault in than it saves (22 against 14 ms per call).
/// - ``purge()`` releases every cached buffer. ``withCachingSuspended(_:)`` runs work with the
///   cache bypassed (used by memory probes, so that they report what a method needs live, not
///   what the cache holds).
///
/// Reused buffers hold old data: tensors created with `Tensor(shape:initializingWith:)` must
/// write every scalar, as they must anyway (malloc'd memory is not zeroed either).
///
/// All members are thread-safe; tensors are freed on whatever thread drops the last reference.
public final class TensorBufferCache: Sendable {
  /// The cache every `Tensor` allocates from. Its limit starts at ``defaultLimitBytes``;
  /// ``applyEnvironment()`` sets it from `SUBQ_TENSOR_CACHE_MB`.
  public static let shared = TensorBufferCache(limitBytes: defaultLimitBytes)

  /// One eighth of physical memory, at most 2 GiB.
  public static let defaultLimitBytes: Int = min(Int(ProcessInfo.processInfo.physicalMemory / 8), 2 << 30)

  /// Buffers smaller than this are never cached (1 MiB).
  public static let minimumBytes = 1 << 20

  /// New buffers of at least this size (4 MiB), allocated while caching is active, are aligned to
  /// ``hugePageBytes`` and marked for transparent huge pages (Linux `madvise(MADV_HUGEPAGE)`).
  public static let hugePageMinimum = 4 << 20

  /// The huge-page size buffers of ``hugePageMinimum`` or more are aligned to (2 MiB).
  public static let hugePageBytes = 2 << 20

  /// Cached capacities are multiples of this (64 KiB).
  static let granule = 64 << 10

  /// Buffers are aligned to 64 bytes (one cache line, one 512-bit vector).
  public static let alignment = 64

  /// Counters since the cache was created.
  public struct Statistics: Sendable, Equatable {
    /// Requests of at least ``TensorBufferCache/minimumBytes`` served from the cache.
    public var hits = 0
    /// Requests of at least ``TensorBufferCache/minimumBytes`` that allocated.
    public var misses = 0
    /// Buffers released to make room or by ``TensorBufferCache/purge()``.
    public var evictions = 0

    /// Counters with the given values (all zero by default).
    public init(hits: Int = 0, misses: Int = 0, evictions: Int = 0) {
      self.hits = hits
      self.misses = misses
      self.evictions = evictions
    }
  }

  /// A buffer owned by the cache, or on its way out of the lock to be released.
  private struct Block: @unchecked Sendable {
    var pointer: UnsafeMutableRawPointer
    var capacity: Int
  }

  private struct State: @unchecked Sendable {
    var limit: Int
    var blocks: [Block] = []  // least recently freed first
    var bytes = 0
    var suspended = 0
    var statistics = Statistics()
  }

  private let state: Mutex<State>

  /// A cache holding at most `limitBytes` of freed buffers (0 disables caching).
  public init(limitBytes: Int) {
    precondition(limitBytes >= 0, "TensorBufferCache: negative limit \(limitBytes)")
    state = Mutex(State(limit: limitBytes))
  }

  deinit { purge() }

  /// The most freed memory the cache keeps, in bytes. Lowering it releases buffers at once.
  public var limitBytes: Int {
    get { state.withLock { $0.limit } }
    set {
      precondition(newValue >= 0, "TensorBufferCache: negative limit \(newValue)")
      let released = state.withLock { s in
        s.limit = newValue
        return Self.evict(&s, toFit: 0)
      }
      released.forEach { $0.pointer.deallocate() }
    }
  }

  /// Bytes currently held by cached (free) buffers.
  public var cachedBytes: Int { state.withLock { $0.bytes } }

  /// Hit, miss and eviction counts.
  public var statistics: Statistics { state.withLock { $0.statistics } }

  /// Releases every cached buffer to the system.
  public func purge() {
    let released = state.withLock { s in
      let r = s.blocks
      s.statistics.evictions += r.count
      s.blocks.removeAll()
      s.bytes = 0
      return r
    }
    released.forEach { $0.pointer.deallocate() }
  }

  /// Runs `body` with the cache bypassed: it is purged first, requests allocate and freed
  /// buffers are released, until `body` returns (calls nest).
  public func withCachingSuspended<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
    state.withLock { $0.suspended += 1 }
    defer { state.withLock { $0.suspended -= 1 } }
    purge()
    return try body()
  }

  /// Sets ``limitBytes`` from the environment variable `SUBQ_TENSOR_CACHE_MB` (a whole number of
  /// MiB; 0 disables the cache). Leaves the limit alone when the variable is unset or empty.
  /// - Throws: ``SubqError/argument(op:name:value:reason:)`` when the value is not a
  ///   non-negative whole number.
  public func applyEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws(SubqError) {
    guard let text = environment["SUBQ_TENSOR_CACHE_MB"], !text.isEmpty else { return }
    guard let mib = Int(text), mib >= 0, mib <= Int.max >> 20 else {
      throw .argument(op: "tensor cache", name: "SUBQ_TENSOR_CACHE_MB", value: text,
                      reason: "must be a whole number of MiB (0 disables the cache)")
    }
    limitBytes = mib << 20
  }

  /// A buffer of at least `byteCount` bytes, aligned to ``alignment``, and its capacity (pass
  /// both back to ``release(_:capacity:)``). Contents are unspecified.
  public func allocate(byteCount: Int) -> (pointer: UnsafeMutableRawPointer, capacity: Int) {
    let request = max(byteCount, 1)
    guard request >= Self.minimumBytes else {
      return (UnsafeMutableRawPointer.allocate(byteCount: request, alignment: Self.alignment), request)
    }
    let capacity = (request + Self.granule - 1) / Self.granule * Self.granule
    // nil: allocate; `huge`: the new buffer may be kept (caching active, within the limit).
    let (reused, huge): (Block?, Bool) = state.withLock { s in
      let caching = s.suspended == 0 && capacity <= s.limit
      var best = -1
      if caching {
        let most = capacity + capacity / 8
        for (i, b) in s.blocks.enumerated() where b.capacity >= capacity && b.capacity <= most {
          if best < 0 || b.capacity < s.blocks[best].capacity { best = i }
        }
      }
      guard best >= 0 else {
        s.statistics.misses += 1
        return (nil, caching && capacity >= Self.hugePageMinimum)
      }
      s.statistics.hits += 1
      s.bytes -= s.blocks[best].capacity
      return (s.blocks.remove(at: best), false)
    }
    if let reused { return (reused.pointer, reused.capacity) }
    guard huge else {
      return (UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: Self.alignment), capacity)
    }
    let raw = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: Self.hugePageBytes)
    #if os(Linux)
    // A hint: ignored (4 KiB pages) where transparent huge pages are off.
    _ = madvise(raw, capacity / Self.hugePageBytes * Self.hugePageBytes, MADV_HUGEPAGE)
    #endif
    return (raw, capacity)
  }

  /// Gives back a buffer from ``allocate(byteCount:)``: kept for reuse when the policy allows,
  /// else released.
  public func release(_ pointer: UnsafeMutableRawPointer, capacity: Int) {
    guard capacity >= Self.minimumBytes else { return pointer.deallocate() }
    let block = Block(pointer: pointer, capacity: capacity)
    let released: [Block] = state.withLock { s in
      guard s.suspended == 0, capacity <= s.limit else { return [block] }
      let r = Self.evict(&s, toFit: capacity)
      s.blocks.append(block)
      s.bytes += capacity
      return r
    }
    released.forEach { $0.pointer.deallocate() }
  }

  /// Removes the least recently freed blocks until `extra` more bytes fit under the limit
  /// (`extra` ≤ the limit); returns them for release outside the lock.
  private static func evict(_ s: inout State, toFit extra: Int) -> [Block] {
    var drop = 0
    while s.bytes + extra > s.limit {
      s.bytes -= s.blocks[drop].capacity
      drop += 1
    }
    let released = Array(s.blocks[..<drop])
    s.blocks.removeFirst(drop)
    s.statistics.evictions += drop
    return released
  }
}
