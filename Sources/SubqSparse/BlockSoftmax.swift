import Foundation
import SubqAttention
import SubqCore
import SubqKernels

/// The online-softmax state of one block of queries, fed any number of key ranges: the flash
/// machinery (`AttentionTiles`, transposed blocks with the query index on the SIMD lanes, scores in
/// log2 units) for methods that attend each query block to a few structured key ranges rather than
/// to all keys (attention sinks, Combiner).
///
/// Usage: `load` the queries, call `attend` once per key range (each a plain K/V row range with an
/// optional band mask), then `store`. All ranges enter one softmax. Memory is the worker's scratch:
/// `scratchFloats(…)` floats, 64-byte aligned.
struct BlockSoftmax {
  let D: Int, Dv: Int, blockQ: Int, blockK: Int
  let lanesQ: Int, tilesQ: Int
  let rowsK: Int, rowsV: Int
  let qtF: UnsafeMutablePointer<Float>, stF: UnsafeMutablePointer<Float>, otF: UnsafeMutablePointer<Float>
  let vecs: UnsafeMutablePointer<Float>
  let vecStride: Int
  /// Softcap c·log₂e, or nil.
  let softcapLog2: Float?

  static let log2e: Float = 1.442_695_040_888_963_4
  static let ln2: Float = 0.693_147_180_559_945_3

  static func layout(D: Int, Dv: Int, blockQ: Int, blockK: Int) -> (st: Int, ot: Int, vec: Int, vecStride: Int, total: Int) {
    let rowsK = (blockK + AttentionTiles.rows - 1) / AttentionTiles.rows * AttentionTiles.rows
    let rowsV = (Dv + AttentionTiles.rows - 1) / AttentionTiles.rows * AttentionTiles.rows
    func r16(_ n: Int) -> Int { (n + 15) / 16 * 16 }
    let st = r16(D * blockQ) + 48
    let ot = st + r16(rowsK * blockQ) + 48
    let vec = ot + r16(rowsV * blockQ) + 48
    let vs = r16(blockQ)
    return (st, ot, vec, vs, vec + 6 * vs + 48)
  }

  /// Floats of scratch one block needs.
  static func scratchFloats(D: Int, Dv: Int, blockQ: Int, blockK: Int) -> Int {
    layout(D: D, Dv: Dv, blockQ: blockQ, blockK: blockK).total
  }

  /// - Parameters: blockQ a multiple of `AttentionTiles.width`; `scratch` 64-byte aligned.
  init(scratch: UnsafeMutablePointer<Float>, D: Int, Dv: Int, blockQ: Int, blockK: Int, softcap: Float?) {
    self.D = D
    self.Dv = Dv
    self.blockQ = blockQ
    self.blockK = blockK
    lanesQ = blockQ / laneWidth
    tilesQ = blockQ / AttentionTiles.width
    rowsK = (blockK + AttentionTiles.rows - 1) / AttentionTiles.rows * AttentionTiles.rows
    rowsV = (Dv + AttentionTiles.rows - 1) / AttentionTiles.rows * AttentionTiles.rows
    let l = Self.layout(D: D, Dv: Dv, blockQ: blockQ, blockK: blockK)
    qtF = scratch
    stF = scratch + l.st
    otF = scratch + l.ot
    vecs = scratch + l.vec
    vecStride = l.vecStride
    softcapLog2 = softcap.map { $0 * Self.log2e }
  }

  @inline(__always) func lanes(_ f: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<Lane> {
    UnsafeMutableRawPointer(f).assumingMemoryBound(to: Lane.self)
  }
  var qt: UnsafeMutablePointer<Lane> { lanes(qtF) }
  var st: UnsafeMutablePointer<Lane> { lanes(stF) }
  var ot: UnsafeMutablePointer<Lane> { lanes(otF) }
  var mRun: UnsafeMutablePointer<Lane> { lanes(vecs) }
  var mSafe: UnsafeMutablePointer<Lane> { lanes(vecs + vecStride) }
  var alpha: UnsafeMutablePointer<Lane> { lanes(vecs + 2 * vecStride) }
  var lRun: UnsafeMutablePointer<Lane> { lanes(vecs + 3 * vecStride) }
  var mNew: UnsafeMutablePointer<Lane> { lanes(vecs + 4 * vecStride) }

  /// Packs `rows` queries (row i at `q + i·ldq`) as Qᵀ scaled by `scale` (τ; the softcap and log₂e
  /// are folded in here) and resets the running state.
  func load(q: UnsafePointer<Float>, ldq: Int, rows: Int, scale: Float) {
    let s: Float = softcapLog2 != nil ? scale * Self.log2e / softcapLog2! : scale * Self.log2e
    for i in 0..<rows {
      let qi = q + i * ldq
      for d in 0..<D { qtF[d * blockQ + i] = qi[d] * s }
    }
    if rows < blockQ { for d in 0..<D { for i in rows..<blockQ { qtF[d * blockQ + i] = 0 } } }
    otF.update(repeating: 0, count: rowsV * blockQ)
    for x in 0..<lanesQ {
      mRun[x] = Lane(repeating: -.infinity)
      lRun[x] = Lane()
    }
  }

  /// Attends to keys `range` (key j at `k + j·ldk`, value at `v + j·ldv`). When `diagonal` is given,
  /// query lane i sees key j only if `diagonal + i − left ≤ j ≤ diagonal + i + right` (nil bounds are
  /// unbounded); otherwise every key of the range is visible to every lane.
  func attend(k: UnsafePointer<Float>, ldk: Int, v: UnsafePointer<Float>, ldv: Int, range: Range<Int>,
              diagonal: Int? = nil, left: Int? = nil, right: Int? = nil) {
    scoreBlocks(k: k, ldk: ldk, range: range, diagonal: diagonal, left: left, right: right) { j0, jn in
      AttentionTiles.pvColumns(v + j0 * ldv, ldv: ldv, columns: Dv, count: jn, p: st, ot: ot, alpha: alpha,
                               lanes: lanesQ, tiles: tilesQ)
    }
  }

  /// Scores, mask, online-softmax update for each key block of `range`; `accumulate(j0, jn)` then
  /// adds the block's probabilities (in `st`, rows 0..<jn) times its values into Oᵀ, rescaling Oᵀ by
  /// `alpha` first.
  @inline(__always)
  func scoreBlocks(k: UnsafePointer<Float>, ldk: Int, range: Range<Int>, diagonal: Int?, left: Int?, right: Int?,
                   accumulate: (Int, Int) -> Void) {
    let L = laneWidth
    let TV = tileVectors
    var j0 = range.lowerBound
    while j0 < range.upperBound {
      let jn = min(blockK, range.upperBound - j0)
      var fullyVisible = true
      if let diagonal {
        if let l = left, j0 < diagonal + blockQ - 1 - l { fullyVisible = false }
        if let r = right, j0 + jn - 1 > diagonal + r { fullyVisible = false }
      }
      let plain = fullyVisible && softcapLog2 == nil
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
            k0, k1, k2, k3, k4, k5, depth: D, qt: qt + t * TV, qtStride: lanesQ,
            st: st + jt * lanesQ + t * TV, stStride: lanesQ, rowMax: mNew + t * TV, updateMax: plain)
        }
        jt += AttentionTiles.rows
      }
      if !plain {
        let iota = laneIota
        for j in 0..<jn {
          let key = j0 + j
          // Lanes that see `key`: key − diagonal − right ≤ i ≤ key − diagonal + left.
          let iMin = (diagonal != nil && right != nil) ? Float(key - diagonal! - right!) : -Float.infinity
          let iMax = (diagonal != nil && left != nil) ? Float(key - diagonal! + left!) : Float.infinity
          let row = st + j * lanesQ
          for x in 0..<lanesQ {
            var s = row[x]
            if let c = softcapLog2 { s = Lane(repeating: c) * tanhLane(s) }
            if !fullyVisible {
              let iv = iota + Lane(repeating: Float(x * L))
              s = s.replacing(with: -.infinity, where: (iv .< Lane(repeating: iMin)) .| (iv .> Lane(repeating: iMax)))
            }
            row[x] = s
            mNew[x] = vmax(mNew[x], s)
          }
        }
      }
      advanceRunningMax(lanes: lanesQ, blockMax: mNew, running: mRun, safe: mSafe, alpha: alpha)
      for j in 0..<jn {
        let row = st + j * lanesQ
        for x in 0..<lanesQ {
          let e = exp2Lane(row[x] - mSafe[x])
          row[x] = e
          mNew[x] += e
        }
      }
      for x in 0..<lanesQ { lRun[x] = fmadd(mNew[x], lRun[x], alpha[x]) }
      accumulate(j0, jn)
      j0 += jn
    }
  }

  /// Writes the normalized output of `rows` queries (row i at `out + i·ldo`) and, when `lse` is
  /// given, the natural-log log-sum-exp of row i at `lse[i·ldl]` (`emptyLSE` for a row that saw no
  /// key: +∞ for a final result, −∞ for a partial one that will be merged).
  func store(out: UnsafeMutablePointer<Float>, ldo: Int, rows: Int, lse: UnsafeMutablePointer<Float>?, ldl: Int = 1,
             emptyLSE: Float = .infinity) {
    let lF = UnsafeMutableRawPointer(lRun).assumingMemoryBound(to: Float.self)
    let mF = UnsafeMutableRawPointer(mRun).assumingMemoryBound(to: Float.self)
    for i in 0..<rows {
      let l = lF[i]
      let inv: Float = l > 0 ? 1 / l : 0
      let o = out + i * ldo
      for c in 0..<Dv { o[c] = otF[c * blockQ + i] * inv }
      if let lse { lse[i * ldl] = l > 0 ? (mF[i] + Float(Foundation.log2(Double(l)))) * Self.ln2 : emptyLSE }
    }
  }

  /// Like `store`, after merging this block's state with a partial result over other keys (row i:
  /// normalized output `partial + i·ldp`, log-sum-exp `partialLSE[i·ldpl]`, −∞ when empty), by
  /// the log-sum-exp rule: the result is the softmax over the union of both key sets.
  func mergeStore(out: UnsafeMutablePointer<Float>, ldo: Int, rows: Int, lse: UnsafeMutablePointer<Float>?,
                  partial: UnsafePointer<Float>, ldp: Int, partialLSE: UnsafePointer<Float>, ldpl: Int) {
    let lF = UnsafeMutableRawPointer(lRun).assumingMemoryBound(to: Float.self)
    let mF = UnsafeMutableRawPointer(mRun).assumingMemoryBound(to: Float.self)
    for i in 0..<rows {
      let l = Double(lF[i])
      let lse1 = l > 0 ? (Double(mF[i]) + Foundation.log2(l)) * Double(Self.ln2) : -Double.infinity
      let lse2 = Double(partialLSE[i * ldpl])
      let top = max(lse1, lse2)
      let o = out + i * ldo
      guard top > -.infinity else {
        for c in 0..<Dv { o[c] = 0 }
        lse?[i] = .infinity
        continue
      }
      let w1 = Foundation.exp(lse1 - top), w2 = Foundation.exp(lse2 - top)
      let a1 = Float(l > 0 ? w1 / (w1 + w2) / l : 0), a2 = Float(w2 / (w1 + w2))
      let pr = partial + i * ldp
      for c in 0..<Dv { o[c] = otF[c * blockQ + i] * a1 + pr[c] * a2 }
      lse?[i] = Float(top + Foundation.log(w1 + w2))
    }
  }
}
