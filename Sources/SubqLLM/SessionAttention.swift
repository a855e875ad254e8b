import SubqAttention
import SubqCore
import SubqDecoding

/// How a session computes attention: the method for prefill (any registered ``AttentionMethod``)
/// and how one-token steps read the paged KV cache.
public struct LLMAttention: Sendable {
  /// The method for prefill, and for one-token steps unless `exactDecode`.
  public var method: any AttentionMethod
  /// One-token steps run exact split-KV decoding (``SplitKVAttention``) straight on the paged
  /// cache instead of `method`. Default: true for the exact methods `flash` and `splitkv` (a
  /// `splitkv` method keeps its `splits`), false for every other method, which then also decodes.
  public var exactDecode: Bool

  public init(method: any AttentionMethod, exactDecode: Bool? = nil) {
    self.method = method
    let name = type(of: method).info.name
    self.exactDecode = exactDecode ?? (name == "flash" || name == "splitkv")
  }

  /// Exact FlashAttention-2 prefill and split-KV decode on the paged cache.
  public static var exact: LLMAttention { LLMAttention(method: try! FlashAttention()) }
}

/// The session's use of its ``PagedKVCache``: one sequence, every layer.
///
/// A forward step reserves its positions with `extend`, and each layer writes its RoPE-rotated
/// keys and values there before its attention runs. Attention then reads the cache in one of
/// three ways:
///
/// - **Split-KV decode** (one new token, `exactDecode`): ``SplitKVAttention`` reads the key and
///   value pages in place — nothing is copied.
/// - **Pattern decode** (one new token, a ``PatternAttentionMethod`` such as `sinks`): such a
///   method is exact attention over keys chosen by position alone, so the step asks it which keys
///   the new query sees (once per step, on a shape-only probe), gathers only those rows from the
///   pages (`PagedKVCache.keys/values(positions:)`) and runs split-KV attention over them. A
///   decode step of StreamingLLM with 4 sinks and a 1024-key window copies 1028 rows per key/value
///   head and layer, whatever the context.
/// - **Everything else** (prefill, and decode with another approximate method): the method takes
///   contiguous `[1, Hkv, N, D]` key and value tensors, so every cached position is gathered into
///   them — for decode that is a copy of the whole prefix per layer and step, unavoidable through
///   the generic ``AttentionMethod`` interface.
extension LlamaSession {
  /// Writes keys and values `k`, `v` (`[count, Hkv·D]`, row stride `ld`) of one layer at
  /// positions `start..<start + count`.
  func store(layer: Int, at start: Int, count n: Int, k: UnsafePointer<Float>, v: UnsafePointer<Float>, ld: Int) throws(SubqError) {
    let Hkv = model.config.kvHeads, D = model.config.headDim
    func byHead(_ src: UnsafePointer<Float>) -> Tensor {
      Tensor(shape: [Hkv, n, D]) { t in
        for g in 0..<Hkv {
          for i in 0..<n { (t.baseAddress! + (g * n + i) * D).update(from: src + i * ld + g * D, count: D) }
        }
      }
    }
    try cache.write(sequence, layer: layer, at: start, keys: byHead(k), values: byHead(v))
  }

  /// Keys and values of `positions` of one layer as contiguous `[1, Hkv, positions.count, D]`
  /// Float32 tensors.
  func gathered(layer: Int, positions: [Int]) throws(SubqError) -> (keys: Tensor, values: Tensor) {
    let shape = [1, model.config.kvHeads, positions.count, model.config.headDim]
    return (try cache.keys(sequence, layer: layer, positions: positions).reshaped(shape),
            try cache.values(sequence, layer: layer, positions: positions).reshaped(shape))
  }

  /// How the current forward step computes attention.
  enum StepPlan {
    /// One query per head, split-KV on the pages.
    case splitKV(SplitKVAttention)
    /// One query per head over these cached positions only (every query head sees the same).
    case pattern([Int])
    /// The method over every cached position.
    case method
  }

  /// The plan for `n` new tokens with `keys` positions cached after them.
  func plan(newTokens n: Int, keys: Int, options: AttentionOptions) throws(SubqError) -> StepPlan {
    guard n == 1 else { return .method }
    if attention.exactDecode {
      if let kernel = attention.method as? SplitKVAttention { return .splitKV(kernel) }
      return .splitKV(try SplitKVAttention())
    }
    guard let pattern = attention.method as? any PatternAttentionMethod else { return .method }
    // The pattern depends only on positions: probe it with a head dimension of 1 instead of the
    // cached keys.
    let c = model.config
    let probe = Tensor(shape: [1, c.kvHeads, keys, 1])
    let rows = (0..<c.heads).map { QueryRow(batch: 0, head: $0, row: 0) }
    let selected = try pattern.selectedKeys(queries: Tensor(shape: [1, c.heads, 1, 1]), keys: probe, values: probe,
                                            options: options, rows: rows)
    // A pattern that differs between heads would need a gather per head; the method does it.
    guard selected.allSatisfy({ $0 == selected[0] }) else { return .method }
    return .pattern(selected[0])
  }

  /// Attention of `n` new queries (`q`: `[n, Hq·D]`) over the first `keys` cached positions
  /// (causal: query i is at position keys − n + i), into `out` (`[n, Hq·D]`).
  func attend(layer: Int, plan: StepPlan, q: UnsafeMutablePointer<Float>, n: Int, keys: Int, options: AttentionOptions,
              out: UnsafeMutablePointer<Float>) throws(SubqError) {
    let c = model.config
    let D = c.headDim, Hq = c.heads
    // [n, Hq, D] → [1, Hq, n, D] (the same memory when n = 1)
    let qt = Tensor(shape: [1, Hq, n, D]) { t in
      for hh in 0..<Hq { for i in 0..<n { (t.baseAddress! + (hh * n + i) * D).update(from: q + i * Hq * D + hh * D, count: D) } }
    }
    let result: AttentionResult
    let name: String
    switch plan {
    case .splitKV(let kernel):
      result = try kernel.attention(queries: qt, cache: cache, layer: layer, sequences: [sequence], options: options)
      name = "splitkv"
    case .pattern(let positions):
      guard !positions.isEmpty else {
        // The query sees no key: attention outputs zeros.
        out.update(repeating: 0, count: Hq * D)
        return
      }
      let (kt, vt) = try gathered(layer: layer, positions: positions)
      // Every gathered key is visible: no mask.
      var exact = options
      exact.causal = false
      result = try SplitKVAttention().attention(queries: qt, keys: kt, values: vt, options: exact)
      name = "splitkv"
    case .method:
      let (kt, vt) = try gathered(layer: layer, positions: Array(0..<keys))
      result = try attention.method.attention(queries: qt, keys: kt, values: vt, options: options)
      name = type(of: attention.method).info.name
    }
    guard result.output.shape == [1, Hq, n, D] else {
      throw .shape(op: "llm.attention", tensor: "output of \(name)", shape: result.output.shape, reason: "expected [1, \(Hq), \(n), \(D)]")
    }
    result.output.withUnsafeBufferPointer { o in
      for hh in 0..<Hq { for i in 0..<n { (out + i * Hq * D + hh * D).update(from: o.baseAddress! + (hh * n + i) * D, count: D) } }
    }
  }
}
