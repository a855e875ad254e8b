import Foundation
import SubqAttention
import SubqCore
import SubqKernels

/// Where a decode call's keys and values live.
enum DecodeKV: @unchecked Sendable {
  /// Float32 tensors addressed as the problem's key and value rows say.
  case tensors(k: UnsafePointer<Float>, v: UnsafePointer<Float>)
  /// One view per sequence (batch entry) of a paged cache.
  case paged([PagedSequenceView])
}

/// The query rows of one key/value head and up to ``SplitKVPlan/maxQueryTile`` queries of one
/// sequence: they share one pass over the keys.
struct DecodeUnit: Sendable {
  var sequence: Int
  var kvHead: Int
  var firstQuery: Int
  var queries: Int
  /// Items (key chunks) of this unit, in key order.
  var items: Range<Int>
}

/// One chunk of keys of one unit.
struct DecodeItem: Sendable {
  var unit: Int
  var keys: Range<Int>
}

/// Block geometry, work split and scratch of one split-KV decoding call.
///
/// Rows of a unit are `r = headInGroup · queries + query`, so every query head of a GQA group and
/// every query of the unit reads each key and value row once.
struct SplitKVPlan: Sendable {
  let p: AttentionProblem
  /// Most rows a unit has, rounded up to the 4-row register tile.
  let rowsPad: Int
  /// D and Dv rounded up to the lane width.
  let dPad: Int, dvPad: Int
  let units: [DecodeUnit]
  let items: [DecodeItem]
  /// Scratch floats per worker: Q rows [rowsPad][dPad], scores [rowsPad][blockKeys], accumulators
  /// [rowsPad][dvPad], then running max, sum and rescale factor [rowsPad] each.
  let scratchFloats: Int, offScores: Int, offAcc: Int, offMax: Int, offSum: Int, offAlpha: Int
  /// Floats per item of the partial outputs ([rowsPad][dvPad]); the partial log-sum-exps are
  /// [items][rowsPad].
  let partStride: Int

  /// Keys per block of the inner loop.
  static let blockKeys = 64
  /// Queries of one sequence sharing a pass over the keys.
  static let maxQueryTile = 16
  /// The automatic split: chunks of at least this many keys…
  static let minChunkKeys = 512
  /// … and at most this many chunks per unit…
  static let maxSplits = 128
  /// … and at most this many chunks in all: splitting only adds parallelism a call with few units
  /// lacks, and every chunk costs a partial output, so a prefill-sized call (thousands of units)
  /// gets one chunk per unit and its partials stay O(Nq·Dv), not O(Nq·Nk·Dv / 512).
  static let maxItems = 4096

  /// - Parameter splits: chunks per unit, or 0 for the automatic choice (which depends only on the
  ///   key count, so results do not depend on the thread count).
  init(_ p: AttentionProblem, splits: Int) {
    self.p = p
    let L = Lane.scalarCount
    dPad = (p.headDim + L - 1) / L * L
    dvPad = (p.valueDim + L - 1) / L * L
    var units: [DecodeUnit] = []
    var items: [DecodeItem] = []
    var maxRows = 1
    let tile = SplitKVPlan.maxQueryTile
    let bk = SplitKVPlan.blockKeys
    // Units in all (query tiles × kv heads), so the automatic split can keep the total number of
    // chunks bounded; it depends on the shape only, never on the thread count.
    let unitCount = p.sequences.reduce(0) { $0 + ($1.queryCount + tile - 1) / tile } * p.keyValueHeads
    let autoSplits = max(1, min(SplitKVPlan.maxSplits, SplitKVPlan.maxItems / max(1, unitCount)))
    for (si, seq) in p.sequences.enumerated() {
      for i0 in stride(from: 0, to: seq.queryCount, by: tile) {
        let nq = min(tile, seq.queryCount - i0)
        maxRows = max(maxRows, nq * p.groupSize)
        // Keys some query of the tile sees.
        var lo = 0, hi = seq.keyCount
        if let l = p.windowLeft { lo = max(lo, i0 + seq.offset - l) }
        if let r = p.windowRight { hi = min(hi, i0 + nq - 1 + seq.offset + r + 1) }
        let span = max(0, hi - lo)
        var chunk = span
        if span > 0 {
          if splits > 0 {
            chunk = (span + splits - 1) / splits
          } else {
            chunk = max(SplitKVPlan.minChunkKeys, (span + autoSplits - 1) / autoSplits)
          }
          chunk = (chunk + bk - 1) / bk * bk
        }
        for g in 0..<p.keyValueHeads {
          let first = items.count
          var j = lo
          while j < hi {
            items.append(DecodeItem(unit: units.count, keys: j..<min(hi, j + chunk)))
            j += chunk
          }
          units.append(DecodeUnit(sequence: si, kvHead: g, firstQuery: i0, queries: nq, items: first..<items.count))
        }
      }
    }
    self.units = units
    self.items = items
    rowsPad = (maxRows + 3) / 4 * 4
    func round16(_ n: Int) -> Int { (n + 15) / 16 * 16 }
    let skew = 3 * 16
    offScores = round16(rowsPad * dPad) + skew
    offAcc = offScores + round16(rowsPad * bk) + skew
    offMax = offAcc + round16(rowsPad * dvPad) + skew
    offSum = offMax + round16(rowsPad)
    offAlpha = offSum + round16(rowsPad)
    scratchFloats = offAlpha + round16(rowsPad) + skew
    partStride = rowsPad * dvPad
  }

  /// Runs every item, then merges each unit's chunks (log-sum-exp rule, chunk order).
  func execute(q: UnsafePointer<Float>, kv: DecodeKV, out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>?) {
    let partials = UnsafeMutableRawPointer.allocate(byteCount: max(1, items.count * partStride) * 4, alignment: 64)
      .bindMemory(to: Float.self, capacity: max(1, items.count * partStride))
    let partialLSE = UnsafeMutableRawPointer.allocate(byteCount: max(1, items.count * rowsPad) * 4, alignment: 64)
      .bindMemory(to: Float.self, capacity: max(1, items.count * rowsPad))
    defer {
      UnsafeMutableRawPointer(partials).deallocate()
      UnsafeMutableRawPointer(partialLSE).deallocate()
    }
    let workers = Parallel.workers(for: items.count, threads: p.threads)
    let scratch = AlignedBuffer<Float>(count: workers * scratchFloats)
    let bounds = AlignedBuffer<Int>(count: workers * rowsPad * 2)
    let s = SendablePointer(scratch.pointer), b = SendablePointer(bounds.pointer)
    let qp = SendablePointer(q), po = SendablePointer(partials), pl = SendablePointer(partialLSE)
    let storage: KVStorageType
    if case .paged(let views) = kv, let first = views.first { storage = first.storage } else { storage = .float32 }
    Parallel.forEach(items.count, threads: workers) { n, worker in
      let sc = s.pointer + worker * scratchFloats, bd = b.pointer + worker * rowsPad * 2
      switch storage {
      case .float32:
        run(Float.self, n, q: qp.pointer, kv: kv, partial: po.pointer + n * partStride, partialLSE: pl.pointer + n * rowsPad, scratch: sc, bounds: bd)
      case .float16:
        run(Float16.self, n, q: qp.pointer, kv: kv, partial: po.pointer + n * partStride, partialLSE: pl.pointer + n * rowsPad, scratch: sc, bounds: bd)
      }
    }
    withExtendedLifetime(scratch) {}
    withExtendedLifetime(bounds) {}
    let op = SendablePointer(out), lp = lse.map { SendablePointer($0) }
    Parallel.forEach(units.count, threads: p.threads) { u, _ in
      merge(u, partials: po.pointer, partialLSE: pl.pointer, out: op.pointer, lse: lp?.pointer)
    }
  }

  /// Merges the chunks of one unit into its output rows.
  func merge(_ u: Int, partials: UnsafePointer<Float>, partialLSE: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>?) {
    let unit = units[u]
    let seq = p.sequences[unit.sequence]
    let first = unit.items.lowerBound
    for r in 0..<(unit.queries * p.groupSize) {
      let h = unit.kvHead * p.groupSize + r / unit.queries
      let i = unit.firstQuery + r % unit.queries
      let row = seq.queryStart + i
      let dst = out + p.outputRows.offset(batch: seq.batch, head: h, row: row)
      let l = PartialAttention.mergeRow(
        count: unit.items.count, width: p.valueDim, lse: partialLSE + first * rowsPad + r, lseStride: rowsPad,
        output: { partials + (first + $0) * partStride + r * dvPad }, into: dst, emptyRowLSE: .infinity)
      lse?[(seq.batch * p.queryHeads + h) * p.queryLength + row] = l
    }
  }

  /// Attention of one unit's rows over one chunk of keys: normalized partial output and
  /// log-sum-exp (−∞ for rows that see no key of the chunk).
  func run<E: KVElement>(
    _ type: E.Type, _ n: Int, q: UnsafePointer<Float>, kv: DecodeKV, partial: UnsafeMutablePointer<Float>,
    partialLSE: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>, bounds: UnsafeMutablePointer<Int>
  ) {
    let item = items[n]
    let unit = units[item.unit]
    let seq = p.sequences[unit.sequence]
    let g = unit.kvHead
    let rows = unit.queries * p.groupSize
    let D = p.headDim
    let bk = SplitKVPlan.blockKeys
    let qs = scratch, acc = scratch + offAcc
    let mRun = scratch + offMax, lRun = scratch + offSum, alpha = scratch + offAlpha
    let lo = bounds, hi = bounds + rowsPad

    // Rows: scaled queries, visible key ranges, running statistics.
    let qScale: Float = p.softcap.map { p.scale / $0 } ?? p.scale * SplitKVPlan.log2e
    qs.update(repeating: 0, count: rowsPad * dPad)
    acc.update(repeating: 0, count: rowsPad * dvPad)
    for r in 0..<rowsPad {
      mRun[r] = -.infinity
      lRun[r] = 0
      alpha[r] = 1
      lo[r] = 0
      hi[r] = 0  // padding rows see nothing
      guard r < rows else { continue }
      let h = g * p.groupSize + r / unit.queries
      let i = unit.firstQuery + r % unit.queries
      let src = q + p.queryRows.offset(batch: seq.batch, head: h, row: seq.queryStart + i)
      for d in 0..<D { qs[r * dPad + d] = src[d] * qScale }
      let vis = p.visibleKeys(seq, query: i)
      lo[r] = vis.lowerBound
      hi[r] = vis.upperBound
    }

    // Walk the chunk in blocks of ≤ 64 contiguous keys (a block never crosses a page), prefetching
    // the current block's values and the next block's keys while the scores are computed.
    let kr = p.keyRows, vr = p.valueRows
    func locate(_ j: Int) -> (k: UnsafePointer<E>, v: UnsafePointer<E>, ldk: Int, ldv: Int, count: Int) {
      switch kv {
      case let .tensors(k, v):
        let kp = UnsafeRawPointer(k + kr.offset(batch: seq.batch, head: g, row: seq.keyStart + j)).assumingMemoryBound(to: E.self)
        let vp = UnsafeRawPointer(v + vr.offset(batch: seq.batch, head: g, row: seq.keyStart + j)).assumingMemoryBound(to: E.self)
        return (kp, vp, kr.rowStride, vr.rowStride, min(bk, item.keys.upperBound - j))
      case let .paged(views):
        let view = views[unit.sequence]
        let n = min(bk, view.pageSize - j % view.pageSize, item.keys.upperBound - j)
        return (view.keyRow(j, head: g).assumingMemoryBound(to: E.self), view.valueRow(j, head: g).assumingMemoryBound(to: E.self),
                D, p.valueDim, n)
      }
    }
    let elem = MemoryLayout<E>.size
    var j = item.keys.lowerBound
    if j < item.keys.upperBound {
      var cur = locate(j)
      while true {
        let nj = j + cur.count
        let next = nj < item.keys.upperBound ? locate(nj) : nil
        let prefetchV = PrefetchRows(base: UnsafeRawPointer(cur.v), stride: cur.ldv * elem, bytes: p.valueDim * elem, rows: cur.count)
        let prefetchK = next.map { PrefetchRows(base: UnsafeRawPointer($0.k), stride: $0.ldk * elem, bytes: D * elem, rows: $0.count) }
        block(E.self, unit: unit, seq: seq, rows: rows, keys: cur.k, ldk: cur.ldk, values: cur.v, ldv: cur.ldv,
              first: j, count: cur.count, scratch: scratch, bounds: bounds, prefetch: (prefetchV, prefetchK ?? .none))
        guard let next else { break }
        j = nj
        cur = next
      }
    }

    // Normalize; log-sum-exp in natural log, −∞ for rows that saw no key here.
    for r in 0..<rows {
      let l = lRun[r]
      let inv: Float = l > 0 ? 1 / l : 0
      for c in 0..<p.valueDim { partial[r * dvPad + c] = acc[r * dvPad + c] * inv }
      partialLSE[r] = l > 0 ? Float((Double(mRun[r]) + Foundation.log2(Double(l))) * Double(SplitKVPlan.ln2)) : -.infinity
    }
  }

  static let log2e: Float = 1.442_695_040_888_963_4
  static let ln2: Float = 0.693_147_180_559_945_3

  /// One block of `count` ≤ 64 contiguous keys: scores, masks, online softmax, P·V.
  ///
  /// The score and P·V steps are separate, non-inlined functions (specialized per element type),
  /// each small enough for its accumulators to stay in registers. While the scores of this block
  /// are computed, the block's value rows and the next block's key rows are prefetched: the key
  /// and value pages are separate streams, and without the hints a core keeps too few loads in
  /// flight (measured: 6.7 → 10.7 GB/s per core in a C model of this loop).
  @inline(__always)
  func block<E: KVElement>(
    _ type: E.Type, unit: DecodeUnit, seq: AttentionSequence, rows: Int, keys: UnsafePointer<E>, ldk: Int,
    values: UnsafePointer<E>, ldv: Int, first j0: Int, count bn: Int, scratch: UnsafeMutablePointer<Float>,
    bounds: UnsafeMutablePointer<Int>, prefetch: (PrefetchRows, PrefetchRows)
  ) {
    let bk = SplitKVPlan.blockKeys
    var r0 = 0
    while r0 < rows {
      SplitKVPlan.scores(keys, ldk: ldk, count: bn, depth: p.headDim, q: scratch + r0 * dPad, qStride: dPad,
                         s: scratch + offScores + r0 * bk, sStride: bk, prefetch: r0 == 0 ? prefetch : (.none, .none))
      r0 += 4
    }
    softmax(unit: unit, seq: seq, rows: rows, first: j0, count: bn, scratch: scratch, bounds: bounds)
    r0 = 0
    while r0 < rows {
      SplitKVPlan.accumulate(values, ldv: ldv, count: bn, width: p.valueDim, p: scratch + offScores + r0 * bk, pStride: bk,
                             alpha: scratch + offAlpha + r0, acc: scratch + offAcc + r0 * dvPad, accStride: dvPad)
      r0 += 4
    }
  }

  /// Scores of four query rows against `count` keys: `s[r·sStride + j] = q_r · k_j`, two keys
  /// at a time (the second key of an odd count repeats the first and is not stored).
  @inline(never)
  static func scores<E: KVElement>(
    _ keys: UnsafePointer<E>, ldk: Int, count bn: Int, depth D: Int, q q0: UnsafePointer<Float>, qStride: Int,
    s: UnsafeMutablePointer<Float>, sStride bk: Int, prefetch: (PrefetchRows, PrefetchRows)
  ) {
    let L = Lane.scalarCount
    let dPairs = D / (2 * L)
    let dFull = D / L
    let q1 = q0 + qStride, q2 = q1 + qStride, q3 = q2 + qStride
    var j = 0
    while j < bn {
      prefetch.0.rows(j, 2)
      prefetch.1.rows(j, 2)
      let ka = keys + j * ldk, kb = keys + min(j + 1, bn - 1) * ldk
      var a0 = Lane(), a1 = Lane(), a2 = Lane(), a3 = Lane()
      var b0 = Lane(), b1 = Lane(), b2 = Lane(), b3 = Lane()
      // Two lane vectors at a time.
      for x in 0..<dPairs {
        let o = 2 * x * L
        let (va, va2) = E.lane2(ka + o), (vb, vb2) = E.lane2(kb + o)
        var x0 = loadLane(q0 + o), x1 = loadLane(q1 + o), x2 = loadLane(q2 + o), x3 = loadLane(q3 + o)
        a0 = fmadd(a0, va, x0); a1 = fmadd(a1, va, x1); a2 = fmadd(a2, va, x2); a3 = fmadd(a3, va, x3)
        b0 = fmadd(b0, vb, x0); b1 = fmadd(b1, vb, x1); b2 = fmadd(b2, vb, x2); b3 = fmadd(b3, vb, x3)
        x0 = loadLane(q0 + o + L); x1 = loadLane(q1 + o + L); x2 = loadLane(q2 + o + L); x3 = loadLane(q3 + o + L)
        a0 = fmadd(a0, va2, x0); a1 = fmadd(a1, va2, x1); a2 = fmadd(a2, va2, x2); a3 = fmadd(a3, va2, x3)
        b0 = fmadd(b0, vb2, x0); b1 = fmadd(b1, vb2, x1); b2 = fmadd(b2, vb2, x2); b3 = fmadd(b3, vb2, x3)
      }
      // One more lane vector.
      for x in (2 * dPairs)..<dFull {
        let o = x * L
        let va = E.lane(ka + o), vb = E.lane(kb + o)
        let x0 = loadLane(q0 + o), x1 = loadLane(q1 + o), x2 = loadLane(q2 + o), x3 = loadLane(q3 + o)
        a0 = fmadd(a0, va, x0); a1 = fmadd(a1, va, x1); a2 = fmadd(a2, va, x2); a3 = fmadd(a3, va, x3)
        b0 = fmadd(b0, vb, x0); b1 = fmadd(b1, vb, x1); b2 = fmadd(b2, vb, x2); b3 = fmadd(b3, vb, x3)
      }
      var sa0 = hsum(a0), sa1 = hsum(a1), sa2 = hsum(a2), sa3 = hsum(a3)
      var sb0 = hsum(b0), sb1 = hsum(b1), sb2 = hsum(b2), sb3 = hsum(b3)
      for d in (dFull * L)..<D {
        let ea = E.float(ka, d), eb = E.float(kb, d)
        sa0 = fmadd(sa0, ea, q0[d]); sa1 = fmadd(sa1, ea, q1[d]); sa2 = fmadd(sa2, ea, q2[d]); sa3 = fmadd(sa3, ea, q3[d])
        sb0 = fmadd(sb0, eb, q0[d]); sb1 = fmadd(sb1, eb, q1[d]); sb2 = fmadd(sb2, eb, q2[d]); sb3 = fmadd(sb3, eb, q3[d])
      }
      let o = s + j
      o[0] = sa0; o[bk] = sa1; o[2 * bk] = sa2; o[3 * bk] = sa3
      if j + 1 < bn { o[1] = sb0; o[bk + 1] = sb1; o[2 * bk + 1] = sb2; o[3 * bk + 1] = sb3 }
      j += 2
    }
  }

  /// Softcap, ALiBi, masks and the online-softmax update of every row, over lane vectors of keys:
  /// scores become probabilities (relative to the new running max), `alpha` the rescale factor.
  func softmax(
    unit: DecodeUnit, seq: AttentionSequence, rows: Int, first j0: Int, count bn: Int, scratch: UnsafeMutablePointer<Float>,
    bounds: UnsafeMutablePointer<Int>
  ) {
    let L = Lane.scalarCount
    let bk = SplitKVPlan.blockKeys
    let kv = bk / L
    let sc = scratch + offScores
    let mRun = scratch + offMax, lRun = scratch + offSum, alpha = scratch + offAlpha
    let lo = bounds, hi = bounds + rowsPad
    let iota = laneIota
    let softcapLog2 = p.softcap.map { $0 * SplitKVPlan.log2e }
    for r in 0..<rows {
      let row = UnsafeMutableRawPointer(sc + r * bk).assumingMemoryBound(to: Lane.self)
      let full = lo[r] <= j0 && j0 + bn <= hi[r]
      let h = unit.kvHead * p.groupSize + r / unit.queries
      let i = unit.firstQuery + r % unit.queries
      let slope = p.alibi.map { $0[seq.batch * p.queryHeads + h] * SplitKVPlan.log2e }
      let first = Lane(repeating: Float(lo[r] - j0)), end = Lane(repeating: Float(min(hi[r], j0 + bn) - j0))
      var bm = Lane(repeating: -.infinity)
      for x in 0..<kv {
        let jv = iota + Lane(repeating: Float(x * L))
        var s = row[x]
        if let c = softcapLog2 { s = Lane(repeating: c) * tanhLane(s) }
        if let slope {
          var dist = Lane(repeating: Float(i + seq.offset - j0)) - jv
          dist = dist.replacing(with: -dist, where: dist .< 0)
          s = fmadd(s, Lane(repeating: -slope), dist)
        }
        if full {
          s = s.replacing(with: -.infinity, where: jv .>= Lane(repeating: Float(bn)))
        } else {
          s = s.replacing(with: -.infinity, where: (jv .< first) .| (jv .>= end))
        }
        row[x] = s
        bm = vmax(bm, s)
      }
      let mOld = mRun[r]
      let mNew = max(mOld, hmax(bm))
      if mNew == -.infinity {
        // Nothing visible yet: probabilities 0, accumulators unchanged.
        alpha[r] = 1
        for x in 0..<kv { row[x] = Lane() }
        continue
      }
      let a = exp2Scalar(mOld - mNew)  // 0 when mOld = −∞
      var sum = Lane()
      let shift = Lane(repeating: mNew)
      for x in 0..<kv {
        let e = exp2Lane(row[x] - shift)
        row[x] = e
        sum += e
      }
      lRun[r] = fmadd(hsum(sum), lRun[r], a)
      mRun[r] = mNew
      alpha[r] = a
    }
  }

  /// `acc_r = alpha_r · acc_r + Σ_j p[r·pStride + j] · v_j` for four rows: four lane vectors of
  /// value columns at a time, then single vectors, then the columns past the last full vector.
  @inline(never)
  static func accumulate<E: KVElement>(
    _ values: UnsafePointer<E>, ldv: Int, count bn: Int, width Dv: Int, p p0: UnsafePointer<Float>, pStride bk: Int,
    alpha: UnsafePointer<Float>, acc: UnsafeMutablePointer<Float>, accStride dvPad: Int
  ) {
    let L = Lane.scalarCount
    let dvFull = Dv / L
    let p1 = p0 + bk, p2 = p1 + bk, p3 = p2 + bk
    let al0 = Lane(repeating: alpha[0]), al1 = Lane(repeating: alpha[1])
    let al2 = Lane(repeating: alpha[2]), al3 = Lane(repeating: alpha[3])
    var c = 0
    while c + 4 <= dvFull {
      let base = acc + c * L
      let o0 = UnsafeMutableRawPointer(base).assumingMemoryBound(to: Lane.self)
      let o1 = UnsafeMutableRawPointer(base + dvPad).assumingMemoryBound(to: Lane.self)
      let o2 = UnsafeMutableRawPointer(base + 2 * dvPad).assumingMemoryBound(to: Lane.self)
      let o3 = UnsafeMutableRawPointer(base + 3 * dvPad).assumingMemoryBound(to: Lane.self)
      var c00 = o0[0] * al0, c01 = o0[1] * al0, c02 = o0[2] * al0, c03 = o0[3] * al0
      var c10 = o1[0] * al1, c11 = o1[1] * al1, c12 = o1[2] * al1, c13 = o1[3] * al1
      var c20 = o2[0] * al2, c21 = o2[1] * al2, c22 = o2[2] * al2, c23 = o2[3] * al2
      var c30 = o3[0] * al3, c31 = o3[1] * al3, c32 = o3[2] * al3, c33 = o3[3] * al3
      var vr = values + c * L
      for j in 0..<bn {
        let (v0, v1) = E.lane2(vr), (v2, v3) = E.lane2(vr + 2 * L)
        do { let w = Lane(repeating: p0[j])
          c00 = fmadd(c00, w, v0); c01 = fmadd(c01, w, v1); c02 = fmadd(c02, w, v2); c03 = fmadd(c03, w, v3) }
        do { let w = Lane(repeating: p1[j])
          c10 = fmadd(c10, w, v0); c11 = fmadd(c11, w, v1); c12 = fmadd(c12, w, v2); c13 = fmadd(c13, w, v3) }
        do { let w = Lane(repeating: p2[j])
          c20 = fmadd(c20, w, v0); c21 = fmadd(c21, w, v1); c22 = fmadd(c22, w, v2); c23 = fmadd(c23, w, v3) }
        do { let w = Lane(repeating: p3[j])
          c30 = fmadd(c30, w, v0); c31 = fmadd(c31, w, v1); c32 = fmadd(c32, w, v2); c33 = fmadd(c33, w, v3) }
        vr += ldv
      }
      o0[0] = c00; o0[1] = c01; o0[2] = c02; o0[3] = c03
      o1[0] = c10; o1[1] = c11; o1[2] = c12; o1[3] = c13
      o2[0] = c20; o2[1] = c21; o2[2] = c22; o2[3] = c23
      o3[0] = c30; o3[1] = c31; o3[2] = c32; o3[3] = c33
      c += 4
    }
    if c + 2 <= dvFull {
      // Two lane vectors.
      let base = acc + c * L
      let o0 = UnsafeMutableRawPointer(base).assumingMemoryBound(to: Lane.self)
      let o1 = UnsafeMutableRawPointer(base + dvPad).assumingMemoryBound(to: Lane.self)
      let o2 = UnsafeMutableRawPointer(base + 2 * dvPad).assumingMemoryBound(to: Lane.self)
      let o3 = UnsafeMutableRawPointer(base + 3 * dvPad).assumingMemoryBound(to: Lane.self)
      var c00 = o0[0] * al0, c01 = o0[1] * al0
      var c10 = o1[0] * al1, c11 = o1[1] * al1
      var c20 = o2[0] * al2, c21 = o2[1] * al2
      var c30 = o3[0] * al3, c31 = o3[1] * al3
      var vr = values + c * L
      for j in 0..<bn {
        let (v0, v1) = E.lane2(vr)
        do { let w = Lane(repeating: p0[j]); c00 = fmadd(c00, w, v0); c01 = fmadd(c01, w, v1) }
        do { let w = Lane(repeating: p1[j]); c10 = fmadd(c10, w, v0); c11 = fmadd(c11, w, v1) }
        do { let w = Lane(repeating: p2[j]); c20 = fmadd(c20, w, v0); c21 = fmadd(c21, w, v1) }
        do { let w = Lane(repeating: p3[j]); c30 = fmadd(c30, w, v0); c31 = fmadd(c31, w, v1) }
        vr += ldv
      }
      o0[0] = c00; o0[1] = c01
      o1[0] = c10; o1[1] = c11
      o2[0] = c20; o2[1] = c21
      o3[0] = c30; o3[1] = c31
      c += 2
    }
    while c < dvFull {
      // One lane vector.
      let base = acc + c * L
      var c0 = loadLane(base) * al0, c1 = loadLane(base + dvPad) * al1
      var c2 = loadLane(base + 2 * dvPad) * al2, c3 = loadLane(base + 3 * dvPad) * al3
      var vr = values + c * L
      for j in 0..<bn {
        let v = E.lane(vr)
        c0 = fmadd(c0, Lane(repeating: p0[j]), v); c1 = fmadd(c1, Lane(repeating: p1[j]), v)
        c2 = fmadd(c2, Lane(repeating: p2[j]), v); c3 = fmadd(c3, Lane(repeating: p3[j]), v)
        vr += ldv
      }
      storeLane(c0, base); storeLane(c1, base + dvPad); storeLane(c2, base + 2 * dvPad); storeLane(c3, base + 3 * dvPad)
      c += 1
    }
    // Columns past the last full lane vector.
    for col in (dvFull * L)..<Dv {
      for r in 0..<4 {
        let pr = p0 + r * bk
        var a = acc[r * dvPad + col] * alpha[r]
        for j in 0..<bn { a = fmadd(a, pr[j], E.float(values + j * ldv, col)) }
        acc[r * dvPad + col] = a
      }
    }
  }
}

/// Rows of memory to prefetch while a kernel works on something else.
struct PrefetchRows: @unchecked Sendable {
  var base: UnsafeRawPointer?
  var stride: Int
  var bytes: Int
  var rows: Int

  static let none = PrefetchRows(base: nil, stride: 0, bytes: 0, rows: 0)

  /// Prefetches rows `first..<first + count` (those that exist).
  @inline(__always) func rows(_ first: Int, _ count: Int) {
    guard let base else { return }
    var r = first
    while r < first + count && r < rows {
      prefetch(base + r * stride, bytes: bytes)
      r += 1
    }
  }
}
