import SubqCore
import SubqKernels

/// Small dense matrix products for the mixers: `C (+)= A·B` with A `[m, k]`, B `[k, n]` and C
/// `[m, n]`, all row-major with leading dimensions, columns of B and C along the SIMD lanes.
///
/// The driver walks panels of `tileVectors` lane vectors of columns and blocks of 128 steps of the
/// inner dimension, sweeping up to 240 rows of A per panel, so the B panel (128 × 64 floats) stays
/// in L1 while the 6-row register tiles (`GemmTiles.tile4/2/1`) run over it. Columns past the last
/// whole lane vector are done with scalar code. Single-threaded: callers parallelize over
/// independent products (heads, chunks, row blocks).
package enum GemmTiles {
  /// Rows per register tile.
  package static let rows = 6
  static let kBlock = 128
  static let mBlock = 240

  /// `C = A·B` (or `C += A·B` when `accumulate`).
  ///
  /// - Parameters:
  ///   - lowerK: for the row tile starting at row `r0` with `t` rows, use only the inner indices
  ///     `p < min(k, r0 + t)` (A is lower-triangular with zeros above the diagonal inside the tile).
  ///   - lowerN: for the row tile starting at `r0`, write only the columns `< min(n, ⌈(r0 + t)/L⌉·L)`
  ///     (the caller needs only the lower triangle).
  @inlinable
  package static func gemm(
    m: Int, n: Int, k: Int, a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
    c: UnsafeMutablePointer<Float>, ldc: Int, accumulate: Bool, lowerK: Bool = false, lowerN: Bool = false
  ) {
    let L = laneWidth
    let nv = n / L * L   // columns done with vectors
    let panel = tileVectors * L
    var m0 = 0
    while m0 < m {
      let m1 = Swift.min(m, m0 + mBlock)
      var j0 = 0
      while j0 < nv {
        let wide = j0 + panel <= nv
        let width = wide ? panel : L
        var p0 = 0
        repeat {
          let pk = Swift.min(kBlock, k - p0)
          var r0 = m0
          while r0 < m1 {
            let t = Swift.min(rows, m1 - r0)
            let kEnd = lowerK ? Swift.min(k, r0 + t) : k
            let nEnd = lowerN ? Swift.min(n, (r0 + t + L - 1) / L * L) : n
            if j0 < nEnd {
              let depth = Swift.max(0, Swift.min(pk, kEnd - p0))
              let acc = accumulate || p0 > 0
              if depth > 0 || !acc {
                let ap = a + r0 * lda + p0, bp = b + p0 * ldb + j0, cp = c + r0 * ldc + j0
                #if SUBQ_AVX512
                if wide {
                  tile4(ap, lda: lda, rows: t, depth: depth, bp, ldb: ldb, cp, ldc: ldc, accumulate: acc)
                } else {
                  tile1(ap, lda: lda, rows: t, depth: depth, bp, ldb: ldb, cp, ldc: ldc, accumulate: acc)
                }
                #else
                if wide {
                  tile2(ap, lda: lda, rows: t, depth: depth, bp, ldb: ldb, cp, ldc: ldc, accumulate: acc)
                } else {
                  tile1(ap, lda: lda, rows: t, depth: depth, bp, ldb: ldb, cp, ldc: ldc, accumulate: acc)
                }
                #endif
              }
            }
            r0 += t
          }
          p0 += pk
        } while p0 < k
        j0 += width
      }
      // Scalar column remainder.
      if nv < n {
        var r0 = m0
        while r0 < m1 {
          let t = Swift.min(rows, m1 - r0)
          let kEnd = lowerK ? Swift.min(k, r0 + t) : k
          for r in r0..<(r0 + t) {
            let ar = a + r * lda
            let cr = c + r * ldc
            for j in nv..<n {
              var s: Float = accumulate ? cr[j] : 0
              for p in 0..<kEnd { s = fmadd(s, ar[p], b[p * ldb + j]) }
              cr[j] = s
            }
          }
          r0 += t
        }
      }
      m0 = m1
    }
  }

  /// `y = x·Wᵀ + bias` over `[rows, inFeatures]` inputs, parallel over row blocks.
  ///
  /// `wT` is the weight transposed to `[inFeatures, outFeatures]` (see ``transpose(_:rows:cols:)``);
  /// `x` has leading dimension `ldx`, `y` has `ldy`.
  package static func linear(
    rows: Int, inFeatures: Int, outFeatures: Int, x: UnsafePointer<Float>, ldx: Int,
    wT: UnsafePointer<Float>, bias: UnsafePointer<Float>?, y: UnsafeMutablePointer<Float>, ldy: Int, threads: Int
  ) {
    let block = 96
    let blocks = (rows + block - 1) / block
    let xp = SendablePointer(x), wp = SendablePointer(wT), yp = SendablePointer(y)
    let bp = bias.map { SendablePointer($0) }
    Parallel.forEach(blocks, threads: threads) { blk, _ in
      let r0 = blk * block
      let m = Swift.min(block, rows - r0)
      let out = yp.pointer + r0 * ldy
      if let bp {
        for r in 0..<m { (out + r * ldy).update(from: bp.pointer, count: outFeatures) }
      }
      gemm(m: m, n: outFeatures, k: inFeatures, a: xp.pointer + r0 * ldx, lda: ldx, b: wp.pointer, ldb: outFeatures,
           c: out, ldc: ldy, accumulate: bp != nil)
    }
  }

  /// The transpose of a row-major `[rows, cols]` matrix, as `[cols, rows]`.
  package static func transpose(_ w: UnsafePointer<Float>, rows: Int, cols: Int) -> [Float] {
    var t = [Float](repeating: 0, count: rows * cols)
    for r in 0..<rows { for c in 0..<cols { t[c * rows + r] = w[r * cols + c] } }
    return t
  }
}
