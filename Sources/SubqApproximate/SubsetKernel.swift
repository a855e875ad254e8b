import Foundation
import SubqCore
import SubqKernels

/// Exact softmax attention of one block of query rows over keys supplied piece by piece: the
/// online-softmax core that HyperAttention, HiP and ProbSparse share.
///
/// A block holds up to `blockQ` query rows taken from anywhere (sorted by hash, a contiguous
/// block, or scattered active queries). Keys arrive in pieces, each a run of rows `k[j·ldk]`,
/// `v[j·ldv]` (a contiguous range of the input tensors, or rows gathered into scratch), with
///
/// - an optional position per key, compared against each query's last visible key position
///   (`limit`): keys past the limit are masked (causal attention, no look-ahead);
/// - a weight `w` multiplying every probability of the piece: the residual sample of
///   HyperAttention counts each sampled key `Nk/m` times (equivalent to adding `log w` to the
///   scores, i.e. to the sampled part's log-sum-exp, and merging, as the paper's code does).
///
/// `finish` writes `O = Σ w·e^{s}·v / Σ w·e^{s}` and `lse = log Σ w·e^{s}` per row, or merges
/// them into an accumulated result with ``LSEMerge``. A row whose keys were all masked has
/// `lse = −∞` and output 0.
///
/// The layout follows `FlashPlan`: queries along the SIMD lanes (Qᵀ packed once with τ·log₂e
/// folded in), `AttentionTiles.qkTile`/`pvTile` register tiles, scores in log2 units, one rescale
/// per piece of up to `chunkK` keys, and the element mask only on chunks that straddle a limit.
struct SubsetKernel: Sendable {
  let headDim: Int
  let valueDim: Int
  /// Query lanes per block (a multiple of the tile width).
  let blockQ: Int
  /// Keys per online-softmax step.
  let chunkK: Int
  let lanesQ: Int
  let tilesQ: Int
  let rowsK: Int
  let rowsV: Int
  let stOffset: Int, otOffset: Int, vecOffset: Int, vecStride: Int
  /// Floats of scratch one worker needs.
  let scratchFloats: Int

  static let log2e: Float = 1.442_695_040_888_963_4
  static let ln2: Float = 0.693_147_180_559_945_3

  /// - Parameters:
  ///   - rows: the most query rows a block holds (rounded up to the tile width).
  ///   - chunkK: keys per online-softmax step.
  init(headDim: Int, valueDim: Int, rows: Int, chunkK: Int = 96) {
    self.headDim = headDim
    self.valueDim = valueDim
    let w = AttentionTiles.width
    blockQ = max(w, (rows + w - 1) / w * w)
    self.chunkK = chunkK
    lanesQ = blockQ / laneWidth
    tilesQ = blockQ / w
    let r = AttentionTiles.rows
    rowsK = (chunkK + r - 1) / r * r
    rowsV = (valueDim + r - 1) / r * r
    func round16(_ n: Int) -> Int { (n + 15) / 16 * 16 }
    let skew = 3 * 16
    stOffset = round16(headDim * blockQ) + skew
    otOffset = stOffset + round16(rowsK * blockQ) + skew
    vecOffset = otOffset + round16(rowsV * blockQ) + skew
    vecStride = round16(blockQ)
    scratchFloats = vecOffset + 7 * vecStride + skew
  }

  // Scratch regions.
  @inline(__always) func qt(_ s: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<Float> { s }
  @inline(__always) func st(_ s: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<Float> { s + stOffset }
  @inline(__always) func ot(_ s: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<Float> { s + otOffset }
  @inline(__always) func vec(_ s: UnsafeMutablePointer<Float>, _ i: Int) -> UnsafeMutablePointer<Lane> {
    UnsafeMutableRawPointer(s + vecOffset + i * vecStride).assumingMemoryBound(to: Lane.self)
  }
  // Vector slots: 0 running max, 1 shift, 2 rescale, 3 running sum, 4 block max / sum, 5 limit.

  /// Packs the block's queries and resets the running state.
  ///
  /// - Parameters:
  ///   - rows: query rows in the block (≤ `blockQ`).
  ///   - scale: the softmax scale τ.
  ///   - query: the row of query `i` (D floats).
  ///   - limit: the last key position query `i` may see (any value when no piece is masked).
  /// - Returns: the smallest limit of the block (pieces whose positions stay within it skip the
  ///   element mask).
  @inline(__always)
  func begin(
    _ s: UnsafeMutablePointer<Float>, rows: Int, scale: Float,
    query: (Int) -> UnsafePointer<Float>, limit: (Int) -> Int
  ) -> Int {
    let D = headDim
    let qs = scale * SubsetKernel.log2e
    let q = qt(s)
    for i in 0..<rows {
      let qi = query(i)
      for d in 0..<D { q[d * blockQ + i] = qi[d] * qs }
    }
    if rows < blockQ {
      for d in 0..<D { for i in rows..<blockQ { q[d * blockQ + i] = 0 } }
    }
    ot(s).update(repeating: 0, count: rowsV * blockQ)
    let mRun = vec(s, 0), lRun = vec(s, 3)
    for x in 0..<lanesQ {
      mRun[x] = Lane(repeating: -.infinity)
      lRun[x] = Lane()
    }
    let lim = UnsafeMutableRawPointer(vec(s, 5)).assumingMemoryBound(to: Float.self)
    var minLimit = Int.max
    for i in 0..<rows {
      let l = limit(i)
      lim[i] = Float(l)
      minLimit = min(minLimit, l)
    }
    for i in rows..<blockQ { lim[i] = .infinity }
    return minLimit
  }

  /// Attends the block to `count` keys: rows `k + j·ldk` (D floats) and `v + j·ldv` (Dv floats).
  ///
  /// - Parameters:
  ///   - positions: key positions for masking, or nil when every query sees every key of the
  ///     piece. `positions(j)` must not decrease in `j`.
  ///   - minLimit: the value `begin` returned.
  ///   - weight: multiplies every probability of the piece (1 for exact attention).
  @inline(__always)
  func attend(
    _ s: UnsafeMutablePointer<Float>, k: UnsafePointer<Float>, ldk: Int, v: UnsafePointer<Float>, ldv: Int,
    count: Int, positions: ((Int) -> Int)?, minLimit: Int, weight: Float = 1
  ) {
    let D = headDim, Dv = valueDim
    let TV = tileVectors, L = laneWidth
    let tileRows = AttentionTiles.rows
    let qtL = UnsafeMutableRawPointer(qt(s)).assumingMemoryBound(to: Lane.self)
    let stL = UnsafeMutableRawPointer(st(s)).assumingMemoryBound(to: Lane.self)
    let otL = UnsafeMutableRawPointer(ot(s)).assumingMemoryBound(to: Lane.self)
    let mRun = vec(s, 0), mSafe = vec(s, 1), alpha = vec(s, 2), lRun = vec(s, 3), mNew = vec(s, 4), lim = vec(s, 5)
    let weighted = weight != 1
    let wv = Lane(repeating: weight)

    var j0 = 0
    while j0 < count {
      let jn = min(chunkK, count - j0)
      // The chunk needs the element mask only if its last key passes some query's limit.
      let masked = positions.map { $0(j0 + jn - 1) > minLimit } ?? false
      for x in 0..<lanesQ { mNew[x] = mRun[x] }

      let kBlock = k + j0 * ldk
      var jt = 0
      while jt < jn {
        let last = jn - 1
        let k0 = kBlock + min(jt, last) * ldk, k1 = kBlock + min(jt + 1, last) * ldk
        let k2 = kBlock + min(jt + 2, last) * ldk, k3 = kBlock + min(jt + 3, last) * ldk
        let k4 = kBlock + min(jt + 4, last) * ldk, k5 = kBlock + min(jt + 5, last) * ldk
        for t in 0..<tilesQ {
          AttentionTiles.qkTile(
            k0, k1, k2, k3, k4, k5, depth: D, qt: qtL + t * TV, qtStride: lanesQ,
            st: stL + jt * lanesQ + t * TV, stStride: lanesQ, rowMax: mNew + t * TV, updateMax: !masked)
        }
        jt += tileRows
      }

      if masked, let positions {
        for j in 0..<jn {
          let pos = Lane(repeating: Float(positions(j0 + j)))
          let row = stL + j * lanesQ
          for x in 0..<lanesQ {
            let sc = row[x].replacing(with: -.infinity, where: lim[x] .< pos)
            row[x] = sc
            mNew[x] = vmax(mNew[x], sc)
          }
        }
      }

      // Rescale; a max still at −∞ shifts by 0 (no NaN). mNew then collects the chunk's row sums.
      advanceRunningMax(lanes: lanesQ, blockMax: mNew, running: mRun, safe: mSafe, alpha: alpha)
      for j in 0..<jn {
        let row = stL + j * lanesQ
        for x in 0..<lanesQ {
          var e = exp2Lane(row[x] - mSafe[x])
          if weighted { e *= wv }
          row[x] = e
          mNew[x] += e
        }
      }
      for x in 0..<lanesQ { lRun[x] = fmadd(mNew[x], lRun[x], alpha[x]) }

      AttentionTiles.pvColumns(v + j0 * ldv, ldv: ldv, columns: Dv, count: jn, p: stL, ot: otL, alpha: alpha,
                               lanes: lanesQ, tiles: tilesQ)
      j0 += jn
    }
    _ = L
  }

  /// The log-sum-exp (natural log) of row `i` so far: −∞ if it saw no key.
  @inline(__always)
  func rowLSE(_ s: UnsafeMutablePointer<Float>, _ i: Int) -> Float {
    let l = UnsafeMutableRawPointer(vec(s, 3)).assumingMemoryBound(to: Float.self)[i]
    let m = UnsafeMutableRawPointer(vec(s, 0)).assumingMemoryBound(to: Float.self)[i]
    return l > 0 ? (m + Float(Foundation.log2(Double(l)))) * SubsetKernel.ln2 : -.infinity
  }

  /// Writes (`merge == false`) or merges (`merge == true`) each row's normalized output and
  /// log-sum-exp at `destination(i)` = (output row, its log-sum-exp).
  @inline(__always)
  func finish(
    _ s: UnsafeMutablePointer<Float>, rows: Int, merge: Bool,
    destination: (Int) -> (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>)
  ) {
    let Dv = valueDim
    let o = ot(s)
    let lF = UnsafeMutableRawPointer(vec(s, 3)).assumingMemoryBound(to: Float.self)
    for i in 0..<rows {
      let l = lF[i]
      let inv: Float = l > 0 ? 1 / l : 0
      let lse = rowLSE(s, i)
      let (out, outLSE) = destination(i)
      if merge {
        LSEMerge.merge(into: out, lse: outLSE, count: Dv, partLSE: lse) { c in o[c * blockQ + i] * inv }
      } else {
        for c in 0..<Dv { out[c] = o[c * blockQ + i] * inv }
        outLSE.pointee = lse
      }
    }
  }
}

/// The largest lane of `v`, by a halving tree (no scalar loop through memory).
@inline(__always)
func maxLanes(_ v: Lane) -> Float {
  #if SUBQ_AVX512
  let a = v.lowHalf, b = v.highHalf
  let m8 = a.replacing(with: b, where: a .< b)
  #else
  let m8 = v
  #endif
  let c = m8.lowHalf, d = m8.highHalf
  let m4 = c.replacing(with: d, where: c .< d)
  let e = m4.lowHalf, f = m4.highHalf
  let m2 = e.replacing(with: f, where: e .< f)
  return m2[0] < m2[1] ? m2[1] : m2[0]
}

/// Copies `count` floats from `src` to `dst` with vector loads and stores (rows of a few hundred
/// bytes: a `memmove` call per row costs more than the copy).
@inline(__always)
func copyRow(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ count: Int) {
  let w = laneWidth
  var i = 0
  while i + 2 * w <= count {
    let a = loadLane(src + i), b = loadLane(src + i + w)
    storeLane(a, dst + i)
    storeLane(b, dst + i + w)
    i += 2 * w
  }
  while i + w <= count {
    storeLane(loadLane(src + i), dst + i)
    i += w
  }
  while i < count {
    dst[i] = src[i]
    i += 1
  }
}
