import Foundation
import SubqCore
#if canImport(Glibc)
import Glibc
#endif

/// Measures how much resident memory one piece of work adds at its peak.
///
/// ``MemoryProbe/start()`` returns the heap's free pages to the system (glibc's `malloc_trim`),
/// resets the kernel's peak resident set size (`/proc/self/clear_refs`, Linux ≥ 4.0) and reads the
/// current resident size; ``peakGrowth()`` then reads the peak (`VmHWM`) and returns the growth.
///
/// Why the trim matters: memory freed by earlier runs stays resident inside malloc's heap, and a
/// later run reuses it without the resident size growing, so without the trim a repeated
/// measurement reports (almost) nothing. With it, every page the work touches for the first time
/// shows up.
///
/// Resolution: the kernel keeps resident-set counters per CPU and folds them in batches, so
/// figures are exact only to a few hundred KiB (about 32 pages per core). Thread stacks created
/// during the work count as growth; run the work once before probing to exclude them.
///
/// Only Linux provides these counters; elsewhere ``start()`` returns nil.
public struct MemoryProbe: Sendable {
  /// Resident bytes right after the reset.
  public let baseBytes: Int

  /// Trims the heap, resets the peak and records the baseline; nil when the peak cannot be reset.
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
