import SubqAttention
import SubqCore

/// The global shape and scoring of one sequence-parallel attention call, known to every rank.
struct ShardGeometry: Sendable, Equatable {
  var batch: Int
  var queryHeads: Int
  var keyValueHeads: Int
  var length: Int
  var headDim: Int
  var valueDim: Int
  var causal: Bool
  var scale: Float
  var softcap: Float?
  var threads: Int

  var groupSize: Int { queryHeads / keyValueHeads }
  /// Query row groups (B·Hq) and key/value row groups (B·Hkv).
  var queryGroups: Int { batch * queryHeads }
  var keyGroups: Int { batch * keyValueHeads }
  /// FLOPs per visible (query, key) pair and query head: 2·D + 2·Dv.
  var flopsPerPair: Double { Double(2 * headDim + 2 * valueDim) }
}

/// One attention block: local query rows against local key rows, with the offset
/// `off = global(first query) − global(first key)` that places the causal diagonal.
struct BlockEntry: Sendable, Equatable {
  var q: Range<Int>
  var k: Range<Int>
  var offset: Int
}

/// A set of blocks computed by one flash call: each query row appears at most once.
struct BlockCall: Sendable {
  var causal: Bool
  var entries: [BlockEntry]
}

/// Runs FlashAttention-2 on the blocks a rank holds and merges the results.
struct BlockAttention {
  let geometry: ShardGeometry
  let flash: FlashAttention
  let op: String

  /// The flash calls for query chunks `queries` against key chunks `keys` (both local to their
  /// buffers, with global positions): fully visible key chunks of a query chunk are joined into one
  /// non-causal block; chunks that straddle the diagonal become causal blocks with their offset;
  /// chunks entirely in the future are skipped.
  func plan(queries: [Piece], keys: [Piece]) -> [BlockCall] {
    var full = BlockCall(causal: false, entries: [])
    var diagonal: [BlockCall] = []
    for qp in queries where !qp.local.isEmpty {
      var fullKeys: [Range<Int>] = []
      var diagonalCount = 0
      for kp in keys where !kp.local.isEmpty {
        if !geometry.causal || kp.globalEnd - 1 <= qp.globalStart {
          fullKeys.append(kp.local)
        } else if kp.globalStart <= qp.globalEnd - 1 {
          let e = BlockEntry(q: qp.local, k: kp.local, offset: qp.globalStart - kp.globalStart)
          if diagonal.count <= diagonalCount { diagonal.append(BlockCall(causal: true, entries: [])) }
          diagonal[diagonalCount].entries.append(e)
          diagonalCount += 1
        }
      }
      // Join adjacent fully visible key ranges (a rank's chunks are adjacent in its buffer).
      fullKeys.sort { $0.lowerBound < $1.lowerBound }
      var joined: [Range<Int>] = []
      for r in fullKeys {
        if let last = joined.last, last.upperBound == r.lowerBound {
          joined[joined.count - 1] = last.lowerBound..<r.upperBound
        } else {
          joined.append(r)
        }
      }
      if let first = joined.first { full.entries.append(BlockEntry(q: qp.local, k: first, offset: 0)) }
      for r in joined.dropFirst() {  // not adjacent: each needs its own call
        diagonal.append(BlockCall(causal: false, entries: [BlockEntry(q: qp.local, k: r, offset: 0)]))
      }
    }
    return (full.entries.isEmpty ? [] : [full]) + diagonal.filter { !$0.entries.isEmpty }
  }

  /// Visible (query, key) pairs of `calls`, per query head.
  func visiblePairs(_ calls: [BlockCall]) -> Double {
    var total = 0.0
    for call in calls {
      for e in call.entries {
        if !call.causal {
          total += Double(e.q.count) * Double(e.k.count)
        } else {
          for i in 0..<e.q.count { total += Double(min(max(i + e.offset + 1, 0), e.k.count)) }
        }
      }
    }
    return total * Double(geometry.queryGroups)
  }

  /// Computes `calls` for queries `q` (`[B, Hq, qRows, D]`) against keys `k` (`[B, Hkv, kRows, D]`)
  /// and values `v` (`[B, Hkv, kRows, Dv]`) into `scratch` (rows as in `q`), then merges each
  /// block's rows into `target` at row offset `shift`. Between slices of work it calls `progress`,
  /// so transfers in flight advance while the rank computes. Returns the FLOPs done.
  @discardableResult
  func run(
    _ calls: [BlockCall], q: UnsafePointer<Float>, qRows: Int, k: UnsafePointer<Float>, v: UnsafePointer<Float>, kRows: Int,
    scratch: PartialRows, into target: PartialRows, shift: Int, slices: Int, progress: () -> Void
  ) -> Double {
    let g = geometry
    for call in calls {
      // Cut every block into `slices` pieces of query rows; piece p of every block is one call.
      let n = max(1, slices)
      for p in 0..<n {
        var sequences: [AttentionSequence] = []
        for e in call.entries {
          let lo = e.q.count * p / n, hi = e.q.count * (p + 1) / n
          if hi <= lo { continue }
          for b in 0..<g.batch {
            sequences.append(AttentionSequence.block(
              batch: b, queryStart: e.q.lowerBound + lo, queryCount: hi - lo, keyStart: e.k.lowerBound,
              keyCount: e.k.count, offset: e.offset + lo))
          }
        }
        if sequences.isEmpty { continue }
        let problem = AttentionProblem.blocks(
          op: op, batch: g.batch, queryHeads: g.queryHeads, keyValueHeads: g.keyValueHeads, queryLength: qRows,
          keyLength: kRows, headDim: g.headDim, valueDim: g.valueDim, scale: g.scale, causal: call.causal,
          softcap: g.softcap, sequences: sequences, threads: g.threads)
        flash.forward(problem, q: q, k: k, v: v, out: scratch.o.base, lse: scratch.lse, emptyRowLSE: -.infinity)
        progress()
      }
      for e in call.entries {
        ShardMerge.merge(scratch, from: e.q.lowerBound, into: target, to: e.q.lowerBound + shift, count: e.q.count, threads: g.threads)
      }
    }
    return visiblePairs(calls) * g.flopsPerPair
  }
}
