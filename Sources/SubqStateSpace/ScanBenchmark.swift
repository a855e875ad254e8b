import Foundation
import SubqCore

/// A sequence mixer that is not softmax attention, in the form a benchmark can time next to
/// attention methods: what it is, and how to build random inputs of a given length and run one
/// forward pass on them.
///
/// `subq scan-bench` uses these; `subq compare` can list ``StateSpaceBenchmarks/all`` in a
/// speed-only table (these mixers have no attention output to compare errors against).
public struct ScanBenchmark: Sendable {
  /// Registry name (`selective-scan`, `ssd`, `titans-memory`).
  public var name: String
  /// One-line summary, including the fixed shape it runs.
  public var summary: String
  /// The paper it implements.
  public var paper: String
  /// Time and memory complexity.
  public var complexity: String
  /// Builds random inputs for `length` tokens (seeded) and returns the run.
  public var prepare: @Sendable (_ length: Int, _ seed: UInt64, _ threads: Int) throws(SubqError) -> ScanRun

  public init(name: String, summary: String, paper: String, complexity: String,
              prepare: @escaping @Sendable (_ length: Int, _ seed: UInt64, _ threads: Int) throws(SubqError) -> ScanRun) {
    self.name = name
    self.summary = summary
    self.paper = paper
    self.complexity = complexity
    self.prepare = prepare
  }
}

/// Prepared inputs of one ``ScanBenchmark`` at one length.
public struct ScanRun: Sendable {
  /// The shape, e.g. `B=1 D=1536 N=16 L=65536`.
  public var shape: String
  /// Bytes a pass must move at least: every input read once and every output written once.
  public var bytes: Double
  /// Floating-point operations of one pass (an exponential counts as one).
  public var flops: Double
  /// One forward pass (the timed part).
  public var run: @Sendable () throws(SubqError) -> Void
  /// Checks the fast path on a slice of these inputs against the Float64 reference and returns
  /// the relative Frobenius error (run before timing).
  public var check: @Sendable () throws(SubqError) -> Double

  public init(shape: String, bytes: Double, flops: Double, run: @escaping @Sendable () throws(SubqError) -> Void,
              check: @escaping @Sendable () throws(SubqError) -> Double) {
    self.shape = shape
    self.bytes = bytes
    self.flops = flops
    self.run = run
    self.check = check
  }
}

/// The benchmarkable mixers of this module.
public enum StateSpaceBenchmarks {
  /// Every mixer at its default benchmark shape.
  public static var all: [ScanBenchmark] { [selectiveScan(), ssd(), titansMemory()] }

  /// The mixer named `name` at its default shape.
  public static func named(_ name: String) -> ScanBenchmark? { all.first { $0.name == name } }

  /// The selective scan at batch `batch`, `channels` channels and state size `state`, with
  /// every option on (D skip, z gate, delta bias, softplus): Mamba-1 at d_model 768 has 1536
  /// inner channels and N = 16.
  public static func selectiveScan(batch: Int = 1, channels: Int = 1536, state: Int = 16) -> ScanBenchmark {
    ScanBenchmark(
      name: "selective-scan",
      summary: "Mamba S6 selective scan, B=\(batch) D=\(channels) N=\(state), D skip, z gate, delta bias + softplus",
      paper: "Gu & Dao, Mamba: Linear-Time Sequence Modeling with Selective State Spaces (2023)",
      complexity: "O(L·D·N) time, O(D·N) state"
    ) { (length: Int, seed: UInt64, threads: Int) throws(SubqError) -> ScanRun in
      let x = selectiveScanInputs(batch: batch, channels: channels, state: state, length: length, seed: seed)
      let scan = SelectiveScan(threads: threads)
      let bdl = Double(batch * channels * length), bnl = Double(batch * state * length)
      return ScanRun(
        shape: "B=\(batch) D=\(channels) N=\(state) L=\(length)",
        bytes: 4 * (4 * bdl + 2 * bnl),  // u, delta, z read, out written; B, C read
        flops: 7 * bdl * Double(state),
        run: { () throws(SubqError) in _ = try scan(x) },
        check: { () throws(SubqError) -> Double in
          // Two channels of the same inputs, full length, channel-parallel path.
          let c = min(2, channels)
          var s = x
          s.u = sliceChannels(x.u, c); s.delta = sliceChannels(x.delta, c); s.z = x.z.map { sliceChannels($0, c) }
          s.A = sliceRows(x.A, c); s.D = x.D.map { sliceRows($0, c) }; s.deltaBias = x.deltaBias.map { sliceRows($0, c) }
          let r = try SelectiveScan(parallelism: .channels, threads: threads)(s)
          let ref = try StateSpaceReference.selectiveScan(s)
          return relativeFrobenius(r.output, ref.output)
        })
    }
  }

  /// Random selective-scan inputs in the regime of a trained Mamba: A = −exp(U[0, log 16]),
  /// Δ = softplus(N(−3, 1) + bias) (mostly 0.01–0.2), standard normal u, B, C, z, D.
  public static func selectiveScanInputs(batch: Int, channels: Int, state: Int, length: Int, seed: UInt64) -> SelectiveScanInputs {
    var g = SeededGenerator(seed: seed)
    let a = Tensor(shape: [channels, state]) { p in for i in p.indices { p[i] = -Float(Foundation.exp(g.nextUnit() * Foundation.log(16.0))) } }
    return SelectiveScanInputs(
      u: .randomNormal(shape: [batch, channels, length], seed: g.next()),
      delta: .randomNormal(shape: [batch, channels, length], seed: g.next(), mean: -3),
      A: a,
      B: .randomNormal(shape: [batch, state, length], seed: g.next()),
      C: .randomNormal(shape: [batch, state, length], seed: g.next()),
      D: .randomNormal(shape: [channels], seed: g.next()),
      z: .randomNormal(shape: [batch, channels, length], seed: g.next()),
      deltaBias: .randomUniform(shape: [channels], seed: g.next(), in: -0.5...0.5),
      deltaSoftplus: true)
  }

  /// Mamba-2 SSD at Mamba-2's d_model 768 shape: 24 heads of 64, N = 128, one group, chunk 64.
  public static func ssd(batch: Int = 1, heads: Int = 24, headDim: Int = 64, state: Int = 128, chunk: Int = 64) -> ScanBenchmark {
    ScanBenchmark(
      name: "ssd",
      summary: "Mamba-2 SSD chunked scan, B=\(batch) H=\(heads) P=\(headDim) N=\(state) G=1, chunk \(chunk), D skip",
      paper: "Dao & Gu, Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured State Space Duality (2024)",
      complexity: "O(L·Q·(N+P) + L·N·P) time per head (Q = chunk), O(N·P) state"
    ) { (length: Int, seed: UInt64, threads: Int) throws(SubqError) -> ScanRun in
      let x = ssdInputs(batch: batch, heads: heads, headDim: headDim, groups: 1, state: state, length: length, seed: seed)
      let ssd = try SSD(chunk: chunk, threads: threads)
      let blh = Double(batch * length * heads)
      let flops = blh * Double(2 * chunk * headDim + 4 * state * headDim) + Double(batch * length * chunk * state)
      return ScanRun(
        shape: "B=\(batch) H=\(heads) P=\(headDim) N=\(state) L=\(length) chunk=\(chunk)",
        bytes: 4 * (2 * blh * Double(headDim) + blh + 2 * Double(batch * length * state)),
        flops: flops,
        run: { () throws(SubqError) in _ = try ssd(x) },
        check: { () throws(SubqError) -> Double in
          // The first head alone, at most 4096 steps, against the Float64 recurrence.
          let l = min(length, 4096)
          let s = ssdInputs(batch: 1, heads: 1, headDim: headDim, groups: 1, state: state, length: l, seed: seed)
          let r = try ssd(s)
          let ref = try StateSpaceReference.ssdRecurrence(s)
          return relativeFrobenius(r.output, ref.output)
        })
    }
  }

  /// Random SSD inputs: dt = softplus(N(−3, 1) + bias), A = −U[1, 16] per head, normal x, B, C, D.
  public static func ssdInputs(batch: Int, heads: Int, headDim: Int, groups: Int, state: Int, length: Int, seed: UInt64) -> SSDInputs {
    var g = SeededGenerator(seed: seed)
    return SSDInputs(
      x: .randomNormal(shape: [batch, length, heads, headDim], seed: g.next()),
      dt: .randomNormal(shape: [batch, length, heads], seed: g.next(), mean: -3),
      A: Tensor(shape: [heads]) { p in for i in p.indices { p[i] = -Float(1 + 15 * g.nextUnit()) } },
      B: .randomNormal(shape: [batch, length, groups, state], seed: g.next()),
      C: .randomNormal(shape: [batch, length, groups, state], seed: g.next()),
      D: .randomNormal(shape: [heads], seed: g.next()),
      dtBias: .randomUniform(shape: [heads], seed: g.next(), in: -0.5...0.5),
      dtSoftplus: true)
  }

  /// The Titans long-term memory alone (LMM): a 2-layer MLP memory of width 64 → 256 → 64
  /// updated chunk by chunk (chunk 16) and read by every token.
  public static func titansMemory(width: Int = 64, hidden: Int = 256, chunk: Int = 16) -> ScanBenchmark {
    ScanBenchmark(
      name: "titans-memory",
      summary: "Titans neural long-term memory (LMM), MLP \(width)→\(hidden)→\(width), chunk \(chunk), momentum + forgetting; one sequence, one thread",
      paper: "Behrouz, Zhong & Mirrokni, Titans: Learning to Memorize at Test Time (2025)",
      complexity: "O(L·|M|) time, O(|M|) state (|M| = memory weights)"
    ) { (length: Int, seed: UInt64, threads: Int) throws(SubqError) -> ScanRun in
      let memory = try NeuralMemory(chunk: chunk)
      _ = threads  // one sequence: the memory runs on one thread (chunks are sequential)
      var g = SeededGenerator(seed: seed)
      let weights = NeuralMemory.randomWeights(sizes: [width, hidden, width], seed: g.next())
      // Keys and queries of norm ≈ 1 (the paper ℓ2-normalises them) keep the test-time learning
      // stable over any length.
      let kStd = Float(1 / Double(width).squareRoot())
      let k = Tensor.randomNormal(shape: [length, width], seed: g.next(), std: kStd)
      let v = Tensor.randomNormal(shape: [length, width], seed: g.next(), std: 0.5)
      let q = Tensor.randomNormal(shape: [length, width], seed: g.next(), std: kStd)
      let gates = MemoryGates(
        theta: .randomUniform(shape: [length], seed: g.next(), in: 0.001...0.02),
        eta: .randomUniform(shape: [length], seed: g.next(), in: 0.8...0.99),
        alpha: .randomUniform(shape: [length], seed: g.next(), in: 0...0.01))
      let params = Double(width * hidden * 2)
      return ScanRun(
        shape: "d=\(width) hidden=\(hidden) chunk=\(chunk) L=\(length)",
        bytes: 4 * Double(length * (4 * width + 3)),
        flops: Double(length) * params * 2 * 5,  // read, forward, backward (2), two weighted gradient sums
        run: { () throws(SubqError) in _ = try memory.process(keys: k, values: v, queries: q, gates: gates, state: MemoryState(weights: weights)) },
        check: { () throws(SubqError) -> Double in
          let l = min(length, 256)
          let sk = sliceRows(k, l), sv = sliceRows(v, l), sq = sliceRows(q, l)
          let sg = MemoryGates(theta: sliceRows(gates.theta, l), eta: sliceRows(gates.eta, l), alpha: sliceRows(gates.alpha, l))
          let r = try memory.process(keys: sk, values: sv, queries: sq, gates: sg, state: MemoryState(weights: weights))
          let ref = try StateSpaceReference.neuralMemory(keys: sk, values: sv, queries: sq, gates: sg, weights: weights, chunk: chunk)
          return relativeFrobenius(r.output, ref.output)
        })
    }
  }
}

/// Channels `0..<c` of a `[B, D, L]` tensor.
func sliceChannels(_ t: Tensor, _ c: Int) -> Tensor {
  let (nb, nd, nl) = (t.shape[0], t.shape[1], t.shape[2])
  return t.withUnsafeBufferPointer { p in
    Tensor(shape: [nb, c, nl]) { o in
      for b in 0..<nb { for d in 0..<c { for l in 0..<nl { o[(b * c + d) * nl + l] = p[(b * nd + d) * nl + l] } } }
    }
  }
}

/// The first `r` rows (entries of axis 0) of a tensor.
func sliceRows(_ t: Tensor, _ r: Int) -> Tensor {
  let inner = t.shape.dropFirst().reduce(1, *)
  return t.withUnsafeBufferPointer { p in
    Tensor(shape: [r] + t.shape.dropFirst()) { o in for i in 0..<(r * inner) { o[i] = p[i] } }
  }
}

/// ‖x − ref‖ / ‖ref‖ in Double.
func relativeFrobenius(_ x: Tensor, _ ref: [Double]) -> Double {
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
