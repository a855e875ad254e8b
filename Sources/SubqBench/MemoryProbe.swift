import Foundation
import SubqCore
#if canImport(Glibc)
import Glibc
#endif

/// Measures how much resident memory one piece of work adds at its peak.
///
/// ``measure(_:)`` runs the work with the tensor buffer cache bypassed
/// (``TensorBufferCache/withCachingSuspended(_:)``, which purges it first); before the work it
/// returns the heap's free pages to the system (glibc's `malloc_trim`), resets the kernel's peak
/// resident set size (`/proc/self/clear_refs`, Linux ≥ 4.0) and reads the current resident size;
/// after it, it reads the peak (`VmHWM`) and returns the growth.
///
/// Why the purge and the trim matter: memory freed by earlier runs stays resident, in the tensor
/// cache or inside malloc's heap, and a later run reuses it without the resident size growing, so
/// without them a repeated measurement reports (almost) nothing. With them, every page the work
/// touches for the first time shows up. Bypassing the cache during the work makes the figure what
/// the work needs live: buffers it frees are released, as without the cache, instead of staying
/// resident for reuse.
///
/// Resolution: the kernel keeps resident-set counters per CPU and folds them in batches, so
/// figures are exact only to a few hundred KiB (about 32 pages per core). Thread stacks created
/// during the work count as growth; run the work once before probing to exclude them.
///
/// Only Linux provides these counters; elsewhere ``start()`` returns nil.
public struct MemoryProbe: Sendable {
  /// Resident bytes right after the reset.
  public let baseBytes: Int

  /// Runs `body` and returns its result with the peak resident growth during it (nil when the
  /// peak cannot be measured), with the tensor cache purged and bypassed.
  public static func measure<R, E: Error>(_ body: () throws(E) -> R) throws(E) -> (result: R, growth: Int?) {
    try TensorBufferCache.shared.withCachingSuspended { () throws(E) -> (result: R, growth: Int?) in
      let probe = start()
      let result = try body()
      return (result, probe?.peakGrowth())
    }
  }

  /// Trims the heap, resets the peak and records the baseline; nil when the peak cannot be reset.
  /// Does not touch the tensor cache: prefer ``measure(_:)``.
  public static func start() -> MemoryProbe? {
    trimHeap()
    guard MachineInfo.resetPeakResident() else { return nil }
    let base = MachineInfo.residentBytes()
    guard base > 0 else { return nil }
    return MemoryProbe(baseBytes: base)
  }

  /// Peak resident bytes since ``start()`` minus the baseline (never negative).
  public func peakGrowth() -> Int {
    max(0, MachineInfo.peakResidentBytes() - baseBytes)
  }

  /// Returns free heap pages of every malloc arena to the system (glibc `malloc_trim(0)`), when
  /// the C library has it. Looked up at run time: Swift's Glibc module does not export it.
  public static func trimHeap() {
    #if os(Linux)
    if let trim = mallocTrim { _ = trim(0) }
    #endif
  }

  #if os(Linux)
  private typealias TrimFunction = @convention(c) (Int) -> Int32
  private static let mallocTrim: TrimFunction? = {
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_trim") else { return nil }
    return unsafeBitCast(symbol, to: TrimFunction.self)
  }()
  #endif
}
