import Foundation
import SubqAttention
import SubqCore
import SubqDecoding

/// RetrievalAttention decoding over a ``PagedKVCache`` (Liu et al., "RetrievalAttention:
/// Accelerating Long-Context LLM Inference via Vector Retrieval", arXiv 2409.10516).
///
/// Each decode query attends exactly to two disjoint sets of cached tokens:
///
/// - the **static** set: the first `sinkTokens` positions and the last `windowTokens`;
/// - the **retrieved** set: the `topK` other positions whose keys have the largest inner product
///   with the query, found by a beam search in an approximate nearest-neighbour graph over the
///   keys (``InnerProductIndex``'s graph, one per (sequence, layer, key/value head)).
///
/// The two partial results (normalized output and log-sum-exp, Float32) are merged with the
/// log-sum-exp rule (``PartialAttention``), so the result is exact attention over the union.
/// Under GQA the group's query heads share the key/value head's graph and, with
/// ``Configuration/groupedSearch`` (opt-in), one traversal of it per step and query position:
/// each visited key is read once and scored against every query of the group, each query keeping
/// its own candidate pool (see docs/KV-SELECTION.md). It is faster (2.0× vs 1.5× exact decoding at
/// 128K) but not the default: on small, hard sets a single query head's recall can fall far below
/// what its own search finds (0.23 against 0.63 was seen), while the default per-head search
/// gives every head its own traversal. With ``Configuration/warmStart`` (the default) each query
/// head's search also starts from its previous step's best ``Configuration/carry`` candidates —
/// consecutive decode queries are close, so their top keys overlap (80–90 % from one step to the
/// next on the benchmark's structured data) — and ``Configuration/patience`` can then stop it
/// early. With ``Configuration/halfPrecisionSearch``
/// (the default) a Float32 cache's keys are searched on a Float16 copy kept with the index and the
/// best candidates re-scored exactly. The static set is shared by the group.
///
/// **Index.** ``buildIndex(cache:layer:sequence:prefillQueries:)`` builds the graphs from a sample of
/// real queries — typically the prompt's (prefill's) queries of that layer, pooled over each
/// GQA group — linking each to its exact top keys and projecting those links onto the keys
/// (RoarGraph). Keys appended afterwards are linked into the graph at the next step
/// (**incremental insertion**), so once they leave the window they can be retrieved.
///
/// Differences from the paper: everything runs on the CPU (the paper keeps the static set on a
/// GPU and the index and most of the cache in CPU memory); the index is built from a sample of
/// `buildQueries` prefill queries per key/value head instead of all of them (the exact
/// query-to-key lists cost O(S·N·D)); newly generated tokens are inserted into the graph rather
/// than kept in the static set until a rebuild; the paper's exact graph parameters could not be
/// re-read (its RoarGraph code has left the repository), so all of them are configuration.
public final class RetrievalDecoder {
  /// Parameters of the method and its index.
  public struct Configuration: Sendable, Equatable {
    /// Initial tokens always attended (attention sinks).
    public var sinkTokens = 4
    /// Most recent tokens always attended.
    public var windowTokens = 64
    /// Keys retrieved per query.
    public var topK = 100
    /// Beam-search pool width (≥ topK): larger finds more of the true top-k and scans more keys.
    public var searchWidth = 512
    /// Scan every key instead of searching the graph (exact top-k; for testing).
    public var exactSearch = false
    /// Under GQA, search each key/value head's graph once per step for its whole query-head
    /// group (one traversal, each visited key read once and scored against every query of the
    /// group, a pool per query) instead of once per query head. Off by default: faster, but a
    /// single head's recall can drop well below its own search's (see the type's documentation).
    public var groupedSearch = false
    /// Search the graph on a Float16 copy of the keys kept with the index (half the bytes per
    /// scanned key; a Float16 cache is searched in place, so this only matters for Float32
    /// caches) and re-score the best `topK + topK/8 + 8` candidates on the cache's keys.
    public var halfPrecisionSearch = true
    /// A search (or, grouped, a query of the group) stops expanding once its top candidates are
    /// full and this many of its expansions in a row brought no new key into them (0: expand the
    /// whole pool of `searchWidth`).
    public var patience = 0
    /// Start each query head's search from its previous step's results as well as from the
    /// entry points (decode queries drift slowly, so the last answer is next to the new one).
    public var warmStart = true
    /// With ``warmStart``: how many of each search's best candidates (by its search scores) seed
    /// the same query head's next search (at least `topK` are kept). The seeds are scored again
    /// at the next step and count as scanned keys.
    public var carry = 512
    /// Prefill queries sampled per key/value head to build its graph.
    public var buildQueries = 4096
    /// Exact top keys linked to each sampled query (K_q).
    public var queryNeighbors = 64
    /// Most out-edges per key (R).
    public var degree = 32
    /// Search pool width when linking keys into the graph.
    public var buildWidth = 24
    /// Entry points of every search.
    public var entryPoints = 32
    /// Slack α of the graph's pruning rule (≥ 1; 1 keeps the fewest, most diverse edges).
    public var alpha = 1.0
    /// Seed for the query sample and the build order.
    public var seed: UInt64 = 0

    public init() {}

    func validate(op: String) throws(SubqError) {
      let checks: [(String, Int, Int)] = [
        ("sink", sinkTokens, 0), ("patience", patience, 0), ("window", windowTokens, 0), ("top-k", topK, 0), ("width", searchWidth, 1),
        ("build-queries", buildQueries, 1), ("query-neighbors", queryNeighbors, 1), ("degree", degree, 2),
        ("build-width", buildWidth, 1), ("entry-points", entryPoints, 1), ("carry", carry, 0),
      ]
      for (name, v, lo) in checks where v < lo || v > 1 << 30 {
        throw .argument(op: op, name: name, value: "\(v)", reason: "must be in \(lo)...\(1 << 30)")
      }
      if !(alpha >= 1 && alpha <= 4) { throw .argument(op: op, name: "alpha", value: "\(alpha)", reason: "must be in 1...4") }
    }
  }

  /// The method's description and parameters (for `subq decode-bench --method … --param`).
  public static let info = MethodInfo(
    name: "retrieval",
    summary: "RetrievalAttention: exact attention to sink + recent tokens merged with the top-k keys found in a query-aware ANN graph",
    paper: "Liu et al., RetrievalAttention: Accelerating Long-Context LLM Inference via Vector Retrieval (arXiv 2409.10516); graph: Chen et al., RoarGraph (VLDB 2024)",
    complexity: "per query O((sink + window + top-k)·D) attention + a graph search (~width·degree·D); build O(S·N·D) + one search per key",
    isExact: false,
    parameters: [
      MethodParameter("sink", default: "4", "initial tokens always attended"),
      MethodParameter("window", default: "64", "most recent tokens always attended"),
      MethodParameter("top-k", default: "100", "keys retrieved per query"),
      MethodParameter("width", default: "512", "beam-search pool width (ef)"),
      MethodParameter("exact", default: "false", "scan every key instead of searching the graph"),
      MethodParameter("half-search", default: "true", "search on a Float16 copy of Float32 keys, re-scoring the best candidates exactly"),
      MethodParameter("patience", default: "0", "stop a search after this many expansions without a new top-k candidate (0: off)"),
      MethodParameter("warm-start", default: "true", "also start each query head's search from its previous step's best candidates"),
      MethodParameter("carry", default: "512", "warm start: best candidates of a search kept as seeds of the head's next search (≥ top-k used)"),
      MethodParameter("grouped", default: "false", "one graph traversal per kv head for its GQA group of query heads (false: one per query head)"),
      MethodParameter("build-queries", default: "4096", "prefill queries sampled per kv head to build the graph"),
      MethodParameter("query-neighbors", default: "64", "exact top keys linked to each sampled query (K_q)"),
      MethodParameter("degree", default: "32", "most out-edges per key (R)"),
      MethodParameter("build-width", default: "24", "search pool width when linking keys into the graph"),
      MethodParameter("entry-points", default: "32", "entry points of every search"),
      MethodParameter("alpha", default: "1.0", "pruning slack α ≥ 1 (1 = relative-neighbourhood rule, fewest edges)"),
      MethodParameter("seed", default: "0", "seed of the query sample and build order"),
    ],
    supportedFeatures: ["causal"])

  /// A configuration from named parameters (``info``'s names).
  public static func configuration(_ parameters: MethodParameters) throws(SubqError) -> Configuration {
    try parameters.validate(for: info)
    var c = Configuration()
    let big = 0...(1 << 30)
    c.sinkTokens = try parameters.int("sink", info, in: big)
    c.windowTokens = try parameters.int("window", info, in: big)
    c.topK = try parameters.int("top-k", info, in: big)
    c.searchWidth = try parameters.int("width", info, in: 1...(1 << 30))
    c.exactSearch = try parameters.bool("exact", info)
    c.groupedSearch = try parameters.bool("grouped", info)
    c.halfPrecisionSearch = try parameters.bool("half-search", info)
    c.patience = try parameters.int("patience", info, in: big)
    c.warmStart = try parameters.bool("warm-start", info)
    c.carry = try parameters.int("carry", info, in: big)
    c.buildQueries = try parameters.int("build-queries", info, in: 1...(1 << 30))
    c.queryNeighbors = try parameters.int("query-neighbors", info, in: 1...(1 << 30))
    c.degree = try parameters.int("degree", info, in: 2...(1 << 20))
    c.buildWidth = try parameters.int("build-width", info, in: 1...(1 << 30))
    c.entryPoints = try parameters.int("entry-points", info, in: 1...(1 << 20))
    c.alpha = try parameters.double("alpha", info, in: 1...4)
    c.seed = try parameters.seed("seed", info)
    return c
  }

  /// The configuration as named parameters.
  public var parameterValues: [String: String] {
    let c = configuration
    return ["sink": "\(c.sinkTokens)", "window": "\(c.windowTokens)", "top-k": "\(c.topK)", "width": "\(c.searchWidth)",
            "exact": "\(c.exactSearch)", "grouped": "\(c.groupedSearch)", "half-search": "\(c.halfPrecisionSearch)", "patience": "\(c.patience)", "warm-start": "\(c.warmStart)", "carry": "\(c.carry)", "build-queries": "\(c.buildQueries)", "query-neighbors": "\(c.queryNeighbors)",
            "degree": "\(c.degree)", "build-width": "\(c.buildWidth)", "entry-points": "\(c.entryPoints)", "alpha": "\(c.alpha)", "seed": "\(c.seed)"]
  }

  public let configuration: Configuration

  /// The graphs of one (sequence, layer), one per key/value head.
  final class Index: @unchecked Sendable {
    var graphs: [ProximityGraph]
    /// Float16 copies of the keys the searches score (``Configuration/halfPrecisionSearch`` with a
    /// Float32 cache), one per key/value head.
    var halves: [HalfRows]?
    /// Positions linked into the graphs.
    var indexed: Int
    init(graphs: [ProximityGraph], halves: [HalfRows]?, indexed: Int) {
      self.graphs = graphs
      self.halves = halves
      self.indexed = indexed
    }
    /// The last step's retrieved ids per query head (the seeds of ``Configuration/warmStart``).
    var previous: [[Int32]] = []
    var memoryBytes: Int { graphs.reduce(0) { $0 + $1.memoryBytes } + (halves ?? []).reduce(0) { $0 + $1.memoryBytes } }
  }
  struct Key: Hashable { var sequence: Int; var layer: Int }
  private var indexes: [Key: Index] = [:]
  /// Search scratch per worker, kept across steps (the visited marks are as long as the cache).
  private var scratches: [ProximityGraph.Scratch] = []
  private var scratchDim = 0
  private var groupScratches: [ProximityGraph.GroupScratch] = []
  private var groupScratchDim = 0

  /// - Throws: ``SubqError/argument(op:name:value:reason:)`` for out-of-range parameters.
  public init(configuration: Configuration = Configuration()) throws(SubqError) {
    try configuration.validate(op: "retrieval")
    self.configuration = configuration
  }

  // MARK: - Index

  /// What an index build did.
  public struct BuildReport: Sendable, Codable, Equatable {
    /// Wall-clock seconds of the whole build.
    public var seconds: Double
    /// Keys indexed per key/value head.
    public var keys: Int
    /// Prefill queries used per key/value head.
    public var sampledQueries: Int
    /// Keys that appear in some sampled query's exact top list (summed over heads).
    public var coveredKeys: Int
    /// Directed edges (summed over heads).
    public var edges: Int
    /// Bytes the graphs and the Float16 search copies of the keys hold (keys and values stay in
    /// the cache).
    public var memoryBytes: Int
    /// Seconds spent (summed over heads) on the exact query-to-key lists, on projecting and
    /// pruning them, and on linking every key into the graph.
    public var listSeconds: Double
    public var projectSeconds: Double
    public var linkSeconds: Double
  }

  /// Builds (or rebuilds) the index of one layer of `sequence` over all its current positions.
  ///
  /// - Parameters:
  ///   - prefillQueries: real queries of this layer, `[Hq, Np, D]` or `[1, Hq, Np, D]` (bhsd);
  ///     per key/value head, `buildQueries` of the group's `G·Np` rows are sampled (seeded).
  ///   - threads: worker threads (nil: ``Parallel/defaultThreads``).
  /// - Throws: ``SubqError`` for an unknown sequence or layer, an empty sequence, or queries of the
  ///   wrong shape (Hq not a multiple of the cache's key/value heads, wrong D) or non-finite.
  @discardableResult
  public func buildIndex(
    cache: PagedKVCache, layer: Int, sequence: PagedKVCache.SequenceID, prefillQueries: Tensor, threads: Int? = nil
  ) throws(SubqError) -> BuildReport {
    let op = "retrieval.buildIndex"
    let view = try cache.view(sequence, layer: layer)
    let c = cache.configuration
    var q = prefillQueries
    if q.rank == 4 && q.shape[0] == 1 { q = try q.reshaped(Array(q.shape.dropFirst())) }
    guard q.rank == 3, q.shape[0] >= 1, q.shape[0] % c.kvHeads == 0, q.shape[1] >= 1, q.shape[2] == c.headDim else {
      throw .shape(op: op, tensor: "prefill queries", shape: prefillQueries.shape,
                   reason: "expected [Hq, Np, \(c.headDim)] (or [1, Hq, Np, D]) with Hq a multiple of \(c.kvHeads) and Np ≥ 1")
    }
    if let bad = q.firstNonFinite() {
      throw .nonFinite(op: op, tensor: "prefill queries", index: q.index(ofFlat: bad), value: SubqError.describe(q[flat: bad]))
    }
    if view.length == 0 {
      throw .argument(op: op, name: "sequence", value: "\(sequence)", reason: "is empty: nothing to index")
    }
    let t = threads ?? Parallel.defaultThreads
    if t < 1 { throw .argument(op: op, name: "threads", value: "\(t)", reason: "must be at least 1") }
    let t0 = DispatchTime.now().uptimeNanoseconds
    let Hq = q.shape[0], Np = q.shape[1], D = c.headDim, G = Hq / c.kvHeads
    var graphs: [ProximityGraph] = []
    var covered = 0, sampled = 0
    var phases = (0.0, 0.0, 0.0)
    q.withUnsafeBufferPointer { qb in
      for g in 0..<c.kvHeads {
        // Sample S of the group's G·Np query rows (partial Fisher–Yates, seeded per layer and head).
        let pool = G * Np
        let S = Swift.min(configuration.buildQueries, pool)
        var rng = SeededGenerator(seed: configuration.seed &+ UInt64(layer) &* 0x9E37_79B9 &+ UInt64(g) &* 0x85EB_CA6B)
        var picks = Array(0..<pool)
        for i in 0..<S {
          let j = i + Int(rng.next() % UInt64(pool - i))
          picks.swapAt(i, j)
        }
        let rows = UnsafeMutablePointer<Float>.allocate(capacity: S * D)
        defer { rows.deallocate() }
        for (i, r) in picks.prefix(S).enumerated() {
          let h = g * G + r / Np, n = r % Np
          (rows + i * D).update(from: qb.baseAddress! + (h * Np + n) * D, count: D)
        }
        var params = ProximityGraph.Parameters()
        params.queryNeighbors = configuration.queryNeighbors
        params.degree = configuration.degree
        params.buildWidth = configuration.buildWidth
        params.entryPoints = configuration.entryPoints
        params.alpha = Float(configuration.alpha)
        params.seed = configuration.seed &+ UInt64(g)
        params.threads = t
        let (graph, report) = ProximityGraph.build(keys: .keys(view, head: g), queries: rows, queryCount: S, parameters: params)
        graphs.append(graph)
        covered += report.coveredKeys
        phases.0 += report.listSeconds
        phases.1 += report.projectSeconds
        phases.2 += report.linkSeconds
        sampled = S
      }
    }
    withExtendedLifetime(cache) {}
    var halves: [HalfRows]? = nil
    if configuration.halfPrecisionSearch && c.storage == .float32 {
      halves = (0..<c.kvHeads).map { g in
        let h = HalfRows(width: D, capacity: view.length + 256)
        h.append(upTo: view.length, from: .keys(view, head: g))
        return h
      }
    }
    let index = Index(graphs: graphs, halves: halves, indexed: view.length)
    indexes[Key(sequence: sequence.rawValue, layer: layer)] = index
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    return BuildReport(seconds: seconds, keys: view.length, sampledQueries: sampled, coveredKeys: covered,
                       edges: graphs.reduce(0) { $0 + $1.edgeTotal }, memoryBytes: index.memoryBytes,
                       listSeconds: phases.0, projectSeconds: phases.1, linkSeconds: phases.2)
  }

  /// Whether `sequence` has an index for `layer`.
  public func hasIndex(_ sequence: PagedKVCache.SequenceID, layer: Int) -> Bool {
    indexes[Key(sequence: sequence.rawValue, layer: layer)] != nil
  }

  /// Bytes held by every index (graphs and Float16 search copies of the keys; keys and values
  /// stay in the cache).
  public var memoryBytes: Int { indexes.values.reduce(0) { $0 + $1.memoryBytes } }

  /// Drops the indexes of `sequence` (all layers).
  public func forget(_ sequence: PagedKVCache.SequenceID) {
    indexes = indexes.filter { $0.key.sequence != sequence.rawValue }
  }

  /// Drops every index.
  public func reset() { indexes.removeAll() }

  /// Gives `child` (a ``PagedKVCache/fork(_:)`` of `parent`) its own copy of `parent`'s indexes.
  public func fork(_ parent: PagedKVCache.SequenceID, as child: PagedKVCache.SequenceID) {
    for (k, e) in indexes where k.sequence == parent.rawValue {
      let copy = Index(graphs: e.graphs, halves: e.halves?.map { $0.copy() }, indexed: e.indexed)
      copy.previous = e.previous
      indexes[Key(sequence: child.rawValue, layer: k.layer)] = copy
    }
  }

  // MARK: - Step

  /// What a RetrievalAttention decode step did.
  public struct Statistics: Sendable, Codable, Equatable {
    /// Graph traversals: one per query row and head that had keys to retrieve from, or with
    /// ``Configuration/groupedSearch`` one per query position and key/value head for the group's
    /// query heads.
    public var searches = 0
    /// Query rows (of all heads) answered by a graph search.
    public var rowsSearched = 0
    /// Keys the traversals read and scored (a grouped traversal reads each key once and scores it
    /// against all the group's queries).
    public var keysScanned = 0
    /// Cached keys summed over the searches (the denominator of ``scannedFraction``).
    public var keysCached = 0
    /// Retrievals answered by taking every retrievable key (top-k covers them all).
    public var exhaustive = 0
    /// Keys retrieved, summed over rows.
    public var keysRetrieved = 0
    /// Static (sink + window) keys, summed over sequences.
    public var staticKeys = 0
    /// Keys linked into the graphs before searching (appended since the last step), over heads.
    public var keysInserted = 0
    /// Keys scored while linking them.
    public var insertScanned = 0
    /// Seed ids given to the searches (``Configuration/warmStart``: the previous step's best
    /// candidates of each query head), summed over searched rows. They are scored again, so they
    /// are part of ``keysScanned`` (once per traversal that had not reached them yet).
    public var seedKeys = 0

    /// Fraction of the cached keys a traversal read, averaged over traversals (with grouped
    /// search: per key/value head and step, for all the group's query heads together).
    public var scannedFraction: Double { keysCached > 0 ? Double(keysScanned) / Double(keysCached) : 0 }

    public init() {}
  }

  /// One step's result.
  public struct Step: Sendable {
    /// Output `[B, Hq, Nq, Dv]` (or bshd) and, when requested, the log-sum-exp `[B, Hq, Nq]`.
    public var result: AttentionResult
    public var statistics: Statistics
    /// With `recordKeys`: per query row (index `(b·Hq + h)·Nq + i`), the retrieved positions, sorted.
    public var retrievedKeys: [[Int]]?
    /// With `recordKeys`: per query row, every attended position (static ∪ retrieved, causal mask
    /// applied), sorted.
    public var attendedKeys: [[Int]]?
  }

  /// One decode step of one layer for a batch of sequences.
  ///
  /// Positions appended since the index was built (or since the last step) are first linked into
  /// the graphs. Then each query row searches its head's graph for the `topK` keys outside the
  /// static set (and that it may see), attends exactly to the static set and to them, and merges
  /// the two partial results.
  ///
  /// - Parameters:
  ///   - queries: `[B, Hq, Nq, D]` (bshd: `[B, Nq, Hq, D]`) for the last `Nq` positions of each
  ///     sequence (append their keys and values to the cache first).
  ///   - sequences: distinct sequences with an index for `layer`, one per batch entry.
  ///   - options: scale, causal (bottom-right), layout, `returnLSE`, threads; other masking
  ///     options are rejected.
  ///   - recordKeys: also return the retrieved and attended positions of every row.
  /// - Throws: ``SubqError`` for invalid input, a sequence without an index for `layer`, or one
  ///   that is now shorter than its index (truncated: build it again).
  public func step(
    queries: Tensor, cache: PagedKVCache, layer: Int, sequences: [PagedKVCache.SequenceID], options: AttentionOptions,
    recordKeys: Bool = false
  ) throws(SubqError) -> Step {
    let op = "retrieval.step"
    let (p, views) = try validateDecodeStep(op: op, info: Self.info, queries: queries, cache: cache, layer: layer,
                                            sequences: sequences, options: options)
    var idx: [Index] = []
    for (b, s) in sequences.enumerated() {
      guard let i = indexes[Key(sequence: s.rawValue, layer: layer)] else {
        throw .argument(op: op, name: "sequence", value: "\(s)", reason: "has no index for layer \(layer): call buildIndex first")
      }
      if views[b].length < i.indexed {
        throw .argument(op: op, name: "sequence", value: "\(s)",
                        reason: "has \(views[b].length) positions but its index covers \(i.indexed) (truncated?): build the index again")
      }
      idx.append(i)
    }
    let c = configuration
    let Hkv = p.keyValueHeads, G = p.groupSize, D = p.headDim
    var sources: [KVSource] = []
    for v in views { for g in 0..<Hkv { sources.append(KVSource(keys: .keys(v, head: g), values: .values(v, head: g))) } }
    var stats = Statistics()

    // 1. Link new positions into the graphs (one task per sequence and kv head).
    let workers = Swift.max(1, p.threads)
    if scratches.count < workers || scratchDim != D {
      scratches = (0..<workers).map { _ in ProximityGraph.Scratch(dim: D) }
      scratchDim = D
    }
    let scratches = self.scratches
    var insertTasks: [(b: Int, g: Int)] = []
    for b in 0..<sequences.count where views[b].length > idx[b].indexed {
      for g in 0..<Hkv { insertTasks.append((b, g)) }
      stats.keysInserted += (views[b].length - idx[b].indexed) * Hkv
    }
    if !insertTasks.isEmpty {
      var scanned = [Int](repeating: 0, count: insertTasks.count)
      let tasks = insertTasks, srcs = sources
      // Take the graphs out of their indexes (so each is uniquely referenced and mutated in place
      // by one worker), link the new positions, put them back.
      var work: [ProximityGraph] = []
      for (b, g) in tasks {
        work.append(idx[b].graphs[g])
        idx[b].graphs[g] = ProximityGraph(degree: 2, buildWidth: 1)
      }
      work.withUnsafeMutableBufferPointer { wb in
        scanned.withUnsafeMutableBufferPointer { sb in
          let wp = SendablePointer(wb.baseAddress!), sp = SendablePointer(sb.baseAddress!)
          Parallel.forEach(tasks.count, threads: workers) { n, worker in
            let (b, g) = tasks[n]
            let src = srcs[b * Hkv + g].keys
            sp.pointer[n] = wp.pointer[n].insert(upTo: src.count, keys: src, scratch: scratches[worker])
          }
        }
      }
      for (n, (b, g)) in tasks.enumerated() { idx[b].graphs[g] = work[n] }
      stats.insertScanned = scanned.reduce(0, +)
      for b in 0..<sequences.count where views[b].length > idx[b].indexed {
        if let hs = idx[b].halves { for g in 0..<Hkv { hs[g].append(upTo: views[b].length, from: sources[b * Hkv + g].keys) } }
        idx[b].indexed = views[b].length
      }
    }

    // 2. Static sets and searches (one per row).
    struct RowTask { var b: Int; var h: Int; var i: Int; var allowed: Range<Int> }
    var statics: [[Int32]] = []
    var tasks: [RowTask] = []
    for (b, seq) in p.sequences.enumerated() {
      let n = seq.keyCount
      let sinkEnd = Swift.min(c.sinkTokens, n), windowStart = Swift.max(sinkEnd, n - c.windowTokens)
      statics.append((0..<sinkEnd).map { Int32($0) } + (windowStart..<n).map { Int32($0) })
      stats.staticKeys += statics[b].count
      for h in 0..<p.queryHeads {
        for i in 0..<seq.queryCount {
          let limit = p.visibleKeys(seq, query: i).upperBound
          let hi = Swift.min(windowStart, limit)
          tasks.append(RowTask(b: b, h: h, i: i, allowed: sinkEnd..<Swift.max(sinkEnd, hi)))
        }
      }
    }
    var found = [[Int32]](repeating: [], count: tasks.count)
    var scannedPer = [Int](repeating: 0, count: tasks.count)
    // Grouped search: the rows of each (sequence, kv head, query position) that need a search.
    let grouped = c.groupedSearch && !c.exactSearch
    var groups: [[Int]] = []
    if grouped {
      var at: [Int: Int] = [:]
      for (n, t) in tasks.enumerated() where t.allowed.count > c.topK {
        let key = (t.b * Hkv + t.h / G) * p.queryLength + t.i
        if let x = at[key] { groups[x].append(n) } else { at[key] = groups.count; groups.append([n]) }
      }
      if groupScratches.count < workers || groupScratchDim != D {
        groupScratches = (0..<workers).map { _ in ProximityGraph.GroupScratch(dim: D) }
        groupScratchDim = D
      }
    }
    let groupScratches = self.groupScratches
    let groupList = groups
    let rowTasks = tasks, indexList = idx, srcs = sources
    // With Float16 search rows: the candidates re-scored on the cache's keys.
    let searchK = c.topK + c.topK / 8 + 8
    // With warm start each search returns its best `keep` candidates: they seed the next step,
    // the first `searchK` (Float16 rows) or `topK` of them are the answer.
    var carried = [[Int32]](repeating: [], count: tasks.count)
    /// A row's seeds: its head's results of the previous step.
    let previous = idx.map(\.previous)
    @Sendable func seedsFor(_ t: RowTask) -> [Int32] { t.h < previous[t.b].count ? previous[t.b][t.h] : [] }
    let carryCount = c.carry
    @Sendable func keepFor(_ answer: Int) -> Int { c.warmStart ? Swift.max(answer, carryCount) : answer }
    if c.warmStart && !c.exactSearch {
      for t in tasks where t.allowed.count > c.topK { stats.seedKeys += seedsFor(t).count }
    }
    queries.withUnsafeBufferPointer { qb in
      let qp = SendablePointer(qb.baseAddress!)
      found.withUnsafeMutableBufferPointer { fb in
        scannedPer.withUnsafeMutableBufferPointer { sb in
         carried.withUnsafeMutableBufferPointer { cb in
          let fp = SendablePointer(fb.baseAddress!), sp = SendablePointer(sb.baseAddress!), cp = SendablePointer(cb.baseAddress!)
          if grouped {
            // One traversal per (sequence, kv head, query position) for the group's query heads.
            Parallel.forEach(groupList.count, threads: workers) { t, worker in
              let rows = groupList[t]
              let lead = rowTasks[rows[0]]
              let seq = p.sequences[lead.b]
              let g = lead.h / G
              let keys = srcs[lead.b * Hkv + g].keys
              let qs = rows.map { UnsafePointer(qp.pointer + p.queryRows.offset(batch: seq.batch, head: rowTasks[$0].h, row: seq.queryStart + lead.i)) }
              let half = indexList[lead.b].halves?[g]
              let answer = half == nil ? c.topK : searchK
              var fs = indexList[lead.b].graphs[g].searchGroup(qs, keys: half?.source ?? keys, k: keepFor(answer),
                                                               width: Swift.max(c.searchWidth, c.topK), allowed: lead.allowed,
                                                               scratch: groupScratches[worker], patience: c.patience,
                                                               seeds: c.warmStart ? rows.flatMap { seedsFor(rowTasks[$0]) } : [])
              for (x, n) in rows.enumerated() {
                if c.warmStart { cp.pointer[n] = fs[x].ids }
                fs[x].keepBest(answer)
              }
              // The traversal's keys once, plus each query's re-scored candidates.
              let traversal = fs[0].scanned
              var scannedAll = traversal
              if half != nil {
                for x in fs.indices {
                  fs[x].rescore(qs[x], keys: keys, k: c.topK)
                  scannedAll += fs[x].scanned - traversal
                }
              }
              for (x, n) in rows.enumerated() {
                fp.pointer[n] = fs[x].ids.sorted()
                sp.pointer[n] = x == 0 ? scannedAll : -2  // -2: answered by the group's traversal
              }
            }
            for (n, task) in rowTasks.enumerated() where task.allowed.count <= c.topK {
              fp.pointer[n] = task.allowed.map { Int32($0) }
              sp.pointer[n] = -1
            }
            return
          }
          Parallel.forEach(rowTasks.count, threads: workers) { n, worker in
            let task = rowTasks[n]
            let seq = p.sequences[task.b]
            let g = task.h / G
            let keys = srcs[task.b * Hkv + g].keys
            let query = UnsafePointer(qp.pointer + p.queryRows.offset(batch: seq.batch, head: task.h, row: seq.queryStart + task.i))
            if task.allowed.count <= c.topK {
              fp.pointer[n] = task.allowed.map { Int32($0) }
              sp.pointer[n] = -1  // exhaustive, nothing scanned
            } else if c.exactSearch {
              let f = ProximityGraph.exactSearch(query, keys: keys, k: c.topK, allowed: task.allowed)
              fp.pointer[n] = f.ids.sorted()
              sp.pointer[n] = f.scanned
            } else {
              let half = indexList[task.b].halves?[g]
              let answer = half == nil ? c.topK : searchK
              var f = indexList[task.b].graphs[g].search(query, keys: half?.source ?? keys, k: keepFor(answer),
                                                         width: Swift.max(c.searchWidth, c.topK), allowed: task.allowed,
                                                         scratch: scratches[worker], seeds: c.warmStart ? seedsFor(task) : [],
                                                         patience: c.patience)
              if c.warmStart { cp.pointer[n] = f.ids }
              f.keepBest(answer)
              if half != nil { f.rescore(query, keys: keys, k: c.topK) }
              fp.pointer[n] = f.ids.sorted()
              sp.pointer[n] = f.scanned
            }
          }
         }
        }
      }
    }
    // Each query head's last row's results seed its next search.
    if c.warmStart {
      for b in 0..<sequences.count where idx[b].previous.count != p.queryHeads {
        idx[b].previous = Array(repeating: [], count: p.queryHeads)
      }
      for (n, t) in tasks.enumerated() where t.i == p.sequences[t.b].queryCount - 1 {
        idx[t.b].previous[t.h] = carried[n].isEmpty ? found[n] : carried[n]
      }
    }
    for (n, t) in tasks.enumerated() {
      if scannedPer[n] == -1 {
        stats.exhaustive += 1
      } else if scannedPer[n] == -2 {
        stats.rowsSearched += 1
      } else {
        stats.rowsSearched += 1
        stats.searches += 1
        stats.keysScanned += scannedPer[n]
        stats.keysCached += p.sequences[t.b].keyCount
      }
      stats.keysRetrieved += found[n].count
    }

    // 3. Attention: static partial per (sequence, kv head) for the group's rows, retrieved
    // partial per row, merged static-first.
    var plan = GatherAttention()
    var staticSlot = [Int](repeating: -1, count: tasks.count)
    var taskIndex: [Int: Int] = [:]
    for (n, t) in tasks.enumerated() { taskIndex[(t.b * p.queryHeads + t.h) * p.queryLength + t.i] = n }
    for (b, seq) in p.sequences.enumerated() {
      for g in 0..<Hkv {
        var rowList: [GatherAttention.Row] = []
        var which: [Int] = []
        for x in 0..<G {
          let h = g * G + x
          for i in 0..<seq.queryCount {
            rowList.append(GatherAttention.Row(query: p.queryRows.offset(batch: seq.batch, head: h, row: seq.queryStart + i),
                                               limit: p.visibleKeys(seq, query: i).upperBound))
            which.append(taskIndex[(b * p.queryHeads + h) * p.queryLength + i]!)
          }
        }
        let slots = statics[b].withUnsafeBufferPointer { plan.add(source: b * Hkv + g, rows: rowList, positions: $0) }
        for (r, n) in which.enumerated() { staticSlot[n] = slots[r][0] }
      }
    }
    for (n, t) in tasks.enumerated() {
      let seq = p.sequences[t.b]
      let row = GatherAttention.Row(query: p.queryRows.offset(batch: seq.batch, head: t.h, row: seq.queryStart + t.i),
                                    limit: p.visibleKeys(seq, query: t.i).upperBound)
      let slots = found[n].withUnsafeBufferPointer { plan.add(source: t.b * Hkv + t.h / G, rows: [row], positions: $0) }
      plan.output(offset: p.outputRows.offset(batch: seq.batch, head: t.h, row: seq.queryStart + t.i),
                  lse: (seq.batch * p.queryHeads + t.h) * p.queryLength + seq.queryStart + t.i, slots: [staticSlot[n]] + slots[0])
    }
    var out = Tensor(shape: p.outputShape) { _ in }
    var lse: Tensor? = p.returnLSE ? Tensor(shape: p.lseShape) { _ in } : nil
    queries.withUnsafeBufferPointer { qb in
      out.withUnsafeMutableBufferPointer { o in
        if lse != nil {
          lse!.withUnsafeMutableBufferPointer { l in
            plan.execute(sources: sources, q: qb.baseAddress!, headDim: D, valueDim: p.valueDim, scale: p.scale,
                         out: o.baseAddress!, lse: l.baseAddress!, threads: p.threads)
          }
        } else {
          plan.execute(sources: sources, q: qb.baseAddress!, headDim: D, valueDim: p.valueDim, scale: p.scale,
                       out: o.baseAddress!, lse: nil, threads: p.threads)
        }
      }
    }
    withExtendedLifetime(cache) {}

    var retrievedKeys: [[Int]]? = nil, attendedKeys: [[Int]]? = nil
    if recordKeys {
      var r = [[Int]](repeating: [], count: tasks.count), a = [[Int]](repeating: [], count: tasks.count)
      for (n, t) in tasks.enumerated() {
        let flat = (t.b * p.queryHeads + t.h) * p.queryLength + t.i
        let limit = p.visibleKeys(p.sequences[t.b], query: t.i).upperBound
        r[flat] = found[n].map(Int.init)
        a[flat] = sortedUnion([statics[t.b], found[n]]).map(Int.init).filter { $0 < limit }
      }
      retrievedKeys = r
      attendedKeys = a
    }
    return Step(result: AttentionResult(output: out, lse: lse), statistics: stats, retrievedKeys: retrievedKeys, attendedKeys: attendedKeys)
  }
}
