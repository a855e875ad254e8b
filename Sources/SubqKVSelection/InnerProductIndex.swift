import SubqCore

/// An approximate maximum-inner-product index over vectors, built for query-to-key search.
///
/// This is the graph index RetrievalAttention keeps per (layer, key/value head), usable on its
/// own: give it the keys and a sample of real queries; it links each query to its exact top
/// `queryNeighbors` keys, projects those links onto a key-only graph (the RoarGraph
/// construction: a query's best key is joined to the rest of its list, pruned to `degree` edges
/// by the occlusion rule) and then links every key into the graph by searching for it. Searches
/// are beam searches by inner product from a few entry points. See ``RetrievalDecoder`` for the
/// method that uses it.
///
/// Queries and keys of attention are distributed differently: a graph built from keys alone (as
/// HNSW would) leads a query astray and has to scan a large fraction of the keys; building from
/// real queries puts edges where queries go.
///
/// The index keeps its own Float32 copy of the keys. ``insert(_:)`` appends keys and links them
/// into the graph one by one (O(count · D) to copy plus one search per key).
///
/// - Complexity: build O(S·N·D) for the exact query lists (S sampled queries) plus one search per
///   key; search roughly O(width · degree · D); memory O(N·(D + 2·degree)) floats.
public struct InnerProductIndex: Sendable {
  /// Build parameters.
  public struct Configuration: Sendable, Equatable {
    /// K_q: exact top keys linked to each sampled query.
    public var queryNeighbors: Int
    /// R: most out-edges per key.
    public var degree: Int
    /// Search pool width used to link each key (build and insert).
    public var buildWidth: Int
    /// Entry points of every search.
    public var entryPoints: Int
    /// Seed of the build order.
    public var seed: UInt64
    /// Worker threads; nil uses ``Parallel/defaultThreads``.
    public var threads: Int?

    public init(queryNeighbors: Int = 64, degree: Int = 32, buildWidth: Int = 24, entryPoints: Int = 32, seed: UInt64 = 0, threads: Int? = nil) {
      self.queryNeighbors = queryNeighbors
      self.degree = degree
      self.buildWidth = buildWidth
      self.entryPoints = entryPoints
      self.seed = seed
      self.threads = threads
    }

    func validate(op: String) throws(SubqError) {
      for (name, v, lo) in [("query neighbors", queryNeighbors, 1), ("degree", degree, 2), ("build width", buildWidth, 1), ("entry points", entryPoints, 1)]
      where v < lo || v > 1 << 20 {
        throw .argument(op: op, name: name, value: "\(v)", reason: "must be in \(lo)...\(1 << 20)")
      }
      if let t = threads, t < 1 { throw .argument(op: op, name: "threads", value: "\(t)", reason: "must be at least 1") }
    }

    var graphParameters: ProximityGraph.Parameters {
      ProximityGraph.Parameters(queryNeighbors: queryNeighbors, degree: degree, buildWidth: buildWidth, entryPoints: entryPoints,
                                seed: seed, threads: threads ?? Parallel.defaultThreads)
    }
  }

  /// The result of a search.
  public struct SearchResult: Sendable, Equatable {
    /// Key ids (row numbers), best first.
    public var ids: [Int]
    /// Their inner products with the query.
    public var scores: [Float]
    /// Keys whose inner product the search computed.
    public var scanned: Int
  }

  public let configuration: Configuration
  /// The indexed keys, `[count, dimension]`.
  public private(set) var keys: Tensor
  var graph: ProximityGraph
  /// Seconds the build took.
  public let buildSeconds: Double

  /// Number of indexed keys.
  public var count: Int { keys.shape[0] }
  /// Vector width D.
  public var dimension: Int { keys.shape[1] }
  /// Bytes held by the graph (edges, their scores, entry points), not counting the keys.
  public var graphBytes: Int { graph.memoryBytes }
  /// Number of directed edges.
  public var edgeCount: Int { graph.edgeTotal }

  /// Builds the index.
  /// - Parameters:
  ///   - keys: `[N, D]`, N ≥ 1.
  ///   - queries: `[S, D]` sample of real queries (S ≥ 1), e.g. a prompt's queries.
  /// - Throws: ``SubqError`` for bad shapes, non-finite values or parameters.
  public init(keys: Tensor, queries: Tensor, configuration: Configuration = Configuration()) throws(SubqError) {
    let op = "index.build"
    try configuration.validate(op: op)
    guard keys.rank == 2, keys.shape[0] >= 1, keys.shape[1] >= 1 else {
      throw .shape(op: op, tensor: "keys", shape: keys.shape, reason: "expected [N, D] with N, D ≥ 1")
    }
    guard queries.rank == 2, queries.shape[0] >= 1, queries.shape[1] == keys.shape[1] else {
      throw .shape(op: op, tensor: "queries", shape: queries.shape, reason: "expected [S, \(keys.shape[1])] with S ≥ 1")
    }
    for (t, name) in [(keys, "keys"), (queries, "queries")] {
      if let bad = t.firstNonFinite() { throw .nonFinite(op: op, tensor: name, index: t.index(ofFlat: bad), value: SubqError.describe(t[flat: bad])) }
    }
    self.configuration = configuration
    self.keys = keys
    let N = keys.shape[0], D = keys.shape[1]
    let (g, report) = keys.withUnsafeBufferPointer { k in
      queries.withUnsafeBufferPointer { q in
        ProximityGraph.build(keys: .contiguous(k.baseAddress!, count: N, width: D, stride: D), queries: q.baseAddress!,
                             queryCount: queries.shape[0], parameters: configuration.graphParameters)
      }
    }
    graph = g
    buildSeconds = report.seconds
  }

  /// Appends `newKeys` (`[M, D]`) and links each into the graph; their ids are `count..<count+M`.
  /// - Throws: for a bad shape or non-finite values (nothing changes).
  public mutating func insert(_ newKeys: Tensor) throws(SubqError) {
    let op = "index.insert"
    guard newKeys.rank == 2, newKeys.shape[1] == dimension else {
      throw .shape(op: op, tensor: "keys", shape: newKeys.shape, reason: "expected [M, \(dimension)]")
    }
    if let bad = newKeys.firstNonFinite() {
      throw .nonFinite(op: op, tensor: "keys", index: newKeys.index(ofFlat: bad), value: SubqError.describe(newKeys[flat: bad]))
    }
    let N = count, M = newKeys.shape[0], D = dimension
    let old = keys
    keys = Tensor(shape: [N + M, D]) { p in
      old.withUnsafeBufferPointer { o in for i in 0..<(N * D) { p[i] = o[i] } }
      newKeys.withUnsafeBufferPointer { n in for i in 0..<(M * D) { p[N * D + i] = n[i] } }
    }
    let scratch = ProximityGraph.Scratch(dim: D)
    keys.withUnsafeBufferPointer { k in
      _ = graph.insert(upTo: N + M, keys: .contiguous(k.baseAddress!, count: N + M, width: D, stride: D), scratch: scratch)
    }
  }

  /// Approximate search: the `k` keys with the largest inner product with `query` (`[D]`),
  /// found by a beam search with a pool of `width` (≥ k; larger finds more, scans more).
  ///
  /// - Parameters:
  ///   - seeds: key ids scored and put in the pool before the search starts, with the entry
  ///     points (a warm start, e.g. the previous answer for a query that moved a little); a seed
  ///     among the true top `k` is always returned.
  ///   - patience: stop once the top `k` is full and this many expansions in a row brought no
  ///     new key into it (0: expand the whole pool).
  public func search(_ query: Tensor, k: Int, width: Int, seeds: [Int] = [], patience: Int = 0) throws(SubqError) -> SearchResult {
    try checkQuery(query, k: k, op: "index.search")
    if width < 1 { throw .argument(op: "index.search", name: "width", value: "\(width)", reason: "must be at least 1") }
    if patience < 0 { throw .argument(op: "index.search", name: "patience", value: "\(patience)", reason: "must be ≥ 0") }
    if let bad = seeds.first(where: { $0 < 0 || $0 >= count }) {
      throw .argument(op: "index.search", name: "seeds", value: "\(bad)", reason: "must be key ids in 0..<\(count)")
    }
    let seedIds = seeds.map { Int32($0) }
    let scratch = ProximityGraph.Scratch(dim: dimension)
    let f = keys.withUnsafeBufferPointer { kb in
      query.withUnsafeBufferPointer { q in
        graph.search(q.baseAddress!, keys: .contiguous(kb.baseAddress!, count: count, width: dimension, stride: dimension),
                     k: k, width: Swift.max(width, k), allowed: 0..<count, scratch: scratch, seeds: seedIds, patience: patience)
      }
    }
    return SearchResult(ids: f.ids.map(Int.init), scores: f.scores, scanned: f.scanned)
  }

  /// Exact search: the true top `k` by inner product (ties: lower id), scanning every key.
  public func exactSearch(_ query: Tensor, k: Int) throws(SubqError) -> SearchResult {
    try checkQuery(query, k: k, op: "index.exactSearch")
    let f = keys.withUnsafeBufferPointer { kb in
      query.withUnsafeBufferPointer { q in
        ProximityGraph.exactSearch(q.baseAddress!, keys: .contiguous(kb.baseAddress!, count: count, width: dimension, stride: dimension),
                                   k: k, allowed: 0..<count)
      }
    }
    return SearchResult(ids: f.ids.map(Int.init), scores: f.scores, scanned: f.scanned)
  }

  private func checkQuery(_ query: Tensor, k: Int, op: String) throws(SubqError) {
    guard query.count == dimension, query.rank >= 1 else {
      throw .shape(op: op, tensor: "query", shape: query.shape, reason: "expected \(dimension) values")
    }
    if let bad = query.firstNonFinite() {
      throw .nonFinite(op: op, tensor: "query", index: query.index(ofFlat: bad), value: SubqError.describe(query[flat: bad]))
    }
    if k < 0 { throw .argument(op: op, name: "k", value: "\(k)", reason: "must be ≥ 0") }
  }
}

