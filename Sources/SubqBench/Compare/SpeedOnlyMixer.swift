import SubqCore

/// A sequence mixer that computes some other function than softmax attention (linear attention,
/// a state-space scan, …), so `subq compare` can time it but not measure its error against
/// attention. It appears in the speed-only table: time and scaling against exact flash at the
/// same lengths, heads and head dimension.
///
/// Conforming types are small adapters in SubqBench over a family's own entry point; register
/// them in ``SpeedOnlyMixers/all``.
public protocol SpeedOnlyMixer: Sendable {
  /// Registry name, unique among mixers (`linear`, `mamba`, …).
  var name: String { get }
  /// One-line summary.
  var summary: String { get }
  /// Time and extra-memory complexity.
  var complexity: String { get }
  /// Whether output position i depends only on positions ≤ i; compare times it against causal
  /// flash when true and non-causal flash when false.
  var isCausal: Bool { get }
  /// Builds the inputs of one forward pass over `length` positions with `heads` heads of width
  /// `dim` (batch 1) from `seed`, untimed, and returns the pass to time. `threads` is the number of
  /// worker threads the pass may use.
  /// - Throws: ``SubqError`` when the mixer cannot run this size (it is then reported as n/a).
  func prepare(length: Int, heads: Int, dim: Int, seed: UInt64, threads: Int) throws(SubqError) -> SpeedOnlyWorkload
}

/// One prepared forward pass of a ``SpeedOnlyMixer``.
public struct SpeedOnlyWorkload: Sendable {
  /// Floating-point operations of one pass, when the mixer counts them (for GFLOP/s).
  public var flops: Double?
  /// Bytes of the pass's result, subtracted from its memory growth to give extra memory.
  public var outputBytes: Double
  /// Runs one forward pass; its result must not be discarded unused (use ``blackHole(_:)``).
  public var run: @Sendable () throws(SubqError) -> Void

  public init(flops: Double?, outputBytes: Double, run: @escaping @Sendable () throws(SubqError) -> Void) {
    self.flops = flops
    self.outputBytes = outputBytes
    self.run = run
  }
}

/// Every speed-only mixer `subq compare` times by default: the linear mixers (SubqLinear) and
/// state-space scans (SubqStateSpace), through the adapters in SpeedOnlyMixers+Families.swift.
public enum SpeedOnlyMixers {
  public static let all: [any SpeedOnlyMixer] = families

  /// The mixer registered under `name`.
  public static func named(_ name: String) -> (any SpeedOnlyMixer)? { all.first { $0.name == name } }
}
