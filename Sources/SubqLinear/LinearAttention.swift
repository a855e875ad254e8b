import SubqAttention
import SubqCore
import SubqKernels

/// Linear attention ("Transformers are RNNs", Katharopoulos et al. 2020), as fast-transformers
/// computes it:
///
///     out_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ  /  (φ(q_i) · Σ_j φ(k_j) + eps)
///
/// with `φ(x) = elu(x) + 1` (or `relu`), `eps = 1e-6` inside the reciprocal, and no `1/√D` scale.
/// Non-causal sums run over every key; causal ones over `j ≤ i`.
///
/// Inputs are Q `[B, Hq, N, D]`, K `[B, Hkv, Nk, D]`, V `[B, Hkv, Nk, Dv]` with `Hq % Hkv == 0`
/// (grouped heads read key/value head `h / (Hq/Hkv)`); the output is `[B, Hq, N, Dv]`. Causal
/// calls need `Nk == N`; to continue a sequence, pass the ``LinearAttentionState`` of the earlier
/// keys (``forward(queries:keys:values:causal:state:threads:)``), or decode one token at a time
/// with ``LinearAttentionState/step(query:key:value:)``.
///
/// The causal form is computed in chunks (quadratic inside a chunk, a running `D×Dv` state between
/// chunks), in parallel across heads, batch entries and — when there are fewer of those than
/// cores — sequence segments. See `LinearKernel` for the scheme.
///
/// Differences from fast-transformers: the denominator is computed from the same running state as
/// the numerator (fast-transformers uses a cumulative sum of φ(K) over the whole sequence for the
/// causal denominator, the same function); key-padding masks are not taken (pass only valid keys);
/// causal inputs must have `Nk == N` (the library truncates or zero-pads keys instead).
///
/// - Complexity: O(B·Hq·N·(D·Dv + chunk·(D + Dv))) time causal, O(B·(Hq·N + Hkv·Nk)·D·Dv)
///   non-causal; extra memory O(threads·chunk·(D + Dv + chunk) + B·Hkv·D·Dv).
public struct LinearAttention: SequenceMixer {
  public static let info = MixerInfo(
    name: "linear",
    summary: "Linear attention: φ(Q)(φ(K)ᵀV) / φ(Q)Σφ(K), φ = elu+1; causal in chunks with a running D×Dv state",
    paper: "Katharopoulos et al., Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention (ICML 2020)",
    complexity: "O(N·D·Dv) time per head (causal: + O(N·chunk·(D+Dv))); O(D·Dv) state per head",
    input: .attention, supportsCausal: true, supportsNonCausal: true,
    parameters: [
      MethodParameter("feature-map", default: "elu+1", "φ: elu+1 (the paper) or relu"),
      MethodParameter("eps", default: "1e-6", "added to the denominator φ(q)·Σφ(k) (fast-transformers' eps)"),
      MethodParameter("chunk", default: "64", "causal chunk length (rows computed quadratically at once)"),
    ])

  /// The feature map φ (`.eluPlusOne` or `.relu`).
  public let featureMap: FeatureMap
  /// The denominator's epsilon.
  public let eps: Float
  /// Causal chunk length.
  public let chunk: Int

  /// - Parameters:
  ///   - featureMap: `.eluPlusOne` (default) or `.relu`.
  ///   - eps: > 0, default 1e-6.
  ///   - chunk: 1…1024, default 64.
  public init(featureMap: FeatureMap = .eluPlusOne, eps: Float = 1e-6, chunk: Int = 64) throws(SubqError) {
    let op = Self.info.op
    guard featureMap == .eluPlusOne || featureMap == .relu else {
      throw .argument(op: op, name: "feature-map", value: featureMap.rawValue, reason: "must be elu+1 or relu")
    }
    guard eps > 0, eps.isFinite else { throw .argument(op: op, name: "eps", value: "\(eps)", reason: "must be a finite value > 0") }
    guard (1...1024).contains(chunk) else { throw .argument(op: op, name: "chunk", value: "\(chunk)", reason: "must be in 1...1024") }
    self.featureMap = featureMap
    self.eps = eps
    self.chunk = chunk
  }

  public init(parameters: MixerParameters) throws(SubqError) {
    try parameters.validate(for: Self.info)
    let fm = try parameters.choice("feature-map", Self.info, ["elu+1", "relu"])
    try self.init(featureMap: FeatureMap(rawValue: fm)!,
                  eps: Float(try parameters.double("eps", Self.info, in: 1e-30...1)),
                  chunk: try parameters.int("chunk", Self.info, in: 1...1024))
  }

  public var parameterValues: [String: String] {
    ["feature-map": featureMap.rawValue, "eps": "\(eps)", "chunk": "\(chunk)"]
  }

  var kernel: LinearKernel { LinearKernel(featureMap: featureMap, denominator: true, eps: eps, chunk: chunk) }

  /// Linear attention of `queries` over `keys`/`values` (shapes above).
  public func forward(queries: Tensor, keys: Tensor, values: Tensor, causal: Bool, threads: Int? = nil) throws(SubqError) -> Tensor {
    try forward(queries: queries, keys: keys, values: values, causal: causal, state: nil, threads: threads).output
  }

  /// Linear attention that also returns the state after the last key, and (causal only) starts
  /// from `state`, the state of earlier keys of the same sequences: the result equals running
  /// causal attention over the earlier keys followed by these.
  public func forward(
    queries: Tensor, keys: Tensor, values: Tensor, causal: Bool, state: LinearAttentionState?, threads: Int? = nil
  ) throws(SubqError) -> (output: Tensor, state: LinearAttentionState) {
    let op = Self.info.op
    let p = try AttentionLikeProblem.validate(op: op, queries: queries, keys: keys, values: values,
                                              options: MixerOptions(causal: causal, threads: threads))
    if let state {
      guard causal else {
        throw .unsupported(op: op, feature: "initial state", reason: "a carried state continues a causal sequence; non-causal attention sees every key at once")
      }
      try state.check(op: op, batch: p.batch, heads: p.keyValueHeads, headDim: p.headDim, valueDim: p.valueDim, featureMap: featureMap, eps: eps)
    }
    var out = outputTensor(p.outputShape)
    let l = LinearKernel.Layout(chunk: chunk, D: p.headDim, Dv: p.valueDim, denominator: true)
    let packedCount = p.batch * p.keyValueHeads * l.stateFloats
    var finalPacked = [Float](repeating: 0, count: packedCount)
    let initialPacked = state?.packed(width: l.W)
    let k = kernel
    queries.withUnsafeBufferPointer { qb in
      keys.withUnsafeBufferPointer { kb in
        values.withUnsafeBufferPointer { vb in
          out.withUnsafeMutableBufferPointer { ob in
            finalPacked.withUnsafeMutableBufferPointer { fb in
              if let initialPacked {
                initialPacked.withUnsafeBufferPointer { ib in
                  k.run(p, q: qb.baseAddress!, k: kb.baseAddress!, v: vb.baseAddress!, out: ob.baseAddress!,
                        initialState: ib.baseAddress!, finalState: fb.baseAddress!)
                }
              } else {
                k.run(p, q: qb.baseAddress!, k: kb.baseAddress!, v: vb.baseAddress!, out: ob.baseAddress!,
                      initialState: nil, finalState: fb.baseAddress!)
              }
            }
          }
        }
      }
    }
    let s = LinearAttentionState(packed: finalPacked, batch: p.batch, heads: p.keyValueHeads, headDim: p.headDim,
                                 valueDim: p.valueDim, width: l.W, featureMap: featureMap, eps: eps)
    return (out, s)
  }

  public func mix(_ inputs: MixerInputs, weights: MixerWeights, options: MixerOptions) throws(SubqError) -> Tensor {
    let (q, k, v) = try inputs.attentionTensors(Self.info)
    try weights.validate(for: Self.info)
    let p = try AttentionLikeProblem.validate(op: Self.info.op, queries: q, keys: k, values: v, options: options)
    var out = outputTensor(p.outputShape)
    let kern = kernel
    q.withUnsafeBufferPointer { qb in
      k.withUnsafeBufferPointer { kb in
        v.withUnsafeBufferPointer { vb in
          out.withUnsafeMutableBufferPointer { ob in
            kern.run(p, q: qb.baseAddress!, k: kb.baseAddress!, v: vb.baseAddress!, out: ob.baseAddress!,
                     initialState: nil, finalState: nil)
          }
        }
      }
    }
    return out
  }

  public func randomWeights(shape: MixerBenchShape, seed: UInt64) -> MixerWeights { MixerWeights() }

  /// Causal: per head and row `4·D·Dv` (state read and update) plus `chunk·(D + Dv)` (the
  /// triangular half of the two in-chunk products); non-causal: `4·D·Dv` per row.
  public func flops(_ s: MixerBenchShape) -> Double {
    let d = Double(s.headDim)
    let perRow = 4 * d * (d + 1) + (s.causal ? Double(chunk) * (2 * d + 1) : 0)
    return Double(s.batch * s.heads * s.length) * perRow
  }
}

/// The recurrent state of causal linear attention for a batch of sequences: per (batch entry,
/// key/value head) the matrix `S = Σ_j φ(k_j) v_jᵀ` `[D, Dv]` and the vector `z = Σ_j φ(k_j)`
/// `[D]` over every key seen so far. Decoding a token costs O(D·Dv) per head, whatever the length.
public struct LinearAttentionState: Sendable, Equatable {
  /// `S`, `[B, Hkv, D, Dv]`.
  public var kv: Tensor
  /// `z`, `[B, Hkv, D]`.
  public var keySum: Tensor
  /// The feature map and epsilon the state was built for (steps must use the same).
  public let featureMap: FeatureMap
  public let eps: Float

  public var batch: Int { kv.shape[0] }
  public var heads: Int { kv.shape[1] }
  public var headDim: Int { kv.shape[2] }
  public var valueDim: Int { kv.shape[3] }

  /// The empty state (no keys yet).
  public init(batch: Int, heads: Int, headDim: Int, valueDim: Int, featureMap: FeatureMap = .eluPlusOne, eps: Float = 1e-6) {
    kv = Tensor(shape: [batch, heads, headDim, valueDim])
    keySum = Tensor(shape: [batch, heads, headDim])
    self.featureMap = featureMap
    self.eps = eps
  }

  init(packed: [Float], batch: Int, heads: Int, headDim D: Int, valueDim Dv: Int, width W: Int, featureMap: FeatureMap, eps: Float) {
    kv = Tensor(shape: [batch, heads, D, Dv]) { p in
      for bg in 0..<(batch * heads) { for d in 0..<D { for c in 0..<Dv { p[(bg * D + d) * Dv + c] = packed[(bg * D + d) * W + c] } } }
    }
    keySum = Tensor(shape: [batch, heads, D]) { p in
      for bg in 0..<(batch * heads) { for d in 0..<D { p[bg * D + d] = packed[(bg * D + d) * W + Dv] } }
    }
    self.featureMap = featureMap
    self.eps = eps
  }

  /// The kernel's layout `[B·Hkv][D][W]` with `z` in column Dv.
  func packed(width W: Int) -> [Float] {
    let (B, H, D, Dv) = (batch, heads, headDim, valueDim)
    var out = [Float](repeating: 0, count: B * H * D * W)
    kv.withUnsafeBufferPointer { s in
      keySum.withUnsafeBufferPointer { z in
        for bg in 0..<(B * H) {
          for d in 0..<D {
            for c in 0..<Dv { out[(bg * D + d) * W + c] = s[(bg * D + d) * Dv + c] }
            out[(bg * D + d) * W + Dv] = z[bg * D + d]
          }
        }
      }
    }
    return out
  }

  func check(op: String, batch B: Int, heads H: Int, headDim D: Int, valueDim Dv: Int, featureMap fm: FeatureMap, eps e: Float) throws(SubqError) {
    if kv.shape != [B, H, D, Dv] {
      throw .shape(op: op, tensor: "state", shape: kv.shape, reason: "expected [\(B), \(H), \(D), \(Dv)] for these keys and values")
    }
    if keySum.shape != [B, H, D] {
      throw .shape(op: op, tensor: "state key sum", shape: keySum.shape, reason: "expected [\(B), \(H), \(D)]")
    }
    if fm != featureMap || e != eps {
      throw .argument(op: op, name: "state", value: "\(featureMap.rawValue), eps \(eps)",
                      reason: "the state was built with another feature map or eps than \(fm.rawValue), eps \(e)")
    }
  }

  /// One decoding step: adds key `k` and value `v` of the next position to the state and returns
  /// the causal linear-attention output of query `q` at that position.
  ///
  /// - Parameters:
  ///   - query: `[B, Hq, D]` with `Hq` a multiple of the state's heads.
  ///   - key: `[B, Hkv, D]`.
  ///   - value: `[B, Hkv, Dv]`.
  /// - Returns: `[B, Hq, Dv]`.
  /// - Complexity: O(B·(Hq + Hkv)·D·Dv).
  public mutating func step(query: Tensor, key: Tensor, value: Tensor) throws(SubqError) -> Tensor {
    let op = "mix.linear.step"
    let (B, H, D, Dv) = (batch, heads, headDim, valueDim)
    guard key.shape == [B, H, D] else { throw .shape(op: op, tensor: "key", shape: key.shape, reason: "expected [\(B), \(H), \(D)]") }
    guard value.shape == [B, H, Dv] else { throw .shape(op: op, tensor: "value", shape: value.shape, reason: "expected [\(B), \(H), \(Dv)]") }
    guard query.rank == 3, query.shape[0] == B, query.shape[2] == D, query.shape[1] >= 1, query.shape[1] % H == 0 else {
      throw .shape(op: op, tensor: "query", shape: query.shape, reason: "expected [\(B), Hq, \(D)] with Hq a multiple of \(H)")
    }
    for (t, name) in [(query, "query"), (key, "key"), (value, "value")] {
      if let bad = t.firstNonFinite() {
        throw .nonFinite(op: op, tensor: name, index: t.index(ofFlat: bad), value: SubqError.describe(t[flat: bad]))
      }
    }
    let Hq = query.shape[1], group = Hq / H
    let fm = featureMap, e = eps
    var phi = [Float](repeating: 0, count: D)
    var out = outputTensor([B, Hq, Dv])
    key.withUnsafeBufferPointer { kb in
      value.withUnsafeBufferPointer { vb in
        kv.withUnsafeMutableBufferPointer { s in
          keySum.withUnsafeMutableBufferPointer { z in
            phi.withUnsafeMutableBufferPointer { f in
              for bg in 0..<(B * H) {
                fm.apply(kb.baseAddress! + bg * D, f.baseAddress!, D)
                let v = vb.baseAddress! + bg * Dv
                for d in 0..<D {
                  z[bg * D + d] += f[d]
                  axpy(f[d], v, s.baseAddress! + (bg * D + d) * Dv, Dv)
                }
              }
            }
          }
        }
      }
    }
    query.withUnsafeBufferPointer { qb in
      kv.withUnsafeBufferPointer { s in
        keySum.withUnsafeBufferPointer { z in
          out.withUnsafeMutableBufferPointer { o in
            phi.withUnsafeMutableBufferPointer { f in
              for b in 0..<B {
                for h in 0..<Hq {
                  let bg = b * H + h / group, bh = b * Hq + h
                  fm.apply(qb.baseAddress! + bh * D, f.baseAddress!, D)
                  let y = o.baseAddress! + bh * Dv
                  y.update(repeating: 0, count: Dv)
                  for d in 0..<D { axpy(f[d], s.baseAddress! + (bg * D + d) * Dv, y, Dv) }
                  let den = dot(f.baseAddress!, z.baseAddress! + bg * D, D) + e
                  scale(y, 1 / den, Dv)
                }
              }
            }
          }
        }
      }
    }
    return out
  }
}
