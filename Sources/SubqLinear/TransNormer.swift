import Foundation
import SubqAttention
import SubqCore
import SubqKernels

/// TransNormer's two token mixers ("The Devil in Linear Transformer", Qin et al., EMNLP 2022), as
/// the reference code (OpenNLPLab/fairseq-evo, `norm_linear_attention.py` and
/// `norm_local_attention.py`) computes them, on projected Q, K, V `[B, H, N, D]`:
///
/// **NormAttention** (`attention=norm`): linear attention without the denominator, then a norm.
///
///     O_i = φ(q_i)ᵀ Σ_j φ(k_j) v_jᵀ           (j over all keys, or j ≤ i when causal)
///     O_i ← O_i / (‖O_i‖₂ · (H·Dv)^{-1/2} + 1e-8)
///
/// φ is `elu` (TransNormer T1, can be negative) or `elu+1` (T2). The norm is the reference's
/// SimpleRMSNorm over the whole model width — all heads of position i concatenated — with no
/// gain. No `1/√D` scale.
///
/// **DiagAttention** (`attention=diag`): attention inside non-overlapping blocks of `block`
/// positions (block-diagonal). Queries are scaled by `D^{-1/2}`; positions are zero-padded to a
/// multiple of `block`. Within a block `S = (q/√D) kᵀ`, lower-triangular when causal, then
///
///     relu (T1):    O = relu(S) V, then the same SimpleRMSNorm over all heads
///     softmax (T2): O = softmax(S) V (masked scores −1e8), no norm
///
/// As in the reference, the zero-padded keys of the last, partial block take part in the
/// non-causal softmax with score 0 (they add to its denominator, contribute zero values).
///
/// Differences from the reference: the causal NormAttention uses the chunked prefix-sum form
/// (`LinearKernel`) instead of the reference's masked N×N product (same function); the URPE
/// positional encoding and the projections are the caller's (pass projected, encoded Q, K, V).
/// `Hq` must equal `Hkv`, and Nq = Nk (the reference pads the shorter).
///
/// - Complexity: NormAttention O(B·H·N·D·Dv) (causal + O(B·H·N·chunk·(D+Dv))); DiagAttention
///   O(B·H·N·block·(D + Dv)). Extra memory O(threads·chunk·(D + Dv + chunk)).
public struct TransNormerAttention: SequenceMixer {
  public static let info = MixerInfo(
    name: "transnormer",
    summary: "TransNormer: NormAttention (linear, no denominator, RMS-normed over heads) or DiagAttention (block-diagonal)",
    paper: "Qin et al., The Devil in Linear Transformer (EMNLP 2022)",
    complexity: "norm: O(N·D·Dv) per head; diag: O(N·block·(D+Dv)) per head",
    input: .attention, supportsCausal: true, supportsNonCausal: true,
    parameters: [
      MethodParameter("attention", default: "norm", "norm (NormAttention) or diag (DiagAttention)"),
      MethodParameter("feature-map", default: "elu", "norm: φ = elu (T1) or elu+1 (T2)"),
      MethodParameter("diag-activation", default: "relu", "diag: relu + norm (T1) or softmax (T2)"),
      MethodParameter("block", default: "64", "diag: block length"),
      MethodParameter("chunk", default: "64", "norm, causal: chunk length"),
    ])

  /// Which TransNormer mixer.
  public enum Kind: String, Sendable { case norm, diag }
  /// DiagAttention's activation.
  public enum DiagActivation: String, Sendable { case relu, softmax }

  public let kind: Kind
  public let featureMap: FeatureMap
  public let diagActivation: DiagActivation
  public let block: Int
  public let chunk: Int

  /// SimpleRMSNorm's epsilon in the reference.
  public static let normEps: Float = 1e-8

  public init(kind: Kind = .norm, featureMap: FeatureMap = .elu, diagActivation: DiagActivation = .relu, block: Int = 64, chunk: Int = 64) throws(SubqError) {
    let op = Self.info.op
    guard featureMap == .elu || featureMap == .eluPlusOne else {
      throw .argument(op: op, name: "feature-map", value: featureMap.rawValue, reason: "must be elu or elu+1")
    }
    guard (1...4096).contains(block) else { throw .argument(op: op, name: "block", value: "\(block)", reason: "must be in 1...4096") }
    guard (1...1024).contains(chunk) else { throw .argument(op: op, name: "chunk", value: "\(chunk)", reason: "must be in 1...1024") }
    self.kind = kind
    self.featureMap = featureMap
    self.diagActivation = diagActivation
    self.block = block
    self.chunk = chunk
  }

  public init(parameters: MixerParameters) throws(SubqError) {
    try parameters.validate(for: Self.info)
    let i = Self.info
    try self.init(kind: Kind(rawValue: try parameters.choice("attention", i, ["norm", "diag"]))!,
                  featureMap: FeatureMap(rawValue: try parameters.choice("feature-map", i, ["elu", "elu+1"]))!,
                  diagActivation: DiagActivation(rawValue: try parameters.choice("diag-activation", i, ["relu", "softmax"]))!,
                  block: try parameters.int("block", i, in: 1...4096), chunk: try parameters.int("chunk", i, in: 1...1024))
  }

  public var parameterValues: [String: String] {
    ["attention": kind.rawValue, "feature-map": featureMap.rawValue, "diag-activation": diagActivation.rawValue,
     "block": "\(block)", "chunk": "\(chunk)"]
  }

  /// The mixer on Q, K, V `[B, H, N, D]`, `[B, H, N, D]`, `[B, H, N, Dv]`; returns `[B, H, N, Dv]`.
  public func forward(queries: Tensor, keys: Tensor, values: Tensor, causal: Bool, threads: Int? = nil) throws(SubqError) -> Tensor {
    try mix(.attention(queries, keys, values), weights: MixerWeights(), options: MixerOptions(causal: causal, threads: threads))
  }

  public func mix(_ inputs: MixerInputs, weights: MixerWeights, options: MixerOptions) throws(SubqError) -> Tensor {
    let op = Self.info.op
    let (q, k, v) = try inputs.attentionTensors(Self.info)
    try weights.validate(for: Self.info)
    let p = try AttentionLikeProblem.validate(op: op, queries: q, keys: k, values: v, options: options)
    if p.keyValueHeads != p.queryHeads {
      throw .shape(op: op, tensor: "K", shape: k.shape, reason: "TransNormer needs as many key/value heads as query heads (\(p.queryHeads))")
    }
    if p.keyLength != p.queryLength {
      throw .shape(op: op, tensor: "K", shape: k.shape, reason: "TransNormer needs as many keys as queries (\(p.queryLength))")
    }
    var out = outputTensor(p.outputShape)
    q.withUnsafeBufferPointer { qb in
      k.withUnsafeBufferPointer { kb in
        v.withUnsafeBufferPointer { vb in
          out.withUnsafeMutableBufferPointer { ob in
            switch kind {
            case .norm:
              LinearKernel(featureMap: featureMap, denominator: false, eps: 0, chunk: chunk)
                .run(p, q: qb.baseAddress!, k: kb.baseAddress!, v: vb.baseAddress!, out: ob.baseAddress!, initialState: nil, finalState: nil)
            case .diag:
              diagForward(p, q: qb.baseAddress!, k: kb.baseAddress!, v: vb.baseAddress!, out: ob.baseAddress!)
            }
            if kind == .norm || diagActivation == .relu {
              Self.simpleRMSNormAcrossHeads(ob.baseAddress!, batch: p.batch, heads: p.queryHeads, length: p.queryLength,
                                            width: p.valueDim, threads: p.threads)
            }
          }
        }
      }
    }
    return out
  }

  /// `O[b, :, i, :] ← O / (‖O[b, :, i, :]‖₂·(H·Dv)^{-1/2} + 1e-8)` in place on `[B, H, N, Dv]`.
  static func simpleRMSNormAcrossHeads(_ o: UnsafeMutablePointer<Float>, batch B: Int, heads H: Int, length N: Int, width Dv: Int, threads: Int) {
    let op = SendablePointer(o)
    let rows = 256
    let blocks = (N + rows - 1) / rows
    let invSqrtWidth = 1 / Double(H * Dv).squareRoot()
    Parallel.forEach(B * blocks, threads: threads) { item, _ in
      let b = item / blocks, i0 = (item % blocks) * rows, i1 = min(N, i0 + rows)
      for i in i0..<i1 {
        var ss: Float = 0
        for h in 0..<H {
          let row = op.pointer + ((b * H + h) * N + i) * Dv
          ss += dot(row, row, Dv)
        }
        let denom = Float(Double(ss).squareRoot() * invSqrtWidth) + normEps
        let inv = 1 / denom
        for h in 0..<H { scale(op.pointer + ((b * H + h) * N + i) * Dv, inv, Dv) }
      }
    }
  }

  /// Block-diagonal attention, one (batch, head, block) per work item.
  func diagForward(_ p: AttentionLikeProblem, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>) {
    let (B, H, N, D, Dv) = (p.batch, p.queryHeads, p.queryLength, p.headDim, p.valueDim)
    let w = block
    let L = laneWidth
    let wp = (w + L - 1) / L * L
    let dvp = (Dv + L - 1) / L * L
    let blocks = (N + w - 1) / w
    let causal = p.causal
    let softmax = diagActivation == .softmax
    let qs = Float(1 / Double(D).squareRoot())
    // Scratch: q block [w][D], kᵀ block [D][wp], v block [wp][dvp], scores [w][wp], out [w][dvp].
    let fQ = 0, fK = w * D, fV = fK + D * wp, fS = fV + wp * dvp, fO = fS + w * wp, total = fO + w * dvp + 16
    let items = B * H * blocks
    let workers = Parallel.workers(for: items, threads: p.threads)
    let scratch = AlignedBuffer<Float>(count: workers * total)
    let sp = SendablePointer(scratch.pointer)
    let qp = SendablePointer(q), kp = SendablePointer(k), vp = SendablePointer(v), op = SendablePointer(out)
    Parallel.forEach(items, threads: workers) { item, worker in
      let bh = item / blocks, blk = item % blocks
      let s = sp.pointer + worker * total
      let i0 = blk * w, r = min(w, N - i0)
      let qh = qp.pointer + (bh * N + i0) * D, kh = kp.pointer + (bh * N + i0) * D, vh = vp.pointer + (bh * N + i0) * Dv
      let qb = s + fQ, kt = s + fK, vb = s + fV, sc = s + fS, ob = s + fO
      for i in 0..<r { for d in 0..<D { qb[i * D + d] = qh[i * D + d] * qs } }
      // Keys and values zero-padded to the block length (the reference's F.pad).
      for d in 0..<D { for j in 0..<wp { kt[d * wp + j] = j < r ? kh[j * D + d] : 0 } }
      for j in 0..<wp {
        let row = vb + j * dvp
        if j < r { row.update(from: vh + j * Dv, count: Dv) } else { row.update(repeating: 0, count: Dv) }
        for c in Dv..<dvp { row[c] = 0 }
      }
      GemmTiles.gemm(m: r, n: wp, k: D, a: qb, lda: D, b: kt, ldb: wp, c: sc, ldc: wp, accumulate: false)
      // Keys that exist in the reference's padded block: all w (padded ones score 0); causal: j ≤ i.
      for i in 0..<r {
        let row = sc + i * wp
        let visible = causal ? i + 1 : w
        if softmax {
          // Scores past `visible` become −∞ (exp → exactly 0); vectorized max, exp and sum.
          let lim = Lane(repeating: Float(visible))
          var mv = Lane(repeating: -.infinity)
          var x = 0
          while x < wp {
            let idx = laneIota + Lane(repeating: Float(x))
            let sv = loadLane(row + x).replacing(with: -.infinity, where: idx .>= lim)
            storeLane(sv, row + x)
            mv = vmax(mv, sv)
            x += L
          }
          let m = Lane(repeating: hmax(mv))
          var acc = Lane()
          x = 0
          while x < wp {
            let e = expLane(loadLane(row + x) - m)
            storeLane(e, row + x)
            acc += e
            x += L
          }
          scale(row, 1 / hsum(acc), wp)
        } else {
          for j in 0..<visible { row[j] = max(row[j], 0) }
        }
        for j in visible..<wp { row[j] = 0 }
      }
      GemmTiles.gemm(m: r, n: dvp, k: min(wp, causal ? r : w), a: sc, lda: wp, b: vb, ldb: dvp, c: ob, ldc: dvp, accumulate: false)
      let oh = op.pointer + (bh * N + i0) * Dv
      for i in 0..<r { (oh + i * Dv).update(from: ob + i * dvp, count: Dv) }
    }
    withExtendedLifetime(scratch) {}
  }

  public func randomWeights(shape: MixerBenchShape, seed: UInt64) -> MixerWeights { MixerWeights() }

  /// norm: `4·D·Dv` per row (+ `chunk·(D+Dv)` causal); diag: `2·block·(D+Dv)` per row (half causal).
  public func flops(_ s: MixerBenchShape) -> Double {
    let d = Double(s.headDim)
    let rows = Double(s.batch * s.heads * s.length)
    switch kind {
    case .norm: return rows * (4 * d * d + (s.causal ? Double(chunk) * 2 * d : 0))
    case .diag: return rows * Double(block) * 4 * d * (s.causal ? 0.5 : 1)
    }
  }
}
