import Synchronization

/// Counts the bytes held by `Tensor` storage and `AlignedBuffer` workspace, so benchmarks can
/// report exactly how much memory an operation allocated beyond its inputs, independent of the
/// allocator's caching (resident-set figures include memory malloc keeps for reuse).
///
/// Counting costs two relaxed atomic operations per allocation and per free.
public enum MemoryTracker {
  private static let live = Atomic<Int>(0)
  private static let peak = Atomic<Int>(0)

  /// Bytes currently held by tensors and aligned buffers.
  public static var liveBytes: Int { live.load(ordering: .relaxed) }

  /// The most bytes held at once since the last ``resetPeak()``.
  public static var peakBytes: Int { peak.load(ordering: .relaxed) }

  /// Starts a new peak measurement from the current live count.
  public static func resetPeak() { peak.store(live.load(ordering: .relaxed), ordering: .relaxed) }

  static func allocated(_ bytes: Int) {
    let now = live.wrappingAdd(bytes, ordering: .relaxed).newValue
    var current = peak.load(ordering: .relaxed)
    while now > current {
      let (exchanged, original) = peak.compareExchange(expected: current, desired: now, ordering: .relaxed)
      if exchanged { break }
      current = original
    }
  }

  static func freed(_ bytes: Int) { live.wrappingSubtract(bytes, ordering: .relaxed) }
}
