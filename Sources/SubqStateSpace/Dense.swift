import Foundation
import SubqCore
import SubqKernels

// Small dense helpers for the blocks built around the scans (projections, convolutions, MLP
// memories). Row-major throughout; each output row is a sum of scaled rows (SIMD axpy), which is
// plenty for the projection sizes these blocks use.

/// c[m, n] (+)= a[m, k] · b[k, n].
func matmul(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>,
            m: Int, k: Int, n: Int, accumulate: Bool = false) {
  for i in 0..<m {
    let ci = c + i * n
    if !accumulate { ci.update(repeating: 0, count: n) }
    let ai = a + i * k
    for r in 0..<k where ai[r] != 0 { axpy(ai[r], b + r * n, ci, n) }
  }
}

/// c[m, n] (+)= a[m, k] · b[n, k]ᵀ (rows of a dotted with rows of b).
func matmulTransposedB(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>,
                       m: Int, k: Int, n: Int, accumulate: Bool = false) {
  for i in 0..<m {
    for j in 0..<n {
      let v = dot(a + i * k, b + j * k, k)
      c[i * n + j] = accumulate ? c[i * n + j] + v : v
    }
  }
}

/// g[k, n] += Σ_t w[t] · a[t, k] ⊗ d[t, n] (a weighted sum of outer products: aᵀ·diag(w)·d).
func weightedOuterSum(_ a: UnsafePointer<Float>, _ d: UnsafePointer<Float>, _ w: UnsafePointer<Float>,
                      _ g: UnsafeMutablePointer<Float>, rows: Int, k: Int, n: Int) {
  for t in 0..<rows where w[t] != 0 {
    let at = a + t * k, dt = d + t * n
    for r in 0..<k {
      let s = w[t] * at[r]
      if s != 0 { axpy(s, dt, g + r * n, n) }
    }
  }
}

/// x[i] = SiLU(x[i]).
func siluInPlace(_ x: UnsafeMutablePointer<Float>, _ n: Int) {
  let W = Lane.scalarCount
  var i = 0
  while i + W <= n {
    storeLane(siluLane(loadLane(x + i)), x + i)
    i += W
  }
  while i < n {
    x[i] = Float(silu(Double(x[i])))
    i += 1
  }
}

/// A tensor's matrix product with a weight matrix: `[rows, k] · [k, n]`.
func project(_ x: Tensor, rows: Int, _ w: Tensor) -> Tensor {
  let k = w.shape[0], n = w.shape[1]
  return x.withUnsafeBufferPointer { xp in
    w.withUnsafeBufferPointer { wp in
      Tensor(shape: [rows, n]) { o in matmul(xp.baseAddress!, wp.baseAddress!, o.baseAddress!, m: rows, k: k, n: n) }
    }
  }
}

/// Throws unless `t` is a finite matrix of the given shape (`nil` extents are free).
func checkMatrix(_ t: Tensor, _ name: String, op: String, rows: Int?, cols: Int?) throws(SubqError) {
  let ok = t.rank == 2 && (rows == nil || t.shape[0] == rows!) && (cols == nil || t.shape[1] == cols!) && t.count > 0
  if !ok {
    let r = rows.map(String.init) ?? "·", c = cols.map(String.init) ?? "·"
    throw .shape(op: op, tensor: name, shape: t.shape, reason: "expected a matrix [\(r), \(c)]")
  }
  if let bad = t.firstNonFinite() {
    throw .nonFinite(op: op, tensor: name, index: t.index(ofFlat: bad), value: SubqError.describe(t[flat: bad]))
  }
}

/// Throws if `t` holds a non-finite value.
func checkFinite(_ t: Tensor, _ name: String, op: String) throws(SubqError) {
  if let bad = t.firstNonFinite() {
    throw .nonFinite(op: op, tensor: name, index: t.index(ofFlat: bad), value: SubqError.describe(t[flat: bad]))
  }
}
