import Foundation
import SubqAttention
import SubqCore

/// `subq bench`: times one attention method over a list of lengths.
public struct AttentionBench {
  public struct Config: Sendable {
    public var lengths: [Int]
    public var batch = 1
    public var heads = 8
    public var kvHeads = 8
    public var dim = 64
    public var causal = false
    public var repeats = 5
    public var data = DataKind.gaussian
    public var seed: UInt64 = 1
    public var threads = Parallel.defaultThreads
    /// Rows of the exactness check against the Float64 reference (last rows of head 0).
    public var checkRows = 128
    /// Measure the machine's FMA rate (``MachinePeak``, all threads) right before and after every
    /// timed run, so each run's GFLOP/s is compared with the limit measured around it. On a shared
    /// host, where the limit itself drifts by tens of percent within minutes, this ratio is far
    /// steadier than a rate divided by a peak measured at another time.
    public var interleavedPeak = false

    public init(lengths: [Int]) { self.lengths = lengths }
  }

  /// One measured length.
  public struct Row: Sendable, Codable {
    public var n: Int
    public var medianSeconds: Double
    public var minSeconds: Double
    /// Median processor time per run (all threads): on a shared machine, steadier than wall time.
    public var cpuSeconds: Double
    /// FLOPs of exact attention on the visible pairs (4·B·Hq·N²·D non-causal, about half causal);
    /// for a ``PatternAttentionMethod``, on the pairs it attends to.
    public var flops: Double
    public var gflops: Double
    /// Peak resident memory of the process during the memory-probe run.
    public var peakResidentBytes: Double
    /// Resident memory the method adds beyond its inputs and its output, at its peak (one run,
    /// measured with ``MemoryProbe``); nil where the peak cannot be measured (not Linux).
    public var extraBytes: Double?
    /// Relative Frobenius error of the checked rows against the Float64 reference.
    public var checkError: Double
    /// For approximate methods: relative Frobenius error of the whole output against exact
    /// `flash` on the same inputs.
    public var errorVsFlash: Double?
    /// For approximate methods: wall time of that one exact `flash` run (default parameters,
    /// same inputs, options and threads), for the speed-up in the same run.
    public var flashSeconds: Double? = nil
    /// With ``Config/interleavedPeak``: median FMA rate (GFLOP/s, all threads) measured around the
    /// timed runs, and the median over runs of the run's GFLOP/s divided by the mean of the peaks
    /// measured just before and just after it.
    public var peakGFlops: Double? = nil
    public var peakFraction: Double? = nil
  }

  public let method: any AttentionMethod
  public let config: Config

  public init(method: any AttentionMethod, config: Config) {
    self.method = method
    self.config = config
  }

  /// Runs every length; `progress` gets a line per finished length.
  public func run(progress: (Row) -> Void = { _ in }) throws(SubqError) -> [Row] {
    var rows: [Row] = []
    let info = type(of: method).info
    for n in config.lengths {
      let d = ProblemData.make(kind: config.data, batch: config.batch, heads: config.heads, kvHeads: config.kvHeads,
                               queries: n, keys: n, dim: config.dim, causal: config.causal, seed: config.seed &+ UInt64(n))
      let opts = AttentionOptions(causal: config.causal, threads: config.threads)
      let problem = try AttentionProblem.validate(op: "bench", queries: d.queries, keys: d.keys, values: d.values, options: opts)

      // The checks run in their own scope so their tensors (the first output, the reference
      // slices, flash's output) are freed before the memory probe and the timed runs: the peak
      // resident figure then holds the inputs, one output and the method's own memory.
      let (checkError, errorVsFlash, flashSeconds) = try { () throws(SubqError) -> (Double, Double?, Double?) in
        // Exactness check first: the last rows of head 0 (bottom-right alignment keeps their
        // positions) against the Float64 reference.
        let first = try method.attention(queries: d.queries, keys: d.keys, values: d.values, options: opts)
        let m = min(config.checkRows, n)
        let qSlice = sliceRows(d.queries, head: 0, from: n - m, count: m)
        let kSlice = sliceRows(d.keys, head: 0, from: 0, count: n)
        let vSlice = sliceRows(d.values, head: 0, from: 0, count: n)
        let got = sliceRows(first.output, head: 0, from: n - m, count: m)
        let checkError: Double
        if let pattern = method as? any PatternAttentionMethod {
          // Exact over its own pattern: check against the reference over the selected keys.
          let rows = (0..<config.batch).flatMap { b in ((n - m)..<n).map { QueryRow(batch: b, head: 0, row: $0) } }
          let ref = try PatternCheck.reference(method: pattern, queries: d.queries, keys: d.keys, values: d.values, options: opts, rows: rows)
          checkError = relativeError(got, ref.flatMap { $0 })
        } else {
          let ref = try NaiveAttention.reference(queries: qSlice, keys: kSlice, values: vSlice, options: opts)
          checkError = relativeError(got, ref.output)
        }

        var errorVsFlash: Double? = nil
        var flashSeconds: Double? = nil
        if !info.isExact && !(method is any PatternAttentionMethod) {
          let t0 = monotonicSeconds()
          let exact = try FlashAttention().attention(queries: d.queries, keys: d.keys, values: d.values, options: opts)
          flashSeconds = monotonicSeconds() - t0
          errorVsFlash = relativeError(first.output, exact.output.scalars.map(Double.init))
        }
        return (checkError, errorVsFlash, flashSeconds)
      }()

      // Memory: one probed run (threads and code are warm after the check above). The probe
      // purges the tensor cache and trims the heap first, so pages freed by earlier runs cannot
      // hide this run's allocations, and bypasses the cache during the run; the growth minus the
      // output this run returns is the method's extra memory.
      let outputBytes = Double(problem.outputShape.reduce(1, *)) * 4
      let (probed, growthBytes) = try MemoryProbe.measure { () throws(SubqError) in
        try method.attention(queries: d.queries, keys: d.keys, values: d.values, options: opts)
      }
      let growth = growthBytes.map(Double.init)
      let peak = Double(MachineInfo.peakResidentBytes())
      blackHole(probed.output)

      // Pattern methods: count only the pairs they attend to.
      var flops = problem.flops
      if let pattern = method as? any PatternAttentionMethod {
        flops = try pattern.attendedPairs(queries: d.queries, keys: d.keys, values: d.values, options: opts)
          * Double(2 * problem.headDim + 2 * problem.valueDim)
      }
      var failure: SubqError? = nil
      // With an interleaved peak, peaks[i] is measured just before run i and peaks[i + 1] just after.
      var peaks: [Double] = []
      func measurePeak() { peaks.append((0..<3).map { _ in MachinePeak.fmaRate(threads: config.threads) }.max()!) }
      // One timed run at a time, so that the peak measured between runs stays out of their times.
      var samples: [Double] = [], cpuSamples: [Double] = []
      for _ in 0..<max(1, config.repeats) {
        if config.interleavedPeak { measurePeak() }
        let run = Timing.measure(repeats: 1, warmup: 0) {
          do {
            let r = try method.attention(queries: d.queries, keys: d.keys, values: d.values, options: opts)
            blackHole(r.output)
          } catch { failure = error as? SubqError }
        }
        if let failure { throw failure }
        samples += run.samples
        cpuSamples += run.cpuSamples
      }
      let timing = Timing(samples: samples, cpuSamples: cpuSamples)
      var peakGFlops: Double? = nil, peakFraction: Double? = nil
      if config.interleavedPeak {
        measurePeak()
        peakGFlops = Timing(samples: peaks).median
        let ratios = timing.samples.indices.map { i in flops / timing.samples[i] / 1e9 / ((peaks[i] + peaks[i + 1]) / 2) }
        peakFraction = Timing(samples: ratios).median
      }
      let row = Row(n: n, medianSeconds: timing.median, minSeconds: timing.min, cpuSeconds: timing.medianCPU, flops: flops,
                    gflops: flops / timing.median / 1e9, peakResidentBytes: peak,
                    extraBytes: growth.map { max(0, $0 - outputBytes) }, checkError: checkError, errorVsFlash: errorVsFlash,
                    flashSeconds: flashSeconds, peakGFlops: peakGFlops, peakFraction: peakFraction)
      rows.append(row)
      progress(row)
    }
    return rows
  }
}

/// Rows `from..<from+count` of one head of a `[B, H, N, X]` tensor, as `[B, 1, count, X]`.
func sliceRows(_ t: Tensor, head: Int, from: Int, count: Int) -> Tensor {
  let (B, H, N, X) = (t.shape[0], t.shape[1], t.shape[2], t.shape[3])
  return t.withUnsafeBufferPointer { p in
    Tensor(shape: [B, 1, count, X]) { o in
      for b in 0..<B {
        for i in 0..<count {
          let src = ((b * H + head) * N + from + i) * X
          let dst = (b * count + i) * X
          for x in 0..<X { o[dst + x] = p[src + x] }
        }
      }
    }
  }
}

/// Relative Frobenius error of `x` against `ref`.
public func relativeError(_ x: Tensor, _ ref: [Double]) -> Double {
  var num = 0.0, den = 0.0
  x.withUnsafeBufferPointer { p in
    for i in 0..<min(p.count, ref.count) {
      let d = Double(p[i]) - ref[i]
      num += d * d
      den += ref[i] * ref[i]
    }
  }
  return den > 0 ? (num / den).squareRoot() : num.squareRoot()
}

/// Keeps a value alive and opaque to the optimizer, so benchmarked work is not deleted.
@inline(never) public func blackHole<T>(_ x: T) { withExtendedLifetime(x) {} }
