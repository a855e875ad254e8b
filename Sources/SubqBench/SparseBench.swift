import Foundation
import SubqAttention
import SubqCore
import Subquadratic

/// `subq bench-sparse`: the numbers of the local and structured sparse methods.
///
/// 1. Neighborhood attention on a 2-D grid against flash on the same inputs: GFLOP/s counting only
///    the attended pairs (4·D per pair for D = Dv) next to flash's GFLOP/s over all pairs, and
///    their ratio. The two are timed in alternating rounds (one flash run, then `repeats`
///    neighborhood runs) and the ratio is the median of the rounds' ratios: on a shared machine
///    whose speed drifts by tens of percent within seconds, a ratio of two measurements taken
///    seconds apart measures the drift as much as the methods.
/// 2. Time of neighborhood (2-D square grid, or `N/128 × 128`), sinks and Combiner (fixed, axial,
///    logsparse) at each length, and the growth factor from one length to the next, to show how
///    each scales in N.
///
/// Pattern methods are checked against the Float64 reference over their own keys before timing.
public struct SparseBench {
  public struct Config: Sendable {
    public var lengths = [4096, 16384, 65536]
    public var heads = 4
    public var dim = 64
    public var repeats = 3
    /// Rounds of the flash comparison. Five by default: on a shared host single rounds of one run
    /// ranged from 33% to 59%, their medians from 50% to 55% (128×128, 7×7, two threads).
    public var flashRepeats = 5
    public var grid = [128, 128]
    public var kernel = 7
    public var sinks = 4
    public var window = 1024
    public var seed: UInt64 = 1
    public var threads = Parallel.defaultThreads
    public init() {}
  }

  public struct Comparison: Sendable, Codable {
    public var grid: [Int], kernel: Int, n: Int
    public var neighborhoodSeconds: Double, neighborhoodGflops: Double
    public var flashSeconds: Double, flashGflops: Double
    /// Median over the rounds of neighborhood GFLOP/s (attended pairs) ÷ flash GFLOP/s (all
    /// pairs), each round's flash run against the median of its neighborhood runs.
    public var ratio: Double
    /// Each round's ratio, in run order.
    public var roundRatios: [Double]
    public var checkError: Double
  }

  public struct ScalingRow: Sendable, Codable {
    public var method: String, parameters: String, n: Int
    public var medianSeconds: Double, minSeconds: Double
    /// Median time ÷ the previous length's median time (nil for the first length).
    public var growth: Double?
    /// Relative error of checked rows against the Float64 reference over the method's own keys
    /// (pattern methods only).
    public var checkError: Double?
  }

  public let config: Config
  public init(config: Config) { self.config = config }

  func data(_ n: Int) -> ProblemData {
    ProblemData.make(kind: .gaussian, batch: 1, heads: config.heads, kvHeads: config.heads, queries: n, keys: n,
                     dim: config.dim, seed: config.seed &+ UInt64(n))
  }

  /// Median and min seconds of `repeats` calls.
  func time(_ m: any AttentionMethod, _ d: ProblemData, _ o: AttentionOptions, repeats: Int) throws(SubqError) -> Timing {
    var failure: SubqError? = nil
    let t = Timing.measure(repeats: repeats, warmup: 0) {
      do { blackHole(try m.attention(queries: d.queries, keys: d.keys, values: d.values, options: o).output) } catch {
        failure = error as? SubqError
      }
    }
    if let failure { throw failure }
    return t
  }

  /// Relative error of the last `rows` rows of head 0 against the reference over the method's keys.
  func check(_ m: any PatternAttentionMethod, _ d: ProblemData, _ o: AttentionOptions, rows: Int = 64) throws(SubqError) -> Double {
    let n = d.queries.shape[2]
    let r = try m.attention(queries: d.queries, keys: d.keys, values: d.values, options: o)
    let picked = (max(0, n - rows)..<n).map { QueryRow(batch: 0, head: 0, row: $0) }
    let ref = try PatternCheck.reference(method: m, queries: d.queries, keys: d.keys, values: d.values, options: o, rows: picked)
    let got = sliceRows(r.output, head: 0, from: max(0, n - rows), count: picked.count)
    return relativeError(got, ref.flatMap { $0 })
  }

  /// Part 1: neighborhood 2-D against flash, in `flashRepeats` alternating rounds.
  public func compare() throws(SubqError) -> Comparison {
    let n = config.grid.reduce(1, *)
    let d = data(n)
    let o = AttentionOptions(threads: config.threads)
    let na = try NeighborhoodAttention(grid: config.grid, kernel: [config.kernel])
    let flash = try FlashAttention()
    let err = try check(na, d, o)
    let flops = try na.attendedPairs(queries: d.queries, keys: d.keys, values: d.values, options: o) * Double(4 * config.dim)
    let p = try AttentionProblem.validate(op: "bench", queries: d.queries, keys: d.keys, values: d.values, options: o)
    var nSamples: [Double] = [], fSamples: [Double] = [], ratios: [Double] = []
    for _ in 0..<max(1, config.flashRepeats) {
      let tf = try time(flash, d, o, repeats: 1)
      let tn = try time(na, d, o, repeats: config.repeats)
      fSamples += tf.samples
      nSamples += tn.samples
      ratios.append((flops / tn.median) / (p.flops / tf.median))
    }
    let tn = Timing(samples: nSamples), tf = Timing(samples: fSamples)
    return Comparison(grid: config.grid, kernel: config.kernel, n: n, neighborhoodSeconds: tn.median,
                      neighborhoodGflops: flops / tn.median / 1e9,
                      flashSeconds: tf.median, flashGflops: p.flops / tf.median / 1e9,
                      ratio: Timing(samples: ratios).median, roundRatios: ratios, checkError: err)
  }

  /// The 2-D grid used for neighborhood attention at length n: square when n is a square, else
  /// `n/128 × 128`, else 1-D.
  public static func grid(for n: Int) -> [Int] {
    let r = Int(Double(n).squareRoot().rounded())
    if r * r == n { return [r, r] }
    if n % 128 == 0 { return [n / 128, 128] }
    return [n]
  }

  /// Part 2: time against N for every method.
  public func scaling(progress: (ScalingRow) -> Void = { _ in }) throws(SubqError) -> [ScalingRow] {
    var rows: [ScalingRow] = []
    let plain = AttentionOptions(threads: config.threads)
    let causal = AttentionOptions(causal: true, threads: config.threads)
    typealias Entry = (name: String, params: String, make: (Int) throws(SubqError) -> any AttentionMethod, options: AttentionOptions)
    let entries: [Entry] = [
      ("neighborhood", "kernel \(config.kernel), 2-D grid", { n throws(SubqError) in
        try NeighborhoodAttention(grid: SparseBench.grid(for: n), kernel: [self.config.kernel]) }, plain),
      ("sinks", "S=\(config.sinks) W=\(config.window), causal", { _ throws(SubqError) in
        try SinkAttention(sinks: self.config.sinks, window: self.config.window) }, causal),
      ("combiner", "fixed, block auto, causal", { _ throws(SubqError) in try CombinerAttention(variant: .fixed) }, causal),
      ("combiner", "axial, block auto, causal", { _ throws(SubqError) in try CombinerAttention(variant: .axial) }, causal),
      ("combiner", "logsparse, causal", { _ throws(SubqError) in try CombinerAttention(variant: .logsparse) }, causal),
    ]
    for e in entries {
      var previous: Double? = nil
      for n in config.lengths {
        let d = data(n)
        let m = try e.make(n)
        var err: Double? = nil
        if let pm = m as? any PatternAttentionMethod { err = try check(pm, d, e.options) }
        let t = try time(m, d, e.options, repeats: config.repeats)
        var params = e.params
        if let c = m as? CombinerAttention, c.variant != .logsparse { params += " (L=\(c.blockLength(for: n)))" }
        if m is NeighborhoodAttention { params += " \(SparseBench.grid(for: n).map(String.init).joined(separator: "×"))" }
        let row = ScalingRow(method: e.name, parameters: params, n: n, medianSeconds: t.median, minSeconds: t.min,
                             growth: previous.map { t.median / $0 }, checkError: err)
        previous = t.median
        rows.append(row)
        progress(row)
      }
    }
    return rows
  }
}
