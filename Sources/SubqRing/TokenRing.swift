import SubqCore

extension ShardRun {
  /// The local rows of rank `o`'s queries that see at least one key of rank `j` (contiguous: the
  /// hull of the seeing chunks; all rows when not causal).
  func neededQueries(owner o: Int, at j: Int) -> Range<Int> {
    let n = partition.localLength(o)
    if !g.causal { return 0..<n }
    let keys = partition.pieces(ofRank: j).filter { !$0.local.isEmpty }
    var lo = Int.max, hi = Int.min
    for qp in partition.pieces(ofRank: o) where !qp.local.isEmpty {
      if keys.contains(where: { $0.globalStart <= qp.globalEnd - 1 }) {
        lo = min(lo, qp.local.lowerBound)
        hi = max(hi, qp.local.upperBound)
      }
    }
    return lo < hi ? lo..<hi : 0..<0
  }

  /// Rank `o`'s chunks restricted to its local rows `held`, re-based to `held`.
  func heldPieces(owner o: Int, held: Range<Int>) -> [Piece] {
    partition.pieces(ofRank: o).compactMap { p in
      let lo = max(p.local.lowerBound, held.lowerBound), hi = min(p.local.upperBound, held.upperBound)
      if lo >= hi { return nil }
      return Piece(local: (lo - held.lowerBound)..<(hi - held.lowerBound), globalStart: p.globalStart + lo - p.local.lowerBound)
    }
  }

  /// TokenRing (arXiv 2412.20501): keys and values stay, queries travel one way and partial
  /// outputs travel back to their owner.
  ///
  /// At step s rank i holds the queries of owner o = (i + s) mod P (only the rows that see some of
  /// its keys: with the zig-zag partition, once a query block has wrapped past rank 0 only its
  /// late chunk is needed). It starts sending them on to rank i − 1 and receiving the next owner's
  /// from rank i + 1, sends the previous step's partial (output, log-sum-exp) straight to its owner
  /// and receives its own partial from the rank that computed it, computes the current owner's
  /// partial against its local keys while these transfers are in flight, and merges what it
  /// received with the exact log-sum-exp rule. A last exchange after the loop delivers the final
  /// partials. Both directions of every link carry data: queries one way, partials the other.
  func tokenRing(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, out: PartialRows) {
    let P = size, i = rank
    let n = partition.localLength(i)
    let maxN = (0..<P).map(partition.localLength).max() ?? 0
    let G = g.queryGroups, D = g.headDim, Dv = g.valueDim
    var qCur = FloatBuffer(count: G * maxN * D), qNext = FloatBuffer(count: G * maxN * D)
    let qPack = FloatBuffer(count: G * maxN * D)
    let partialFloats = PartialRows.floats(groups: G, rows: maxN, width: Dv)
    let partials = [FloatBuffer(count: partialFloats), FloatBuffer(count: partialFloats)]
    let received = FloatBuffer(count: partialFloats)
    let scratch = FloatBuffer(count: partialFloats)
    let kPieces = partition.pieces(ofRank: i)
    out.clear()

    var held = 0..<n               // rows of the current owner's queries held in qCur
    var heldQ: UnsafePointer<Float> = q  // step 0 uses the rank's own queries in place
    var partialRows = [0, 0]       // rows of the partial in each buffer

    /// Sends the partial computed at step `s − 1` to its owner and receives this rank's partial
    /// computed by rank i − (s − 1).
    func partialExchange(_ s: Int) -> (transfers: [Transfer], rows: Range<Int>) {
      var t: [Transfer] = []
      let owner = (i + s - 1) % P
      let buf = partials[(s - 1) % 2]
      let m = partialRows[(s - 1) % 2]
      if m > 0 {
        t.append(.send(UnsafeRawBufferPointer(buf.bytes(0..<PartialRows.floats(groups: G, rows: m, width: Dv))), to: owner, tag: RingTag.partials))
      }
      let source = ((i - (s - 1)) % P + P) % P
      let rows = neededQueries(owner: i, at: source)
      if !rows.isEmpty {
        t.append(.receive(into: received.bytes(0..<PartialRows.floats(groups: G, rows: rows.count, width: Dv)), from: source, tag: RingTag.partials))
      }
      return (t, rows)
    }
    func mergeReceived(_ rows: Range<Int>) {
      if rows.isEmpty { return }
      let r = PartialRows(received.pointer, groups: G, rows: rows.count, width: Dv)
      compute { ShardMerge.merge(r, from: 0, into: out, to: rows.lowerBound, count: rows.count, threads: g.threads) }
    }

    for s in 0..<P {
      let o = (i + s) % P
      var transfers: [Transfer] = []
      var nextHeld = 0..<0
      if s < P - 1 {
        let oNext = (i + s + 1) % P
        nextHeld = neededQueries(owner: oNext, at: i)
        if !nextHeld.isEmpty {
          transfers.append(.receive(into: qNext.bytes(0..<(G * nextHeld.count * D)), from: (i + 1) % P, tag: RingTag.queries))
        }
        let send = neededQueries(owner: o, at: (i - 1 + P) % P)
        if !send.isEmpty {
          precondition(send.lowerBound >= held.lowerBound && send.upperBound <= held.upperBound,
                       "TokenRing: rank \(i) must forward rows \(send) of rank \(o) but holds \(held)")
          let src: UnsafePointer<Float>
          if send == held {
            src = heldQ
          } else {
            let from = RowArray(base: UnsafeMutablePointer(mutating: heldQ), groups: G, rows: held.count, width: D)
            let to = RowArray(base: qPack.pointer, groups: G, rows: send.count, width: D)
            compute { copyRows(from, from: send.lowerBound - held.lowerBound, to, to: 0, count: send.count) }
            src = UnsafePointer(qPack.pointer)
          }
          transfers.append(.send(UnsafeRawBufferPointer(start: src, count: G * send.count * D * 4), to: (i - 1 + P) % P, tag: RingTag.queries))
        }
      }
      var incoming = 0..<0
      if s >= 2 {
        let x = partialExchange(s)
        transfers += x.transfers
        incoming = x.rows
      }
      let handle = start(transfers)
      let inFlight = handle != nil

      if s == 0 {
        let calls = blocks.plan(queries: kPieces, keys: kPieces)
        let part = PartialRows(scratch.pointer, groups: G, rows: n, width: Dv)
        stats.flops += compute {
          blocks.run(calls, q: q, qRows: n, k: k, v: v, kRows: n, scratch: part, into: out, shift: 0,
                     slices: slices(n, inFlight: inFlight)) { if let handle { _ = comm.test(handle) } }
        }
      } else {
        let m = held.count
        let target = PartialRows(partials[s % 2].pointer, groups: G, rows: m, width: Dv)
        partialRows[s % 2] = m
        if m > 0 {
          let calls = blocks.plan(queries: heldPieces(owner: o, held: held), keys: kPieces)
          let part = PartialRows(scratch.pointer, groups: G, rows: m, width: Dv)
          stats.flops += compute {
            target.clear()
            return blocks.run(calls, q: heldQ, qRows: m, k: k, v: v, kRows: n, scratch: part, into: target, shift: 0,
                              slices: slices(m, inFlight: inFlight)) { if let handle { _ = comm.test(handle) } }
          }
        }
      }
      wait(handle)
      mergeReceived(incoming)
      if s < P - 1 {
        swap(&qCur, &qNext)
        held = nextHeld
        heldQ = UnsafePointer(qCur.pointer)
      }
      stats.steps += 1
    }
    if P > 1 {
      let x = partialExchange(P)
      wait(start(x.transfers))
      mergeReceived(x.rows)
    }
    out.finalizeEmptyRows()
    withExtendedLifetime((qCur, qNext, qPack, partials, received, scratch)) {}
  }
}
