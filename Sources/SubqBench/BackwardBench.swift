import Foundation
import SubqAttention
import SubqCore

/// `subq bench --backward`: times the FlashAttention backward pass next to its forward pass.
///
/// For each length it runs the forward pass (with the log-sum-exp) and then the backward pass
/// from the saved output and log-sum-exp, and reports both rates. The backward's FLOPs are counted
/// as 2.5× the forward's (FlashAttention's convention: five block products instead of two), so the
/// ratio of the two rates is the fraction of forward efficiency the backward reaches.
public struct BackwardBench {
  /// One measured length.
  public struct Row: Sendable, Codable {
    public var n: Int
    public var forwardMedianSeconds: Double
    public var backwardMedianSeconds: Double
    public var backwardMinSeconds: Double
    /// FLOPs of the forward pass on the visible pairs; the backward counts 2.5× this.
    public var forwardFlops: Double
    public var backwardFlops: Double
    public var forwardGflops: Double
    public var backwardGflops: Double
    /// backwardGflops / forwardGflops.
    public var rateRatio: Double
    /// Peak resident memory of the process during the timed backward runs.
    public var peakResidentBytes: Double
    /// Relative Frobenius error of dQ on the checked rows against the Float64 reference.
    public var checkError: Double
  }

  public let method: FlashAttention
  public let config: AttentionBench.Config

  public init(method: FlashAttention, config: AttentionBench.Config) {
    self.method = method
    self.config = config
  }

  /// Runs every length; `progress` gets each finished row.
  public func run(progress: (Row) -> Void = { _ in }) throws(SubqError) -> [Row] {
    var rows: [Row] = []
    for n in config.lengths {
      let d = ProblemData.make(kind: config.data, batch: config.batch, heads: config.heads, kvHeads: config.kvHeads,
                               queries: n, keys: n, dim: config.dim, causal: config.causal, seed: config.seed &+ UInt64(n))
      let dout = Tensor.randomNormal(shape: [config.batch, config.heads, n, config.dim], seed: config.seed &+ 7 &+ UInt64(n))
      let opts = AttentionOptions(causal: config.causal, returnLSE: true, threads: config.threads)
      let problem = try AttentionProblem.validate(op: "bench", queries: d.queries, keys: d.keys, values: d.values, options: opts)

      // Check first: dQ of the last rows of head 0 depends only on those rows, so it can be
      // compared with the Float64 reference on a slice (bottom-right alignment keeps positions).
      let fwd = try method.attention(queries: d.queries, keys: d.keys, values: d.values, options: opts)
      let grads = try method.backward(queries: d.queries, keys: d.keys, values: d.values, output: fwd.output, lse: fwd.lse!,
                                      outputGradient: dout, options: opts)
      let m = min(config.checkRows, n)
      let ref = try NaiveAttention.referenceGradients(
        queries: sliceRows(d.queries, head: 0, from: n - m, count: m), keys: sliceRows(d.keys, head: 0, from: 0, count: n),
        values: sliceRows(d.values, head: 0, from: 0, count: n), outputGradient: sliceRows(dout, head: 0, from: n - m, count: m),
        options: opts)
      let checkError = relativeError(sliceRows(grads.queries, head: 0, from: n - m, count: m), ref.dq)

      var failure: SubqError? = nil
      let forward = Timing.measure(repeats: config.repeats, warmup: 0) {
        do {
          blackHole(try method.attention(queries: d.queries, keys: d.keys, values: d.values, options: opts).output)
        } catch { failure = error as? SubqError }
      }
      if let failure { throw failure }
      MachineInfo.resetPeakResident()
      let backward = Timing.measure(repeats: config.repeats, warmup: 0) {
        do {
          let g = try method.backward(queries: d.queries, keys: d.keys, values: d.values, output: fwd.output, lse: fwd.lse!,
                                      outputGradient: dout, options: opts)
          blackHole(g)
        } catch { failure = error as? SubqError }
      }
      if let failure { throw failure }
      let peak = Double(MachineInfo.peakResidentBytes())
      let flops = problem.flops
      let fg = flops / forward.median / 1e9, bg = 2.5 * flops / backward.median / 1e9
      let row = Row(n: n, forwardMedianSeconds: forward.median, backwardMedianSeconds: backward.median, backwardMinSeconds: backward.min,
                    forwardFlops: flops, backwardFlops: 2.5 * flops, forwardGflops: fg, backwardGflops: bg, rateRatio: bg / fg,
                    peakResidentBytes: peak, checkError: checkError)
      rows.append(row)
      progress(row)
    }
    return rows
  }
}
