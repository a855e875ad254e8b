import SubqAttention
import SubqCore

extension ShardRun {
  /// Query heads rank `r` computes in the head-parallel variant (a balanced contiguous split).
  func queryHeads(ofRank r: Int) -> Range<Int> { (g.queryHeads * r / size)..<(g.queryHeads * (r + 1) / size) }

  /// Key/value heads those query heads read (contiguous; grouped-query heads may share them).
  func keyValueHeads(ofRank r: Int) -> Range<Int> {
    let h = queryHeads(ofRank: r)
    if h.isEmpty { return 0..<0 }
    return (h.lowerBound / g.groupSize)..<((h.upperBound - 1) / g.groupSize + 1)
  }

  /// Head-parallel attention: an all-to-all turns the sequence split into a head split, every rank
  /// runs flash on whole sequences of its heads, and a second all-to-all turns the outputs back.
  ///
  /// This is the distributed multi-head attention of "A Unified View of Long-Sequence Models"
  /// (arXiv 2302.06218) in its compatible form (the paper's exact algorithm is not public): each
  /// rank sends every other rank the rows it holds of that rank's query heads and of the key/value
  /// heads they read (grouped-query heads split by query head, so a key/value head may go to two
  /// ranks), computes, and sends back the output rows of each rank's chunk. Communication does not
  /// overlap compute; its volume per rank is about (P − 1)/P of its shard, twice, independent of P.
  /// With fewer query heads than ranks some ranks have no heads and only relay.
  func heads(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, out: PartialRows) {
    let P = size, i = rank
    let N = g.length, D = g.headDim, Dv = g.valueDim, B = g.batch
    let n = partition.localLength(i)
    let myHeads = queryHeads(ofRank: i), myKV = keyValueHeads(ofRank: i)
    let hq = myHeads.count, hkv = myKV.count
    func inFloats(_ heads: Range<Int>, _ kv: Range<Int>, rows: Int) -> Int {
      B * rows * (heads.count * D + kv.count * (D + Dv))
    }

    // Sequence split → head split. Message to rank r: my rows of its Q heads, then of its K and V heads.
    let qSrc = RowArray(base: UnsafeMutablePointer(mutating: q), groups: B * g.queryHeads, rows: n, width: D)
    let kSrc = RowArray(base: UnsafeMutablePointer(mutating: k), groups: B * g.keyValueHeads, rows: n, width: D)
    let vSrc = RowArray(base: UnsafeMutablePointer(mutating: v), groups: B * g.keyValueHeads, rows: n, width: Dv)
    /// Packs (or unpacks) the rows of heads `hs` of `full` (`[B, H, rows, w]`) as `[B, |hs|, rows, w]`.
    func packHeads(_ full: RowArray, heads H: Int, _ hs: Range<Int>, into dst: UnsafeMutablePointer<Float>) {
      let per = hs.count * full.rows * full.width
      for b in 0..<B where per > 0 { (dst + b * per).update(from: full.row(b * H + hs.lowerBound, 0), count: per) }
    }
    var sends: [FloatBuffer] = []
    var transfers: [Transfer] = []
    for r in 0..<P where r != i {
      let hs = queryHeads(ofRank: r), kv = keyValueHeads(ofRank: r)
      let buf = FloatBuffer(count: inFloats(hs, kv, rows: n))
      compute {
        packHeads(qSrc, heads: g.queryHeads, hs, into: buf.pointer)
        packHeads(kSrc, heads: g.keyValueHeads, kv, into: buf.pointer + B * hs.count * n * D)
        packHeads(vSrc, heads: g.keyValueHeads, kv, into: buf.pointer + B * n * (hs.count * D + kv.count * D))
      }
      sends.append(buf)
      transfers.append(.send(UnsafeRawBufferPointer(buf.bytes(0..<buf.count)), to: r, tag: RingTag.toHeads))
    }
    var recvs: [Int: FloatBuffer] = [:]
    for j in 0..<P where j != i {
      let buf = FloatBuffer(count: inFloats(myHeads, myKV, rows: partition.localLength(j)))
      recvs[j] = buf
      transfers.append(.receive(into: buf.bytes(0..<buf.count), from: j, tag: RingTag.toHeads))
    }
    wait(start(transfers))
    withExtendedLifetime(sends) {}
    sends.removeAll()

    // Assemble whole sequences of my heads: Qh [B, hq, N, D], Kh/Vh [B, hkv, N, ·].
    let qh = FloatBuffer(count: B * hq * N * D), kh = FloatBuffer(count: B * hkv * N * D), vh = FloatBuffer(count: B * hkv * N * Dv)
    let qH = RowArray(base: qh.pointer, groups: B * hq, rows: N, width: D)
    let kH = RowArray(base: kh.pointer, groups: B * hkv, rows: N, width: D)
    let vH = RowArray(base: vh.pointer, groups: B * hkv, rows: N, width: Dv)
    compute {
      for j in 0..<P {
        let rows = partition.chunk(j)
        let nj = rows.count
        if j == i {
          for b in 0..<B {
            for h in 0..<hq { qH.row(b * hq + h, rows.lowerBound).update(from: qSrc.row(b * g.queryHeads + myHeads.lowerBound + h, 0), count: nj * D) }
            for h in 0..<hkv {
              kH.row(b * hkv + h, rows.lowerBound).update(from: kSrc.row(b * g.keyValueHeads + myKV.lowerBound + h, 0), count: nj * D)
              vH.row(b * hkv + h, rows.lowerBound).update(from: vSrc.row(b * g.keyValueHeads + myKV.lowerBound + h, 0), count: nj * Dv)
            }
          }
          continue
        }
        let buf = recvs[j]!.pointer
        copyRows(RowArray(base: buf, groups: B * hq, rows: nj, width: D), from: 0, qH, to: rows.lowerBound, count: nj)
        copyRows(RowArray(base: buf + B * hq * nj * D, groups: B * hkv, rows: nj, width: D), from: 0, kH, to: rows.lowerBound, count: nj)
        copyRows(RowArray(base: buf + B * nj * (hq + hkv) * D, groups: B * hkv, rows: nj, width: Dv), from: 0, vH, to: rows.lowerBound, count: nj)
      }
    }
    recvs.removeAll()

    // Attention on whole sequences of my heads; final convention (+∞) for rows that see no key.
    let oh = FloatBuffer(count: PartialRows.floats(groups: B * hq, rows: N, width: Dv))
    let oH = PartialRows(oh.pointer, groups: B * hq, rows: N, width: Dv)
    if hq > 0 {
      let G = g.groupSize
      let aligned = myHeads.lowerBound % G == 0 && myHeads.upperBound % G == 0
      // Whole groups: one call over every batch entry. Otherwise one call per (batch, key/value head).
      var calls: [(b: Int, heads: Range<Int>, kv: Int, batch: Int)] = []
      if aligned {
        calls.append((0, 0..<hq, 0, B))
      } else {
        for b in 0..<B {
          for kvh in myKV {
            let lo = max(myHeads.lowerBound, kvh * G), hi = min(myHeads.upperBound, (kvh + 1) * G)
            calls.append((b, (lo - myHeads.lowerBound)..<(hi - myHeads.lowerBound), kvh - myKV.lowerBound, 1))
          }
        }
      }
      for c in calls {
        let heads = c.heads.count, kvHeads = aligned ? hkv : 1
        let sequences = (0..<c.batch).map { b in
          AttentionSequence.block(batch: b, queryStart: 0, queryCount: N, keyStart: 0, keyCount: N, offset: 0)
        }
        let problem = AttentionProblem.blocks(
          op: blocks.op, batch: c.batch, queryHeads: heads, keyValueHeads: kvHeads, queryLength: N, keyLength: N,
          headDim: D, valueDim: Dv, scale: g.scale, causal: g.causal, softcap: g.softcap, sequences: sequences,
          threads: g.threads)
        let qg = c.b * hq + c.heads.lowerBound, kg = c.b * hkv + c.kv
        compute {
          blocks.flash.forward(problem, q: qH.row(qg, 0), k: kH.row(kg, 0), v: vH.row(kg, 0), out: oH.o.row(qg, 0),
                               lse: oH.lse + qg * N, emptyRowLSE: .infinity)
        }
      }
      let pairs = g.causal ? Double(N) * Double(N + 1) / 2 : Double(N) * Double(N)
      stats.flops += pairs * Double(B * hq) * g.flopsPerPair
    }

    // Head split → sequence split: send every rank the output rows of its chunk for my heads.
    transfers = []
    for r in 0..<P where r != i {
      let rows = partition.chunk(r)
      let buf = FloatBuffer(count: PartialRows.floats(groups: B * hq, rows: rows.count, width: Dv))
      let packed = PartialRows(buf.pointer, groups: B * hq, rows: rows.count, width: Dv)
      compute { copyPartial(oH, from: rows.lowerBound, packed, to: 0, count: rows.count) }
      sends.append(buf)
      transfers.append(.send(UnsafeRawBufferPointer(buf.bytes(0..<buf.count)), to: r, tag: RingTag.toSequence))
    }
    for j in 0..<P where j != i {
      let buf = FloatBuffer(count: PartialRows.floats(groups: B * queryHeads(ofRank: j).count, rows: n, width: Dv))
      recvs[j] = buf
      transfers.append(.receive(into: buf.bytes(0..<buf.count), from: j, tag: RingTag.toSequence))
    }
    wait(start(transfers))
    withExtendedLifetime(sends) {}
    compute {
      for j in 0..<P {
        let hs = queryHeads(ofRank: j)
        if hs.isEmpty { continue }
        let src = j == i ? oH : PartialRows(recvs[j]!.pointer, groups: B * hs.count, rows: n, width: Dv)
        let from = j == i ? partition.chunk(i).lowerBound : 0
        for b in 0..<B {
          for h in 0..<hs.count {
            let sg = b * hs.count + h, dg = b * g.queryHeads + hs.lowerBound + h
            out.o.row(dg, 0).update(from: src.o.row(sg, from), count: n * Dv)
            (out.lse + dg * n).update(from: src.lse + sg * src.rows + from, count: n)
          }
        }
      }
    }
    withExtendedLifetime((recvs, oh, qh, kh, vh)) {}
    stats.steps += 1
  }
}

/// Copies rows (outputs and log-sum-exp) between partial-row arrays of the same groups.
func copyPartial(_ src: PartialRows, from: Int, _ dst: PartialRows, to: Int, count: Int) {
  copyRows(src.o, from: from, dst.o, to: to, count: count)
  for gr in 0..<src.groups { (dst.lse + gr * dst.rows + to).update(from: src.lse + gr * src.rows + from, count: count) }
}
