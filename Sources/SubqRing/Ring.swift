import SubqCore

extension ShardRun {
  /// Ring Attention (Liu et al. 2023): queries stay, key/value chunks travel around the ring.
  ///
  /// At step s rank i holds the keys and values of rank (i − s) mod P. It starts sending them to
  /// rank i + 1 and receiving the next ones from rank i − 1, runs flash on its queries against
  /// the chunk it holds while the transfer is in flight, merges the partial result, and waits.
  /// After P steps every query has seen every key. Causal attention uses the zig-zag partition,
  /// so every rank does the same work at every step.
  func ring(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, out: PartialRows) {
    let P = size, i = rank
    let n = partition.localLength(i)
    func kvFloats(_ r: Int) -> Int { g.keyGroups * partition.localLength(r) * (g.headDim + g.valueDim) }
    let maxKV = (0..<P).map(kvFloats).max() ?? 0
    var cur = FloatBuffer(count: maxKV), next = FloatBuffer(count: maxKV)
    let ownK = g.keyGroups * n * g.headDim
    cur.pointer.update(from: k, count: ownK)
    (cur.pointer + ownK).update(from: v, count: g.keyGroups * n * g.valueDim)
    let scratch = FloatBuffer(count: PartialRows.floats(groups: g.queryGroups, rows: n, width: g.valueDim))
    let part = PartialRows(scratch.pointer, groups: g.queryGroups, rows: n, width: g.valueDim)
    out.clear()
    let myPieces = partition.pieces(ofRank: i)
    for s in 0..<P {
      let r = (i - s + P) % P
      var handle: Int? = nil
      if s < P - 1 {
        let rNext = (r - 1 + P) % P
        handle = start([
          .send(UnsafeRawBufferPointer(cur.bytes(0..<kvFloats(r))), to: (i + 1) % P, tag: RingTag.keyValues),
          .receive(into: next.bytes(0..<kvFloats(rNext)), from: (i - 1 + P) % P, tag: RingTag.keyValues),
        ])
      }
      let nr = partition.localLength(r)
      let calls = blocks.plan(queries: myPieces, keys: partition.pieces(ofRank: r))
      let kv = cur.pointer
      stats.flops += compute {
        blocks.run(calls, q: q, qRows: n, k: kv, v: kv + g.keyGroups * nr * g.headDim, kRows: nr,
                   scratch: part, into: out, shift: 0, slices: slices(n, inFlight: handle != nil)) {
          if let handle { _ = comm.test(handle) }
        }
      }
      wait(handle)
      swap(&cur, &next)
      stats.steps += 1
    }
    out.finalizeEmptyRows()
    // Transfers borrow these buffers: keep them alive to the end (Swift may end a lifetime early).
    withExtendedLifetime((cur, next, scratch)) {}
  }
}
