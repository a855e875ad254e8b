/// Register-blocked tiles that accumulate a product into a matrix kept in memory:
///
///     C[r][·] += Σ_k a_r[k] · B[k][·]          (6 rows r, up to `maxVectors` lane vectors of columns)
///
/// The six `a_r` are rows of scalars (each broadcast once per k); B is row-major with lane vectors
/// along its columns; C is loaded once, accumulated in registers over the whole depth, and stored
/// once. The FlashAttention backward pass uses them for dV += Pᵀ·dO and dK += dSᵀ·Q, where the
/// scalar rows are rows of the transposed probability and score-gradient blocks (one per key, the
/// query index running along them) and B is a block of dO or Q rows.
package enum AccumulateTiles {
  /// Rows per tile.
  @inlinable package static var rows: Int { 6 }
  /// The widest tile this build uses, in lane vectors: 4 on AVX-512 (24 zmm accumulators), 2
  /// elsewhere (12 ymm or NEON accumulators; wider tiles would spill).
  @inlinable package static var maxVectors: Int { tileVectors }

  /// The tile with `vectors` lane vectors (1 ≤ vectors ≤ 4; at most ``maxVectors`` to avoid spills).
  // Deliberately not inlined: a tile is about a thousand cycles of FMAs, the call a few dozen.
  // Inlined into the attention loops, the tiles' 24 accumulators and the loops' own live values
  // compete for the registers and flash ran 30% slower (measured). The tile bodies below are
  // inlined into these wrappers, so each wrapper is one register-tight function.
  @inline(never)
  package static func accTile(
    vectors: Int,
    _ a0: UnsafePointer<Float>, _ a1: UnsafePointer<Float>, _ a2: UnsafePointer<Float>,
    _ a3: UnsafePointer<Float>, _ a4: UnsafePointer<Float>, _ a5: UnsafePointer<Float>,
    depth: Int, b: UnsafePointer<Lane>, bStride: Int, c: UnsafeMutablePointer<Lane>, cStride: Int
  ) {
    switch vectors {
    case 4: accTile4(a0, a1, a2, a3, a4, a5, depth: depth, b: b, bStride: bStride, c: c, cStride: cStride)
    case 3: accTile3(a0, a1, a2, a3, a4, a5, depth: depth, b: b, bStride: bStride, c: c, cStride: cStride)
    case 2: accTile2(a0, a1, a2, a3, a4, a5, depth: depth, b: b, bStride: bStride, c: c, cStride: cStride)
    default: accTile1(a0, a1, a2, a3, a4, a5, depth: depth, b: b, bStride: bStride, c: c, cStride: cStride)
    }
  }
}
