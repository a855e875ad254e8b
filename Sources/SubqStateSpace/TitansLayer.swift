import Foundation
import SubqAttention
import SubqCore
import SubqKernels

/// The weights of a Titans layer. Row-vector convention: a projection is `x · W`.
public struct TitansWeights: Sendable {
  /// The memory MLP's initial weights (the outer-loop parameters), `[d0, d1], …, [d_{m−1}, d_m]`.
  public var memory: [Tensor]
  /// W_Q `[d, d0]`: memory queries q = x·W_Q.
  public var query: Tensor
  /// W_K `[d, d0]`: memory keys k = x·W_K.
  public var key: Tensor
  /// W_V `[d, d_m]`: memory values v = x·W_V.
  public var value: Tensor
  /// `[d + 1, 3]`: the gate logits [θ, η, α] = [x, 1]·gates (last row the biases), passed through
  /// a sigmoid; θ is then scaled by `maxLearningRate`.
  public var gates: Tensor
  /// The largest surprise step θ, in (0, 1].
  public var maxLearningRate: Float
  /// MAC: N_p persistent memory tokens `[N_p, d]` (may have 0 rows).
  public var persistent: Tensor?
  /// MAC: attention projections `[d, d]` (queries from the segment; keys and values from
  /// [persistent ‖ retrieved memory ‖ segment]; output).
  public var attentionQuery: Tensor?, attentionKey: Tensor?, attentionValue: Tensor?, attentionOutput: Tensor?

  public init(memory: [Tensor], query: Tensor, key: Tensor, value: Tensor, gates: Tensor, maxLearningRate: Float = 0.1,
              persistent: Tensor? = nil, attentionQuery: Tensor? = nil, attentionKey: Tensor? = nil,
              attentionValue: Tensor? = nil, attentionOutput: Tensor? = nil) {
    self.memory = memory
    self.query = query
    self.key = key
    self.value = value
    self.gates = gates
    self.maxLearningRate = maxLearningRate
    self.persistent = persistent
    self.attentionQuery = attentionQuery
    self.attentionKey = attentionKey
    self.attentionValue = attentionValue
    self.attentionOutput = attentionOutput
  }

  /// Random weights for a model width `d`, memory hidden width `hidden` (depth 2) and, when
  /// `persistent` is given, the MAC parts (for tests and benchmarks).
  public static func random(width d: Int, hidden: Int, persistent: Int? = nil, seed: UInt64) -> TitansWeights {
    var g = SeededGenerator(seed: seed)
    func w(_ r: Int, _ c: Int) -> Tensor {
      let bound = Float((6.0 / Double(r + c)).squareRoot())
      return .randomUniform(shape: [r, c], seed: g.next(), in: -bound...bound)
    }
    var t = TitansWeights(memory: NeuralMemory.randomWeights(sizes: [d, hidden, d], seed: g.next()),
                          query: w(d, d), key: w(d, d), value: w(d, d),
                          gates: .randomNormal(shape: [d + 1, 3], seed: g.next(), std: 0.2))
    if let persistent {
      t.persistent = .randomNormal(shape: [persistent, d], seed: g.next())
      t.attentionQuery = w(d, d); t.attentionKey = w(d, d); t.attentionValue = w(d, d); t.attentionOutput = w(d, d)
    }
    return t
  }
}

/// A Titans layer: the neural long-term memory alone (LMM), or memory as context (MAC).
///
/// **LMM**: k = x·W_K, v = x·W_V, q = x·W_Q and the gates come from each token; the memory
/// (``NeuralMemory``) stores the tokens chunk by chunk and each token reads it (y = M*(q)) as it
/// stood at the start of its chunk.
///
/// **MAC** (the paper's §4.1), for each segment S of `segment` tokens:
///
///     h = M*_{t−1}(S·W_Q)                           retrieve with the memory before the segment
///     y = Attn(S·W_q, [P ‖ h ‖ S]·W_k, [P ‖ h ‖ S]·W_v)·W_o
///     M_t = M_{t−1} updated with k = y·W_K, v = y·W_V   (chunk by chunk inside the segment)
///     o = y ⊙ M*_t(y·W_Q)
///
/// The attention is multi-head softmax attention (``FlashAttention``) of the segment's tokens
/// over the persistent tokens P, the retrieved h and the segment, causal inside the segment: a
/// token sees all of P and h and the segment's tokens up to itself (the paper's MAC mask). The
/// output of a segment depends only on earlier segments and the segment itself.
///
/// Paper: Behrouz, Zhong & Mirrokni, *Titans: Learning to Memorize at Test Time* (2025). Left
/// out (not in the core equations): the SiLU and ℓ2-norm on q/k, the depthwise convolutions,
/// the output norm; the gate ⊗ is an elementwise product. The gates are linear maps of the
/// token followed by a sigmoid, per token.
///
/// - Complexity: LMM O(B·L·(d·(d0 + d_m) + |M|)); MAC adds O(B·L·(N_p + 2·segment)·d) for the
///   attention. Memory O(|M|) per sequence plus one segment's activations.
public struct TitansLayer: Sendable {
  /// How the memory is combined with attention.
  public enum Arrangement: Sendable, Equatable {
    /// The memory alone as a sequence layer (LMM).
    case memory
    /// Memory as context: segments of `segment` tokens, attention with `heads` heads.
    case memoryAsContext(segment: Int, heads: Int)
  }

  public let arrangement: Arrangement
  /// The memory's gradient chunk (see ``NeuralMemory``).
  public let chunk: Int
  /// Worker threads (default `Parallel.defaultThreads`): batch entries run in parallel; with one
  /// sequence the MAC attention uses them.
  public let threads: Int?

  static let op = "titans"

  public init(arrangement: Arrangement = .memory, chunk: Int = 16, threads: Int? = nil) throws(SubqError) {
    _ = try NeuralMemory(chunk: chunk)
    if case .memoryAsContext(let segment, let heads) = arrangement {
      if segment < 1 { throw .argument(op: Self.op, name: "segment", value: "\(segment)", reason: "must be at least 1") }
      if heads < 1 { throw .argument(op: Self.op, name: "heads", value: "\(heads)", reason: "must be at least 1") }
    }
    if let threads, threads < 1 { throw .argument(op: Self.op, name: "threads", value: "\(threads)", reason: "must be at least 1") }
    self.arrangement = arrangement
    self.chunk = chunk
    self.threads = threads
  }

  /// Runs the layer on `x` (`[L, d]` or `[B, L, d]`). Returns the output in x's rank (`[…, L, d_m]`
  /// for LMM, `[…, L, d]` for MAC) and each sequence's final memory state.
  public func callAsFunction(_ x: Tensor, weights: TitansWeights) throws(SubqError) -> (output: Tensor, memory: [MemoryState]) {
    let op = Self.op
    guard x.rank == 2 || x.rank == 3 else { throw .shape(op: op, tensor: "x", shape: x.shape, reason: "expected [L, d] or [B, L, d]") }
    let nb = x.rank == 3 ? x.shape[0] : 1, nl = x.shape[x.rank - 2], d = x.shape[x.rank - 1]
    if nb < 1 || d < 1 { throw .shape(op: op, tensor: "x", shape: x.shape, reason: "needs a batch entry and width ≥ 1") }
    try checkFinite(x, "x", op: op)
    let sizes = try NeuralMemory.sizes(weights.memory, op: op)
    let (d0, dm) = (sizes[0], sizes.last!)
    try checkMatrix(weights.query, "W_Q", op: op, rows: d, cols: d0)
    try checkMatrix(weights.key, "W_K", op: op, rows: d, cols: d0)
    try checkMatrix(weights.value, "W_V", op: op, rows: d, cols: dm)
    try checkMatrix(weights.gates, "gates", op: op, rows: d + 1, cols: 3)
    let lr = weights.maxLearningRate
    guard lr > 0, lr <= 1 else { throw .argument(op: op, name: "max learning rate", value: "\(lr)", reason: "must be in (0, 1]") }
    var outWidth = dm
    if case .memoryAsContext(_, let heads) = arrangement {
      guard dm == d else {
        throw .shape(op: op, tensor: "memory layer \(weights.memory.count - 1)", shape: weights.memory.last!.shape,
                     reason: "MAC concatenates retrieved memory with tokens: the memory's output width must be d = \(d)")
      }
      guard d % heads == 0 else { throw .argument(op: op, name: "heads", value: "\(heads)", reason: "must divide the width \(d)") }
      guard let p = weights.persistent else { throw .argument(op: op, name: "persistent", value: "missing", reason: "MAC needs the persistent tokens [N_p, d]") }
      guard p.rank == 2, p.shape[1] == d else { throw .shape(op: op, tensor: "persistent", shape: p.shape, reason: "expected [N_p, \(d)]") }
      try checkFinite(p, "persistent", op: op)
      for (t, name) in [(weights.attentionQuery, "attention W_q"), (weights.attentionKey, "attention W_k"),
                        (weights.attentionValue, "attention W_v"), (weights.attentionOutput, "attention W_o")] {
        guard let t else { throw .argument(op: op, name: name, value: "missing", reason: "MAC needs the attention projections [d, d]") }
        try checkMatrix(t, name, op: op, rows: d, cols: d)
      }
      outWidth = d
    }
    let memory = try NeuralMemory(chunk: chunk)
    let threads = self.threads ?? Parallel.defaultThreads
    let rows = nl * d
    let results = ResultBox(count: nb)
    x.withUnsafeBufferPointer { xp in
      let base = SendablePointer(xp.baseAddress!)
      let perSequenceThreads = nb >= threads ? 1 : threads
      Parallel.forEach(nb, threads: threads) { b, _ in
        let seq = Tensor(shape: [nl, d]) { $0.baseAddress!.update(from: base.pointer + b * rows, count: rows) }
        do throws(SubqError) {
          let r = try run(seq, weights: weights, memory: memory, threads: perSequenceThreads)
          results.set(b, .success(r))
        } catch {
          results.set(b, .failure(error))
        }
      }
    }
    var outs: [Tensor] = [], states: [MemoryState] = []
    for b in 0..<nb {
      switch results.get(b)! {
      case .success(let r): outs.append(r.0); states.append(r.1)
      case .failure(let e): throw e
      }
    }
    let shape = x.rank == 3 ? [nb, nl, outWidth] : [nl, outWidth]
    let output = Tensor(shape: shape) { p in
      for b in 0..<nb { outs[b].withUnsafeBufferPointer { o in (p.baseAddress! + b * nl * outWidth).update(from: o.baseAddress!, count: nl * outWidth) } }
    }
    return (output, states)
  }

  /// The gates of tokens `y` `[n, d]`: σ([y, 1]·gates), θ scaled by the max learning rate.
  static func gates(_ y: Tensor, _ w: TitansWeights) -> MemoryGates {
    let n = y.shape[0], d = y.shape[1]
    let g = w.gates.scalars, lr = Double(w.maxLearningRate)
    var th = [Float](repeating: 0, count: n), et = th, al = th
    y.withUnsafeBufferPointer { yp in
      for i in 0..<n {
        var z = (Double(g[d * 3]), Double(g[d * 3 + 1]), Double(g[d * 3 + 2]))
        for c in 0..<d {
          let v = Double(yp[i * d + c])
          z.0 += v * Double(g[c * 3]); z.1 += v * Double(g[c * 3 + 1]); z.2 += v * Double(g[c * 3 + 2])
        }
        th[i] = Float(lr / (1 + Foundation.exp(-z.0)))
        et[i] = Float(1 / (1 + Foundation.exp(-z.1)))
        al[i] = Float(1 / (1 + Foundation.exp(-z.2)))
      }
    }
    return MemoryGates(theta: try! Tensor(shape: [n], scalars: th), eta: try! Tensor(shape: [n], scalars: et), alpha: try! Tensor(shape: [n], scalars: al))
  }

  /// One sequence `[L, d]`.
  func run(_ x: Tensor, weights w: TitansWeights, memory: NeuralMemory, threads: Int) throws(SubqError) -> (Tensor, MemoryState) {
    let nl = x.shape[0], d = x.shape[1]
    let state0 = MemoryState(weights: w.memory)
    switch arrangement {
    case .memory:
      let r = try memory.process(keys: project(x, rows: nl, w.key), values: project(x, rows: nl, w.value),
                                 queries: project(x, rows: nl, w.query), gates: Self.gates(x, w), state: state0)
      return (r.output, r.state)
    case .memoryAsContext(let segment, let heads):
      let p = w.persistent!
      let np = p.shape[0]
      var state = state0
      var out = [Float](repeating: 0, count: nl * d)
      let flash = try FlashAttention()
      var r0 = 0
      while r0 < nl {
        let c = min(segment, nl - r0)
        let s = Tensor(shape: [c, d]) { t in x.withUnsafeBufferPointer { t.baseAddress!.update(from: $0.baseAddress! + r0 * d, count: c * d) } }
        // Retrieve with the memory before the segment.
        let h = try memory.retrieve(queries: project(s, rows: c, w.query), weights: state.weights)
        // [P ‖ h ‖ S] and the attention.
        let ctx = Tensor(shape: [np + 2 * c, d]) { t in
          let o = t.baseAddress!
          p.withUnsafeBufferPointer { o.update(from: $0.baseAddress!, count: np * d) }
          h.withUnsafeBufferPointer { (o + np * d).update(from: $0.baseAddress!, count: c * d) }
          s.withUnsafeBufferPointer { (o + (np + c) * d).update(from: $0.baseAddress!, count: c * d) }
        }
        let dh = d / heads
        let q = try project(s, rows: c, w.attentionQuery!).reshaped([1, c, heads, dh])
        let k = try project(ctx, rows: np + 2 * c, w.attentionKey!).reshaped([1, np + 2 * c, heads, dh])
        let v = try project(ctx, rows: np + 2 * c, w.attentionValue!).reshaped([1, np + 2 * c, heads, dh])
        // Bottom-right causal alignment: query i sees keys ≤ i + N_p + c, i.e. all of P and h
        // and the segment up to itself.
        let a = try flash.attention(queries: q, keys: k, values: v,
                                    options: AttentionOptions(causal: true, alignment: .bottomRight, layout: .bshd, threads: threads))
        let y = project(try a.output.reshaped([c, d]), rows: c, w.attentionOutput!)
        // Store the segment's attention output, then read it back with the updated memory.
        state = try memory.memorize(keys: project(y, rows: c, w.key), values: project(y, rows: c, w.value),
                                    gates: Self.gates(y, w), state: state)
        let m = try memory.retrieve(queries: project(y, rows: c, w.query), weights: state.weights)
        y.withUnsafeBufferPointer { yp in
          m.withUnsafeBufferPointer { mp in
            for i in 0..<(c * d) { out[r0 * d + i] = yp[i] * mp[i] }
          }
        }
        r0 += c
      }
      return (try Tensor(shape: [nl, d], scalars: out), state)
    }
  }
}

/// Per-item results written by parallel workers (each slot by one worker).
final class ResultBox: @unchecked Sendable {
  private var slots: [Result<(Tensor, MemoryState), SubqError>?]
  private let lock = NSLock()
  init(count: Int) { slots = Array(repeating: nil, count: count) }
  func set(_ i: Int, _ r: Result<(Tensor, MemoryState), SubqError>) { lock.lock(); slots[i] = r; lock.unlock() }
  func get(_ i: Int) -> Result<(Tensor, MemoryState), SubqError>? { lock.lock(); defer { lock.unlock() }; return slots[i] }
}
