import Foundation
import Subquadratic

// Plain Float64 definitions of every mixer, written from the papers' formulas as directly as
// possible (quadratic or loop forms), for the tests to compare against.

/// A `[B, H, N, X]` tensor as Double.
func doubles(_ t: Tensor) -> [Double] { t.scalars.map(Double.init) }

/// Kernelized attention by its quadratic definition:
/// `out_i = Σ_j w_ij v_j / (Σ_j w_ij + eps)` (or without the denominator), `w_ij = φ(q_i)·φ(k_j)`,
/// j over all keys or j ≤ i.
func kernelAttentionReference(
  _ q: Tensor, _ k: Tensor, _ v: Tensor, featureMap: FeatureMap, causal: Bool, denominator: Bool, eps: Double
) -> [Double] {
  let (B, Hq, Nq, D) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
  let (Hkv, Nk, Dv) = (k.shape[1], k.shape[2], v.shape[3])
  let qd = doubles(q).map(featureMap.apply), kd = doubles(k).map(featureMap.apply), vd = doubles(v)
  var out = [Double](repeating: 0, count: B * Hq * Nq * Dv)
  for b in 0..<B {
    for h in 0..<Hq {
      let g = h / (Hq / Hkv)
      for i in 0..<Nq {
        var num = [Double](repeating: 0, count: Dv)
        var den = 0.0
        let jEnd = causal ? i + 1 : Nk
        for j in 0..<jEnd {
          var w = 0.0
          for d in 0..<D { w += qd[((b * Hq + h) * Nq + i) * D + d] * kd[((b * Hkv + g) * Nk + j) * D + d] }
          den += w
          for c in 0..<Dv { num[c] += w * vd[((b * Hkv + g) * Nk + j) * Dv + c] }
        }
        for c in 0..<Dv { out[((b * Hq + h) * Nq + i) * Dv + c] = denominator ? num[c] / (den + eps) : num[c] }
      }
    }
  }
  return out
}

/// Causal linear attention as the recurrence of the paper (§3.4): `S += φ(k)vᵀ`, `z += φ(k)`,
/// `y = φ(q)ᵀS / (φ(q)·z + eps)`, token by token, in Double.
func linearRecurrentReference(_ q: Tensor, _ k: Tensor, _ v: Tensor, featureMap: FeatureMap, eps: Double) -> [Double] {
  let (B, Hq, N, D) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
  let (Hkv, Dv) = (k.shape[1], v.shape[3])
  let qd = doubles(q), kd = doubles(k), vd = doubles(v)
  var out = [Double](repeating: 0, count: B * Hq * N * Dv)
  for b in 0..<B {
    for h in 0..<Hq {
      let g = h / (Hq / Hkv)
      var S = [Double](repeating: 0, count: D * Dv), z = [Double](repeating: 0, count: D)
      for t in 0..<N {
        let fk = (0..<D).map { featureMap.apply(kd[((b * Hkv + g) * N + t) * D + $0]) }
        let fq = (0..<D).map { featureMap.apply(qd[((b * Hq + h) * N + t) * D + $0]) }
        for d in 0..<D {
          z[d] += fk[d]
          for c in 0..<Dv { S[d * Dv + c] += fk[d] * vd[((b * Hkv + g) * N + t) * Dv + c] }
        }
        var den = eps
        for d in 0..<D { den += fq[d] * z[d] }
        for c in 0..<Dv {
          var s = 0.0
          for d in 0..<D { s += fq[d] * S[d * Dv + c] }
          out[((b * Hq + h) * N + t) * Dv + c] = s / den
        }
      }
    }
  }
  return out
}

/// SimpleRMSNorm over all heads of each position of `[B, H, N, Dv]`, in place.
func rmsNormAcrossHeads(_ o: inout [Double], B: Int, H: Int, N: Int, Dv: Int, eps: Double = 1e-8) {
  for b in 0..<B {
    for i in 0..<N {
      var ss = 0.0
      for h in 0..<H { for c in 0..<Dv { let x = o[((b * H + h) * N + i) * Dv + c]; ss += x * x } }
      let denom = ss.squareRoot() / Double(H * Dv).squareRoot() + eps
      for h in 0..<H { for c in 0..<Dv { o[((b * H + h) * N + i) * Dv + c] /= denom } }
    }
  }
}

/// TransNormer's DiagAttention as the reference writes it: pad to a multiple of w with zeros,
/// scores (q/√D)kᵀ per block, causal lower-triangular, relu (then the caller norms) or softmax
/// over the whole padded block (masked −1e8 when causal).
func diagAttentionReference(_ q: Tensor, _ k: Tensor, _ v: Tensor, block w: Int, causal: Bool, softmax: Bool) -> [Double] {
  let (B, H, N, D) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
  let Dv = v.shape[3]
  let Np = (N + w - 1) / w * w
  let qd = doubles(q), kd = doubles(k), vd = doubles(v)
  func at(_ a: [Double], _ bh: Int, _ i: Int, _ x: Int, _ X: Int) -> Double { i < N ? a[(bh * N + i) * X + x] : 0 }
  var out = [Double](repeating: 0, count: B * H * N * Dv)
  for bh in 0..<(B * H) {
    for i in 0..<N {
      let blk = i / w
      var scores = [Double](repeating: 0, count: w)
      for jj in 0..<w {
        let j = blk * w + jj
        precondition(j < Np)
        var s = 0.0
        for d in 0..<D { s += at(qd, bh, i, d, D) / Double(D).squareRoot() * at(kd, bh, j, d, D) }
        if causal && j > i { s = softmax ? -1e8 : 0 }
        scores[jj] = s
      }
      if softmax {
        let m = scores.max()!
        let e = scores.map { Foundation.exp($0 - m) }
        let sum = e.reduce(0, +)
        scores = e.map { $0 / sum }
      } else {
        scores = scores.map { max($0, 0) }
      }
      for c in 0..<Dv {
        var s = 0.0
        for jj in 0..<w { s += scores[jj] * at(vd, bh, blk * w + jj, c, Dv) }
        out[(bh * N + i) * Dv + c] = s
      }
    }
  }
  return out
}
