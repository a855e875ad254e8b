import Foundation
import SubqCore
import SubqKernels

/// The FlashAttention-2 backward pass.
///
/// From Q, K, V, the forward's output O and log-sum-exp L, and dO = ∂loss/∂O, it computes dQ, dK
/// and dV without ever holding more than one `block-k × block-q` tile of scores (Dao 2023, §3.2;
/// FlashAttention, Dao et al. 2022, Alg. 4):
///
/// 1. D_i = Σ_c dO_ic · O_ic for every query row (with the queries, dO and L packed per query
///    block for the tiles).
/// 2. Parallel over key blocks: each key block of each key/value head keeps dK_j and dV_j in
///    registers and scratch while it visits every query block (of every query head of its group)
///    that can see it, recomputing S = τ·Q_i·K_jᵀ (+ softcap, ALiBi, mask), P = exp(S − L_i),
///    dV_j += Pᵀ·dO_i, dP = dO_i·V_jᵀ, dS = P ∘ (dP − D_i) (∘ the softcap's 1 − tanh²),
///    dK_j += τ·dSᵀ·Q_i and dQ_i += τ·dS·K_j.
/// 3. dQ is the sum of the per-chunk partial dQ buffers, in a fixed order.
///
/// **Determinism.** The key blocks of each (sequence, key/value head) are cut into a number of
/// contiguous chunks that depends only on the problem's shape (never on the thread count); each
/// chunk runs serially on one worker and accumulates dQ into its own buffer, and the buffers are
/// summed in chunk order. Every dK/dV row is written by exactly one chunk. So results are
/// bit-identical on every run and for any number of threads. flash-attn reaches the same end with
/// `deterministic=True` (split dQ accumulators summed in order); its default uses atomic adds.
///
/// Like the forward pass, tiles are transposed (query index along the SIMD lanes), scores are kept
/// in log2 units, and key blocks no query can see are skipped (causal costs about half).
///
/// - Complexity: O(B·Hq·Nq·Nk·(D + Dv)) time (2.5× the forward's FLOPs: five block products instead of
///   two); extra memory O((2 + c)·B·Hq·Nq·(D + Dv)) for the packed queries and c ≤ 8 partial dQ
///   buffers, plus O(threads · block-k · (block-q + D + Dv)) scratch. No N×N matrix.
extension FlashAttention: DifferentiableAttentionMethod {
  public func gradients(
    queries: Tensor, keys: Tensor, values: Tensor, outputGradient: Tensor, options: AttentionOptions
  ) throws(SubqError) -> AttentionGradients {
    var o = options
    o.returnLSE = true
    let forward = try attention(queries: queries, keys: keys, values: values, options: o)
    return try backward(queries: queries, keys: keys, values: values, output: forward.output, lse: forward.lse!,
                        outputGradient: outputGradient, options: options)
  }

  /// The backward pass from a forward pass's results.
  ///
  /// - Parameters:
  ///   - output: the forward's output O (shape of the output).
  ///   - lse: the forward's log-sum-exp `[B, Hq, Nq]` (natural log; +∞ for rows that see no key,
  ///     as ``FlashAttention`` returns with `returnLSE`).
  ///   - outputGradient: dO, shape of the output.
  ///   - options: the forward's options (`returnLSE` has no effect).
  /// - Returns: dQ, dK, dV in the shapes and layouts of Q, K, V.
  /// - Throws: ``SubqError`` for invalid inputs (as the forward pass), O or dO of the wrong shape
  ///   or holding NaN/±∞ (unless allowed), or an LSE of the wrong shape or holding NaN or −∞.
  public func backward(
    queries: Tensor, keys: Tensor, values: Tensor, output: Tensor, lse: Tensor, outputGradient: Tensor,
    options: AttentionOptions
  ) throws(SubqError) -> AttentionGradients {
    let p = try AttentionProblem.validate(op: "attention.flash.backward", queries: queries, keys: keys, values: values, options: options)
    try p.checkOutputLike(output, name: "O", allowNonFinite: options.allowNonFinite)
    try p.checkOutputLike(outputGradient, name: "dO", allowNonFinite: options.allowNonFinite)
    try p.checkLSE(lse)
    var dq = Tensor(shape: queries.shape) { _ in }
    var dk = Tensor(shape: keys.shape, repeating: 0)
    var dv = Tensor(shape: values.shape, repeating: 0)
    queries.withUnsafeBufferPointer { q in
      keys.withUnsafeBufferPointer { k in
        values.withUnsafeBufferPointer { v in
          output.withUnsafeBufferPointer { o in
            lse.withUnsafeBufferPointer { l in
              outputGradient.withUnsafeBufferPointer { dout in
                dq.withUnsafeMutableBufferPointer { dqb in
                  dk.withUnsafeMutableBufferPointer { dkb in
                    dv.withUnsafeMutableBufferPointer { dvb in
                      backward(p, q: q.baseAddress!, k: k.baseAddress!, v: v.baseAddress!, o: o.baseAddress!,
                               lse: l.baseAddress!, dout: dout.baseAddress!,
                               dq: dqb.baseAddress!, dk: dkb.baseAddress!, dv: dvb.baseAddress!)
                    }
                  }
                }
              }
            }
          }
        }
      }
    }
    return AttentionGradients(queries: dq, keys: dk, values: dv)
  }

  /// Runs the backward pass on raw memory laid out as `problem` describes. dQ is fully written;
  /// dK and dV are written only for the key rows some query can see, so they must hold zeros.
  package func backward(
    _ problem: AttentionProblem, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
    o: UnsafePointer<Float>, lse: UnsafePointer<Float>, dout: UnsafePointer<Float>,
    dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>
  ) {
    let plan = FlashBackwardPlan(problem, blockQ: blockQ, blockK: blockK)
    let packed = UnsafeMutableRawPointer.allocate(byteCount: max(1, plan.totalBlocks * plan.packStride) * 4, alignment: 64)
      .bindMemory(to: Float.self, capacity: max(1, plan.totalBlocks * plan.packStride))
    let partials = UnsafeMutableRawPointer.allocate(byteCount: max(1, plan.chunks * plan.totalBlocks * plan.partStride) * 4, alignment: 64)
      .bindMemory(to: Float.self, capacity: max(1, plan.chunks * plan.totalBlocks * plan.partStride))
    defer {
      UnsafeMutableRawPointer(packed).deallocate()
      UnsafeMutableRawPointer(partials).deallocate()
    }
    let pk = SendablePointer(packed), pt = SendablePointer(partials)
    let qp = SendablePointer(q), kp = SendablePointer(k), vp = SendablePointer(v), op = SendablePointer(o)
    let lp = SendablePointer(lse), dop = SendablePointer(dout)
    let dqp = SendablePointer(dq), dkp = SendablePointer(dk), dvp = SendablePointer(dv)
    let blocks = plan.blockList()

    // 1. Pack the query blocks and compute D.
    Parallel.forEach(blocks.count, threads: problem.threads) { item, _ in
      plan.pack(blocks[item], q: qp.pointer, o: op.pointer, lse: lp.pointer, dout: dop.pointer, packed: pk.pointer)
    }
    // 2. dK, dV and the partial dQ, per chunk of key blocks.
    let items = plan.items
    let workers = Parallel.workers(for: items.count, threads: problem.threads)
    let scratch = AlignedBuffer<Float>(count: workers * plan.scratchFloats)
    let s = SendablePointer(scratch.pointer)
    let order = plan.itemOrder
    Parallel.forEach(order.count, threads: workers) { n, worker in
      plan.run(items[order[n]], k: kp.pointer, v: vp.pointer, packed: pk.pointer, partials: pt.pointer,
               dk: dkp.pointer, dv: dvp.pointer, scratch: s.pointer + worker * plan.scratchFloats)
    }
    withExtendedLifetime(scratch) {}
    // 3. dQ = τ · Σ_chunks partial, in chunk order.
    Parallel.forEach(blocks.count, threads: problem.threads) { item, _ in
      plan.reduce(blocks[item], partials: pt.pointer, dq: dqp.pointer)
    }
  }
}

/// A query block: sequence, query head, block index within the head.
struct BackwardBlock: Sendable {
  var sequence: Int32
  var head: Int32
  var block: Int32
}

/// A unit of backward work: a contiguous run of key blocks of one (sequence, key/value head).
package struct BackwardItem: Sendable {
  package var sequence: Int
  package var kvHead: Int
  package var chunk: Int
  /// Key blocks `firstBlock..<endBlock` of the (sequence, key/value head)'s visible key range.
  package var firstBlock: Int
  package var endBlock: Int
  /// Query blocks whose partial dQ this item writes (for every query head of the group).
  package var firstQueryBlock: Int
  package var endQueryBlock: Int
  package var cost: Int
}

/// Block geometry, packing layout, chunking and scratch of one backward call.
package struct FlashBackwardPlan: Sendable {
  let p: AttentionProblem
  let blockQ: Int, blockK: Int
  let lanesQ: Int, tilesQ: Int
  /// blockK rounded up to the tile height; D rounded up to the tile height (rows of dQᵀ).
  let rowsK: Int, rowsD: Int
  /// D and Dv rounded up to the lane width (row strides of the packed Q, dO and dK/dV scratch).
  let dPad: Int, dvPad: Int
  /// First global block index and blocks per head, per sequence.
  let blockBase: [Int], blocksPerHead: [Int]
  let totalBlocks: Int
  /// Packed query block: Qᵀ·scale [D][bq], dOᵀ [Dv][bq], Q [bq][dPad], dO [bq][dvPad], L·log₂e
  /// [bq], D [bq].
  let packStride: Int, offDOt: Int, offQ: Int, offDO: Int, offLSE: Int, offD: Int
  /// Floats per partial dQᵀ block ([rowsD][bq]) and number of partial buffers.
  let partStride: Int
  package let chunks: Int
  package let items: [BackwardItem]
  /// The items of (sequence s, key/value head g) at index s·Hkv + g, in chunk order.
  let itemRanges: [Range<Int>]
  /// Item indices: (sequence, key/value head) by (sequence, key/value head), heaviest first within each.
  let itemOrder: [Int]
  /// Visible key range of each sequence (the union over its queries).
  let keySpans: [Range<Int>]
  /// Scratch per worker: Sᵀ/Pᵀ, dPᵀ/dSᵀ, tanh [rowsK][bq]; dK, dV accumulators; ones [bq].
  let scratchFloats: Int, offDP: Int, offT: Int, offDK: Int, offDV: Int, offOnes: Int

  /// Items the chunk count aims for, independent of the machine (so results do not depend on the
  /// thread count): enough to keep 16 or more cores busy on typical shapes.
  static let targetItems = 32
  static let maxChunks = 8
  /// Upper bound on the partial dQ buffers when more than one chunk is used.
  static let maxPartialBytes = 512 << 20

  package init(_ p: AttentionProblem, blockQ: Int, blockK: Int) {
    self.p = p
    self.blockQ = blockQ
    self.blockK = blockK
    lanesQ = blockQ / laneWidth
    tilesQ = blockQ / AttentionTiles.width
    let r = AttentionTiles.rows
    rowsK = (blockK + r - 1) / r * r
    rowsD = (p.headDim + r - 1) / r * r
    dPad = (p.headDim + laneWidth - 1) / laneWidth * laneWidth
    dvPad = (p.valueDim + laneWidth - 1) / laneWidth * laneWidth
    func round16(_ n: Int) -> Int { (n + 15) / 16 * 16 }

    var base: [Int] = [], per: [Int] = [], total = 0
    for seq in p.sequences {
      let nb = (seq.queryCount + blockQ - 1) / blockQ
      base.append(total)
      per.append(nb)
      total += nb * p.queryHeads
    }
    blockBase = base
    blocksPerHead = per
    totalBlocks = total

    let D = p.headDim, Dv = p.valueDim
    offDOt = round16(D * blockQ)
    offQ = offDOt + round16(Dv * blockQ)
    offDO = offQ + round16(blockQ * dPad)
    offLSE = offDO + round16(blockQ * dvPad)
    offD = offLSE + round16(blockQ)
    packStride = offD + round16(blockQ)
    partStride = rowsD * blockQ

    let skew = 3 * 16
    offDP = round16(rowsK * blockQ) + skew
    offT = offDP + round16(rowsK * blockQ) + skew
    offDK = offT + (p.softcap != nil ? round16(rowsK * blockQ) + skew : 0)
    offDV = offDK + round16(rowsK * dPad) + skew
    offOnes = offDV + round16(rowsK * dvPad) + skew
    scratchFloats = offOnes + round16(blockQ) + skew

    // Visible key span per sequence: keys some query sees.
    var spans: [Range<Int>] = []
    for seq in p.sequences {
      var lo = 0, hi = seq.keyCount
      if seq.queryCount == 0 { hi = 0 }
      if let l = p.windowLeft { lo = max(lo, seq.offset - l) }
      if let rr = p.windowRight { hi = min(hi, seq.queryCount - 1 + seq.offset + rr + 1) }
      spans.append(lo < hi ? lo..<hi : 0..<0)
    }
    keySpans = spans

    // Chunks: a shape-only choice.
    let units = max(1, p.sequences.count * p.keyValueHeads)
    var c = min(FlashBackwardPlan.maxChunks, max(1, (FlashBackwardPlan.targetItems + units - 1) / units))
    while c > 1 && c * total * rowsD * blockQ * 4 > FlashBackwardPlan.maxPartialBytes { c -= 1 }

    // Cut each (sequence, key/value head)'s key blocks into ≤ c contiguous chunks of similar cost.
    var list: [BackwardItem] = []
    var ranges = [Range<Int>](repeating: 0..<0, count: p.sequences.count * p.keyValueHeads)
    var maxChunk = 1
    for (si, seq) in p.sequences.enumerated() {
      let span = spans[si]
      if span.isEmpty { continue }
      let nkb = (span.count + blockK - 1) / blockK
      var costs: [Int] = []
      var qRanges: [Range<Int>] = []
      for kb in 0..<nkb {
        let j0 = span.lowerBound + kb * blockK
        let j1 = min(span.upperBound, j0 + blockK)
        let qr = FlashBackwardPlan.queryBlocks(p, seq, j0, j1, blockQ)
        qRanges.append(qr)
        costs.append(qr.count * (p.headDim + p.valueDim) * (j1 - j0) + 1)
      }
      let parts = FlashBackwardPlan.contiguousSplit(costs, parts: min(c, nkb))
      maxChunk = max(maxChunk, parts.count)
      for g in 0..<p.keyValueHeads {
        let first = list.count
        defer { ranges[si * p.keyValueHeads + g] = first..<list.count }
        for (ci, range) in parts.enumerated() {
          var lo = Int.max, hi = Int.min
          for kb in range where !qRanges[kb].isEmpty {
            lo = min(lo, qRanges[kb].lowerBound)
            hi = max(hi, qRanges[kb].upperBound)
          }
          let cost = range.reduce(0) { $0 + costs[$1] } * p.groupSize
          list.append(BackwardItem(sequence: si, kvHead: g, chunk: ci, firstBlock: range.lowerBound, endBlock: range.upperBound,
                                   firstQueryBlock: lo == Int.max ? 0 : lo, endQueryBlock: lo == Int.max ? 0 : hi, cost: cost))
        }
      }
    }
    chunks = maxChunk
    items = list
    itemRanges = ranges
    // Head by head, heaviest first within a head: the workers running side by side then read the
    // same Q, dO and statistics, which one core brings into the shared cache for the other.
    // (Sorting all items by cost interleaves the heads, whose equal chunks cost the same.)
    itemOrder = ranges.flatMap { r in heaviestFirst(r) { list[$0].cost } }
  }

  /// Query blocks (of `blockQ`, from the sequence's first query) that see some key in `j0..<j1`.
  static func queryBlocks(_ p: AttentionProblem, _ seq: AttentionSequence, _ j0: Int, _ j1: Int, _ blockQ: Int) -> Range<Int> {
    // Query i sees key j iff i + off − left ≤ j ≤ i + off + right.
    var iLo = 0, iHi = seq.queryCount
    if let r = p.windowRight { iLo = max(iLo, j0 - seq.offset - r) }
    if let l = p.windowLeft { iHi = min(iHi, j1 - 1 - seq.offset + l + 1) }
    if iLo >= iHi { return 0..<0 }
    return (iLo / blockQ)..<((iHi + blockQ - 1) / blockQ)
  }

  /// Splits `costs` into at most `parts` non-empty contiguous ranges of similar total cost.
  static func contiguousSplit(_ costs: [Int], parts: Int) -> [Range<Int>] {
    let n = costs.count
    guard parts > 1, n > 1 else { return [0..<n] }
    let total = costs.reduce(0, +)
    var ranges: [Range<Int>] = []
    var start = 0, acc = 0
    for t in 1..<parts {
      let target = (total * t + parts - 1) / parts
      var end = start
      // Leave at least one block for each remaining part.
      while end < n - (parts - t) && (end == start || acc + costs[end] <= target) {
        acc += costs[end]
        end += 1
      }
      ranges.append(start..<end)
      start = end
    }
    ranges.append(start..<n)
    return ranges
  }

  /// Every query block, in order.
  func blockList() -> [BackwardBlock] {
    var out: [BackwardBlock] = []
    out.reserveCapacity(totalBlocks)
    for (si, _) in p.sequences.enumerated() {
      for h in 0..<p.queryHeads {
        for b in 0..<blocksPerHead[si] { out.append(BackwardBlock(sequence: Int32(si), head: Int32(h), block: Int32(b))) }
      }
    }
    return out
  }

  @inline(__always) func blockIndex(_ s: Int, _ h: Int, _ b: Int) -> Int { blockBase[s] + h * blocksPerHead[s] + b }

  /// Packs one query block: Qᵀ (scaled as the forward does), dOᵀ, Q and dO row-major (zero
  /// padded), L in log2 units (+∞ on padding lanes, so their probabilities are 0) and D.
  func pack(
    _ blk: BackwardBlock, q: UnsafePointer<Float>, o: UnsafePointer<Float>, lse: UnsafePointer<Float>,
    dout: UnsafePointer<Float>, packed: UnsafeMutablePointer<Float>
  ) {
    let s = Int(blk.sequence), h = Int(blk.head), b = Int(blk.block)
    let seq = p.sequences[s]
    let i0 = b * blockQ
    let rows = min(blockQ, seq.queryCount - i0)
    let D = p.headDim, Dv = p.valueDim
    let dst = packed + blockIndex(s, h, b) * packStride
    let qt = dst, dot_ = dst + offDOt, qn = dst + offQ, don = dst + offDO, l2 = dst + offLSE, dd = dst + offD
    let qScale: Float = p.softcap.map { p.scale / $0 } ?? p.scale * FlashPlan.log2e
    let qRows = p.queryRows, oRows = p.outputRows
    qt.update(repeating: 0, count: D * blockQ)
    dot_.update(repeating: 0, count: Dv * blockQ)
    qn.update(repeating: 0, count: blockQ * dPad)
    don.update(repeating: 0, count: blockQ * dvPad)
    for i in 0..<rows {
      let row = seq.queryStart + i0 + i
      let qi = q + qRows.offset(batch: seq.batch, head: h, row: row)
      let oi = o + oRows.offset(batch: seq.batch, head: h, row: row)
      let gi = dout + oRows.offset(batch: seq.batch, head: h, row: row)
      for d in 0..<D {
        qt[d * blockQ + i] = qi[d] * qScale
        qn[i * dPad + d] = qi[d]
      }
      for c in 0..<Dv {
        dot_[c * blockQ + i] = gi[c]
        don[i * dvPad + c] = gi[c]
      }
      l2[i] = lse[(seq.batch * p.queryHeads + h) * p.queryLength + row] * FlashPlan.log2e
      dd[i] = SubqKernels.dot(gi, oi, Dv)
    }
    for i in rows..<blockQ {
      l2[i] = .infinity
      dd[i] = 0
    }
  }

  /// Processes one item: its key blocks, against every query block of the group that sees them.
  func run(
    _ item: BackwardItem, k: UnsafePointer<Float>, v: UnsafePointer<Float>, packed: UnsafePointer<Float>,
    partials: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
    scratch: UnsafeMutablePointer<Float>
  ) {
    let s = item.sequence, g = item.kvHead
    let seq = p.sequences[s]
    let span = keySpans[s]
    let D = p.headDim, Dv = p.valueDim
    let L = laneWidth
    let kRows = p.keyRows, vRows = p.valueRows
    let ldk = kRows.rowStride, ldv = vRows.rowStride
    let group = p.groupSize
    let TV = tileVectors
    let tileRows = AttentionTiles.rows
    let dVec = dPad / L, dvVec = dvPad / L
    let maxV = AccumulateTiles.maxVectors

    let stF = scratch, dpF = scratch + offDP, tF = scratch + offT
    let dKacc = scratch + offDK, dVacc = scratch + offDV
    let st = UnsafeMutableRawPointer(stF).assumingMemoryBound(to: Lane.self)
    let dp = UnsafeMutableRawPointer(dpF).assumingMemoryBound(to: Lane.self)
    let tb = UnsafeMutableRawPointer(tF).assumingMemoryBound(to: Lane.self)
    let ones = UnsafeMutableRawPointer(scratch + offOnes).assumingMemoryBound(to: Lane.self)
    let dKl = UnsafeMutableRawPointer(dKacc).assumingMemoryBound(to: Lane.self)
    let dVl = UnsafeMutableRawPointer(dVacc).assumingMemoryBound(to: Lane.self)
    for x in 0..<lanesQ { ones[x] = Lane(repeating: 1) }

    // This chunk's partial dQᵀ blocks start at zero.
    let part = partials + item.chunk * totalBlocks * partStride
    for h in (g * group)..<((g + 1) * group) {
      for b in item.firstQueryBlock..<item.endQueryBlock {
        (part + blockIndex(s, h, b) * partStride).update(repeating: 0, count: partStride)
      }
    }

    let softcapLog2 = p.softcap.map { $0 * FlashPlan.log2e }
    let kHead = k + kRows.offset(batch: seq.batch, head: g, row: seq.keyStart)
    let vHead = v + vRows.offset(batch: seq.batch, head: g, row: seq.keyStart)

    for kb in item.firstBlock..<item.endBlock {
      let j0 = span.lowerBound + kb * blockK
      let jn = min(blockK, span.upperBound - j0)
      let kBlock = kHead + j0 * ldk, vBlock = vHead + j0 * ldv
      dKacc.update(repeating: 0, count: rowsK * dPad)
      dVacc.update(repeating: 0, count: rowsK * dvPad)
      let qbs = FlashBackwardPlan.queryBlocks(p, seq, j0, j0 + jn, blockQ)

      for h in (g * group)..<((g + 1) * group) {
        let slopeLog2 = p.alibi.map { $0[seq.batch * p.queryHeads + h] * FlashPlan.log2e }
        for qb in qbs {
          let i0 = qb * blockQ
          let rows = min(blockQ, seq.queryCount - i0)
          let lastRow = i0 + rows - 1
          // Skip blocks with no visible pair; find whether every pair is visible.
          var iLo = i0, iHi = lastRow
          if let r = p.windowRight { iLo = max(iLo, j0 - seq.offset - r) }
          if let l = p.windowLeft { iHi = min(iHi, j0 + jn - 1 - seq.offset + l) }
          if iLo > iHi { continue }
          var fullyVisible = true
          if let l = p.windowLeft, j0 < lastRow + seq.offset - l { fullyVisible = false }
          if let r = p.windowRight, j0 + jn - 1 > i0 + seq.offset + r { fullyVisible = false }
          let plain = fullyVisible && softcapLog2 == nil && slopeLog2 == nil

          let blk = blockIndex(s, h, qb)
          let pk = packed + blk * packStride
          let qt = UnsafeRawPointer(pk).assumingMemoryBound(to: Lane.self)
          let dOt = UnsafeRawPointer(pk + offDOt).assumingMemoryBound(to: Lane.self)
          let qn = UnsafeRawPointer(pk + offQ).assumingMemoryBound(to: Lane.self)
          let don = UnsafeRawPointer(pk + offDO).assumingMemoryBound(to: Lane.self)
          let l2 = UnsafeRawPointer(pk + offLSE).assumingMemoryBound(to: Lane.self)
          let dd = UnsafeRawPointer(pk + offD).assumingMemoryBound(to: Lane.self)

          // Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ, six key rows at a time (rows past the block repeat its last key).
          var jt = 0
          while jt < jn {
            let last = jn - 1
            let r0 = min(jt, last), r1 = min(jt + 1, last), r2 = min(jt + 2, last)
            let r3 = min(jt + 3, last), r4 = min(jt + 4, last), r5 = min(jt + 5, last)
            for t in 0..<tilesQ {
              AttentionTiles.qkTile(
                kBlock + r0 * ldk, kBlock + r1 * ldk, kBlock + r2 * ldk, kBlock + r3 * ldk, kBlock + r4 * ldk, kBlock + r5 * ldk,
                depth: D, qt: qt + t * TV, qtStride: lanesQ, st: st + jt * lanesQ + t * TV, stStride: lanesQ,
                rowMax: ones, updateMax: false)
              AttentionTiles.qkTile(
                vBlock + r0 * ldv, vBlock + r1 * ldv, vBlock + r2 * ldv, vBlock + r3 * ldv, vBlock + r4 * ldv, vBlock + r5 * ldv,
                depth: Dv, qt: dOt + t * TV, qtStride: lanesQ, st: dp + jt * lanesQ + t * TV, stStride: lanesQ,
                rowMax: ones, updateMax: false)
            }
            jt += tileRows
          }

          // Pᵀ = exp2(Sᵀ − L) and dSᵀ = Pᵀ ∘ (dPᵀ − D) (∘ (1 − t²) under a softcap), in place.
          if plain {
            for j in 0..<jn {
              let srow = st + j * lanesQ, drow = dp + j * lanesQ
              for x in 0..<lanesQ {
                let pr = exp2Lane(srow[x] - l2[x])
                srow[x] = pr
                drow[x] = pr * (drow[x] - dd[x])
              }
            }
          } else {
            let iota = laneIota
            for j in 0..<jn {
              let key = j0 + j
              let iMin = p.windowRight.map { Float(key - seq.offset - $0 - i0) } ?? -Float.infinity
              let iMax = p.windowLeft.map { Float(key - seq.offset + $0 - i0) } ?? Float.infinity
              let srow = st + j * lanesQ, drow = dp + j * lanesQ, trow = tb + j * lanesQ
              for x in 0..<lanesQ {
                var sc = srow[x]
                let iv = iota + Lane(repeating: Float(x * L))
                if let c = softcapLog2 {
                  let t = tanhLane(sc)
                  trow[x] = t
                  sc = Lane(repeating: c) * t
                }
                if let slope = slopeLog2 {
                  var dist = iv + Lane(repeating: Float(i0 + seq.offset - key))
                  dist = dist.replacing(with: -dist, where: dist .< 0)
                  sc = fmadd(sc, Lane(repeating: -slope), dist)
                }
                if !fullyVisible {
                  sc = sc.replacing(with: -.infinity, where: (iv .< Lane(repeating: iMin)) .| (iv .> Lane(repeating: iMax)))
                }
                let pr = exp2Lane(sc - l2[x])
                srow[x] = pr
                var ds = pr * (drow[x] - dd[x])
                if softcapLog2 != nil {
                  let t = trow[x]
                  ds = ds * fmadd(Lane(repeating: 1), -t, t)
                }
                drow[x] = ds
              }
            }
          }

          // dV += Pᵀ·dO and dK += dSᵀ·Q (τ applied when dK is written), six keys at a time.
          jt = 0
          while jt < jn {
            let sRow = stF + jt * blockQ, dRow = dpF + jt * blockQ
            var c0 = 0
            while c0 < dvVec {
              let nv = min(maxV, dvVec - c0)
              AccumulateTiles.accTile(
                vectors: nv, sRow, sRow + blockQ, sRow + 2 * blockQ, sRow + 3 * blockQ, sRow + 4 * blockQ, sRow + 5 * blockQ,
                depth: rows, b: don + c0, bStride: dvVec, c: dVl + jt * dvVec + c0, cStride: dvVec)
              c0 += nv
            }
            c0 = 0
            while c0 < dVec {
              let nv = min(maxV, dVec - c0)
              AccumulateTiles.accTile(
                vectors: nv, dRow, dRow + blockQ, dRow + 2 * blockQ, dRow + 3 * blockQ, dRow + 4 * blockQ, dRow + 5 * blockQ,
                depth: rows, b: qn + c0, bStride: dVec, c: dKl + jt * dVec + c0, cStride: dVec)
              c0 += nv
            }
            jt += tileRows
          }

          // dQᵀ += Kᵀ·dSᵀ into this chunk's partial (τ applied in the reduction), six head-dim rows
          // at a time (rows past D repeat the last one and land in padding).
          let qPart = UnsafeMutableRawPointer(part + blk * partStride).assumingMemoryBound(to: Lane.self)
          AttentionTiles.pvColumns(kBlock, ldv: ldk, columns: D, count: jn, p: dp, ot: qPart, alpha: ones,
                                   lanes: lanesQ, tiles: tilesQ)
        }
      }

      // Write this key block's dK (× τ) and dV.
      let tau = p.scale
      for j in 0..<jn {
        let kd = dk + kRows.offset(batch: seq.batch, head: g, row: seq.keyStart + j0 + j)
        let vd = dv + vRows.offset(batch: seq.batch, head: g, row: seq.keyStart + j0 + j)
        for d in 0..<D { kd[d] = dKacc[j * dPad + d] * tau }
        for c in 0..<Dv { vd[c] = dVacc[j * dvPad + c] }
      }
    }
  }

  /// Writes dQ for one query block: τ times the sum of the partial buffers of the chunks that
  /// touched it, in chunk order (zeros when none did).
  func reduce(_ blk: BackwardBlock, partials: UnsafePointer<Float>, dq: UnsafeMutablePointer<Float>) {
    let s = Int(blk.sequence), h = Int(blk.head), b = Int(blk.block)
    let seq = p.sequences[s]
    let g = p.kvHead(h)
    let i0 = b * blockQ
    let rows = min(blockQ, seq.queryCount - i0)
    let D = p.headDim
    let idx = blockIndex(s, h, b)
    let qRows = p.queryRows
    var sources: [UnsafePointer<Float>] = []
    for n in itemRanges[s * p.keyValueHeads + g] where items[n].firstQueryBlock <= b && b < items[n].endQueryBlock {
      sources.append(partials + (items[n].chunk * totalBlocks + idx) * partStride)
    }
    let tau = p.scale
    for i in 0..<rows {
      let dst = dq + qRows.offset(batch: seq.batch, head: h, row: seq.queryStart + i0 + i)
      for d in 0..<D {
        var acc: Float = 0
        for src in sources { acc += src[d * blockQ + i] }
        dst[d] = acc * tau
      }
    }
  }
}
