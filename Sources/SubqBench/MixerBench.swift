import Foundation
import SubqAttention
import SubqCore
import SubqLinear

/// `subq mix-bench`: times sequence mixers (``SequenceMixers``) over lengths, with causal
/// FlashAttention-2 at the same shapes as the yardstick.
///
/// Every mixer is timed through its uniform ``SequenceMixer/benchmark(_:seed:)`` entry point:
/// random inputs `[B, H, N, D]` (attention-like mixers) or `[B, N, H·D]` (mixers on the model
/// dimension) and random weights are built, one validated pass runs untimed (warm-up), then
/// `repeats` passes are timed. Mixers compute other functions than softmax attention, so this is a
/// speed comparison only; their correctness is checked by the test suite against their Float64
/// definitions.
public struct MixerBench {
  public struct Config: Sendable {
    public var mixers: [any SequenceMixer]
    public var lengths: [Int]
    public var batch = 1
    public var heads = 8
    public var dim = 64
    /// Causal where the mixer supports it (else non-causal), or forced.
    public var mode = Mode.auto
    public var repeats = 3
    /// Lengths above this skip flash (quadratic: 256K would take many minutes).
    public var flashMaxLength = 65536
    public var includeFlash = true
    public var seed: UInt64 = 1
    public var threads = Parallel.defaultThreads

    public init(mixers: [any SequenceMixer], lengths: [Int]) {
      self.mixers = mixers
      self.lengths = lengths
    }
  }

  public enum Mode: String, Sendable, CaseIterable, Codable { case auto, causal, noncausal = "non-causal" }

  /// One measured (method, length).
  public struct Row: Sendable, Codable {
    public var method: String
    public var parameters: [String: String]
    public var input: String
    public var causal: Bool
    public var n: Int
    public var medianSeconds: Double
    public var minSeconds: Double
    public var flops: Double
    public var gflops: Double
    /// Median time per token, nanoseconds (constant when time grows linearly).
    public var nsPerToken: Double
    public var peakResidentBytes: Double
  }

  public let config: Config
  public init(config: Config) { self.config = config }

  func causal(for info: MixerInfo) -> Bool {
    switch config.mode {
    case .auto: return info.supportsCausal
    case .causal: return true
    case .noncausal: return false
    }
  }

  /// Runs every mixer at every length, then causal flash up to `flashMaxLength`.
  public func run(progress: (Row) -> Void = { _ in }, skipped: (String) -> Void = { _ in }) throws(SubqError) -> [Row] {
    var rows: [Row] = []
    for m in config.mixers {
      let info = m.info
      let causal = causal(for: info)
      if causal && !info.supportsCausal || !causal && !info.supportsNonCausal {
        skipped("\(info.name): no \(causal ? "causal" : "non-causal") form, skipped")
        continue
      }
      for n in config.lengths {
        let shape = MixerBenchShape(batch: config.batch, heads: config.heads, length: n, headDim: config.dim, causal: causal, threads: config.threads)
        MachineInfo.resetPeakResident()
        let row: Row = try {
          () throws(SubqError) -> Row in
          let b = try m.benchmark(shape, seed: config.seed &+ UInt64(n))
          var failure: SubqError? = nil
          let t = Timing.measure(repeats: config.repeats, warmup: 0) {
            do { try b.run() } catch { failure = error as? SubqError }
          }
          if let failure { throw failure }
          return Row(method: info.name, parameters: m.parameterValues, input: b.inputDescription, causal: causal, n: n,
                     medianSeconds: t.median, minSeconds: t.min, flops: b.flops, gflops: b.flops / t.median / 1e9,
                     nsPerToken: t.median / Double(n * config.batch) * 1e9, peakResidentBytes: Double(MachineInfo.peakResidentBytes()))
        }()
        rows.append(row)
        progress(row)
      }
    }
    if config.includeFlash {
      let flash = try FlashAttention()
      for n in config.lengths {
        if n > config.flashMaxLength {
          skipped("flash (causal) at N=\(n): skipped, above --flash-max \(config.flashMaxLength) (quadratic time)")
          continue
        }
        let d = ProblemData.make(kind: .gaussian, batch: config.batch, heads: config.heads, kvHeads: config.heads,
                                 queries: n, keys: n, dim: config.dim, causal: true, seed: config.seed &+ UInt64(n))
        let opts = AttentionOptions(causal: true, threads: config.threads)
        let problem = try AttentionProblem.validate(op: "mix-bench", queries: d.queries, keys: d.keys, values: d.values, options: opts)
        MachineInfo.resetPeakResident()
        // Large N: one timed run (each takes tens of seconds); the first run is the warm-up below N = 16K.
        let reps = n >= 16384 ? 1 : config.repeats
        var failure: SubqError? = nil
        let t = Timing.measure(repeats: reps, warmup: n >= 16384 ? 0 : 1) {
          do { blackHole(try flash.attention(queries: d.queries, keys: d.keys, values: d.values, options: opts).output) } catch {
            failure = error as? SubqError
          }
        }
        if let failure { throw failure }
        let row = Row(method: "flash", parameters: flash.parameterValues, input: "Q,K,V \(d.queries.shape)", causal: true, n: n,
                      medianSeconds: t.median, minSeconds: t.min, flops: problem.flops, gflops: problem.flops / t.median / 1e9,
                      nsPerToken: t.median / Double(n * config.batch) * 1e9, peakResidentBytes: Double(MachineInfo.peakResidentBytes()))
        rows.append(row)
        progress(row)
      }
    }
    return rows
  }

  /// Speed-up of `method` (causal) over causal flash at length `n`, when both were measured.
  public static func speedup(_ rows: [Row], method: String, over other: String = "flash", at n: Int) -> Double? {
    guard let a = rows.first(where: { $0.method == method && $0.n == n && $0.causal }),
          let f = rows.first(where: { $0.method == other && $0.n == n }) else { return nil }
    return f.medianSeconds / a.medianSeconds
  }
}
