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

/// The DFT by its definition, O(n²), in Double: `X_k = Σ_j x_j e^{−2πi jk/n}`.
func dftReference(_ re: [Double], _ im: [Double]) -> (re: [Double], im: [Double]) {
  let n = re.count
  var xr = [Double](repeating: 0, count: n), xi = xr
  for k in 0..<n {
    var sr = 0.0, si = 0.0
    for j in 0..<n {
      let a = -2 * Double.pi * Double((j * k) % n) / Double(n)
      sr += re[j] * cos(a) - im[j] * sin(a)
      si += re[j] * sin(a) + im[j] * cos(a)
    }
    xr[k] = sr
    xi[k] = si
  }
  return (xr, xi)
}

/// The M2 long convolution by its direct definition on `[B, N, C]`:
/// `y_t = Σ_{s≤t} h_fwd[c][t−s] x_s + Σ_{s>t} h_rev[c][s−t−1] x_s + skip[c]·x_t`.
func longConvReference(_ x: [Double], B: Int, N: Int, C: Int, kFwd: [Double], kRev: [Double]?, ldk: Int, skip: [Double]?) -> [Double] {
  var y = [Double](repeating: 0, count: B * N * C)
  for b in 0..<B {
    for c in 0..<C {
      for t in 0..<N {
        var s = 0.0
        for u in 0...t { s += kFwd[c * ldk + t - u] * x[(b * N + u) * C + c] }
        if let kRev { for u in (t + 1)..<max(t + 1, N) { s += kRev[c * ldk + u - t - 1] * x[(b * N + u) * C + c] } }
        if let skip { s += skip[c] * x[(b * N + t) * C + c] }
        y[(b * N + t) * C + c] = s
      }
    }
  }
  return y
}

/// `y = x Wᵀ + b` on `[rows, in]` with W `[out, in]`.
func linearReference(_ x: [Double], rows: Int, inF: Int, _ w: [Double], outF: Int, _ b: [Double]?) -> [Double] {
  var y = [Double](repeating: 0, count: rows * outF)
  for r in 0..<rows {
    for o in 0..<outF {
      var s = b?[o] ?? 0
      for i in 0..<inF { s += x[r * inF + i] * w[o * inF + i] }
      y[r * outF + o] = s
    }
  }
  return y
}

/// M2's sequence mixer step by step in Double (see `MonarchMixer`).
func m2Reference(_ xT: Tensor, _ w: MixerWeights) -> [Double] {
  let (B, N, C) = (xT.shape[0], xT.shape[1], xT.shape[2])
  let x = doubles(xT)
  func d(_ n: String) -> [Double]? { w.tensors[n].map(doubles) }
  let lmax = w.tensors["filter_fn.k"]!.shape[1]
  let u0 = linearReference(x, rows: B * N, inF: C, d("in_linear.weight")!, outF: 3 * C, d("in_linear.bias")!)
  let cw = d("short_filter.weight")!, cb = d("short_filter.bias")!
  var u = u0
  for b in 0..<B { for t in 0..<N { for c in 0..<(3 * C) {
    var s = cb[c] + cw[3 * c + 2] * u0[(b * N + t) * 3 * C + c]
    if t >= 1 { s += cw[3 * c + 1] * u0[(b * N + t - 1) * 3 * C + c] }
    if t >= 2 { s += cw[3 * c] * u0[(b * N + t - 2) * 3 * C + c] }
    u[(b * N + t) * 3 * C + c] = s
  } } }
  var v = [Double](repeating: 0, count: B * N * C), x2 = v
  for r in 0..<(B * N) { for c in 0..<C {
    v[r * C + c] = u[r * 3 * C + 2 * C + c] * u[r * 3 * C + c]
    x2[r * C + c] = u[r * 3 * C + C + c]
  } }
  var y = longConvReference(v, B: B, N: N, C: C, kFwd: d("filter_fn.k")!, kRev: d("filter_fn.k_rev"), ldk: lmax, skip: d("filter_fn.bias"))
  for i in y.indices { y[i] *= x2[i] }
  if let k2 = d("filter_fn2.k") {
    let yu = longConvReference(x, B: B, N: N, C: C, kFwd: k2, kRev: d("filter_fn2.k_rev"), ldk: lmax, skip: d("filter_fn2.bias"))
    for i in y.indices { y[i] += yu[i] }
  }
  return linearReference(y, rows: B * N, inF: C, d("out_linear.weight")!, outF: C, d("out_linear.bias")!)
}

/// PoNet's mixer by its definition in Double (see `PoNetMixer`).
func ponetReference(_ xT: Tensor, _ w: MixerWeights, heads H: Int, segments: Int) -> [Double] {
  let (B, N, C) = (xT.shape[0], xT.shape[1], xT.shape[2])
  let x = doubles(xT)
  let dh = C / H
  func proj(_ n: String) -> [Double] {
    linearReference(x, rows: B * N, inF: C, doubles(w.tensors["\(n)_proj.weight"]!), outF: C, w.tensors["\(n)_proj.bias"].map(doubles))
  }
  let hq = proj("q"), hk = proj("k"), ho = proj("o"), hs = proj("s"), hl = proj("l")
  let segLen = N / segments + 1
  var out = [Double](repeating: 0, count: B * N * C)
  for b in 0..<B {
    var gp = [Double](repeating: 0, count: C)
    for h in 0..<H {
      var g = [Double](repeating: 0, count: dh)
      for i in 0..<N { for e in 0..<dh { g[e] += hq[(b * N + i) * C + h * dh + e] / Double(N) } }
      var logits = [Double](repeating: 0, count: N)
      for j in 0..<N {
        var s = 0.0
        for e in 0..<dh { s += g[e] * hk[(b * N + j) * C + h * dh + e] }
        logits[j] = s / Double(dh).squareRoot()
      }
      let m = logits.max()!
      let ex = logits.map { exp($0 - m) }
      let z = ex.reduce(0, +)
      for j in 0..<N { for e in 0..<dh { gp[h * dh + e] += ex[j] / z * hk[(b * N + j) * C + h * dh + e] } }
    }
    for i in 0..<N {
      let seg = i / segLen
      for c in 0..<C {
        var smax = -Double.infinity
        for j in (seg * segLen)..<min(N, (seg + 1) * segLen) { smax = max(smax, hs[(b * N + j) * C + c]) }
        var lmax = hl[(b * N + i) * C + c]
        if i > 0 { lmax = max(lmax, hl[(b * N + i - 1) * C + c]) }
        if i + 1 < N { lmax = max(lmax, hl[(b * N + i + 1) * C + c]) }
        out[(b * N + i) * C + c] = (gp[c] + smax) * ho[(b * N + i) * C + c] + lmax
      }
    }
  }
  return out
}
