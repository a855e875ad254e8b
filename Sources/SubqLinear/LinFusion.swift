import SubqAttention
import SubqCore

/// LinFusion's normalization-aware generalized linear attention (Liu et al., "LinFusion: 1 GPU,
/// 1 Minute, 16K Image", 2024), non-causal, as `GeneralizedLinearAttention.forward` computes it
/// on the projected, pre-mapped Q, K, V `[B, H, N, D]`:
///
///     z_i   = φ(q_i) · mean_j φ(k_j) + 1e-4
///     out_i = φ(q_i)ᵀ (Σ_j φ(k_j) v_jᵀ / Nk) / z_i,        φ = elu + 1
///
/// i.e. `φ(Q)φ(K)ᵀV / (φ(Q)φ(K)ᵀ1 + 1e-4·Nk)`: each query's weights sum to one whatever the
/// number of tokens (the paper's normalization-aware form), with the epsilon added after the mean
/// as the reference does (so it is not scale-equivalent to eps on the sum).
///
/// Differences from the reference: the learned pre-maps `Q = W_q(X + f_q(X))`,
/// `K = W_k(X + f_k(X))`, `V = W_v X` and the output projection are the caller's; the reference
/// pre-scales both sides by `1/√Nk` against fp16 overflow, which does not change the function and
/// is not needed in Float32 with Float32 accumulation. Non-causal only (the paper's setting).
///
/// - Complexity: O(B·(Hq·Nq + Hkv·Nk)·D·Dv) time, O(B·Hkv·D·Dv) state.
public struct LinFusionAttention: SequenceMixer {
  public static let info = MixerInfo(
    name: "linfusion",
    summary: "LinFusion: normalization-aware linear attention, φ(Q)·mean(φ(K)ᵀV) / (φ(Q)·mean φ(K) + 1e-4), non-causal",
    paper: "Liu et al., LinFusion: 1 GPU, 1 Minute, 16K Image (arXiv 2409.02097, 2024)",
    complexity: "O(N·D·Dv) time per head, O(D·Dv) state per head",
    input: .attention, supportsCausal: false, supportsNonCausal: true,
    parameters: [MethodParameter("eps", default: "1e-4", "added to the normalizer φ(q)·mean φ(k) (the reference's 1e-4)")])

  /// The normalizer's epsilon (added after the mean).
  public let eps: Float

  public init(eps: Float = 1e-4) throws(SubqError) {
    guard eps > 0, eps.isFinite else { throw .argument(op: Self.info.op, name: "eps", value: "\(eps)", reason: "must be a finite value > 0") }
    self.eps = eps
  }

  public init(parameters: MixerParameters) throws(SubqError) {
    try parameters.validate(for: Self.info)
    try self.init(eps: Float(try parameters.double("eps", Self.info, in: 1e-30...1)))
  }

  public var parameterValues: [String: String] { ["eps": "\(eps)"] }

  /// The mixer on Q `[B, Hq, Nq, D]`, K `[B, Hkv, Nk, D]`, V `[B, Hkv, Nk, Dv]`; returns `[B, Hq, Nq, Dv]`.
  public func forward(queries: Tensor, keys: Tensor, values: Tensor, threads: Int? = nil) throws(SubqError) -> Tensor {
    try mix(.attention(queries, keys, values), weights: MixerWeights(), options: MixerOptions(threads: threads))
  }

  public func mix(_ inputs: MixerInputs, weights: MixerWeights, options: MixerOptions) throws(SubqError) -> Tensor {
    let op = Self.info.op
    try Self.info.check(causal: options.causal)
    let (q, k, v) = try inputs.attentionTensors(Self.info)
    try weights.validate(for: Self.info)
    let p = try AttentionLikeProblem.validate(op: op, queries: q, keys: k, values: v, options: options)
    var out = outputTensor(p.outputShape)
    // Mean over keys with eps after it ≡ sums with eps·Nk: (φq·Σφk V/Nk)/(φq·Σφk/Nk + eps).
    let kern = LinearKernel(featureMap: .eluPlusOne, denominator: true, eps: eps * Float(p.keyLength), chunk: 64)
    q.withUnsafeBufferPointer { qb in
      k.withUnsafeBufferPointer { kb in
        v.withUnsafeBufferPointer { vb in
          out.withUnsafeMutableBufferPointer { ob in
            kern.run(p, q: qb.baseAddress!, k: kb.baseAddress!, v: vb.baseAddress!, out: ob.baseAddress!, initialState: nil, finalState: nil)
          }
        }
      }
    }
    return out
  }

  public func randomWeights(shape: MixerBenchShape, seed: UInt64) -> MixerWeights { MixerWeights() }

  /// `4·D·(Dv+1)` per query row and per key row.
  public func flops(_ s: MixerBenchShape) -> Double {
    let d = Double(s.headDim)
    return Double(s.batch * s.heads * s.length) * 2 * (2 * d * (d + 1))
  }
}
