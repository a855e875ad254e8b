import SubqCore
import SubqKernels

// MARK: - Grouped search (GQA)

extension ProximityGraph {
  /// Working memory of a grouped search, reused across searches on one thread: visited and
  /// expanded marks (epochs, so nothing is cleared between searches), one candidate pool per
  /// query, the queries and the scores of a node's fresh neighbours against every query.
  final class GroupScratch: @unchecked Sendable {
    private(set) var visited: UnsafeMutablePointer<UInt32>
    private(set) var expanded: UnsafeMutablePointer<UInt32>
    private(set) var markCapacity = 0
    private(set) var epoch: UInt32 = 0
    private(set) var poolScores: UnsafeMutablePointer<Float>
    private(set) var poolIds: UnsafeMutablePointer<Int32>
    private(set) var poolExpanded: UnsafeMutablePointer<Bool>
    /// Entries per query pool.
    private(set) var poolStride = 0
    private(set) var poolQueries = 0
    private(set) var freshIds: UnsafeMutablePointer<Int32>
    private(set) var freshScores: UnsafeMutablePointer<Float>
    private(set) var freshStride = 0
    private(set) var freshQueries = 0
    private(set) var queries: UnsafeMutablePointer<Float>
    private(set) var queryCapacity = 0
    /// Floats per stored query (the width rounded up to a multiple of 16).
    let queryStride: Int

    init(dim: Int) {
      queryStride = (dim + 15) / 16 * 16
      visited = .allocate(capacity: 1)
      expanded = .allocate(capacity: 1)
      poolScores = .allocate(capacity: 1)
      poolIds = .allocate(capacity: 1)
      poolExpanded = .allocate(capacity: 1)
      freshIds = .allocate(capacity: 1)
      freshScores = .allocate(capacity: 1)
      queries = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64).bindMemory(to: Float.self, capacity: 16)
    }
    deinit {
      visited.deallocate(); expanded.deallocate()
      poolScores.deallocate(); poolIds.deallocate(); poolExpanded.deallocate()
      freshIds.deallocate(); freshScores.deallocate()
      UnsafeMutableRawPointer(queries).deallocate()
    }

    /// Starts a search of `group` queries over `count` nodes with pools of up to `pool` entries;
    /// returns the epoch that marks this search's visits and expansions.
    func begin(count: Int, pool: Int, group: Int, degree: Int) -> UInt32 {
      if freshStride < degree || freshQueries < group {
        freshIds.deallocate(); freshScores.deallocate()
        freshStride = Swift.max(freshStride, degree)
        freshQueries = Swift.max(freshQueries, group)
        freshIds = .allocate(capacity: freshStride)
        freshScores = .allocate(capacity: freshStride * freshQueries)
      }
      if queryCapacity < group {
        UnsafeMutableRawPointer(queries).deallocate()
        let floats = group * queryStride
        queries = UnsafeMutableRawPointer.allocate(byteCount: floats * 4, alignment: 64).bindMemory(to: Float.self, capacity: floats)
        queries.initialize(repeating: 0, count: floats)
        queryCapacity = group
      }
      if markCapacity < count {
        let cap = count + count / 4 + 64
        visited.deallocate(); expanded.deallocate()
        visited = .allocate(capacity: cap)
        visited.initialize(repeating: 0, count: cap)
        expanded = .allocate(capacity: cap)
        expanded.initialize(repeating: 0, count: cap)
        markCapacity = cap
        epoch = 0
      }
      if poolStride < pool + 1 || poolQueries < group {
        poolStride = Swift.max(poolStride, pool + 1 + 64)
        poolQueries = Swift.max(poolQueries, group)
        poolScores.deallocate(); poolIds.deallocate(); poolExpanded.deallocate()
        poolScores = .allocate(capacity: poolStride * poolQueries)
        poolIds = .allocate(capacity: poolStride * poolQueries)
        poolExpanded = .allocate(capacity: poolStride * poolQueries)
      }
      epoch &+= 1
      if epoch == 0 {
        visited.update(repeating: 0, count: markCapacity)
        expanded.update(repeating: 0, count: markCapacity)
        epoch = 1
      }
      return epoch
    }
  }

  /// One query's candidate pool: the best `ef` allowed candidates seen so far, best first, plus
  /// excluded ones ranking among them (expanded, never returned).
  struct Pool {
    let scores: UnsafeMutablePointer<Float>
    let ids: UnsafeMutablePointer<Int32>
    let done: UnsafeMutablePointer<Bool>
    let ef: Int
    let lo: Int32, hi: Int32
    var size = 0
    var included = 0
    /// Every entry before it is expanded.
    var cursor = 0
    /// Entries ranking above it count as an improvement (the result size k).
    let top: Int
    /// Turns of this query since a candidate last entered its top `top`.
    var stale = 0
    /// An id that is never returned (treated as excluded), or −1: the single-query search uses
    /// it to leave out the key a query was built from.
    var skip: Int32 = -1

    /// Early termination: `patience` > 0 turns in a row brought no candidate into the top
    /// `top`, and the top is full (a pool still short of `top` allowed keys keeps expanding, so
    /// a search returns k keys whenever its traversal can reach them).
    @inline(__always) func outOfPatience(_ patience: Int) -> Bool {
      patience > 0 && stale >= patience && included >= top
    }

    /// Inserts (s, id) if it ranks among the pool; returns its position (or `size` if not kept).
    @inline(__always) mutating func offer(_ s: Float, _ id: Int32) -> Int {
      if included >= ef && size > 0 {
        let ls = scores[size - 1]
        if !(s > ls || (s == ls && id < ids[size - 1])) { return size }
      }
      var a = 0, b = size
      while a < b {
        let mid = (a + b) >> 1
        let ms = scores[mid]
        if ms > s || (ms == s && ids[mid] < id) { a = mid + 1 } else { b = mid }
      }
      let moving = size - a
      if moving > 0 {
        (scores + a + 1).update(from: scores + a, count: moving)
        (ids + a + 1).update(from: ids + a, count: moving)
        (done + a + 1).update(from: done + a, count: moving)
      }
      scores[a] = s
      ids[a] = id
      done[a] = false
      size += 1
      if id >= lo && id < hi && id != skip { included += 1 }
      // Keep at most ef allowed entries, and no excluded entry below the last allowed one.
      while size > 0 {
        let last = ids[size - 1]
        let inside = last >= lo && last < hi && last != skip
        guard included > ef || (included == ef && !inside) else { break }
        size -= 1
        if inside { included -= 1 }
      }
      if a < cursor { cursor = a }
      if a < top { stale = 0 }
      return a
    }
  }

  /// Beam search for several queries at once — the query heads of one GQA group, which read the
  /// same keys: for each query, the `k` ids in `allowed` with the largest inner product with it,
  /// best first (as ``search(_:keys:k:width:allowed:scratch:skip:)`` returns for one query).
  ///
  /// Each query keeps its own pool of `width`; the pools share one visited set, so every key the
  /// traversal reaches is read once and scored against all the queries, and offered to every
  /// pool. The queries take turns expanding their best unexpanded pool entry (a node already
  /// expanded for another query is skipped: its neighbours are all scored); the search ends
  /// when every pool is fully expanded. A query's pool thus sees every candidate its own search
  /// would have reached through the nodes it expanded, plus those the other queries found, so
  /// its recall is typically at least that of its own search, and the keys read are the union
  /// of the searches' rather than their sum. The long keys are scored for every query after the
  /// traversal, as in the single search. `Found.scanned` is the number of keys read (the same
  /// for every query).
  ///
  /// `seeds` (the previous step's results of the group's queries) are scored for every query with
  /// the entry points.
  ///
  /// With `patience` > 0 a query stops expanding once its top `k` is full and `patience` of its
  /// turns in a row brought no new candidate into it (adaptive early termination; 0: expand the
  /// whole pool).
  func searchGroup(
    _ queries: [UnsafePointer<Float>], keys: RowSource, k: Int, width: Int, allowed: Range<Int>, scratch: GroupScratch,
    patience: Int = 0, seeds: [Int32] = []
  ) -> [Found] {
    let n = count, G = queries.count
    if n == 0 || k == 0 || allowed.isEmpty || G == 0 { return Array(repeating: Found(ids: [], scores: [], scanned: 0), count: G) }
    let ef = Swift.max(width, k)
    let lo = Int32(allowed.lowerBound), hi = Int32(allowed.upperBound)
    let excludedCount = Swift.max(0, Int(lo)) + Swift.max(0, n - Int(hi))
    let poolSize = Swift.min(n, ef + excludedCount)
    let epoch = scratch.begin(count: n, pool: poolSize, group: G, degree: stride)
    let QS = scratch.queryStride, qs = scratch.queries
    for g in 0..<G { (qs + g * QS).update(from: queries[g], count: keys.width) }
    let visited = scratch.visited, expandedMark = scratch.expanded
    let freshIds = scratch.freshIds, freshScores = scratch.freshScores, FS = scratch.freshStride
    let PS = scratch.poolStride
    var pools: [Pool] = (0..<G).map { g in
      Pool(scores: scratch.poolScores + g * PS, ids: scratch.poolIds + g * PS, done: scratch.poolExpanded + g * PS, ef: ef, lo: lo, hi: hi, top: k)
    }
    var scanned = 0

    /// Scores the `fresh` ids in `freshIds` against every query and offers them to every pool.
    func scoreAndOffer(_ fresh: Int, _ pools: inout [Pool]) {
      if fresh == 0 { return }
      prefetchRows(keys, ids: freshIds, count: fresh)
      for g in 0..<G { rowDots(qs + g * QS, keys, ids: freshIds, count: fresh, out: freshScores + g * FS) }
      scanned += fresh
      for g in 0..<G {
        let sc = freshScores + g * FS
        for x in 0..<fresh { _ = pools[g].offer(sc[x], freshIds[x]) }
      }
    }

    // Entry points, in chunks of the fresh buffer.
    var fresh = 0
    for list in [seeds, entries] {
      for e in list where e >= 0 && Int(e) < n && visited[Int(e)] != epoch {
        visited[Int(e)] = epoch
        freshIds[fresh] = e
        fresh += 1
        if fresh == FS {
          scoreAndOffer(fresh, &pools)
          fresh = 0
        }
      }
    }
    scoreAndOffer(fresh, &pools)
    for g in 0..<G { pools[g].stale = 0 }

    var progressed = true
    while progressed {
      progressed = false
      for g in 0..<G {
        var c = pools[g].cursor
        while c < pools[g].size && pools[g].done[c] { c += 1 }
        pools[g].cursor = c
        if c >= pools[g].size { continue }
        // Early termination: this query's top k is full and has not changed for `patience` turns.
        if pools[g].outOfPatience(patience) { continue }
        pools[g].stale += 1
        progressed = true
        pools[g].done[c] = true
        pools[g].cursor = c + 1
        let node = Int(pools[g].ids[c])
        if expandedMark[node] == epoch { continue }
        expandedMark[node] = epoch
        let e0 = node * stride
        let m = Int(edgeCount[node]), pr = Int(protectedCount[node])
        var f = 0
        for x in 0..<m {
          let nb = edges[e0 + x]
          if visited[Int(nb)] == epoch { continue }
          visited[Int(nb)] = epoch
          freshIds[f] = nb
          f += 1
        }
        for x in (stride - pr)..<stride {
          let nb = edges[e0 + x]
          if visited[Int(nb)] == epoch { continue }
          visited[Int(nb)] = epoch
          freshIds[f] = nb
          f += 1
        }
        scoreAndOffer(f, &pools)
      }
    }

    var out: [Found] = []
    out.reserveCapacity(G)
    for g in 0..<G {
      var ids: [Int32] = [], scores: [Float] = []
      ids.reserveCapacity(k + 1)
      scores.reserveCapacity(k + 1)
      let pool = pools[g]
      for x in 0..<pool.size {
        let id = pool.ids[x]
        guard id >= lo && id < hi else { continue }
        ids.append(id)
        scores.append(pool.scores[x])
        if ids.count == k { break }
      }
      out.append(Found(ids: ids, scores: scores, scanned: 0))
    }
    // The long keys the traversal did not reach: scored for every query, joining its results on
    // their merit.
    for e in longKeys where e >= lo && e < hi && Int(e) < n && visited[Int(e)] != epoch {
      visited[Int(e)] = epoch
      scanned += 1
      for g in 0..<G {
        let sc = rowDot(qs + g * QS, keys, Int(e))
        if out[g].ids.count == k, let last = out[g].scores.last, !(sc > last || (sc == last && e < out[g].ids[k - 1])) { continue }
        var a = 0
        while a < out[g].ids.count && (out[g].scores[a] > sc || (out[g].scores[a] == sc && out[g].ids[a] < e)) { a += 1 }
        out[g].ids.insert(e, at: a)
        out[g].scores.insert(sc, at: a)
        if out[g].ids.count > k { out[g].ids.removeLast(); out[g].scores.removeLast() }
      }
    }
    for g in 0..<G { out[g].scanned = scanned }
    return out
  }
}
