import Foundation
import SubqCore
import SubqKernels

/// Exact attention computed block by block with an online softmax: the FlashAttention-2 forward.
///
/// For sequence s, query head h and key/value head g = h / (Hq / Hkv):
///
///     S = τ · Q[s,h] · K[s,g]ᵀ   (+ softcap, ALiBi, mask as in ``AttentionOptions``)
///     O[s,h] = softmax_rows(S) · V[s,g]
///
/// The queries are cut into blocks of `block-q` rows (the outer loop, parallel over sequence ×
/// head × query block on all cores, head by head and heaviest blocks first within a head); each
/// query block walks the key/value blocks of `block-k` rows that it can see (the inner loop),
/// keeping a running row maximum and row sum, rescaling its accumulator once per key block and
/// normalizing once at the end (FlashAttention-2, Dao 2023, §3.1). Scores never leave a
/// `block-q × block-k` tile, so extra memory is O(threads · block-q · (D + Dv + block-k)) plus the
/// log-sum-exp: no N×N matrix.
///
/// Key blocks that no query of the block can see are skipped (causal attention costs about half
/// of non-causal), and only blocks that straddle the diagonal or a window edge apply the element
/// mask. Keys past a sequence's length are never read.
///
/// Differences from the paper's CUDA code: blocks are computed transposed (query index along the
/// SIMD lanes, see `AttentionTiles`), so the row max and sum are vertical vector operations and
/// neither K nor V is ever packed; scores are kept in log2 units with τ·log₂e folded into the
/// packed queries, and `exp2` is a polynomial (relative error ≈ 1e-7). The returned log-sum-exp is
/// in natural log, as flash-attn's.
///
/// - Complexity: O(B·Hq·Nq·Nk·(D + Dv)) time (about half with causal masking), O(threads ·
///   block-q · (D + Dv + block-k)) extra memory.
public struct FlashAttention: AttentionMethod {
  public static let info = MethodInfo(
    name: "flash",
    summary: "Exact attention, FlashAttention-2 forward: tiled online softmax, SIMD register tiles, all cores",
    paper: "Dao, FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning (2023)",
    complexity: "O(N²·D) time, O(N) extra memory",
    isExact: true,
    parameters: [
      MethodParameter("block-q", default: "64", "queries per block (a multiple of \(AttentionTiles.width))"),
      MethodParameter("block-k", default: "96", "keys per block"),
    ],
    supportedFeatures: MethodInfo.allFeatures)

  /// Queries per block (a multiple of the tile width).
  public let blockQ: Int
  /// Keys per block.
  public let blockK: Int

  /// - Parameters:
  ///   - blockQ: queries per block, a positive multiple of the tile width (64 on AVX-512, 16 otherwise).
  ///   - blockK: keys per block, at least 1.
  public init(blockQ: Int = 64, blockK: Int = 96) throws(SubqError) {
    let w = AttentionTiles.width
    guard blockQ >= w, blockQ % w == 0, blockQ <= 1024 else {
      throw .argument(op: "attention.flash", name: "block-q", value: "\(blockQ)", reason: "must be a multiple of \(w) in \(w)...1024")
    }
    guard blockK >= 1, blockK <= 4096 else {
      throw .argument(op: "attention.flash", name: "block-k", value: "\(blockK)", reason: "must be in 1...4096")
    }
    self.blockQ = blockQ
    self.blockK = blockK
  }

  public init(parameters: MethodParameters) throws(SubqError) {
    try parameters.validate(for: Self.info)
    try self.init(blockQ: parameters.int("block-q", Self.info), blockK: parameters.int("block-k", Self.info))
  }

  public var parameterValues: [String: String] { ["block-q": "\(blockQ)", "block-k": "\(blockK)"] }

  public func attention(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions) throws(SubqError) -> AttentionResult {
    let p = try AttentionProblem.validate(op: "attention.flash", queries: queries, keys: keys, values: values, options: options)
    var out = Tensor(shape: p.outputShape) { _ in }
    var lse: Tensor? = p.returnLSE ? Tensor(shape: p.lseShape) { _ in } : nil
    queries.withUnsafeBufferPointer { q in
      keys.withUnsafeBufferPointer { k in
        values.withUnsafeBufferPointer { v in
          out.withUnsafeMutableBufferPointer { o in
            if lse != nil {
              lse!.withUnsafeMutableBufferPointer { l in
                forward(p, q: q.baseAddress!, k: k.baseAddress!, v: v.baseAddress!, out: o.baseAddress!, lse: l.baseAddress!)
              }
            } else {
              forward(p, q: q.baseAddress!, k: k.baseAddress!, v: v.baseAddress!, out: o.baseAddress!, lse: nil)
            }
          }
        }
      }
    }
    return AttentionResult(output: out, lse: lse)
  }

  /// Runs the forward pass on raw memory laid out as `problem` describes.
  ///
  /// - Parameters:
  ///   - out: output, `problem.outputShape`, fully written.
  ///   - lse: log-sum-exp, `[B, Hq, Nq]`, or nil. Rows of the processed sequences are written.
  ///   - emptyRowLSE: the log-sum-exp written for a query that sees no key: +∞ for a final result
  ///     (so a backward pass gets zero probabilities), −∞ for a partial result that will be merged.
  package func forward(
    _ problem: AttentionProblem, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
    out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>?, emptyRowLSE: Float = .infinity
  ) {
    let plan = FlashPlan(problem, blockQ: blockQ, blockK: blockK)
    let items = plan.workItems()
    let workers = Parallel.workers(for: items.count, threads: problem.threads)
    let scratch = AlignedBuffer<Float>(count: workers * plan.scratchFloats)
    let s = SendablePointer(scratch.pointer)
    let qp = SendablePointer(q), kp = SendablePointer(k), vp = SendablePointer(v), op = SendablePointer(out)
    let lp = lse.map { SendablePointer($0) }
    Parallel.forEach(items.count, threads: workers) { item, worker in
      plan.run(items[item], q: qp.pointer, k: kp.pointer, v: vp.pointer, out: op.pointer, lse: lp?.pointer,
               emptyRowLSE: emptyRowLSE, scratch: s.pointer + worker * plan.scratchFloats)
    }
    withExtendedLifetime(scratch) {}
  }
}

/// One unit of work: a block of queries of one head of one sequence.
struct FlashWorkItem: Sendable {
  var sequence: Int32
  var head: Int32
  var firstQuery: Int32
}

/// `indices` ordered by descending `cost`, equal costs keeping their order: the work order that
/// ends a dynamic schedule balanced (the cheapest items last).
func heaviestFirst<C: Collection>(_ indices: C, cost: (Int) -> Int) -> [Int] where C.Element == Int {
  indices.sorted { a, b in cost(a) != cost(b) ? cost(a) > cost(b) : a < b }
}

/// The block geometry and scratch layout of one flash forward call.
struct FlashPlan: Sendable {
  let p: AttentionProblem
  let blockQ: Int
  let blockK: Int
  /// Lane vectors per query block row.
  let lanesQ: Int
  /// Tiles per query block.
  let tilesQ: Int
  /// Key rows in the score buffer (blockK rounded up to the tile height).
  let rowsK: Int
  /// Value columns in the output buffer (Dv rounded up to the tile height).
  let rowsV: Int
  let scratchFloats: Int
  /// Offsets (in floats) of the scratch regions: Qᵀ, Sᵀ, Oᵀ and the statistics vectors.
  let stOffset: Int, otOffset: Int, vecOffset: Int, vecStride: Int

  init(_ p: AttentionProblem, blockQ: Int, blockK: Int) {
    self.p = p
    self.blockQ = blockQ
    self.blockK = blockK
    lanesQ = blockQ / laneWidth
    tilesQ = blockQ / AttentionTiles.width
    let r = AttentionTiles.rows
    rowsK = (blockK + r - 1) / r * r
    rowsV = (p.valueDim + r - 1) / r * r
    // Qᵀ [D][blockQ], Sᵀ [rowsK][blockQ], Oᵀ [rowsV][blockQ], then 6 vectors of blockQ:
    // max, safe max, alpha, sum, block sum, spare; each region rounded to 16 floats (64 bytes).
    // Each region starts on a 64-byte line, skewed by a few lines so that rows of different
    // regions with the same index do not share their low 12 address bits (4K aliasing stalls
    // loads behind unrelated stores).
    func round16(_ n: Int) -> Int { (n + 15) / 16 * 16 }
    let skew = 3
    stOffset = round16(p.headDim * blockQ) + skew * 16
    otOffset = stOffset + round16(rowsK * blockQ) + skew * 16
    vecOffset = otOffset + round16(rowsV * blockQ) + skew * 16
    vecStride = round16(blockQ)
    scratchFloats = vecOffset + 6 * vecStride + skew * 16
  }

  /// The visible key range of query rows `i0..<i1` of `seq` (empty if none).
  func keyRange(_ seq: AttentionSequence, _ i0: Int, _ i1: Int) -> Range<Int> {
    var lo = 0, hi = seq.keyCount
    if let l = p.windowLeft { lo = max(lo, i0 + seq.offset - l) }
    if let r = p.windowRight { hi = min(hi, i1 - 1 + seq.offset + r + 1) }
    return lo < hi ? lo..<hi : lo..<lo
  }

  /// Every (sequence, head, query block): head by head, and within a head heaviest first.
  ///
  /// Consecutive items share a head, so the workers running them at the same time read the same
  /// keys and values: what one core brings into the shared cache the other finds there. (Sorting
  /// all items by cost instead interleaves the heads; with causal masking at N = 8192, D = 128 two
  /// threads then ran at 0.70 of the non-causal time instead of about half.) Heaviest first within
  /// each head keeps the schedule's tail light, so the dynamic schedule still ends balanced.
  func workItems() -> [FlashWorkItem] {
    var items: [FlashWorkItem] = []
    for (si, seq) in p.sequences.enumerated() where seq.queryCount > 0 {
      let starts = Array(stride(from: 0, to: seq.queryCount, by: blockQ))
      let costs = starts.map { keyRange(seq, $0, min($0 + blockQ, seq.queryCount)).count + 1 }
      let order = heaviestFirst(starts.indices) { costs[$0] }
      for h in 0..<p.queryHeads {
        items += order.map { FlashWorkItem(sequence: Int32(si), head: Int32(h), firstQuery: Int32(starts[$0])) }
      }
    }
    return items
  }

  // Unit conversions: scores are kept in log2 units.
  /// How far (log2 units) scores may exceed the softmax shift before it is raised: numerators
  /// stay ≤ 2^8, far from overflow, and the shift rarely moves after the first tiles.
  static let headroom: Float = 8
  static let log2e: Float = 1.442_695_040_888_963_4
  static let ln2: Float = 0.693_147_180_559_945_3

  /// Processes one query block.
  func run(
    _ item: FlashWorkItem, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
    out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>?, emptyRowLSE: Float,
    scratch: UnsafeMutablePointer<Float>
  ) {
    let seq = p.sequences[Int(item.sequence)]
    let h = Int(item.head), g = p.kvHead(h)
    let i0 = Int(item.firstQuery)
    let rows = min(blockQ, seq.queryCount - i0)
    let D = p.headDim, Dv = p.valueDim
    let L = laneWidth
    let qRows = p.queryRows, kRows = p.keyRows, vRows = p.valueRows, oRows = p.outputRows

    // Scratch regions (see init).
    let qtF = scratch                                   // Qᵀ  [D][blockQ]
    let stF = scratch + stOffset                        // Sᵀ  [rowsK][blockQ]
    let otF = scratch + otOffset                        // Oᵀ  [rowsV][blockQ]
    let vecs = scratch + vecOffset
    let stride16 = vecStride
    let qt = UnsafeMutableRawPointer(qtF).assumingMemoryBound(to: Lane.self)
    let st = UnsafeMutableRawPointer(stF).assumingMemoryBound(to: Lane.self)
    let ot = UnsafeMutableRawPointer(otF).assumingMemoryBound(to: Lane.self)
    let mRun = UnsafeMutableRawPointer(vecs).assumingMemoryBound(to: Lane.self)                    // softmax shift
    let tileMax = UnsafeMutableRawPointer(vecs + stride16).assumingMemoryBound(to: Lane.self)      // tile max / factors
    let alpha = UnsafeMutableRawPointer(vecs + 2 * stride16).assumingMemoryBound(to: Lane.self)   // block rescale
    let lRun = UnsafeMutableRawPointer(vecs + 3 * stride16).assumingMemoryBound(to: Lane.self)    // running sum
    let blockSum = UnsafeMutableRawPointer(vecs + 4 * stride16).assumingMemoryBound(to: Lane.self) // block sums

    let keys = keyRange(seq, i0, i0 + rows)
    let lseBase = (seq.batch * p.queryHeads + h) * p.queryLength + seq.queryStart + i0
    let oBase = oRows.offset(batch: seq.batch, head: h, row: seq.queryStart + i0)
    if keys.isEmpty {
      for i in 0..<rows {
        let o = out + oBase + i * oRows.rowStride
        for c in 0..<Dv { o[c] = 0 }
        lse?[lseBase + i] = emptyRowLSE
      }
      return
    }

    // Pack Qᵀ with the score scale folded in: τ·log₂e, or τ/c under a softcap c (the tanh then
    // maps back to log2 units).
    let qScale: Float = p.softcap.map { p.scale / $0 } ?? p.scale * FlashPlan.log2e
    let qBase = q + qRows.offset(batch: seq.batch, head: h, row: seq.queryStart + i0)
    for i in 0..<rows {
      let qi = qBase + i * qRows.rowStride
      for d in 0..<D { qtF[d * blockQ + i] = qi[d] * qScale }
    }
    if rows < blockQ {
      for d in 0..<D { for i in rows..<blockQ { qtF[d * blockQ + i] = 0 } }
    }
    otF.update(repeating: 0, count: rowsV * blockQ)
    for x in 0..<lanesQ {
      mRun[x] = Lane(repeating: -.infinity)
      lRun[x] = Lane()
    }

    let kHead = k + kRows.offset(batch: seq.batch, head: g, row: seq.keyStart)
    let vHead = v + vRows.offset(batch: seq.batch, head: g, row: seq.keyStart)
    let ldk = kRows.rowStride, ldv = vRows.rowStride
    let softcapLog2 = p.softcap.map { $0 * FlashPlan.log2e }
    let slopeLog2 = p.alibi.map { $0[seq.batch * p.queryHeads + h] * FlashPlan.log2e }
    let lastRow = i0 + rows - 1
    let tileRows = AttentionTiles.rows
    let TV = tileVectors

    /// Turns raw scores in rows `r0..<r1` (lane vectors `x0..<x1`) into softmax numerators.
    /// The shift `mRun` (running maximum, in log2 units) is raised only when these scores exceed
    /// it by more than `headroom`, so numerators stay ≤ 2^headroom; a raise rescales the block's
    /// earlier numerators (rows 0..<r0), its sums and its factor `alpha` by exp2(old − new).
    func absorb(_ r0: Int, _ r1: Int, _ x0: Int, _ x1: Int) {
      var raised = false
      for x in x0..<x1 {
        var m = Lane(repeating: -.infinity)
        for j in r0..<r1 { m = vmax(m, st[j * lanesQ + x]) }
        let old = mRun[x]
        let raise = m .> old + Lane(repeating: FlashPlan.headroom)
        if any(raise) {
          let new = old.replacing(with: m, where: raise)
          // exp2(−∞ − finite) = 0: nothing was accumulated under a −∞ shift.
          tileMax[x] = exp2Lane(old - new.replacing(with: 0, where: new .== -Lane.Scalar.infinity))
          mRun[x] = new
          raised = true
        } else {
          tileMax[x] = Lane(repeating: 1)
        }
      }
      if raised {
        for x in x0..<x1 {
          let f = tileMax[x]
          alpha[x] *= f
          blockSum[x] *= f
          for j in 0..<r0 { st[j * lanesQ + x] *= f }
        }
      }
      for x in x0..<x1 {
        // A shift still at −∞ means every score so far is −∞: shift by 0 (no NaN).
        let shift = mRun[x].replacing(with: 0, where: mRun[x] .== -Lane.Scalar.infinity)
        var sum = blockSum[x]
        for j in r0..<r1 {
          let e = exp2Lane(st[j * lanesQ + x] - shift)
          st[j * lanesQ + x] = e
          sum += e
        }
        blockSum[x] = sum
      }
    }

    var j0 = keys.lowerBound
    while j0 < keys.upperBound {
      let jn = min(blockK, keys.upperBound - j0)
      // Does every query row of the block see every key of this block?
      var fullyVisible = true
      if let l = p.windowLeft, j0 < lastRow + seq.offset - l { fullyVisible = false }
      if let r = p.windowRight, j0 + jn - 1 > i0 + seq.offset + r { fullyVisible = false }
      let plain = fullyVisible && softcapLog2 == nil && slopeLog2 == nil

      for x in 0..<lanesQ {
        alpha[x] = Lane(repeating: 1)
        blockSum[x] = Lane()
      }

      // Sᵀ = K Qᵀ, six key rows at a time (rows past the block repeat its last key and are
      // never absorbed). Unmasked full tiles compute their numerators in registers.
      let kBlock = kHead + j0 * ldk
      var jt = 0
      while jt < jn {
        let last = jn - 1
        let k0 = kBlock + min(jt, last) * ldk, k1 = kBlock + min(jt + 1, last) * ldk
        let k2 = kBlock + min(jt + 2, last) * ldk, k3 = kBlock + min(jt + 3, last) * ldk
        let k4 = kBlock + min(jt + 4, last) * ldk, k5 = kBlock + min(jt + 5, last) * ldk
        let full = jt + tileRows <= jn
        for t in 0..<tilesQ {
          if plain && full {
            let done = AttentionTiles.qkExpTile(
              k0, k1, k2, k3, k4, k5, depth: D, qt: qt + t * TV, qtStride: lanesQ,
              st: st + jt * lanesQ + t * TV, stStride: lanesQ, shift: mRun + t * TV, headroom: FlashPlan.headroom,
              sum: blockSum + t * TV, tileMax: tileMax + t * TV)
            if !done { absorb(jt, jt + tileRows, t * TV, t * TV + TV) }
          } else {
            AttentionTiles.qkTile(
              k0, k1, k2, k3, k4, k5, depth: D, qt: qt + t * TV, qtStride: lanesQ,
              st: st + jt * lanesQ + t * TV, stStride: lanesQ, rowMax: tileMax + t * TV, updateMax: false)
          }
        }
        if plain && !full { absorb(jt, jn, 0, lanesQ) }
        jt += tileRows
      }

      if !plain {
        // Softcap, ALiBi and the element mask, then the numerators.
        let iota = laneIota
        for j in 0..<jn {
          let key = j0 + j
          // Query rows (block-local) that see `key`: key − off − right ≤ i ≤ key − off + left.
          let iMin = p.windowRight.map { Float(key - seq.offset - $0 - i0) } ?? -Float.infinity
          let iMax = p.windowLeft.map { Float(key - seq.offset + $0 - i0) } ?? Float.infinity
          let row = st + j * lanesQ
          for x in 0..<lanesQ {
            var s = row[x]
            let iv = iota + Lane(repeating: Float(x * L))
            if let c = softcapLog2 { s = Lane(repeating: c) * tanhLane(s) }
            if let slope = slopeLog2 {
              // |i + off − key| for the absolute query row i = i0 + iv.
              var dist = iv + Lane(repeating: Float(i0 + seq.offset - key))
              dist = dist.replacing(with: -dist, where: dist .< 0)
              s = fmadd(s, Lane(repeating: -slope), dist)
            }
            if !fullyVisible {
              s = s.replacing(with: -.infinity, where: (iv .< Lane(repeating: iMin)) .| (iv .> Lane(repeating: iMax)))
            }
            row[x] = s
          }
        }
        absorb(0, jn, 0, lanesQ)
      }
      for x in 0..<lanesQ { lRun[x] = fmadd(blockSum[x], lRun[x], alpha[x]) }

      // Oᵀ = α·Oᵀ + Vᵀ Pᵀ, six value columns at a time (columns past Dv repeat the last one).
      AttentionTiles.pvColumns(vHead + j0 * ldv, ldv: ldv, columns: Dv, count: jn, p: st, ot: ot, alpha: alpha,
                               lanes: lanesQ, tiles: tilesQ)
      j0 += jn
    }

    // O = Oᵀ / l, transposed back; rows that saw no key get 0 and emptyRowLSE.
    let lF = UnsafeMutableRawPointer(lRun).assumingMemoryBound(to: Float.self)
    let mF = UnsafeMutableRawPointer(mRun).assumingMemoryBound(to: Float.self)
    for i in 0..<rows {
      let l = lF[i]
      let inv: Float = l > 0 ? 1 / l : 0
      let o = out + oBase + i * oRows.rowStride
      for c in 0..<Dv { o[c] = otF[c * blockQ + i] * inv }
      if let lse {
        lse[lseBase + i] = l > 0 ? (mF[i] + log2Float(l)) * FlashPlan.ln2 : emptyRowLSE
      }
    }
  }
}

@inline(__always) func log2Float(_ x: Float) -> Float {
  Float(Foundation.log2(Double(x)))
}
