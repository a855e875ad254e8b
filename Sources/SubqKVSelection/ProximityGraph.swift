import Foundation
import SubqCore
import SubqDecoding
import SubqKernels

/// A directed proximity graph over key rows for maximum-inner-product search, built the
/// RoarGraph way from a sample of real queries (Chen et al., "RoarGraph: A Projected Bipartite
/// Graph for Efficient Cross-Modal Approximate Nearest Neighbor Search", VLDB 2024), as
/// RetrievalAttention does (Liu et al., arXiv 2409.10516).
///
/// Nodes are key positions `0..<count`; the graph stores ids, edges and each key's squared norm,
/// never the keys: every operation reads them from a ``RowSource``. Each node has at most `degree`
/// ordinary out-edges, stored with the two keys' closeness −‖k_a − k_b‖² (used to rank candidates
/// and to decide which edge a new one replaces), plus a few protected ones stored with their inner
/// product.
///
/// **Build** (``build(keys:queries:queryCount:parameters:)``):
/// 1. *Bipartite links.* For each sampled query, its exact top-`queryNeighbors` keys by inner
///    product (one pass over the keys in 6-key × 64-query register tiles, a heap per query).
/// 2. *Projection.* The query's best key (its pivot) is linked to the other keys of its list and
///    each of them back to the pivot: keys that the same query ranks high become neighbours, so
///    edges follow query-induced proximity rather than key-to-key distance (queries and keys are
///    distributed differently, so a key-only graph leads a query astray).
/// 3. *Pruning.* Each node keeps at most `degree` of its candidates: of the `4·degree` closest, a
///    candidate is dropped when a kept neighbour is closer to it than the node is, by a factor α
///    (Vamana's rule; α = 1 is the relative-neighbourhood rule). Closeness between keys is
///    Euclidean: under inner product a single long key "occludes" almost every candidate.
/// 4. *Linking.* Every key is then searched for in the graph with itself as the query; the results
///    join its candidates (pruned again) and it is added to their lists (reverse edges; a full list
///    gives up its farthest edge whose target keeps another in-edge, if the new one is closer).
///    The three results with the largest inner product — where a search for queries like the key
///    arrives — point to it with protected edges (kept by inner product), which is what makes a
///    key that dominates some query's attention findable. Keys are linked shortest first, so the
///    long ones (the keys that can dominate a query's attention) are searched for on a nearly
///    finished graph; they go in batches whose searches run in parallel against the graph as it
///    was before the batch, so the result is deterministic and independent of the thread count.
/// 5. *Connectivity.* A walk from the entry points finds keys no path reaches; each gets an edge
///    from a reached neighbour (NSG's repair), so every key can be found. These edges also go into
///    the protected slots, which ordinary linking never takes, so the repair holds.
/// 6. *Entry points.* `entryPoints` sampled queries chosen by farthest-point (k-center) selection
///    on cosine distance; their pivots start every search. The longest 1/512 of the keys (at
///    least 8, and later inserts as long) are scored by every search too, after the beam search,
///    and join its results on their merit: `q·k ≤ |q|·|k|`, so a key that dominates some query's
///    attention is either well aligned with it — what the graph finds — or long.
///
/// **Search** is a best-first beam search by inner product with a candidate pool of `width`
/// (HNSW's "ef", DiskANN's "L"), from every entry point. Excluded ids (outside `allowed`) are
/// scored and expanded but not returned, and do not take pool places. **Insert** searches for the
/// new key, links it like step 4 and forces edges into it from the two keys with the largest
/// inner product with it (where a search for queries like it arrives), so keys appended after the
/// build are searchable.
struct ProximityGraph: Sendable {
  struct Parameters: Sendable, Equatable {
    /// K_q: exact top keys linked to each sampled query.
    var queryNeighbors = 64
    /// R: most out-edges per node.
    var degree = 32
    /// Search pool width when linking a key (build and insert).
    var buildWidth = 24
    /// Entry points.
    var entryPoints = 32
    /// Occlusion slack α of the pruning rule.
    var alpha: Float = 1.2
    /// Seed for the processing order.
    var seed: UInt64 = 0
    var threads = Parallel.defaultThreads
  }

  let degree: Int
  /// Protected slots per node, after the `degree` ordinary ones (see ``addProtected(from:to:score:)``).
  static let reserve = 4
  /// Slots per node: `degree` ordinary edges, then `reserve` protected ones filled from the end.
  let stride: Int
  private(set) var count = 0
  /// Out-edges: node n's ordinary edges are `edges[n·stride ..< n·stride + edgeCount[n]]`, its
  /// protected ones `edges[(n+1)·stride − protectedCount[n] ..< (n+1)·stride]`.
  private(set) var edges: [Int32] = []
  /// Inner product of the two keys of each edge.
  private(set) var edgeScores: [Float] = []
  private(set) var edgeCount: [Int32] = []
  private(set) var protectedCount: [Int32] = []
  /// Edges into each node.
  private(set) var inDegree: [Int32] = []
  /// Squared norm of each node's key.
  private(set) var norms: [Float] = []
  /// Squared norm from which a key counts as long: that of the longest `1/512` of the keys at
  /// build time (at least 8 keys).
  private(set) var longNorm: Float = .infinity
  /// The long keys (build time, and inserted ones at least as long). Every search scores them and
  /// merges them into its results: since `q·k ≤ |q|·|k|`, a key that dominates some query's
  /// attention is either well aligned with it — what the graph finds — or long.
  private(set) var longKeys: [Int32] = []
  private(set) var entries: [Int32] = []
  let buildWidth: Int
  /// Occlusion slack α of the pruning rule (1 = the strict relative-neighbourhood rule).
  let alpha: Float

  init(degree: Int, buildWidth: Int, alpha: Float = 1.2) {
    self.degree = degree
    self.stride = degree + ProximityGraph.reserve
    self.buildWidth = buildWidth
    self.alpha = alpha
  }

  /// Bytes held by the graph.
  var memoryBytes: Int {
    edges.capacity * 4 + edgeScores.capacity * 4 + edgeCount.capacity * 4 + protectedCount.capacity * 4 + inDegree.capacity * 4
      + norms.capacity * 4 + entries.capacity * 4 + longKeys.capacity * 4
  }

  /// Key-to-key closeness of ordinary edges, from an inner product: −‖k_a − k_b‖² (higher is closer).
  @inline(__always) func similarity(ip: Float, _ a: Int, _ b: Int) -> Float { 2 * ip - norms[a] - norms[b] }
  /// The inner product back from a closeness.
  @inline(__always) func innerProduct(similarity: Float, _ a: Int, _ b: Int) -> Float { (similarity + norms[a] + norms[b]) / 2 }

  /// Reads node `t`'s key into `row` and records its squared norm.
  mutating func setNorm(_ t: Int, keys: RowSource, row: UnsafeMutablePointer<Float>) {
    keys.read(t, into: row)
    var a: Float = 0
    for d in 0..<keys.width { a += row[d] * row[d] }
    norms[t] = a
  }

  /// Number of edges.
  var edgeTotal: Int { edgeCount.reduce(0) { $0 + Int($1) } + protectedCount.reduce(0) { $0 + Int($1) } }

  // MARK: - Search

  /// Per-search working memory, reused across searches on one thread: the visited marks (an
  /// epoch per node, so nothing is cleared between searches), the candidate pool and the query.
  final class Scratch: @unchecked Sendable {
    private(set) var visited: UnsafeMutablePointer<UInt32>
    private(set) var visitedCapacity = 0
    private(set) var epoch: UInt32 = 0
    private(set) var poolScores: UnsafeMutablePointer<Float>
    private(set) var poolIds: UnsafeMutablePointer<Int32>
    private(set) var poolExpanded: UnsafeMutablePointer<Bool>
    private(set) var poolCapacity = 0
    private(set) var freshIds: UnsafeMutablePointer<Int32>
    private(set) var freshScores: UnsafeMutablePointer<Float>
    private(set) var freshCapacity = 0
    let query: UnsafeMutablePointer<Float>

    init(dim: Int) {
      let cap = (dim + 15) / 16 * 16 + 16
      query = UnsafeMutableRawPointer.allocate(byteCount: cap * 4, alignment: 64).bindMemory(to: Float.self, capacity: cap)
      query.initialize(repeating: 0, count: cap)
      visited = .allocate(capacity: 1)
      poolScores = .allocate(capacity: 1)
      poolIds = .allocate(capacity: 1)
      poolExpanded = .allocate(capacity: 1)
      freshIds = .allocate(capacity: 1)
      freshScores = .allocate(capacity: 1)
    }
    deinit {
      freshIds.deallocate()
      freshScores.deallocate()
      UnsafeMutableRawPointer(query).deallocate()
      visited.deallocate()
      poolScores.deallocate()
      poolIds.deallocate()
      poolExpanded.deallocate()
    }

    /// Starts a search over `count` nodes with a pool of up to `pool` entries; returns the epoch
    /// that marks this search's visits.
    func begin(count: Int, pool: Int, degree: Int) -> UInt32 {
      if freshCapacity < degree {
        freshIds.deallocate(); freshScores.deallocate()
        freshIds = .allocate(capacity: degree)
        freshScores = .allocate(capacity: degree)
        freshCapacity = degree
      }
      if visitedCapacity < count {
        let cap = count + count / 4 + 64
        let v = UnsafeMutablePointer<UInt32>.allocate(capacity: cap)
        v.initialize(repeating: 0, count: cap)
        visited.deallocate()
        visited = v
        visitedCapacity = cap
        epoch = 0
      }
      if poolCapacity < pool + 1 {
        let cap = pool + 1 + 64
        poolScores.deallocate(); poolIds.deallocate(); poolExpanded.deallocate()
        poolScores = .allocate(capacity: cap)
        poolIds = .allocate(capacity: cap)
        poolExpanded = .allocate(capacity: cap)
        poolCapacity = cap
      }
      epoch &+= 1
      if epoch == 0 {
        visited.update(repeating: 0, count: visitedCapacity)
        epoch = 1
      }
      return epoch
    }
  }

  /// The result of a search: ids and inner products, best first, and the keys scored.
  struct Found {
    var ids: [Int32]
    var scores: [Float]
    var scanned: Int

    /// Keeps the best `k` results.
    mutating func keepBest(_ k: Int) {
      if ids.count > k {
        ids.removeLast(ids.count - k)
        scores.removeLast(scores.count - k)
      }
    }
  }

  /// Beam search for the `k` ids in `allowed` (and ≠ `skip`) with the largest inner product with
  /// `query` (Float32, `keys.width` values).
  ///
  /// The pool holds the best `width` allowed candidates seen so far, plus any excluded ones that
  /// rank among them (they are expanded — they may lead to allowed keys — but never returned). The
  /// search repeatedly expands the best unexpanded pool entry, scoring its neighbours not seen
  /// before, until every pool entry is expanded.
  ///
  /// `seeds` (e.g. the previous decode step's results for a slowly drifting query) are scored and
  /// offered to the pool with the entry points, so the search starts next to its answer. With
  /// `patience` > 0 the search stops once its top `k` is full and `patience` expansions in a row
  /// brought no candidate into it (0: expand the whole pool).
  func search(
    _ query: UnsafePointer<Float>, keys: RowSource, k: Int, width: Int, allowed: Range<Int>, scratch: Scratch, skip: Int32 = -1,
    seeds: [Int32] = [], patience: Int = 0
  ) -> Found {
    let n = count
    if n == 0 || k == 0 || allowed.isEmpty { return Found(ids: [], scores: [], scanned: 0) }
    let ef = Swift.max(width, k)
    let lo = Int32(allowed.lowerBound), hi = Int32(allowed.upperBound)
    let excludedCount = Swift.max(0, Int(lo)) + Swift.max(0, n - Int(hi)) + 1
    let epoch = scratch.begin(count: n, pool: Swift.min(n, ef + excludedCount), degree: stride)
    let q = scratch.query
    q.update(from: query, count: keys.width)
    let visited = scratch.visited
    let ps = scratch.poolScores, pid = scratch.poolIds, pex = scratch.poolExpanded
    let freshIds = scratch.freshIds, freshScores = scratch.freshScores
    var scanned = 0
    var pool = Pool(scores: ps, ids: pid, done: pex, ef: ef, lo: lo, hi: hi, top: k, skip: skip)
    // Seeds, then entry points: scored in chunks of the fresh buffer (prefetched together).
    var fresh0 = 0
    func flush() {
      prefetchRows(keys, ids: freshIds, count: fresh0)
      rowDots(q, keys, ids: freshIds, count: fresh0, out: freshScores)
      scanned += fresh0
      for x in 0..<fresh0 { _ = pool.offer(freshScores[x], freshIds[x]) }
      fresh0 = 0
    }
    for list in [seeds, entries] {
      for e in list where e >= 0 && Int(e) < n && visited[Int(e)] != epoch {
        visited[Int(e)] = epoch
        freshIds[fresh0] = e
        fresh0 += 1
        if fresh0 == stride { flush() }
      }
    }
    flush()
    pool.stale = 0
    var i = 0
    while i < pool.size {
      var next = pool.size
      if !pex[i] {
        if pool.outOfPatience(patience) { break }
        pool.stale += 1
        pex[i] = true
        let node = Int(pid[i])
        let e0 = node * stride
        let m = Int(edgeCount[node]), pr = Int(protectedCount[node])
        // The neighbours not seen yet (ordinary, then protected edges), scored together, then
        // offered in edge order.
        var fresh = 0
        for x in 0..<m {
          let nb = edges[e0 + x]
          if visited[Int(nb)] == epoch { continue }
          visited[Int(nb)] = epoch
          freshIds[fresh] = nb
          fresh += 1
        }
        for x in (stride - pr)..<stride {
          let nb = edges[e0 + x]
          if visited[Int(nb)] == epoch { continue }
          visited[Int(nb)] = epoch
          freshIds[fresh] = nb
          fresh += 1
        }
        prefetchRows(keys, ids: freshIds, count: fresh)
        rowDots(q, keys, ids: freshIds, count: fresh, out: freshScores)
        scanned += fresh
        for x in 0..<fresh {
          let at = pool.offer(freshScores[x], freshIds[x])
          if at < next { next = at }
        }
      }
      i = next <= i ? next : i + 1
    }
    var ids: [Int32] = [], scores: [Float] = []
    ids.reserveCapacity(k + 1)
    scores.reserveCapacity(k + 1)
    for x in 0..<pool.size {
      let id = pid[x]
      guard id >= lo && id < hi && id != skip else { continue }
      ids.append(id)
      scores.append(ps[x])
      if ids.count == k { break }
    }
    // The long keys the search did not reach are scored and join the results on their merit
    // (not the beam: seeded with them, the search would wander through every cluster).
    for e in longKeys where e >= lo && e < hi && e != skip && Int(e) < n && visited[Int(e)] != epoch {
      visited[Int(e)] = epoch
      scanned += 1
      let sc = rowDot(q, keys, Int(e))
      if ids.count == k, let last = scores.last, !(sc > last || (sc == last && e < ids[k - 1])) { continue }
      var a = 0
      while a < ids.count && (scores[a] > sc || (scores[a] == sc && ids[a] < e)) { a += 1 }
      ids.insert(e, at: a)
      scores.insert(sc, at: a)
      if ids.count > k { ids.removeLast(); scores.removeLast() }
    }
    return Found(ids: ids, scores: scores, scanned: scanned)
  }

  /// Brute force: the `k` ids in `allowed` with the largest inner product (ties: lower id).
  static func exactSearch(_ query: UnsafePointer<Float>, keys: RowSource, k: Int, allowed: Range<Int>) -> Found {
    var heap = TopKHeap(capacity: Swift.max(0, k))
    for t in allowed { heap.offer(rowDot(query, keys, t), Int32(t)) }
    let sorted = heap.sortedByScore()
    return Found(ids: sorted.map(\.id), scores: sorted.map(\.score), scanned: allowed.count)
  }

  // MARK: - Edges

  /// Makes room for nodes up to `n`.
  mutating func grow(to n: Int) {
    if n <= count { return }
    edges.append(contentsOf: repeatElement(-1, count: (n - count) * stride))
    edgeScores.append(contentsOf: repeatElement(0, count: (n - count) * stride))
    edgeCount.append(contentsOf: repeatElement(0, count: n - count))
    protectedCount.append(contentsOf: repeatElement(0, count: n - count))
    inDegree.append(contentsOf: repeatElement(0, count: n - count))
    norms.append(contentsOf: repeatElement(0, count: n - count))
    count = n
  }

  /// Sets node `node`'s ordinary out-edges (its protected ones stay; targets they already reach
  /// are skipped).
  mutating func setEdges(_ node: Int, _ list: [(score: Float, id: Int32)]) {
    let base = node * stride
    for x in 0..<Int(edgeCount[node]) { inDegree[Int(edges[base + x])] -= 1 }
    let pr = Int(protectedCount[node])
    var m = 0
    for c in list where m < degree {
      var dup = false
      for x in (stride - pr)..<stride where edges[base + x] == c.id { dup = true }
      if dup { continue }
      edges[base + m] = c.id
      edgeScores[base + m] = c.score
      inDegree[Int(c.id)] += 1
      m += 1
    }
    edgeCount[node] = Int32(m)
  }

  /// Whether `from → to` exists (ordinary or protected).
  func hasEdge(from: Int, to: Int32) -> Bool {
    let base = from * stride
    for x in 0..<Int(edgeCount[from]) where edges[base + x] == to { return true }
    for x in (stride - Int(protectedCount[from]))..<stride where edges[base + x] == to { return true }
    return false
  }

  /// Adds `from → to` in one of `from`'s protected slots, which ordinary linking never replaces:
  /// the edges that keep the graph connected and lead searches to keys that stand out. When the
  /// slots are full, the new edge takes the place of the protected edge of least inner product
  /// whose target keeps another in-edge, if its own inner product is larger. Returns whether the
  /// edge was added.
  @discardableResult
  mutating func addProtected(from: Int, to: Int32, score: Float) -> Bool {
    if from == Int(to) || hasEdge(from: from, to: to) { return false }
    let pr = Int(protectedCount[from])
    let end = from * stride + stride
    if pr < ProximityGraph.reserve {
      let slot = end - 1 - pr
      edges[slot] = to
      edgeScores[slot] = score
      protectedCount[from] = Int32(pr + 1)
      inDegree[Int(to)] += 1
      return true
    }
    var worst = -1
    for slot in (end - pr)..<end where inDegree[Int(edges[slot])] >= 2 && (worst < 0 || edgeScores[slot] < edgeScores[worst]) { worst = slot }
    guard worst >= 0, score > edgeScores[worst] else { return false }
    inDegree[Int(edges[worst])] -= 1
    edges[worst] = to
    edgeScores[worst] = score
    inDegree[Int(to)] += 1
    return true
  }

  /// Adds the edge `from → to` (inner product `score`): appended if there is room; otherwise it
  /// replaces the least similar edge whose target keeps another in-edge, when it is more similar
  /// (or, with `force`, whatever its similarity). Returns whether it was added.
  @discardableResult
  mutating func addEdge(from: Int, to: Int32, score: Float, force: Bool = false) -> Bool {
    if from == Int(to) || hasEdge(from: from, to: to) { return false }
    let base = from * stride
    let m = Int(edgeCount[from])
    if m < degree {
      edges[base + m] = to
      edgeScores[base + m] = score
      edgeCount[from] = Int32(m + 1)
      inDegree[Int(to)] += 1
      return true
    }
    var worst = -1
    for x in 0..<m where inDegree[Int(edges[base + x])] >= 2 && (worst < 0 || edgeScores[base + x] < edgeScores[base + worst]) { worst = x }
    guard worst >= 0, force || score > edgeScores[base + worst] else { return false }
    inDegree[Int(edges[base + worst])] -= 1
    edges[base + worst] = to
    edgeScores[base + worst] = score
    inDegree[Int(to)] += 1
    return true
  }

  /// Makes every node reachable from the entry points: a breadth-first walk marks what is
  /// reached; each node left out gets an edge from a reached node — one of its own neighbours, or
  /// else a search result (searches only visit reached nodes) — and the walk continues from it.
  mutating func connect(keys: RowSource, scratch: Scratch) {
    var reached = [Bool](repeating: false, count: count)
    var queue: [Int32] = []
    func walk(from start: [Int32]) {
      queue.removeAll(keepingCapacity: true)
      for e in start where !reached[Int(e)] { reached[Int(e)] = true; queue.append(e) }
      var head = 0
      while head < queue.count {
        let n = Int(queue[head])
        head += 1
        let base = n * stride
        for x in 0..<Int(edgeCount[n]) {
          let t = edges[base + x]
          if !reached[Int(t)] { reached[Int(t)] = true; queue.append(t) }
        }
        for x in (stride - Int(protectedCount[n]))..<stride {
          let t = edges[base + x]
          if !reached[Int(t)] { reached[Int(t)] = true; queue.append(t) }
        }
      }
    }
    walk(from: entries)
    let row = UnsafeMutablePointer<Float>.allocate(capacity: keys.width + 16)
    defer { row.deallocate() }
    for x in 0..<count where !reached[x] {
      keys.read(x, into: row)
      var linked = false
      // Its own neighbours that are reached, most similar first.
      let base = x * stride
      var own: [(score: Float, id: Int32)] = []
      for e in 0..<Int(edgeCount[x]) where reached[Int(edges[base + e])] { own.append((edgeScores[base + e], edges[base + e])) }
      own.sort { $0.score > $1.score || ($0.score == $1.score && $0.id < $1.id) }
      for c in own where addProtected(from: Int(c.id), to: Int32(x), score: innerProduct(similarity: c.score, Int(c.id), x)) { linked = true; break }
      if !linked {
        let found = search(row, keys: keys, k: buildWidth, width: buildWidth, allowed: 0..<count, scratch: scratch, skip: Int32(x))
        for (s, id) in zip(found.scores, found.ids) where reached[Int(id)] && addProtected(from: Int(id), to: Int32(x), score: s) {
          linked = true
          break
        }
      }
      if !linked { entries.append(Int32(x)) }  // last resort: a new entry point
      walk(from: [Int32(x)])
    }
  }

  /// The pruning rule over `candidates` of `node` (scores are ``similarity(ip:_:_:)``s to the
  /// node, closest first; the node itself and duplicates absent): of the `4·degree` closest, a
  /// candidate c is kept unless a kept neighbour n is much closer to it than the node is
  /// (`α·‖n − c‖ ≤ ‖node − c‖`, Vamana's rule; α = 1 is the relative-neighbourhood rule); at
  /// most `degree` kept.
  ///
  /// Closeness between keys is Euclidean: under inner product one long key "occludes" nearly
  /// every candidate and nodes are left with a single edge. Searches still rank by inner product,
  /// and the protected edges (``addProtected(from:to:score:)``) are kept by inner product.
  func prune(_ node: Int, candidates: [(score: Float, id: Int32)], keys: RowSource, row: UnsafeMutablePointer<Float>) -> [(score: Float, id: Int32)] {
    var kept: [(score: Float, id: Int32)] = []
    let limit = Swift.min(candidates.count, 4 * degree)
    let a2 = alpha * alpha
    for c in candidates.prefix(limit) {
      if kept.count >= degree { break }
      keys.read(Int(c.id), into: row)
      let dpc = -c.score
      var occluded = false
      for n in kept {
        // Squared distances from inner products and norms.
        let dnc = norms[Int(n.id)] + norms[Int(c.id)] - 2 * rowDot(row, keys, Int(n.id))
        if a2 * dnc <= dpc {
          occluded = true
          break
        }
      }
      if !occluded { kept.append(c) }
    }
    return kept
  }

  // MARK: - Insert

  /// Links nodes `count..<newCount` (keys appended after the build) one by one: each is searched
  /// for with itself as the query, joined to the best results (pruned) and added to their lists.
  mutating func insert(upTo newCount: Int, keys: RowSource, scratch: Scratch) -> Int {
    var scanned = 0
    let row = UnsafeMutablePointer<Float>.allocate(capacity: keys.width + 16)
    let other = UnsafeMutablePointer<Float>.allocate(capacity: keys.width + 16)
    defer { row.deallocate(); other.deallocate() }
    while count < newCount {
      let x = count
      grow(to: x + 1)
      setNorm(x, keys: keys, row: row)
      let found = search(row, keys: keys, k: buildWidth, width: buildWidth, allowed: 0..<x, scratch: scratch)
      if norms[x] >= longNorm { longKeys.append(Int32(x)) }
      scanned += found.scanned
      var cands = zip(found.scores, found.ids).map { (score: similarity(ip: $0, x, Int($1)), id: $1) }
      cands.sort { $0.score > $1.score || ($0.score == $1.score && $0.id < $1.id) }
      let kept = prune(x, candidates: cands, keys: keys, row: other)
      setEdges(x, kept)
      var linked = false
      for c in kept where addEdge(from: Int(c.id), to: Int32(x), score: c.score) { linked = true }
      // Make sure the new key can be found: the keys with the largest inner product with it are
      // where a search for queries like it arrives, so the best two of them point to it — in a
      // protected slot if one is free, else in place of an ordinary edge.
      for (s, id) in zip(found.scores, found.ids).prefix(2) where !hasEdge(from: Int(id), to: Int32(x)) {
        if addProtected(from: Int(id), to: Int32(x), score: s) || addEdge(from: Int(id), to: Int32(x), score: similarity(ip: s, x, Int(id)), force: true) {
          linked = true
        }
      }
      if !linked { for c in kept where addEdge(from: Int(c.id), to: Int32(x), score: c.score, force: true) { linked = true; break } }
      if entries.isEmpty || (!linked && x > 0) { entries.append(Int32(x)) }
    }
    return scanned
  }
}

// MARK: - Build

extension ProximityGraph {
  /// What a build did.
  struct BuildReport: Sendable {
    var seconds: Double
    var sampledQueries: Int
    /// Keys that appear in some query's top list.
    var coveredKeys: Int
    var edges: Int
    /// Keys scored by the connectivity searches.
    var linkScanned: Int
    /// Seconds of the exact query lists, of the projection and pruning, of linking every key.
    var listSeconds = 0.0, projectSeconds = 0.0, linkSeconds = 0.0
  }

  /// Builds the graph over keys `0..<keys.count` from `queryCount` Float32 query rows
  /// (`[queryCount][keys.width]`, contiguous).
  static func build(
    keys: RowSource, queries: UnsafePointer<Float>, queryCount S: Int, parameters: Parameters
  ) -> (ProximityGraph, BuildReport) {
    let t0 = DispatchTime.now().uptimeNanoseconds
    let N = keys.count, D = keys.width, R = parameters.degree
    var graph = ProximityGraph(degree: R, buildWidth: parameters.buildWidth, alpha: parameters.alpha)
    graph.grow(to: N)
    do {
      let row = UnsafeMutablePointer<Float>.allocate(capacity: D + 16)
      defer { row.deallocate() }
      for t in 0..<N { graph.setNorm(t, keys: keys, row: row) }
    }
    if N == 0 { return (graph, BuildReport(seconds: 0, sampledQueries: S, coveredKeys: 0, edges: 0, linkScanned: 0)) }
    let Kq = Swift.min(parameters.queryNeighbors, N)

    // 1. Exact top-Kq keys per sampled query.
    let lists = S > 0 && Kq > 0 ? topKeys(keys: keys, queries: queries, queryCount: S, k: Kq, threads: parameters.threads) : []
    let t1 = DispatchTime.now().uptimeNanoseconds

    // 2. Projection candidates: pivot ↔ the rest of its query's list.
    var pairs: [UInt64] = []
    pairs.reserveCapacity(S * Swift.max(0, Kq - 1) * 2)
    var covered = [Bool](repeating: false, count: N)
    for list in lists {
      guard let pivot = list.first else { continue }
      covered[Int(pivot.id)] = true
      for c in list.dropFirst() {
        covered[Int(c.id)] = true
        pairs.append(UInt64(UInt32(pivot.id)) << 32 | UInt64(UInt32(c.id)))
        pairs.append(UInt64(UInt32(c.id)) << 32 | UInt64(UInt32(pivot.id)))
      }
    }
    pairs.sort()
    var csrStarts: [Int] = []  // CSR over distinct sources
    var csrSources: [Int32] = []
    var csrTargets: [Int32] = []
    for p in pairs {
      let s = Int32(truncatingIfNeeded: p >> 32), t = Int32(truncatingIfNeeded: p & 0xFFFF_FFFF)
      if csrSources.last != s {
        csrSources.append(s)
        csrStarts.append(csrTargets.count)
      } else if csrTargets.last == t {
        continue
      }
      csrTargets.append(t)
    }
    csrStarts.append(csrTargets.count)
    pairs = []
    let starts = csrStarts, sources = csrSources, targets = csrTargets

    // 3. Prune each node's candidates (parallel; each node's edges are written by one worker).
    do {
      let workers = Parallel.workers(for: sources.count, threads: parameters.threads)
      let rows = AlignedBuffer<Float>(count: workers * 2 * (D + 16))
      let rp = SendablePointer(rows.pointer)
      let g0 = graph
      var kept = [[(score: Float, id: Int32)]](repeating: [], count: sources.count)
      kept.withUnsafeMutableBufferPointer { kb in
        let kp = SendablePointer(kb.baseAddress!)
        Parallel.forEach(sources.count, threads: workers) { i, worker in
          let node = Int(sources[i])
          let row = rp.pointer + worker * 2 * (D + 16), other = row + D + 16
          keys.read(node, into: row)
          var cands: [(score: Float, id: Int32)] = []
          for t in targets[starts[i]..<starts[i + 1]] { cands.append((g0.similarity(ip: rowDot(row, keys, Int(t)), node, Int(t)), t)) }
          cands.sort { $0.score > $1.score || ($0.score == $1.score && $0.id < $1.id) }
          kp.pointer[i] = g0.prune(node, candidates: cands, keys: keys, row: other)
        }
      }
      withExtendedLifetime(rows) {}
      for (i, s) in sources.enumerated() { graph.setEdges(Int(s), kept[i]) }
    }

    // 5 (first, so the linking searches can start somewhere). Entry points.
    graph.entries = entryPoints(lists: lists, queries: queries, queryCount: S, dim: D, count: parameters.entryPoints)
    if graph.entries.isEmpty { graph.entries = [0] }

    let t2 = DispatchTime.now().uptimeNanoseconds
    // 4. Connectivity: link every key, in a seeded order, in batches.
    // Shortest keys first, the longest last (ties in a seeded random order): a long key is one
    // that can dominate some query's attention, and linked late its search runs on a nearly
    // finished graph, so its in-edges come from where searches for its direction really arrive.
    var rng = SeededGenerator(seed: parameters.seed ^ 0x5EED_6A4A)
    let tie = (0..<N).map { _ in rng.next() }
    let order = (0..<N).sorted { a, b in graph.norms[a] < graph.norms[b] || (graph.norms[a] == graph.norms[b] && tie[a] < tie[b]) }
    let longCount = Swift.min(N, Swift.max(8, N / 512))
    graph.longNorm = graph.norms[order[N - longCount]]
    graph.longKeys = order[(N - longCount)...].map { Int32($0) }
    let batch = 1024
    let workers = Swift.max(1, parameters.threads)
    let scratches = (0..<workers).map { _ in Scratch(dim: D) }
    let rows = AlignedBuffer<Float>(count: workers * 2 * (D + 16))
    let rp = SendablePointer(rows.pointer)
    var linkScanned = 0
    var b0 = 0
    while b0 < N {
      let b1 = Swift.min(N, b0 + batch)
      var results = [[(score: Float, id: Int32)]](repeating: [], count: b1 - b0)
      var scannedPer = [Int](repeating: 0, count: b1 - b0)
      var best = [[(score: Float, id: Int32)]](repeating: [], count: b1 - b0)
      // The batch's searches read the graph as it is; it is not mutated until they are done (and
      // `frozen` is gone, so no copy is made).
      do {
      let frozen = graph, first = b0
      results.withUnsafeMutableBufferPointer { rb in
        scannedPer.withUnsafeMutableBufferPointer { sb in
         best.withUnsafeMutableBufferPointer { bb in
          let resp = SendablePointer(rb.baseAddress!), scp = SendablePointer(sb.baseAddress!), bp = SendablePointer(bb.baseAddress!)
          Parallel.forEach(b1 - b0, threads: workers) { i, worker in
            let node = order[first + i]
            let row = rp.pointer + worker * 2 * (D + 16), other = row + D + 16
            keys.read(node, into: row)
            let found = frozen.search(row, keys: keys, k: frozen.buildWidth, width: frozen.buildWidth, allowed: 0..<N,
                                      scratch: scratches[worker], skip: Int32(node))
            scp.pointer[i] = found.scanned
            bp.pointer[i] = Array(zip(found.scores, found.ids).prefix(3)).map { (score: $0, id: $1) }
            // Candidates: the search results and the node's current edges, best first.
            var cands = zip(found.scores, found.ids).map { (score: frozen.similarity(ip: $0, node, Int($1)), id: $1) }
            let e0 = node * frozen.stride
            for x in 0..<Int(frozen.edgeCount[node]) {
              let id = frozen.edges[e0 + x]
              if !found.ids.contains(id) { cands.append((frozen.edgeScores[e0 + x], id)) }
            }
            cands.sort { $0.score > $1.score || ($0.score == $1.score && $0.id < $1.id) }
            resp.pointer[i] = frozen.prune(node, candidates: cands, keys: keys, row: other)
          }
         }
        }
      }
      }
      for i in 0..<(b1 - b0) {
        let node = order[b0 + i]
        graph.setEdges(node, results[i])
        linkScanned += scannedPer[i]
      }
      for i in 0..<(b1 - b0) {
        let node = order[b0 + i]
        for c in results[i] { graph.addEdge(from: Int(c.id), to: Int32(node), score: c.score) }
        // The keys with the largest inner product with this one are where searches for queries
        // like it arrive: the best three point here (protected edges, by inner product). This is
        // what makes a key that dominates some query's attention — a needle — findable.
        for t in best[i] where !graph.hasEdge(from: Int(t.id), to: Int32(node)) {
          if !graph.addProtected(from: Int(t.id), to: Int32(node), score: t.score) {
            graph.addEdge(from: Int(t.id), to: Int32(node), score: graph.similarity(ip: t.score, node, Int(t.id)))
          }
        }
      }
      b0 = b1
    }
    withExtendedLifetime(rows) {}
    // Connectivity edges for whatever the walk from the entry points does not reach.
    graph.connect(keys: keys, scratch: scratches[0])
    let t3 = DispatchTime.now().uptimeNanoseconds
    let seconds = Double(t3 - t0) / 1e9
    var report = BuildReport(seconds: seconds, sampledQueries: S, coveredKeys: covered.filter { $0 }.count,
                             edges: graph.edgeTotal, linkScanned: linkScanned)
    report.listSeconds = Double(t1 - t0) / 1e9
    report.projectSeconds = Double(t2 - t1) / 1e9
    report.linkSeconds = Double(t3 - t2) / 1e9
    return (graph, report)
  }

  /// Farthest-point selection of `count` sampled queries (cosine distance, starting from query
  /// 0); their pivots (top-1 keys), without repeats.
  static func entryPoints(lists: [[(score: Float, id: Int32)]], queries: UnsafePointer<Float>, queryCount S: Int, dim D: Int, count: Int) -> [Int32] {
    if S == 0 || count == 0 { return [] }
    var norms = [Double](repeating: 0, count: S)
    for s in 0..<S {
      var a = 0.0
      for d in 0..<D { a += Double(queries[s * D + d]) * Double(queries[s * D + d]) }
      norms[s] = Swift.max(a.squareRoot(), 1e-30)
    }
    var closest = [Double](repeating: -2, count: S)  // max cosine to a chosen query
    var chosen: [Int] = []
    var next = 0
    while chosen.count < Swift.min(count, S) {
      chosen.append(next)
      var best = -1, bestValue = Double.infinity
      for s in 0..<S {
        var a = 0.0
        for d in 0..<D { a += Double(queries[s * D + d]) * Double(queries[next * D + d]) }
        closest[s] = Swift.max(closest[s], a / (norms[s] * norms[next]))
        if closest[s] < bestValue && !chosen.contains(s) {
          bestValue = closest[s]
          best = s
        }
      }
      if best < 0 { break }
      next = best
    }
    var out: [Int32] = []
    for s in chosen { if let p = lists[s].first?.id, !out.contains(p) { out.append(p) } }
    return out
  }

  /// For each query row, its `k` keys with the largest inner product, best first (ties: lower id).
  static func topKeys(keys: RowSource, queries: UnsafePointer<Float>, queryCount S: Int, k: Int, threads: Int) -> [[(score: Float, id: Int32)]] {
    let N = keys.count, D = keys.width
    let L = laneWidth, TV = tileVectors, W = AttentionTiles.width
    let blocks = (S + W - 1) / W
    let tileRows = AttentionTiles.rows
    let runMax = keys.isPaged ? keys.pageSize : 256
    var out = [[(score: Float, id: Int32)]](repeating: [], count: S)
    let workers = Parallel.workers(for: blocks, threads: threads)
    // Per worker: Qᵀ [D][TV lanes], Sᵀ [6][TV lanes], thresholds [TV lanes], a Float32 run of keys.
    let qtFloats = D * W, stFloats = tileRows * W, runFloats = (runMax + tileRows) * D
    let per = Parallel.scratchStride(floats: qtFloats + stFloats + W + runFloats + 64)
    let scratch = AlignedBuffer<Float>(count: workers * per)
    let sp = SendablePointer(scratch.pointer), qp = SendablePointer(queries)
    out.withUnsafeMutableBufferPointer { ob in
      let op = SendablePointer(ob.baseAddress!)
      Parallel.forEach(blocks, threads: workers) { blk, worker in
        let base = sp.pointer + worker * per
        let qtF = base, stF = qtF + qtFloats, thrF = stF + stFloats, runF = thrF + W + 16
        let qt = UnsafeMutableRawPointer(qtF).assumingMemoryBound(to: Lane.self)
        let st = UnsafeMutableRawPointer(stF).assumingMemoryBound(to: Lane.self)
        let thr = UnsafeMutableRawPointer(thrF).assumingMemoryBound(to: Lane.self)
        let i0 = blk * W, nq = Swift.min(W, S - i0)
        for d in 0..<D { for i in 0..<W { qtF[d * W + i] = i < nq ? qp.pointer[(i0 + i) * D + d] : 0 } }
        // Padding lanes (no query) get +∞ so they never pass the filter.
        for v in 0..<TV { for x in 0..<L { thr[v][x] = v * L + x < nq ? -.infinity : .infinity } }
        var heaps = (0..<nq).map { _ in TopKHeap(capacity: k) }
        var t = 0
        while t < N {
          let run = Swift.min(keys.run(from: t, to: N), runMax)
          // The run as Float32 rows (in place when stored as Float32).
          let rows: UnsafePointer<Float>
          let ldk: Int
          switch keys.storage {
          case .float32:
            rows = keys.row(t).assumingMemoryBound(to: Float.self)
            ldk = keys.rowBytes / 4
          case .float16:
            let h = keys.row(t).assumingMemoryBound(to: Float16.self)
            let hs = keys.rowBytes / 2
            for j in 0..<run { for d in 0..<D { runF[j * D + d] = Float(h[j * hs + d]) } }
            rows = UnsafePointer(runF)
            ldk = D
          }
          var j = 0
          while j < run {
            let last = run - 1
            AttentionTiles.qkTile(
              rows + Swift.min(j, last) * ldk, rows + Swift.min(j + 1, last) * ldk, rows + Swift.min(j + 2, last) * ldk,
              rows + Swift.min(j + 3, last) * ldk, rows + Swift.min(j + 4, last) * ldk, rows + Swift.min(j + 5, last) * ldk,
              depth: D, qt: qt, qtStride: TV, st: st, stStride: TV, rowMax: thr, updateMax: false)
            for r in 0..<Swift.min(tileRows, run - j) {
              let id = Int32(t + j + r)
              for v in 0..<TV where any(st[r * TV + v] .> thr[v]) {
                let s = st[r * TV + v]
                for x in 0..<L where s[x] > thr[v][x] {
                  let qi = v * L + x
                  guard qi < nq else { continue }
                  heaps[qi].offer(s[x], id)
                  thr[v][x] = heaps[qi].threshold
                }
              }
            }
            j += tileRows
          }
          t += run
        }
        for i in 0..<nq { op.pointer[i0 + i] = heaps[i].sortedByScore() }
      }
    }
    withExtendedLifetime(scratch) {}
    return out
  }
}
