import Foundation
import SubqAttention
import SubqCore
import SubqDecoding
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

/// Timings accumulated by a session: wall-clock seconds, and the processor seconds of the whole
/// process over the same intervals (all threads; unlike wall-clock time it excludes waiting for a
/// core on a shared machine).
public struct LLMTimings: Sendable {
  public var prefillTokens = 0
  public var prefillSeconds = 0.0
  public var prefillCPUSeconds = 0.0
  public var decodeTokens = 0
  public var decodeSeconds = 0.0
  public var decodeCPUSeconds = 0.0
  public init() {}
  public var prefillTokensPerSecond: Double { prefillSeconds > 0 ? Double(prefillTokens) / prefillSeconds : 0 }
  public var decodeTokensPerSecond: Double { decodeSeconds > 0 ? Double(decodeTokens) / decodeSeconds : 0 }
}

/// An inference session: a model, a paged KV cache and the attention method.
///
/// `prefill` runs any number of tokens in one batched pass (matrix products over all tokens, the
/// attention method over the layer's Q/K/V); `decode` runs one token against the cache. Both
/// append to the cache; `reset` empties it.
///
/// **KV cache.** The keys and values of every layer live in one ``PagedKVCache`` holding one
/// sequence: pages of `pageSize` positions (64 by default), Float32 or Float16. The session
/// reserves `⌈capacity / pageSize⌉` pages when it is created — ``cacheBytes`` — and never more,
/// so a session uses at most that memory whatever it runs (untouched pages cost no physical memory
/// where the system allocates lazily). The last page may have room past `capacity`; the session
/// still stops at `capacity` positions. Pages are taken as positions are appended and returned by
/// ``reset()``. The page size changes the memory layout only, not the results: decode reads the
/// rows of one key/value head within a page contiguously (`pageSize · headDim` elements), so very
/// small pages add page-table lookups, while the reserve rounds `capacity` up by less than a page.
///
/// **Context overflow.** A `prefill` or `decode` that would take the cache past `capacity`
/// positions throws ``SubqError/argument(op:name:value:reason:)`` with op `llm.forward` and name
/// `tokens` before it computes anything, and the cache is unchanged. Any error during a step (for
/// example a key above 65504 for a Float16 cache, or a non-finite key) leaves the cache at its
/// length before the step.
///
/// **Decode attention.** Decode steps with an exact method (`flash`, `splitkv`) run
/// ``SplitKVAttention`` on the pages in place; see ``LLMAttention`` for the other methods.
public final class LlamaSession: @unchecked Sendable {
  public let model: LlamaModel
  public var attention: LLMAttention
  public let threads: Int
  /// Positions the cache holds.
  public let capacity: Int
  /// Positions in the cache.
  public private(set) var position = 0
  public var timings = LLMTimings()
  /// The attention trace being recorded, if any (``startTrace(layers:)``).
  public internal(set) var trace: AttentionTrace?
  let cache: PagedKVCache
  let sequence: PagedKVCache.SequenceID

  /// - Parameters:
  ///   - capacity: positions the cache holds (at most the model's context length).
  ///   - threads: worker threads (default: all cores).
  ///   - attention: the prefill method and how decode steps read the cache.
  ///   - cache: element type of the KV cache (Float32 by default: exact; Float16 — llama.cpp's
  ///     default — halves the memory and the bytes each decode step reads, rounding keys and
  ///     values to 11 significant bits; a key or value above 65504 in magnitude makes the step
  ///     throw).
  ///   - pageSize: positions per cache page; the session reserves `⌈capacity / pageSize⌉` pages.
  /// - Throws: ``SubqError/argument(op:name:value:reason:)`` for a capacity outside
  ///   1…context length, threads < 1 or a page size < 1.
  public init(model: LlamaModel, capacity: Int, attention: LLMAttention = .exact, threads: Int = Parallel.defaultThreads,
              cache storage: KVStorageType = .float32, pageSize: Int = 64) throws(SubqError) {
    guard capacity >= 1 && capacity <= model.config.contextLength else {
      throw .argument(op: "llm.session", name: "context", value: "\(capacity)", reason: "must be in 1...\(model.config.contextLength) (the model's context length)")
    }
    guard threads >= 1 else { throw .argument(op: "llm.session", name: "threads", value: "\(threads)", reason: "must be at least 1") }
    guard pageSize >= 1 else { throw .argument(op: "llm.session", name: "pageSize", value: "\(pageSize)", reason: "must be at least 1") }
    self.model = model
    self.attention = attention
    self.threads = threads
    self.capacity = capacity
    let c = model.config
    cache = try PagedKVCache(.init(layers: c.layers, kvHeads: c.kvHeads, headDim: c.headDim, pageSize: pageSize,
                                   pageCount: (capacity + pageSize - 1) / pageSize, storage: storage))
    sequence = cache.createSequence()
  }

  /// Element type of the cache.
  public var cacheStorage: KVStorageType { cache.configuration.storage }
  /// Positions per cache page.
  public var pageSize: Int { cache.configuration.pageSize }
  /// Bytes of KV cache the session reserves: `⌈capacity / pageSize⌉` pages of
  /// `2 · layers · Hkv · pageSize · headDim` elements (SmolLM2-135M at 8192 positions: 360 MiB
  /// in Float32, 180 MiB in Float16).
  public var cacheBytes: Int { cache.configuration.pageCount * cache.configuration.pageBytes }
  /// Pages the session reserves: `⌈capacity / pageSize⌉`.
  public var cachePageCount: Int { cache.configuration.pageCount }
  /// Pages holding positions now: `⌈position / pageSize⌉`.
  public var cachePagesInUse: Int { cache.usedPageCount }

  /// Empties the cache.
  public func reset() {
    shrink(to: 0)
  }

  /// Drops the cached positions from `length` on.
  func shrink(to length: Int) {
    // Cannot throw: the sequence exists and `length` is at most its length.
    try! cache.truncate(sequence, to: length)
    position = length
    if let t = trace { t.truncate(to: length - t.startPosition) }
  }

  /// Runs `tokens` at the next positions and returns the logits of the last one (`[vocab]`).
  public func prefill(_ tokens: [Int]) throws(SubqError) -> [Float] {
    let hidden = try forward(tokens, outputRows: (tokens.count - 1)..<tokens.count)
    return logits(hidden, rows: 1)
  }

  /// Runs one token and returns its logits.
  public func decode(_ token: Int) throws(SubqError) -> [Float] {
    let t0 = monotonicSeconds(), c0 = processCPUSeconds()
    let hidden = try forward([token], outputRows: 0..<1, timed: false)
    let out = logits(hidden, rows: 1)
    timings.decodeTokens += 1
    timings.decodeSeconds += monotonicSeconds() - t0
    timings.decodeCPUSeconds += processCPUSeconds() - c0
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

  /// The transformer over `tokens` at positions `position…`; returns the final-normalized hidden
  /// states of `outputRows`, `[outputRows.count, dim]`.
  func forward(_ tokens: [Int], outputRows: Range<Int>, timed: Bool = true) throws(SubqError) -> [Float] {
    let c = model.config
    let n = tokens.count
    guard n >= 1 else { throw .argument(op: "llm.forward", name: "tokens", value: "[]", reason: "at least one token is needed") }
    let p0 = position
    guard p0 + n <= capacity else {
      throw .argument(op: "llm.forward", name: "tokens", value: "\(n) at position \(p0)",
                      reason: "the KV cache holds \(capacity) positions, \(capacity - p0) free (the session's capacity)")
    }
    for (i, t) in tokens.enumerated() where t < 0 || t >= c.vocabularySize {
      throw .argument(op: "llm.forward", name: "tokens[\(i)]", value: "\(t)", reason: "outside the vocabulary 0..<\(c.vocabularySize)")
    }
    guard outputRows.lowerBound >= 0, outputRows.upperBound <= n else {
      throw .argument(op: "llm.forward", name: "outputRows", value: "\(outputRows)", reason: "must lie in 0..<\(n)")
    }
    let t0 = monotonicSeconds(), c0 = processCPUSeconds()
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
    let options = AttentionOptions(scale: Float(1 / Double(D).squareRoot()), causal: true, alignment: .bottomRight, allowNonFinite: true,
                                   threads: threads)
    let plan = try self.plan(newTokens: n, keys: p0 + n, options: options)

    // Reserve the new positions; every layer writes its keys and values there. On an error the
    // cache goes back to its previous length.
    try cache.extend(sequence, by: n)
    do throws(SubqError) {
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
        try store(layer: l, at: p0, count: n, k: kp, v: vp, ld: kvd)
        try attend(layer: l, plan: plan, q: q.pointer, n: n, keys: p0 + n, options: options, out: att.pointer)
        trace?.append(layer: l, n: n, q: q.pointer, k: kp, v: vp, ld: kvd, out: att.pointer)
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
    } catch {
      shrink(to: p0)
      throw error
    }
    position = p0 + n
    trace?.commit(n)

    var out = [Float](repeating: 0, count: outputRows.count * dim)
    outputNorm(rows: outputRows, x: x.pointer, into: &out)
    if timed {
      timings.prefillTokens += n
      timings.prefillSeconds += monotonicSeconds() - t0
      timings.prefillCPUSeconds += processCPUSeconds() - c0
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
