import SubqCore
import SubqKernels

/// TokenSelect's token scoring: per-head criticality and soft voting, over all cores.
///
/// For one request (a sequence's query fingerprint q̄ `[Hq][D]` and candidate positions
/// `lo..<hi`), head h's criticality of position j is the raw inner product `s_hj = q̄_h · k_{g(h), j}`
/// (no 1/√D, as in TokenSelect), g(h) = h / (Hq / Hkv). Each head's scores are normalized by a
/// softmax over the candidates and the heads' probabilities are summed:
///
///     vote_j = Σ_h exp(s_hj − M_h) / Z_h,   M_h = max_j s_hj,  Z_h = Σ_j exp(s_hj − M_h)
///
/// and the `k` positions with the highest vote are kept.
///
/// Pass 1 reads every candidate key once (the memory-bound part: each key row is loaded once for
/// all heads of its group) and keeps per-chunk maxima and sums; pass 2 turns the stored scores
/// into votes; then each request's top-k is taken. Work items are (request, kv head, chunk of
/// ``SoftVote/chunkKeys`` positions); partial statistics are combined in chunk order, so the
/// result does not depend on the thread count.
struct SoftVote {
  struct Request {
    /// Key sources of the request's sequence, one per kv head.
    var keys: [RowSource]
    /// The fingerprint, `[Hq · D]`.
    var fingerprint: [Float]
    var candidates: Range<Int>
    var k: Int
  }

  static let chunkKeys = 4096

  let queryHeads: Int
  let kvHeads: Int
  let headDim: Int
  let threads: Int

  /// The selected positions of every request (sorted ascending).
  func select(_ requests: [Request]) -> [[Int32]] {
    let Hq = queryHeads, Hkv = kvHeads, G = Hq / Hkv, D = headDim
    let L = laneWidth
    let dPad = (D + L - 1) / L * L
    let gPad = (G + 3) / 4 * 4
    // Layout: per request, scores [Hq][n] at scoreOffset[r]; chunk statistics [Hq][chunks].
    var scoreOffsets: [Int] = [], statOffsets: [Int] = [], chunkCounts: [Int] = []
    var itemList: [(req: Int, g: Int, c: Int)] = []
    var totalScores = 0, totalStats = 0
    for (r, req) in requests.enumerated() {
      let n = req.candidates.count
      let chunks = (n + SoftVote.chunkKeys - 1) / SoftVote.chunkKeys
      scoreOffsets.append(totalScores)
      statOffsets.append(totalStats)
      chunkCounts.append(chunks)
      totalScores += Hq * n
      totalStats += Hq * chunks
      for g in 0..<Hkv { for c in 0..<chunks { itemList.append((r, g, c)) } }
    }
    let scoreOffset = scoreOffsets, statOffset = statOffsets, chunkCount = chunkCounts, items = itemList
    let scores = AlignedBuffer<Float>(count: Swift.max(1, totalScores))
    let chunkMax = AlignedBuffer<Float>(count: Swift.max(1, totalStats))
    let chunkSum = AlignedBuffer<Float>(count: Swift.max(1, totalStats))
    let workers = Parallel.workers(for: items.count, threads: threads)
    let qScratch = AlignedBuffer<Float>(count: workers * gPad * dPad)
    let sp = SendablePointer(scores.pointer), mp = SendablePointer(chunkMax.pointer), lp = SendablePointer(chunkSum.pointer)
    let qsp = SendablePointer(qScratch.pointer)

    // Pass 1: scores and per-chunk softmax statistics.
    Parallel.forEach(items.count, threads: workers) { n, worker in
      let (r, g, c) = items[n]
      let req = requests[r]
      let nCand = req.candidates.count
      let j0 = c * SoftVote.chunkKeys, j1 = Swift.min(nCand, j0 + SoftVote.chunkKeys)
      let qs = qsp.pointer + worker * gPad * dPad
      qs.update(repeating: 0, count: gPad * dPad)
      req.fingerprint.withUnsafeBufferPointer { f in
        for x in 0..<G { for d in 0..<D { qs[x * dPad + d] = f[(g * G + x) * D + d] } }
      }
      let out = sp.pointer + scoreOffset[r] + (g * G) * nCand  // head g·G, row stride nCand
      let src = req.keys[g]
      switch src.storage {
      case .float32:
        SoftVote.score(Float.self, src, from: req.candidates.lowerBound + j0, to: req.candidates.lowerBound + j1, qs: qs, dPad: dPad,
                       D: D, rows: G, out: out + j0, ldo: nCand)
      case .float16:
        SoftVote.score(Float16.self, src, from: req.candidates.lowerBound + j0, to: req.candidates.lowerBound + j1, qs: qs, dPad: dPad,
                       D: D, rows: G, out: out + j0, ldo: nCand)
      }
      for x in 0..<G {
        let row = out + x * nCand + j0
        let m = maxElement(row, j1 - j0)
        let st = statOffset[r] + (g * G + x) * chunkCount[r] + c
        mp.pointer[st] = m
        lp.pointer[st] = SoftVote.expSum(row, j1 - j0, shift: m)
      }
    }
    withExtendedLifetime(qScratch) {}

    // Per-head maxima and normalizers, chunk order.
    var headMax = [Float](repeating: 0, count: requests.count * Hq)
    var headInv = [Float](repeating: 0, count: requests.count * Hq)
    for r in 0..<requests.count {
      for h in 0..<Hq {
        let st = statOffset[r] + h * chunkCount[r]
        var M = -Float.infinity
        for c in 0..<chunkCount[r] { M = Swift.max(M, mp.pointer[st + c]) }
        var Z = 0.0
        for c in 0..<chunkCount[r] where mp.pointer[st + c] > -.infinity {
          Z += Double(lp.pointer[st + c]) * Double(exp2Scalar((mp.pointer[st + c] - M) * 1.442_695_040_888_963_4))
        }
        headMax[r * Hq + h] = M
        headInv[r * Hq + h] = Z > 0 ? Float(1 / Z) : 0
      }
    }

    // Pass 2: votes (written over head 0's scores), then top-k per request.
    var voteList: [(req: Int, c: Int)] = []
    for r in 0..<requests.count { for c in 0..<chunkCount[r] { voteList.append((r, c)) } }
    let voteItems = voteList
    let votes = AlignedBuffer<Float>(count: Swift.max(1, requests.map(\.candidates.count).reduce(0, +)))
    var voteOffsets: [Int] = []
    var acc = 0
    for req in requests { voteOffsets.append(acc); acc += req.candidates.count }
    let voteOffset = voteOffsets
    let vp = SendablePointer(votes.pointer)
    headMax.withUnsafeBufferPointer { hm in
      headInv.withUnsafeBufferPointer { hi in
        let hmp = SendablePointer(hm.baseAddress!), hip = SendablePointer(hi.baseAddress!)
        Parallel.forEach(voteItems.count, threads: threads) { n, _ in
          let (r, c) = voteItems[n]
          let nCand = requests[r].candidates.count
          let j0 = c * SoftVote.chunkKeys, j1 = Swift.min(nCand, j0 + SoftVote.chunkKeys)
          let dst = vp.pointer + voteOffset[r]
          let base = sp.pointer + scoreOffset[r]
          var j = j0
          while j + L <= j1 {
            var v = Lane()
            for h in 0..<Hq {
              let e = expLane(loadLane(base + h * nCand + j) - Lane(repeating: hmp.pointer[r * Hq + h]))
              v = fmadd(v, e, Lane(repeating: hip.pointer[r * Hq + h]))
            }
            storeLane(v, dst + j)
            j += L
          }
          while j < j1 {
            var v: Float = 0
            for h in 0..<Hq {
              let e = exp2Scalar((base[h * nCand + j] - hmp.pointer[r * Hq + h]) * 1.442_695_040_888_963_4)
              v = fmadd(v, e, hip.pointer[r * Hq + h])
            }
            dst[j] = v
            j += 1
          }
        }
      }
    }
    withExtendedLifetime(scores) {}
    withExtendedLifetime(chunkMax) {}
    withExtendedLifetime(chunkSum) {}
    var result = [[Int32]](repeating: [], count: requests.count)
    result.withUnsafeMutableBufferPointer { res in
      let rp = SendablePointer(res.baseAddress!)
      Parallel.forEach(requests.count, threads: threads) { r, _ in
        let req = requests[r]
        rp.pointer[r] = topKPositions(vp.pointer + voteOffset[r], count: req.candidates.count, base: req.candidates.lowerBound, k: req.k)
      }
    }
    withExtendedLifetime(votes) {}
    return result
  }

  /// Σ exp(x[i] − shift) for i in 0..<n (0 when shift is −∞).
  static func expSum(_ x: UnsafePointer<Float>, _ n: Int, shift: Float) -> Float {
    if shift == -.infinity { return 0 }
    let s = Lane(repeating: shift)
    var acc = Lane()
    var i = 0
    let L = laneWidth
    while i + L <= n {
      acc += expLane(loadLane(x + i) - s)
      i += L
    }
    var total = hsum(acc)
    while i < n {
      total += exp2Scalar((x[i] - shift) * 1.442_695_040_888_963_4)
      i += 1
    }
    return total
  }

  /// `out[x · ldo + (t − from)] = qs[x] · key(t)` for the `rows` query rows (padded to a multiple of
  /// four with zero rows in `qs`) and positions `from..<to`, reading keys run by run.
  static func score<E: StoredScalar>(
    _ type: E.Type, _ src: RowSource, from: Int, to: Int, qs: UnsafePointer<Float>, dPad: Int, D: Int, rows: Int,
    out: UnsafeMutablePointer<Float>, ldo: Int
  ) {
    let L = laneWidth
    let dFull = D / L
    let ldk = src.rowBytes / MemoryLayout<E>.stride
    var t = from
    while t < to {
      let run = src.run(from: t, to: to)
      let keys = src.row(t).assumingMemoryBound(to: E.self)
      let o = out + (t - from)
      var r0 = 0
      while r0 < rows {
        let q0 = qs + r0 * dPad, q1 = q0 + dPad, q2 = q1 + dPad, q3 = q2 + dPad
        var j = 0
        while j < run {
          let ka = keys + j * ldk, kb = keys + Swift.min(j + 1, run - 1) * ldk
          var a0 = Lane(), a1 = Lane(), a2 = Lane(), a3 = Lane()
          var b0 = Lane(), b1 = Lane(), b2 = Lane(), b3 = Lane()
          for x in 0..<dFull {
            let off = x * L
            let va = E.lane(ka + off), vb = E.lane(kb + off)
            let x0 = loadLane(q0 + off), x1 = loadLane(q1 + off), x2 = loadLane(q2 + off), x3 = loadLane(q3 + off)
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
          let rem = rows - r0, pair = j + 1 < run
          let o0 = o + r0 * ldo + j
          o0[0] = sa0
          if pair { o0[1] = sb0 }
          if rem > 1 { o0[ldo] = sa1; if pair { o0[ldo + 1] = sb1 } }
          if rem > 2 { o0[2 * ldo] = sa2; if pair { o0[2 * ldo + 1] = sb2 } }
          if rem > 3 { o0[3 * ldo] = sa3; if pair { o0[3 * ldo + 1] = sb3 } }
          j += 2
        }
        r0 += 4
      }
      t += run
    }
  }
}
