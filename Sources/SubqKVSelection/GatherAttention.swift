import Foundation
import SubqAttention
import SubqCore
import SubqDecoding
import SubqKernels

/// Exact attention over chosen key positions, gathered in place from a paged cache or tensors.
///
/// Both selection methods end the same way: some query rows of one (sequence, key/value head)
/// attend exactly to a list of cached positions. A *job* is such a list (at most
/// ``GatherAttention/chunk`` positions) and up to ``GatherAttention/maxRows`` rows; it produces a
/// partial result per row (normalized output and natural-log log-sum-exp, −∞ when the row saw no
/// key), and each output row is then the log-sum-exp merge (``PartialAttention``) of its parts in
/// a fixed order, so results do not depend on the thread count.
///
/// Key and value rows are read where they are (page by page); nothing is copied. Positions at or
/// past a row's `limit` are masked (causal rows of a multi-query step).
struct GatherAttention {
  /// A query row of a job.
  struct Row: Sendable {
    /// Offset (in floats) of the query row in Q.
    var query: Int
    /// Positions ≥ limit are invisible to this row.
    var limit: Int
  }

  /// Rows of one (sequence, kv head) attending to `positions`.
  struct Job: Sendable {
    var source: Int
    /// Rows in ``GatherAttention/rows`` (at most `maxRows`); each gets its own partial slot.
    var rows: Range<Int>
    /// Positions in ``GatherAttention/positions``.
    var positions: Range<Int>
  }

  static let maxRows = 16
  static let chunk = 512
  static let blockKeys = 64

  var rows: [Row] = []
  var jobs: [Job] = []
  var positions: [Int32] = []
  /// For each output row, the partial slots (indices into `rows`) to merge, in order, and where
  /// the merged row goes: `outputOffset` in O (floats) and `lseIndex` in the log-sum-exp.
  var outputParts: [Range<Int>] = []
  var outputOffset: [Int] = []
  var lseIndex: [Int] = []
  var partSlots: [Int] = []

  /// Adds jobs for `rowList` (all of one source) over `list`, chunked; returns the slots created
  /// for each row of `rowList`, in job order.
  mutating func add(source: Int, rows rowList: [Row], positions list: UnsafeBufferPointer<Int32>) -> [[Int]] {
    var slots = [[Int]](repeating: [], count: rowList.count)
    let start = positions.count
    positions.append(contentsOf: list)
    let end = positions.count
    // An empty list still makes one job, so every row gets a (−∞) partial.
    var p0 = start
    repeat {
      let p1 = Swift.min(end, p0 + GatherAttention.chunk)
      var r0 = 0
      while r0 < rowList.count {
        let r1 = Swift.min(rowList.count, r0 + GatherAttention.maxRows)
        let first = rows.count
        rows.append(contentsOf: rowList[r0..<r1])
        jobs.append(Job(source: source, rows: first..<rows.count, positions: p0..<p1))
        for r in r0..<r1 { slots[r].append(first + (r - r0)) }
        r0 = r1
      }
      p0 = p1
    } while p0 < end
    return slots
  }

  /// Declares output row `offset` (floats into O) / `lse` (index into the log-sum-exp) as the
  /// merge of `slots`.
  mutating func output(offset: Int, lse: Int, slots: [Int]) {
    let s = partSlots.count
    partSlots.append(contentsOf: slots)
    outputParts.append(s..<partSlots.count)
    outputOffset.append(offset)
    lseIndex.append(lse)
  }

  /// Runs every job, then merges each output row.
  ///
  /// - Parameters:
  ///   - q: the queries (offsets in ``Row/query``), unscaled.
  ///   - scale: the softmax scale τ.
  ///   - out: the output; every declared row is written.
  ///   - lse: the log-sum-exp (natural log, +∞ for a row with no visible key), or nil.
  func execute(
    sources: [KVSource], q: UnsafePointer<Float>, headDim D: Int, valueDim Dv: Int, scale: Float,
    out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>?, threads: Int
  ) {
    let L = laneWidth
    let dPad = (D + L - 1) / L * L, dvPad = (Dv + L - 1) / L * L
    let rowsPad = GatherAttention.maxRows
    let bk = GatherAttention.blockKeys
    let partials = AlignedBuffer<Float>(count: Swift.max(1, rows.count * dvPad))
    let partialLSE = AlignedBuffer<Float>(count: Swift.max(1, rows.count))
    let layout = ScratchLayout(rowsPad: rowsPad, dPad: dPad, dvPad: dvPad, blockKeys: bk)
    let workers = Parallel.workers(for: jobs.count, threads: threads)
    let scratch = AlignedBuffer<Float>(count: workers * layout.floats)
    let pointers = AlignedBuffer<UnsafeRawPointer?>(count: workers * 2 * bk)
    let s = SendablePointer(scratch.pointer), pp = SendablePointer(pointers.pointer)
    let po = SendablePointer(partials.pointer), pl = SendablePointer(partialLSE.pointer)
    let qp = SendablePointer(q)
    let qScale = scale * 1.442_695_040_888_963_4
    positions.withUnsafeBufferPointer { pos in
      let posp = SendablePointer(pos.baseAddress ?? UnsafePointer(bitPattern: 8)!)
      Parallel.forEach(jobs.count, threads: workers) { n, worker in
        let job = jobs[n]
        let src = sources[job.source]
        let sc = s.pointer + worker * layout.floats
        let ptrs = pp.pointer + worker * 2 * bk
        let list = UnsafeBufferPointer(start: posp.pointer + job.positions.lowerBound, count: job.positions.count)
        switch src.keys.storage {
        case .float32:
          runJob(Float.self, job, src, list: list, q: qp.pointer, qScale: qScale, D: D, Dv: Dv, layout: layout,
                 scratch: sc, pointers: ptrs, partial: po.pointer, partialLSE: pl.pointer)
        case .float16:
          runJob(Float16.self, job, src, list: list, q: qp.pointer, qScale: qScale, D: D, Dv: Dv, layout: layout,
                 scratch: sc, pointers: ptrs, partial: po.pointer, partialLSE: pl.pointer)
        }
      }
    }
    withExtendedLifetime(scratch) {}
    withExtendedLifetime(pointers) {}
    // Merge.
    let op = SendablePointer(out), lp = lse.map { SendablePointer($0) }
    let maxParts = outputParts.map(\.count).max() ?? 0
    let lseScratch = AlignedBuffer<Float>(count: Swift.max(1, threads * Swift.max(1, maxParts)))
    let ls = SendablePointer(lseScratch.pointer)
    Parallel.forEach(outputParts.count, threads: threads) { o, worker in
      let parts = outputParts[o]
      let l = ls.pointer + worker * Swift.max(1, maxParts)
      for (i, p) in parts.enumerated() { l[i] = pl.pointer[partSlots[p]] }
      let merged = PartialAttention.mergeRow(
        count: parts.count, width: Dv, lse: l, lseStride: 1, output: { UnsafePointer(po.pointer + partSlots[parts.lowerBound + $0] * dvPad) },
        into: op.pointer + outputOffset[o], emptyRowLSE: .infinity)
      lp?.pointer[lseIndex[o]] = merged
    }
    withExtendedLifetime(partials) {}
    withExtendedLifetime(partialLSE) {}
    withExtendedLifetime(lseScratch) {}
  }

  struct ScratchLayout: Sendable {
    let rowsPad: Int, dPad: Int, dvPad: Int, blockKeys: Int
    /// Q rows [rowsPad][dPad], scores [rowsPad][blockKeys], accumulators [rowsPad][dvPad], then
    /// running max, sum and rescale [rowsPad] each.
    var offScores: Int { rowsPad * dPad + 16 }
    var offAcc: Int { offScores + rowsPad * blockKeys + 16 }
    var offMax: Int { offAcc + rowsPad * dvPad + 16 }
    var offSum: Int { offMax + rowsPad }
    var offAlpha: Int { offSum + rowsPad }
    var floats: Int { offAlpha + rowsPad + 16 }
  }

  /// One job: online softmax over its positions in blocks of 64 gathered rows.
  func runJob<E: StoredScalar>(
    _ type: E.Type, _ job: Job, _ src: KVSource, list: UnsafeBufferPointer<Int32>, q: UnsafePointer<Float>, qScale: Float,
    D: Int, Dv: Int, layout: ScratchLayout, scratch: UnsafeMutablePointer<Float>, pointers: UnsafeMutablePointer<UnsafeRawPointer?>,
    partial: UnsafeMutablePointer<Float>, partialLSE: UnsafeMutablePointer<Float>
  ) {
    let L = laneWidth
    let dPad = layout.dPad, dvPad = layout.dvPad, bk = layout.blockKeys
    let nRows = job.rows.count
    let rowsPad = (nRows + 3) / 4 * 4
    let qs = scratch, sc = scratch + layout.offScores, acc = scratch + layout.offAcc
    let mRun = scratch + layout.offMax, lRun = scratch + layout.offSum, alpha = scratch + layout.offAlpha
    let kp = pointers, vp = pointers + bk
    qs.update(repeating: 0, count: rowsPad * dPad)
    acc.update(repeating: 0, count: rowsPad * dvPad)
    var minLimit = Int.max
    for r in 0..<rowsPad {
      mRun[r] = -.infinity
      lRun[r] = 0
      alpha[r] = 1
      guard r < nRows else { continue }
      let row = rows[job.rows.lowerBound + r]
      let src = q + row.query
      for d in 0..<D { qs[r * dPad + d] = src[d] * qScale }
      minLimit = Swift.min(minLimit, row.limit)
    }
    let dFull = D / L, dvFull = Dv / L
    var b0 = 0
    while b0 < list.count {
      let bn = Swift.min(bk, list.count - b0)
      var maxPos = 0
      for j in 0..<bn {
        let t = Int(list[b0 + j])
        maxPos = Swift.max(maxPos, t)
        kp[j] = src.keys.row(t)
        vp[j] = src.values.row(t)
      }
      // 1. Scores: four rows × two keys at a time (an odd last key repeats itself).
      var r0 = 0
      while r0 < rowsPad {
        let q0 = qs + r0 * dPad, q1 = q0 + dPad, q2 = q1 + dPad, q3 = q2 + dPad
        var j = 0
        while j < bn {
          let ka = kp[j]!.assumingMemoryBound(to: E.self), kb = kp[Swift.min(j + 1, bn - 1)]!.assumingMemoryBound(to: E.self)
          var a0 = Lane(), a1 = Lane(), a2 = Lane(), a3 = Lane()
          var c0 = Lane(), c1 = Lane(), c2 = Lane(), c3 = Lane()
          for x in 0..<dFull {
            let o = x * L
            let va = E.lane(ka + o), vb = E.lane(kb + o)
            let x0 = loadLane(q0 + o), x1 = loadLane(q1 + o), x2 = loadLane(q2 + o), x3 = loadLane(q3 + o)
            a0 = fmadd(a0, va, x0); a1 = fmadd(a1, va, x1); a2 = fmadd(a2, va, x2); a3 = fmadd(a3, va, x3)
            c0 = fmadd(c0, vb, x0); c1 = fmadd(c1, vb, x1); c2 = fmadd(c2, vb, x2); c3 = fmadd(c3, vb, x3)
          }
          var sa0 = hsum(a0), sa1 = hsum(a1), sa2 = hsum(a2), sa3 = hsum(a3)
          var sb0 = hsum(c0), sb1 = hsum(c1), sb2 = hsum(c2), sb3 = hsum(c3)
          for d in (dFull * L)..<D {
            let ea = E.float(ka, d), eb = E.float(kb, d)
            sa0 = fmadd(sa0, ea, q0[d]); sa1 = fmadd(sa1, ea, q1[d]); sa2 = fmadd(sa2, ea, q2[d]); sa3 = fmadd(sa3, ea, q3[d])
            sb0 = fmadd(sb0, eb, q0[d]); sb1 = fmadd(sb1, eb, q1[d]); sb2 = fmadd(sb2, eb, q2[d]); sb3 = fmadd(sb3, eb, q3[d])
          }
          let s = sc + r0 * bk + j
          s[0] = sa0; s[bk] = sa1; s[2 * bk] = sa2; s[3 * bk] = sa3
          if j + 1 < bn { s[1] = sb0; s[bk + 1] = sb1; s[2 * bk + 1] = sb2; s[3 * bk + 1] = sb3 }
          j += 2
        }
        r0 += 4
      }
      // 2. Masks and the online softmax, row by row.
      let masked = maxPos >= minLimit
      for r in 0..<nRows {
        let srow = sc + r * bk
        for j in bn..<bk { srow[j] = -.infinity }
        if masked {
          let limit = rows[job.rows.lowerBound + r].limit
          for j in 0..<bn where Int(list[b0 + j]) >= limit { srow[j] = -.infinity }
        }
        let blockMax = maxElement(srow, bk)
        let mNew = Swift.max(mRun[r], blockMax)
        if mNew == -.infinity {
          alpha[r] = 1
          srow.update(repeating: 0, count: bk)
          continue
        }
        let a = exp2Scalar(mRun[r] - mNew)
        let shift = Lane(repeating: mNew)
        var sum = Lane()
        for x in 0..<(bk / L) {
          let e = exp2Lane(loadLane(srow + x * L) - shift)
          storeLane(e, srow + x * L)
          sum += e
        }
        lRun[r] = fmadd(hsum(sum), lRun[r], a)
        mRun[r] = mNew
        alpha[r] = a
      }
      for r in nRows..<rowsPad {
        (sc + r * bk).update(repeating: 0, count: bk)
        alpha[r] = 1
      }
      // 3. O = α·O + P·V: four rows × one lane vector of value columns, keys gathered.
      r0 = 0
      while r0 < rowsPad {
        let p0 = sc + r0 * bk, p1 = p0 + bk, p2 = p1 + bk, p3 = p2 + bk
        let al0 = Lane(repeating: alpha[r0]), al1 = Lane(repeating: alpha[r0 + 1])
        let al2 = Lane(repeating: alpha[r0 + 2]), al3 = Lane(repeating: alpha[r0 + 3])
        var c = 0
        while c + 2 <= dvFull {
          let base = acc + r0 * dvPad + c * L
          var o00 = loadLane(base) * al0, o01 = loadLane(base + L) * al0
          var o10 = loadLane(base + dvPad) * al1, o11 = loadLane(base + dvPad + L) * al1
          var o20 = loadLane(base + 2 * dvPad) * al2, o21 = loadLane(base + 2 * dvPad + L) * al2
          var o30 = loadLane(base + 3 * dvPad) * al3, o31 = loadLane(base + 3 * dvPad + L) * al3
          for j in 0..<bn {
            let v = vp[j]!.assumingMemoryBound(to: E.self) + c * L
            let v0 = E.lane(v), v1 = E.lane(v + L)
            let w0 = Lane(repeating: p0[j]), w1 = Lane(repeating: p1[j]), w2 = Lane(repeating: p2[j]), w3 = Lane(repeating: p3[j])
            o00 = fmadd(o00, w0, v0); o01 = fmadd(o01, w0, v1)
            o10 = fmadd(o10, w1, v0); o11 = fmadd(o11, w1, v1)
            o20 = fmadd(o20, w2, v0); o21 = fmadd(o21, w2, v1)
            o30 = fmadd(o30, w3, v0); o31 = fmadd(o31, w3, v1)
          }
          storeLane(o00, base); storeLane(o01, base + L)
          storeLane(o10, base + dvPad); storeLane(o11, base + dvPad + L)
          storeLane(o20, base + 2 * dvPad); storeLane(o21, base + 2 * dvPad + L)
          storeLane(o30, base + 3 * dvPad); storeLane(o31, base + 3 * dvPad + L)
          c += 2
        }
        if c < dvFull {
          let base = acc + r0 * dvPad + c * L
          var o0 = loadLane(base) * al0, o1 = loadLane(base + dvPad) * al1
          var o2 = loadLane(base + 2 * dvPad) * al2, o3 = loadLane(base + 3 * dvPad) * al3
          for j in 0..<bn {
            let v = E.lane(vp[j]!.assumingMemoryBound(to: E.self) + c * L)
            o0 = fmadd(o0, Lane(repeating: p0[j]), v); o1 = fmadd(o1, Lane(repeating: p1[j]), v)
            o2 = fmadd(o2, Lane(repeating: p2[j]), v); o3 = fmadd(o3, Lane(repeating: p3[j]), v)
          }
          storeLane(o0, base); storeLane(o1, base + dvPad); storeLane(o2, base + 2 * dvPad); storeLane(o3, base + 3 * dvPad)
        }
        for col in (dvFull * L)..<Dv {
          for r in r0..<(r0 + 4) {
            let pr = sc + r * bk
            var a = acc[r * dvPad + col] * alpha[r]
            for j in 0..<bn { a = fmadd(a, pr[j], E.float(vp[j]!.assumingMemoryBound(to: E.self), col)) }
            acc[r * dvPad + col] = a
          }
        }
        r0 += 4
      }
      b0 += bn
    }
    // Normalize; natural-log log-sum-exp, −∞ for a row that saw nothing.
    for r in 0..<nRows {
      let slot = job.rows.lowerBound + r
      let l = lRun[r]
      let inv: Float = l > 0 ? 1 / l : 0
      for c in 0..<Dv { partial[slot * dvPad + c] = acc[r * dvPad + c] * inv }
      partialLSE[slot] = l > 0 ? Float((Double(mRun[r]) + Foundation.log2(Double(l))) * 0.693_147_180_559_945_3) : -.infinity
    }
  }
}
