import Foundation
import SubqAttention
import SubqCore
import SubqKernels

/// Hyperparameters of a LLaMA-architecture model, from GGUF metadata (`<arch>.…` keys).
public struct LlamaConfig: Sendable, Equatable {
  public var layers: Int
  /// Model width (`embedding_length`).
  public var dim: Int
  /// MLP hidden width (`feed_forward_length`).
  public var ffnDim: Int
  public var heads: Int
  public var kvHeads: Int
  public var headDim: Int
  public var vocabularySize: Int
  /// Trained context length.
  public var contextLength: Int
  /// RoPE base θ.
  public var ropeTheta: Double
  /// RMSNorm ε.
  public var normEpsilon: Float

  public init(layers: Int, dim: Int, ffnDim: Int, heads: Int, kvHeads: Int, vocabularySize: Int,
              contextLength: Int, ropeTheta: Double, normEpsilon: Float) {
    self.layers = layers
    self.dim = dim
    self.ffnDim = ffnDim
    self.heads = heads
    self.kvHeads = kvHeads
    self.headDim = dim / heads
    self.vocabularySize = vocabularySize
    self.contextLength = contextLength
    self.ropeTheta = ropeTheta
    self.normEpsilon = normEpsilon
  }

  /// Parameters in the matrices and embeddings (norm weights excluded).
  public var matrixParameters: Int {
    layers * (dim * heads * headDim + 2 * dim * kvHeads * headDim + heads * headDim * dim + 3 * dim * ffnDim)
  }
}

/// The weights of one transformer block.
struct LlamaLayer: @unchecked Sendable {
  var attnNorm: [Float]
  var ffnNorm: [Float]
  var wq, wk, wv, wo, wGate, wUp, wDown: QuantizedMatrix
}

/// A LLaMA-architecture language model read from a GGUF file (SmolLM2, TinyLlama, LLaMA 2/3 …).
///
/// Each block computes (pre-norm, no biases):
///
///     h = x + Wo · Attention(RoPE(Wq·n₁(x)), RoPE(Wk·n₁(x)), Wv·n₁(x))     n(x) = x / √(mean x² + ε) ⊙ w
///     x' = h + Wdown · (silu(Wgate·n₂(h)) ⊙ Wup·n₂(h))                     silu(z) = z / (1 + e^{−z})
///
/// with grouped-query attention (query head h reads key/value head h / (Hq/Hkv)), causal, scale
/// 1/√D, and rotary embeddings on consecutive pairs (x₂ᵢ, x₂ᵢ₊₁) rotated by pos·θ^(−2i/D) (ggml's
/// "normal" RoPE: llama.cpp's converter permutes Q and K so that this equals Hugging Face's
/// half-split rotation). The logits are `W_out · n(x)`, with `W_out` the token embedding when the
/// file has no `output.weight` (tied embeddings).
///
/// Weights stay quantized in the memory-mapped file; see ``QuantizedMatrix`` for the products.
public final class LlamaModel: @unchecked Sendable {
  public let file: GGUFFile
  public let config: LlamaConfig
  public let tokenizer: Tokenizer
  let layers: [LlamaLayer]
  let embedding: QuantizedMatrix
  let output: QuantizedMatrix
  let outputNorm: [Float]

  /// Loads the model at `path`.
  /// - Throws: ``SubqError`` naming the file and the missing or malformed key or tensor, or the
  ///   unsupported architecture, RoPE variant or tensor type.
  public convenience init(path: String) throws(SubqError) {
    try self.init(file: GGUFFile(path: path))
  }

  public init(file: GGUFFile) throws(SubqError) {
    self.file = file
    let arch = try file.string("general.architecture")
    guard arch == "llama" else {
      throw .unsupported(op: "llm", feature: "architecture '\(arch)'", reason: "only the LLaMA architecture ('llama') is implemented")
    }
    func key(_ k: String) -> String { "\(arch).\(k)" }
    let dim = try file.int(key("embedding_length"))
    let heads = try file.int(key("attention.head_count"))
    let kvHeads = file.metadata[key("attention.head_count_kv")] != nil ? try file.int(key("attention.head_count_kv")) : heads
    let tok = try Tokenizer(gguf: file)
    var vocab = tok.vocabularySize
    if file.metadata[key("vocab_size")] != nil { vocab = try file.int(key("vocab_size")) }
    let cfg = LlamaConfig(
      layers: try file.int(key("block_count")), dim: dim, ffnDim: try file.int(key("feed_forward_length")),
      heads: heads, kvHeads: kvHeads, vocabularySize: vocab,
      contextLength: try file.int(key("context_length")),
      ropeTheta: file.metadata[key("rope.freq_base")] != nil ? try file.double(key("rope.freq_base")) : 10_000,
      normEpsilon: Float(try file.double(key("attention.layer_norm_rms_epsilon"))))
    func bad(_ k: String, _ v: Int, _ why: String) -> SubqError {
      .file(path: file.path, reason: "metadata key '\(key(k))' = \(v): \(why)")
    }
    guard cfg.layers >= 1 else { throw bad("block_count", cfg.layers, "must be at least 1") }
    guard heads >= 1, dim % heads == 0 else { throw bad("attention.head_count", heads, "must divide embedding_length \(dim)") }
    guard kvHeads >= 1, heads % kvHeads == 0 else { throw bad("attention.head_count_kv", kvHeads, "must divide head_count \(heads)") }
    guard cfg.headDim % 2 == 0 else { throw bad("attention.head_count", heads, "gives an odd head dimension \(cfg.headDim)") }
    guard cfg.contextLength >= 1 else { throw bad("context_length", cfg.contextLength, "must be at least 1") }
    if file.metadata[key("rope.dimension_count")] != nil {
      let n = try file.int(key("rope.dimension_count"))
      guard n == cfg.headDim else {
        throw .unsupported(op: "llm", feature: "partial RoPE (\(key("rope.dimension_count")) = \(n), head dim \(cfg.headDim))", reason: "RoPE must cover the whole head")
      }
    }
    if let s = file.metadata[key("rope.scaling.type")], s != .string("none") {
      throw .unsupported(op: "llm", feature: "\(key("rope.scaling.type")) = \(s)", reason: "RoPE scaling is not implemented")
    }
    guard vocab == tok.vocabularySize else { throw bad("vocab_size", vocab, "differs from the tokenizer's \(tok.vocabularySize) tokens") }
    config = cfg
    tokenizer = tok

    func matrix(_ name: String, rows: Int, cols: Int) throws(SubqError) -> QuantizedMatrix {
      let m = try QuantizedMatrix(file, name)
      guard m.rows == rows, m.cols == cols else {
        throw .file(path: file.path, reason: "tensor '\(name)' has extents \(file.tensorInfo(name)!.dims), expected [\(cols), \(rows)]")
      }
      return m
    }
    func vector(_ name: String) throws(SubqError) -> [Float] {
      guard let t = file.tensorInfo(name) else { throw .file(path: file.path, reason: "tensor '\(name)' is missing") }
      guard t.count == dim else { throw .file(path: file.path, reason: "tensor '\(name)' has extents \(t.dims), expected [\(dim)]") }
      return try file.dequantized(name).scalars
    }
    let qd = heads * cfg.headDim, kvd = kvHeads * cfg.headDim
    var ls: [LlamaLayer] = []
    for l in 0..<cfg.layers {
      let p = "blk.\(l)."
      ls.append(LlamaLayer(
        attnNorm: try vector(p + "attn_norm.weight"), ffnNorm: try vector(p + "ffn_norm.weight"),
        wq: try matrix(p + "attn_q.weight", rows: qd, cols: dim), wk: try matrix(p + "attn_k.weight", rows: kvd, cols: dim),
        wv: try matrix(p + "attn_v.weight", rows: kvd, cols: dim), wo: try matrix(p + "attn_output.weight", rows: dim, cols: qd),
        wGate: try matrix(p + "ffn_gate.weight", rows: cfg.ffnDim, cols: dim),
        wUp: try matrix(p + "ffn_up.weight", rows: cfg.ffnDim, cols: dim),
        wDown: try matrix(p + "ffn_down.weight", rows: dim, cols: cfg.ffnDim)))
    }
    layers = ls
    embedding = try matrix("token_embd.weight", rows: vocab, cols: dim)
    output = file.tensorInfo("output.weight") != nil ? try matrix("output.weight", rows: vocab, cols: dim) : embedding
    outputNorm = try vector("output_norm.weight")
    for m in [embedding, output] + ls.flatMap({ [$0.wq, $0.wk, $0.wv, $0.wo, $0.wGate, $0.wUp, $0.wDown] })
    where m.type.blockSize > 1 && m.cols % quantBlock != 0 {
      throw .file(path: file.path, reason: "tensor '\(m.name)' has \(m.cols) columns, not a multiple of 32")
    }
  }

  /// Bytes of weights read per token (the quantized matrices, one pass each).
  public var weightBytes: Int {
    layers.reduce(0) { s, l in s + [l.wq, l.wk, l.wv, l.wo, l.wGate, l.wUp, l.wDown].reduce(0) { $0 + $1.rowBytes * $1.rows } }
      + output.rowBytes * output.rows
  }
}

/// How a session computes attention: the method used for prefill (any registered
/// ``AttentionMethod``) and whether decode steps use the built-in exact split-KV kernel.
public struct LLMAttention: Sendable {
  /// The method for prefill (and for decode unless `exactDecode`).
  public var method: any AttentionMethod
  /// Decode steps (one new token) use the cache's exact split-KV kernel instead of `method`.
  /// True for `flash`; an approximate method is used for decode as well, over the cached keys.
  public var exactDecode: Bool

  public init(method: any AttentionMethod, exactDecode: Bool? = nil) {
    self.method = method
    self.exactDecode = exactDecode ?? (type(of: method).info.name == "flash")
  }

  /// Exact FlashAttention-2 prefill and split-KV decode.
  public static var exact: LLMAttention { LLMAttention(method: try! FlashAttention()) }
}

/// Timings accumulated by a session.
public struct LLMTimings: Sendable {
  public var prefillTokens = 0
  public var prefillSeconds = 0.0
  public var decodeTokens = 0
  public var decodeSeconds = 0.0
  public init() {}
  public var prefillTokensPerSecond: Double { prefillSeconds > 0 ? Double(prefillTokens) / prefillSeconds : 0 }
  public var decodeTokensPerSecond: Double { decodeSeconds > 0 ? Double(decodeTokens) / decodeSeconds : 0 }
}

/// An inference session: a model, a KV cache and the attention method.
///
/// `prefill` runs any number of tokens in one batched pass (matrix products over all tokens, the
/// attention method over the layer's Q/K/V); `decode` runs one token against the cache. Both
/// append to the cache; `reset` empties it.
public final class LlamaSession: @unchecked Sendable {
  public let model: LlamaModel
  public var attention: LLMAttention
  public let threads: Int
  let cache: any KVCacheStorage
  public var timings = LLMTimings()

  /// - Parameters:
  ///   - capacity: positions the cache holds (at most the model's context length).
  ///   - threads: worker threads (default: all cores).
  /// - Throws: ``SubqError/argument(op:name:value:reason:)`` for a capacity outside
  ///   1…context length or threads < 1.
  ///   - cache: element type of the KV cache (Float32 by default: exact; Float16 halves the memory
  ///     and the bytes each decode step reads, rounding keys and values to 11 significant bits).
  public init(model: LlamaModel, capacity: Int, attention: LLMAttention = .exact, threads: Int = Parallel.defaultThreads,
              cache precision: KVCachePrecision = .f32) throws(SubqError) {
    guard capacity >= 1 && capacity <= model.config.contextLength else {
      throw .argument(op: "llm.session", name: "context", value: "\(capacity)", reason: "must be in 1...\(model.config.contextLength) (the model's context length)")
    }
    guard threads >= 1 else { throw .argument(op: "llm.session", name: "threads", value: "\(threads)", reason: "must be at least 1") }
    self.model = model
    self.attention = attention
    self.threads = threads
    let c = model.config
    cache = ContiguousKVCache(layers: c.layers, queryHeads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, capacity: capacity,
                              precision: precision)
  }

  /// Positions in the cache.
  public var position: Int { cache.length }
  /// Positions the cache holds.
  public var capacity: Int { cache.capacity }
  /// Element type of the cache.
  public var cachePrecision: KVCachePrecision { (cache as? ContiguousKVCache)?.precision ?? .f32 }

  /// Empties the cache.
  public func reset() { cache.reset() }

  /// Runs `tokens` at the next positions and returns the logits of the last one (`[vocab]`).
  public func prefill(_ tokens: [Int]) throws(SubqError) -> [Float] {
    let hidden = try forward(tokens, outputRows: (tokens.count - 1)..<tokens.count)
    return logits(hidden, rows: 1)
  }

  /// Runs one token and returns its logits.
  public func decode(_ token: Int) throws(SubqError) -> [Float] {
    let t0 = monotonic()
    let hidden = try forward([token], outputRows: 0..<1, timed: false)
    let out = logits(hidden, rows: 1)
    timings.decodeTokens += 1
    timings.decodeSeconds += monotonic() - t0
    return out
  }

  /// Runs `tokens` and calls `body(i, logits)` for every row i in `rows` (relative to `tokens`),
  /// computing the logits in blocks so that no `[N, vocab]` matrix is held.
  public func prefill(_ tokens: [Int], logitsFor rows: Range<Int>, _ body: (Int, UnsafeBufferPointer<Float>) -> Void) throws(SubqError) {
    let hidden = try forward(tokens, outputRows: rows)
    let V = model.config.vocabularySize, dim = model.config.dim
    let block = 64
    var r = 0
    while r < rows.count {
      let n = Swift.min(block, rows.count - r)
      let part = Array(hidden[(r * dim)..<((r + n) * dim)])
      let lg = logits(part, rows: n)
      lg.withUnsafeBufferPointer { p in
        for i in 0..<n { body(rows.lowerBound + r + i, UnsafeBufferPointer(rebasing: p[(i * V)..<((i + 1) * V)])) }
      }
      r += n
    }
  }

  /// `[rows, vocab]` logits of normalized hidden states `[rows, dim]`.
  func logits(_ hidden: [Float], rows: Int) -> [Float] {
    let V = model.config.vocabularySize, dim = model.config.dim
    var out = [Float](repeating: 0, count: rows * V)
    hidden.withUnsafeBufferPointer { h in
      out.withUnsafeMutableBufferPointer { o in
        QuantizedProducts.matmul([MatmulJob(w: model.output, x: h.baseAddress!, ldx: dim, y: o.baseAddress!, ldy: V)], n: rows, threads: threads)
      }
    }
    return out
  }

  func monotonic() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

  /// The transformer over `tokens` at positions `position…`; returns the final-normalized hidden
  /// states of `outputRows`, `[outputRows.count, dim]`.
  func forward(_ tokens: [Int], outputRows: Range<Int>, timed: Bool = true) throws(SubqError) -> [Float] {
    let c = model.config
    let n = tokens.count
    guard n >= 1 else { throw .argument(op: "llm.forward", name: "tokens", value: "[]", reason: "at least one token is needed") }
    let p0 = cache.length
    guard p0 + n <= cache.capacity else {
      throw .argument(op: "llm.forward", name: "tokens", value: "\(n) at position \(p0)",
                      reason: "the context holds \(cache.capacity) positions")
    }
    for (i, t) in tokens.enumerated() where t < 0 || t >= c.vocabularySize {
      throw .argument(op: "llm.forward", name: "tokens[\(i)]", value: "\(t)", reason: "outside the vocabulary 0..<\(c.vocabularySize)")
    }
    guard outputRows.lowerBound >= 0, outputRows.upperBound <= n else {
      throw .argument(op: "llm.forward", name: "outputRows", value: "\(outputRows)", reason: "must lie in 0..<\(n)")
    }
    let t0 = monotonic()
    let dim = c.dim, D = c.headDim, Hq = c.heads, Hkv = c.kvHeads, F = c.ffnDim
    let qd = Hq * D, kvd = Hkv * D
    let x = AlignedBuffer<Float>(count: n * dim)
    let h = AlignedBuffer<Float>(count: n * dim)
    let q = AlignedBuffer<Float>(count: n * qd)
    let kv = AlignedBuffer<Float>(count: 2 * n * kvd)
    let att = AlignedBuffer<Float>(count: n * qd)
    let tmp = AlignedBuffer<Float>(count: n * dim)
    let gate = AlignedBuffer<Float>(count: 2 * n * F)
    let rope = RopeTable(positions: p0..<(p0 + n), headDim: D, theta: c.ropeTheta)
    let xp = SendablePointer(x.pointer), hp = SendablePointer(h.pointer)

    for (i, t) in tokens.enumerated() { model.embedding.dequantizeRow(t, into: x.pointer + i * dim) }
    let eps = c.normEpsilon
    let rowThreads = n >= 64 ? threads : 1

    for (l, layer) in model.layers.enumerated() {
      // Attention block.
      layer.attnNorm.withUnsafeBufferPointer { w in
        let wp = SendablePointer(w.baseAddress!)
        Parallel.forEach(n, threads: rowThreads) { i, _ in rmsNorm(xp.pointer + i * dim, wp.pointer, hp.pointer + i * dim, dim, eps) }
      }
      let kp = kv.pointer, vp = kv.pointer + n * kvd
      QuantizedProducts.matmul([
        MatmulJob(w: layer.wq, x: h.pointer, ldx: dim, y: q.pointer, ldy: qd),
        MatmulJob(w: layer.wk, x: h.pointer, ldx: dim, y: kp, ldy: kvd),
        MatmulJob(w: layer.wv, x: h.pointer, ldx: dim, y: vp, ldy: kvd),
      ], n: n, threads: threads)
      rope.apply(q.pointer, rows: n, heads: Hq, threads: rowThreads)
      rope.apply(kp, rows: n, heads: Hkv, threads: rowThreads)
      cache.store(layer: l, position: p0, count: n, k: kp, v: vp, ld: kvd)
      try attend(layer: l, q: q.pointer, n: n, keys: p0 + n, out: att.pointer)
      QuantizedProducts.matmul([MatmulJob(w: layer.wo, x: att.pointer, ldx: qd, y: tmp.pointer, ldy: dim)], n: n, threads: threads)
      addInPlace(x.pointer, tmp.pointer, n * dim)

      // MLP block.
      layer.ffnNorm.withUnsafeBufferPointer { w in
        let wp = SendablePointer(w.baseAddress!)
        Parallel.forEach(n, threads: rowThreads) { i, _ in rmsNorm(xp.pointer + i * dim, wp.pointer, hp.pointer + i * dim, dim, eps) }
      }
      let g = gate.pointer, u = gate.pointer + n * F
      QuantizedProducts.matmul([
        MatmulJob(w: layer.wGate, x: h.pointer, ldx: dim, y: g, ldy: F),
        MatmulJob(w: layer.wUp, x: h.pointer, ldx: dim, y: u, ldy: F),
      ], n: n, threads: threads)
      let gp = SendablePointer(g), up = SendablePointer(u)
      Parallel.forEach(n, threads: rowThreads) { i, _ in swiglu(gp.pointer + i * F, up.pointer + i * F, F) }
      QuantizedProducts.matmul([MatmulJob(w: layer.wDown, x: g, ldx: F, y: tmp.pointer, ldy: dim)], n: n, threads: threads)
      addInPlace(x.pointer, tmp.pointer, n * dim)
    }
    cache.commit(length: p0 + n)

    var out = [Float](repeating: 0, count: outputRows.count * dim)
    outputNorm(rows: outputRows, x: x.pointer, into: &out)
    if timed {
      timings.prefillTokens += n
      timings.prefillSeconds += monotonic() - t0
    }
    return out
  }

  func outputNorm(rows: Range<Int>, x: UnsafeMutablePointer<Float>, into out: inout [Float]) {
    let dim = model.config.dim, eps = model.config.normEpsilon
    model.outputNorm.withUnsafeBufferPointer { w in
      out.withUnsafeMutableBufferPointer { o in
        for (k, i) in rows.enumerated() { rmsNorm(x + i * dim, w.baseAddress!, o.baseAddress! + k * dim, dim, eps) }
      }
    }
  }

  /// Attention of `n` new queries (`q`: `[n, Hq·D]`) over the first `keys` cached positions
  /// (causal: query i is at position keys − n + i), into `out` (`[n, Hq·D]`).
  func attend(layer: Int, q: UnsafeMutablePointer<Float>, n: Int, keys: Int, out: UnsafeMutablePointer<Float>) throws(SubqError) {
    let c = model.config
    let D = c.headDim, Hq = c.heads
    let scale = Float(1 / Double(D).squareRoot())
    if n == 1 && attention.exactDecode {
      cache.attendOne(layer: layer, count: keys, q: q, out: out, scale: scale, threads: threads)
      return
    }
    // [n, Hq, D] → [1, Hq, n, D]
    let qt = Tensor(shape: [1, Hq, n, D]) { t in
      for hh in 0..<Hq { for i in 0..<n { (t.baseAddress! + (hh * n + i) * D).update(from: q + i * Hq * D + hh * D, count: D) } }
    }
    let (kt, vt) = cache.tensors(layer: layer, count: keys)
    let options = AttentionOptions(scale: scale, causal: true, alignment: .bottomRight, allowNonFinite: true, threads: threads)
    let result = try attention.method.attention(queries: qt, keys: kt, values: vt, options: options)
    guard result.output.shape == [1, Hq, n, D] else {
      throw .shape(op: "llm.attention", tensor: "output of \(type(of: attention.method).info.name)", shape: result.output.shape,
                   reason: "expected [1, \(Hq), \(n), \(D)]")
    }
    result.output.withUnsafeBufferPointer { o in
      for hh in 0..<Hq { for i in 0..<n { (out + i * Hq * D + hh * D).update(from: o.baseAddress! + (hh * n + i) * D, count: D) } }
    }
  }
}

/// cos/sin of pos·θ^(−2i/D) for a range of positions, computed in Double.
struct RopeTable: @unchecked Sendable {
  let cos: [Float]
  let sin: [Float]
  let half: Int
  let count: Int

  init(positions: Range<Int>, headDim: Int, theta: Double) {
    half = headDim / 2
    count = positions.count
    var c = [Float](repeating: 0, count: count * half), s = c
    for (k, pos) in positions.enumerated() {
      for i in 0..<half {
        let angle = Double(pos) * Foundation.pow(theta, -2 * Double(i) / Double(headDim))
        c[k * half + i] = Float(Foundation.cos(angle))
        s[k * half + i] = Float(Foundation.sin(angle))
      }
    }
    cos = c
    sin = s
  }

  /// Rotates consecutive pairs of every head of rows `0..<rows` of `x` (`[rows, heads·D]`).
  func apply(_ x: UnsafeMutablePointer<Float>, rows: Int, heads: Int, threads: Int) {
    let xp = SendablePointer(x)
    let D = 2 * half
    cos.withUnsafeBufferPointer { cb in
      sin.withUnsafeBufferPointer { sb in
        let cp = SendablePointer(cb.baseAddress!), sp = SendablePointer(sb.baseAddress!)
        let half = self.half
        Parallel.forEach(rows, threads: threads) { r, _ in
          let cr = cp.pointer + r * half, sr = sp.pointer + r * half
          for h in 0..<heads {
            let v = xp.pointer + r * heads * D + h * D
            for i in 0..<half {
              let a = v[2 * i], b = v[2 * i + 1]
              v[2 * i] = a * cr[i] - b * sr[i]
              v[2 * i + 1] = a * sr[i] + b * cr[i]
            }
          }
        }
      }
    }
  }
}

/// out = x / √(mean x² + ε) ⊙ w.
@inline(__always)
func rmsNorm(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, _ n: Int, _ eps: Float) {
  let ss = dot(x, x, n)
  let inv = Float(1 / (Double(ss) / Double(n) + Double(eps)).squareRoot())
  for i in 0..<n { out[i] = x[i] * inv * w[i] }
}

/// g = silu(g) ⊙ u.
@inline(__always)
func swiglu(_ g: UnsafeMutablePointer<Float>, _ u: UnsafePointer<Float>, _ n: Int) {
  var i = 0
  let w = laneWidth
  let one = Lane(repeating: 1)
  while i + w <= n {
    let z = loadLane(g + i)
    storeLane(z / (one + expLane(vmin(-z, Lane(repeating: 80)))) * loadLane(u + i), g + i)
    i += w
  }
  while i < n {
    let z = g[i]
    g[i] = z / (1 + exp2Scalar(Swift.min(-z, 80) * 1.442_695_040_888_963_4)) * u[i]
    i += 1
  }
}

func addInPlace(_ x: UnsafeMutablePointer<Float>, _ y: UnsafePointer<Float>, _ n: Int) {
  axpy(1, y, x, n)
}
