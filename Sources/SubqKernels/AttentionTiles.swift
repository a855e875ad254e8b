/// Register-blocked tiles for attention computed in transposed form.
///
/// FlashAttention's inner loop computes a score block S = Q Kᵀ (queries × keys), a row softmax, and
/// O += P V. Here every block is kept transposed, with the *query* index running along the SIMD
/// lanes:
///
///     Sᵀ[j][i] = Σ_d K[j][d] · Qᵀ[d][i]        (key rows j, query lanes i)
///     Oᵀ[c][i] = α[i] · Oᵀ[c][i] + Σ_j V[j][c] · Pᵀ[j][i]
///
/// Qᵀ is packed once per query block and reused against every key block; K and V are read in
/// place, one broadcast scalar per row, so no key or value block is ever packed or transposed. The
/// per-query softmax statistics (running max, running sum) are then plain lane vectors: the row
/// max over a key block is an element-wise max down the rows of Sᵀ, with no horizontal
/// reductions.
///
/// The tiles are 6 rows by `tileVectors` lane vectors (64 queries on AVX-512, 16 elsewhere), with
/// all accumulators in registers. Callers clamp row pointers past the end of a block to a valid row
/// and discard (mask) those results, so there are no remainder kernels and no reads out of bounds.
package enum AttentionTiles {
  /// Rows per tile.
  @inlinable package static var rows: Int { 6 }
  /// Queries per tile (lanes per tile row).
  @inlinable package static var width: Int { tileVectors * laneWidth }

  /// `qkTile4` or `qkTile2`, whichever matches the build's lane width.
  // Deliberately not inlined: a tile is about a thousand cycles of FMAs, the call a few dozen.
  // Inlined into the attention loops, the tiles' 24 accumulators and the loops' own live values
  // compete for the registers and flash ran 30% slower (measured). The tile bodies below are
  // inlined into these wrappers, so each wrapper is one register-tight function.
  @inline(never)
  package static func qkTile(
    _ k0: UnsafePointer<Float>, _ k1: UnsafePointer<Float>, _ k2: UnsafePointer<Float>,
    _ k3: UnsafePointer<Float>, _ k4: UnsafePointer<Float>, _ k5: UnsafePointer<Float>,
    depth: Int, qt: UnsafePointer<Lane>, qtStride: Int,
    st: UnsafeMutablePointer<Lane>, stStride: Int, rowMax: UnsafeMutablePointer<Lane>, updateMax: Bool
  ) {
    #if SUBQ_AVX512
    qkTile4(k0, k1, k2, k3, k4, k5, depth: depth, qt: qt, qtStride: qtStride, st: st, stStride: stStride,
            rowMax: rowMax, updateMax: updateMax)
    #else
    qkTile2(k0, k1, k2, k3, k4, k5, depth: depth, qt: qt, qtStride: qtStride, st: st, stStride: stStride,
            rowMax: rowMax, updateMax: updateMax)
    #endif
  }

  /// `qkExpTile4` or `qkExpTile2`, whichever matches the build's lane width.
  @inline(never)
  package static func qkExpTile(
    _ k0: UnsafePointer<Float>, _ k1: UnsafePointer<Float>, _ k2: UnsafePointer<Float>,
    _ k3: UnsafePointer<Float>, _ k4: UnsafePointer<Float>, _ k5: UnsafePointer<Float>,
    depth: Int, qt: UnsafePointer<Lane>, qtStride: Int,
    st: UnsafeMutablePointer<Lane>, stStride: Int, shift: UnsafePointer<Lane>, headroom: Float,
    sum: UnsafeMutablePointer<Lane>, tileMax: UnsafeMutablePointer<Lane>
  ) -> Bool {
    #if SUBQ_AVX512
    return qkExpTile4(k0, k1, k2, k3, k4, k5, depth: depth, qt: qt, qtStride: qtStride, st: st, stStride: stStride,
                      shift: shift, headroom: headroom, sum: sum, tileMax: tileMax)
    #else
    return qkExpTile2(k0, k1, k2, k3, k4, k5, depth: depth, qt: qt, qtStride: qtStride, st: st, stStride: stStride,
                      shift: shift, headroom: headroom, sum: sum, tileMax: tileMax)
    #endif
  }

  /// `pvTile4` or `pvTile2`, whichever matches the build's lane width.
  @inline(never)
  package static func pvTile(
    _ vRows: UnsafePointer<Float>, ldv: Int, _ c0: Int, _ c1: Int, _ c2: Int, _ c3: Int, _ c4: Int, _ c5: Int,
    count: Int, p: UnsafePointer<Lane>, pStride: Int,
    ot: UnsafeMutablePointer<Lane>, otStride: Int, alpha: UnsafePointer<Lane>
  ) {
    #if SUBQ_AVX512
    pvTile4(vRows, ldv: ldv, c0, c1, c2, c3, c4, c5, count: count, p: p, pStride: pStride, ot: ot,
            otStride: otStride, alpha: alpha)
    #else
    pvTile2(vRows, ldv: ldv, c0, c1, c2, c3, c4, c5, count: count, p: p, pStride: pStride, ot: ot,
            otStride: otStride, alpha: alpha)
    #endif
  }

  /// `Oᵀ[c] = α ⊙ Oᵀ[c] + Σ_j rows[j][c] · Pᵀ[j]` for every column `c < columns`, over `tiles` query
  /// tiles side by side: one ``pvTile(_:ldv:_:_:_:_:_:_:count:p:pStride:ot:otStride:alpha:)`` per six
  /// columns and tile (columns past the end repeat the last one; their results land in Oᵀ's padding
  /// rows, which hold ⌈columns/6⌉·6 rows). `p`, `ot` and `alpha` rows are `lanes` vectors apart.
  /// The flash forward (P·V), its backward (dS·K into dQ), the subset kernel and the block softmax
  /// all accumulate this way.
  package static func pvColumns(
    _ rows: UnsafePointer<Float>, ldv: Int, columns: Int, count: Int, p: UnsafePointer<Lane>,
    ot: UnsafeMutablePointer<Lane>, alpha: UnsafePointer<Lane>, lanes: Int, tiles: Int
  ) {
    let last = columns - 1
    var c0 = 0
    while c0 < columns {
      for t in 0..<tiles {
        let o = t * tileVectors
        pvTile(rows, ldv: ldv, min(c0, last), min(c0 + 1, last), min(c0 + 2, last), min(c0 + 3, last),
               min(c0 + 4, last), min(c0 + 5, last), count: count, p: p + o, pStride: lanes,
               ot: ot + c0 * lanes + o, otStride: lanes, alpha: alpha + o)
      }
      c0 += Self.rows
    }
  }
}
