import SubqAttention
import SubqCore
import SubqDecoding

/// TokenSelect: attention to the cached tokens that matter most, chosen afresh for every query
/// chunk by soft voting across heads (Wu et al., "TokenSelect: Efficient Long-Context Inference
/// and Length Extrapolation for LLMs via Dynamic Token-Level KV Cache Selection", arXiv 2411.02886).
///
/// For a chunk of queries of one sequence whose first row sees `n` keys (a decode step: `n` is the
/// cache length):
///
/// 1. If `initTokens + topK + localTokens ≥ n`, attend to every key (exact attention).
/// 2. The chunk's fingerprint is the mean of its query rows, per head: `q̄_h` `[Hq, D]`.
/// 3. Candidates are positions `initTokens ..< n − localTokens`. Head h scores candidate j by the
///    raw inner product `s_hj = q̄_h · k_{g(h), j}` (no 1/√D), with the standard GQA map
///    `g(h) = h / (Hq / Hkv)`.
/// 4. Soft voting: each head's scores are normalized by a softmax over the candidates and summed
///    over all query heads; the `topK` positions with the highest vote are kept (ties: earlier
///    position), one selection per chunk shared by every head.
/// 5. Every query row attends exactly (scale τ, causal mask) to
///    `[0, initTokens) ∪ top-k ∪ [n − localTokens, n_last)`, read in place from the keys and
///    values, where `n_last` is what the chunk's last row sees (the local window runs to the end
///    of the chunk, so with a causal mask no row's selection depends on keys it cannot see).
///
/// As an ``AttentionMethod`` (one call, no cache) the queries of each sequence are cut into
/// chunks of `chunk` rows, each with its own selection over the keys its last row sees — the way
/// the paper's code handles prefill chunks. ``TokenSelectDecoder`` runs the same selection on a
/// ``PagedKVCache`` one decode step at a time and adds the selection cache.
///
/// Differences from the paper's code (`pzs19/TokenSelect`): positional encoding is the caller's
/// (queries and keys are used as given; the code stores un-rotated keys and rotates queries at
/// position `n_local` and keys over the selected list on the fly); query heads map to key/value
/// heads by division (the release's Triton kernel uses `h % Hkv`, which is not the standard GQA
/// layout); the optional max-pool smoothing of the votes (off by default there) is not offered;
/// batches of sequences are supported (the release serves one request at a time).
///
/// - Complexity: per chunk, O(Hq·n·D) to score (one pass over the keys, each key row read once
///   for its whole GQA group) plus O(n) for the top-k, and O(Hq·Nq·(init + k + local)·(D + Dv))
///   for attention; O(Hq·n) extra memory for the scores.
public struct TokenSelect: KeySelectingMethod {
  public static let info = MethodInfo(
    name: "tokenselect",
    summary: "TokenSelect: per-head q·k criticality, soft voting across heads, exact attention to top-k + sink + recent tokens",
    paper: "Wu et al., TokenSelect: Efficient Long-Context Inference and Length Extrapolation for LLMs via Dynamic Token-Level KV Cache Selection (arXiv 2411.02886)",
    complexity: "O(Hq·Nk·D) scoring per query chunk + O(Hq·Nq·(init + top-k + local)·D) attention; extra memory O(Hq·Nq·Dv·⌈(init + top-k + local)/512⌉) for partial outputs (one per 512 attended keys) + at most 32 MiB of scores",
    isExact: false,
    parameters: [
      MethodParameter("top-k", default: "2048", "tokens kept by soft voting (besides the initial and local tokens)"),
      MethodParameter("init", default: "128", "initial (sink) tokens always attended"),
      MethodParameter("local", default: "512", "most recent tokens always attended"),
      MethodParameter("chunk", default: "512", "query rows sharing one selection (a prefill chunk)"),
    ],
    supportedFeatures: ["causal"])

  /// Tokens kept by soft voting.
  public let topK: Int
  /// Initial tokens always attended (attention sinks).
  public let initTokens: Int
  /// Most recent tokens always attended.
  public let localTokens: Int
  /// Query rows that share one selection in a single ``attention(queries:keys:values:options:)`` call.
  public let chunk: Int

  /// - Throws: ``SubqError/argument(op:name:value:reason:)`` for a negative count or a chunk < 1.
  public init(topK: Int = 2048, initTokens: Int = 128, localTokens: Int = 512, chunk: Int = 512) throws(SubqError) {
    let op = "attention.tokenselect"
    for (name, v) in [("top-k", topK), ("init", initTokens), ("local", localTokens)] where v < 0 || v > 1 << 30 {
      throw .argument(op: op, name: name, value: "\(v)", reason: "must be in 0...\(1 << 30)")
    }
    if chunk < 1 { throw .argument(op: op, name: "chunk", value: "\(chunk)", reason: "must be at least 1") }
    self.topK = topK
    self.initTokens = initTokens
    self.localTokens = localTokens
    self.chunk = chunk
  }

  public init(parameters: MethodParameters) throws(SubqError) {
    try parameters.validate(for: Self.info)
    try self.init(
      topK: parameters.int("top-k", Self.info, in: 0...(1 << 30)), initTokens: parameters.int("init", Self.info, in: 0...(1 << 30)),
      localTokens: parameters.int("local", Self.info, in: 0...(1 << 30)), chunk: parameters.int("chunk", Self.info, in: 1...(1 << 30)))
  }

  public var parameterValues: [String: String] {
    ["top-k": "\(topK)", "init": "\(initTokens)", "local": "\(localTokens)", "chunk": "\(chunk)"]
  }

  /// Whether a sequence with `n` visible keys is attended in full (the budget covers it).
  public func coversAll(_ n: Int) -> Bool { initTokens + topK + localTokens >= n }

  // MARK: - One call over tensors

  public func attention(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions) throws(SubqError) -> AttentionResult {
    let op = "attention.tokenselect"
    try Self.info.check(options)
    let p = try AttentionProblem.validate(op: op, queries: queries, keys: keys, values: values, options: options)
    var out = Tensor(shape: p.outputShape) { _ in }
    var lse: Tensor? = p.returnLSE ? Tensor(shape: p.lseShape) { _ in } : nil
    queries.withUnsafeBufferPointer { q in
      keys.withUnsafeBufferPointer { k in
        values.withUnsafeBufferPointer { v in
          let sources = tensorSources(p, k.baseAddress!, v.baseAddress!)
          let chunks = self.chunks(p)
          let lists = selections(p, q: q.baseAddress!, sources: sources, chunks: chunks)
          out.withUnsafeMutableBufferPointer { o in
            if lse != nil {
              lse!.withUnsafeMutableBufferPointer { l in
                attend(p, q: q.baseAddress!, sources: sources, chunks: chunks, lists: lists, out: o.baseAddress!, lse: l.baseAddress!)
              }
            } else {
              attend(p, q: q.baseAddress!, sources: sources, chunks: chunks, lists: lists, out: o.baseAddress!, lse: nil)
            }
          }
        }
      }
    }
    return AttentionResult(output: out, lse: lse)
  }

  /// The keys each requested row attends to: its chunk's selection, restricted to the keys the
  /// row can see (causal), sorted.
  public func selectedKeys(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions, rows: [QueryRow]) throws(SubqError) -> [[Int]] {
    let op = "attention.tokenselect"
    try Self.info.check(options)
    let p = try AttentionProblem.validate(op: op, queries: queries, keys: keys, values: values, options: options)
    for r in rows where r.batch < 0 || r.batch >= p.batch || r.head < 0 || r.head >= p.queryHeads || r.row < 0 || r.row >= p.queryLength {
      throw .argument(op: op, name: "rows", value: "(\(r.batch), \(r.head), \(r.row))", reason: "outside [B, Hq, Nq] = [\(p.batch), \(p.queryHeads), \(p.queryLength)]")
    }
    let chunks = self.chunks(p)
    let lists: [[Int32]] = queries.withUnsafeBufferPointer { q in
      keys.withUnsafeBufferPointer { k in
        values.withUnsafeBufferPointer { v in
          selections(p, q: q.baseAddress!, sources: tensorSources(p, k.baseAddress!, v.baseAddress!), chunks: chunks)
        }
      }
    }
    return rows.map { r in
      let c = chunks.firstIndex { $0.sequence == r.batch && $0.rows.contains(r.row) }!
      let vis = p.visibleKeys(p.sequences[r.batch], query: r.row)
      return lists[c].map(Int.init).filter { vis.contains($0) }
    }
  }

  // MARK: - Shared machinery

  /// A query chunk of one sequence and the keys it selects from.
  struct Chunk {
    var sequence: Int
    var rows: Range<Int>
    /// Keys visible to the chunk's first row: the selection's `n` (candidates end at
    /// `selectCount − local`).
    var selectCount: Int
    /// Keys visible to the chunk's last row: the local window runs to here.
    var keyCount: Int
  }

  func chunks(_ p: AttentionProblem, chunkRows: Int? = nil) -> [Chunk] {
    let size = chunkRows ?? chunk
    var out: [Chunk] = []
    for (s, seq) in p.sequences.enumerated() {
      var i0 = 0
      while i0 < seq.queryCount {
        let i1 = Swift.min(seq.queryCount, i0 + size)
        out.append(Chunk(sequence: s, rows: i0..<i1, selectCount: p.visibleKeys(seq, query: i0).upperBound,
                         keyCount: p.visibleKeys(seq, query: i1 - 1).upperBound))
        i0 = i1
      }
    }
    return out
  }

  func tensorSources(_ p: AttentionProblem, _ k: UnsafePointer<Float>, _ v: UnsafePointer<Float>) -> [KVSource] {
    var out: [KVSource] = []
    let kr = p.keyRows, vr = p.valueRows
    for seq in p.sequences {
      for g in 0..<p.keyValueHeads {
        out.append(KVSource(
          keys: .contiguous(k + kr.offset(batch: seq.batch, head: g, row: seq.keyStart), count: seq.keyCount, width: p.headDim, stride: kr.rowStride),
          values: .contiguous(v + vr.offset(batch: seq.batch, head: g, row: seq.keyStart), count: seq.keyCount, width: p.valueDim, stride: vr.rowStride)))
      }
    }
    return out
  }

  /// The fingerprint of a chunk: mean of its query rows per head, `[Hq · D]`.
  func fingerprint(_ p: AttentionProblem, q: UnsafePointer<Float>, sequence s: Int, rows: Range<Int>) -> [Float] {
    let seq = p.sequences[s], D = p.headDim
    var f = [Float](repeating: 0, count: p.queryHeads * D)
    let inv = 1 / Double(rows.count)
    for h in 0..<p.queryHeads {
      for d in 0..<D {
        var acc = 0.0
        for i in rows { acc += Double(q[p.queryRows.offset(batch: seq.batch, head: h, row: seq.queryStart + i) + d]) }
        f[h * D + d] = Float(acc * inv)
      }
    }
    return f
  }

  /// Soft-vote requests for the chunks that need a selection (nil entries are attended fully).
  func request(_ p: AttentionProblem, chunk c: Chunk, fingerprint: [Float], sources: [KVSource]) -> SoftVote.Request? {
    if coversAll(c.selectCount) { return nil }
    let base = c.sequence * p.keyValueHeads
    return SoftVote.Request(keys: (0..<p.keyValueHeads).map { sources[base + $0].keys }, fingerprint: fingerprint,
                            candidates: initTokens..<(c.selectCount - localTokens), k: topK)
  }

  /// The attended positions of every chunk (sorted).
  func selections(_ p: AttentionProblem, q: UnsafePointer<Float>, sources: [KVSource], chunks: [Chunk]) -> [[Int32]] {
    // Requests are scored in batches of at most `scoreBudget` scores (Hq per candidate key), so a
    // prefill-sized call (thousands of chunks, each scoring every key it sees) keeps its score
    // buffers bounded instead of holding O(Nq/chunk · Hq · Nk) of them at once.
    let scoreBudget = 1 << 23
    let vote = SoftVote(queryHeads: p.queryHeads, kvHeads: p.keyValueHeads, headDim: p.headDim, threads: p.threads)
    var topk = [[Int32]?](repeating: nil, count: chunks.count)
    var requests: [SoftVote.Request] = []
    var which: [Int] = []
    var pending = 0
    func flush() {
      if requests.isEmpty { return }
      let picked = vote.select(requests)
      for (r, i) in which.enumerated() { topk[i] = picked[r] }
      requests.removeAll(keepingCapacity: true)
      which.removeAll(keepingCapacity: true)
      pending = 0
    }
    for (i, c) in chunks.enumerated() {
      if let r = request(p, chunk: c, fingerprint: fingerprint(p, q: q, sequence: c.sequence, rows: c.rows), sources: sources) {
        let cost = p.queryHeads * r.candidates.count
        if pending > 0 && pending + cost > scoreBudget { flush() }
        requests.append(r)
        which.append(i)
        pending += cost
      }
    }
    flush()
    return chunks.indices.map { attendedPositions(chunks[$0], topK: topk[$0]) }
  }

  /// `[0, init) ∪ topk ∪ [selectCount − local, keyCount)`, or every visible position when `topk`
  /// is nil.
  func attendedPositions(_ c: Chunk, topK picked: [Int32]?) -> [Int32] {
    guard let picked else { return (0..<c.keyCount).map { Int32($0) } }
    var out: [Int32] = []
    out.reserveCapacity(initTokens + picked.count + localTokens + c.keyCount - c.selectCount)
    for t in 0..<initTokens { out.append(Int32(t)) }
    out.append(contentsOf: picked)
    for t in (c.selectCount - localTokens)..<c.keyCount { out.append(Int32(t)) }
    return out
  }

  /// Exact attention of every chunk's rows over its positions.
  func attend(
    _ p: AttentionProblem, q: UnsafePointer<Float>, sources: [KVSource], chunks: [Chunk], lists: [[Int32]],
    out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>?
  ) {
    var plan = GatherAttention()
    let G = p.groupSize
    for (ci, c) in chunks.enumerated() {
      let seq = p.sequences[c.sequence]
      for g in 0..<p.keyValueHeads {
        var rowList: [GatherAttention.Row] = []
        var targets: [(h: Int, i: Int)] = []
        for x in 0..<G {
          let h = g * G + x
          for i in c.rows {
            rowList.append(GatherAttention.Row(query: p.queryRows.offset(batch: seq.batch, head: h, row: seq.queryStart + i),
                                               limit: p.visibleKeys(seq, query: i).upperBound))
            targets.append((h, i))
          }
        }
        let slots = lists[ci].withUnsafeBufferPointer { plan.add(source: c.sequence * p.keyValueHeads + g, rows: rowList, positions: $0) }
        for (r, t) in targets.enumerated() {
          plan.output(offset: p.outputRows.offset(batch: seq.batch, head: t.h, row: seq.queryStart + t.i),
                      lse: (seq.batch * p.queryHeads + t.h) * p.queryLength + seq.queryStart + t.i, slots: slots[r])
        }
      }
    }
    plan.execute(sources: sources, q: q, headDim: p.headDim, valueDim: p.valueDim, scale: p.scale, out: out, lse: lse, threads: p.threads)
  }
}

// MARK: - Decoding over a paged cache

/// What a TokenSelect decode step did.
public struct TokenSelectStatistics: Sendable, Codable, Equatable {
  /// Sequences whose selection was scored this step (selection-cache misses).
  public var selectionsComputed = 0
  /// Sequences that reused their cached selection (selection-cache hits).
  public var selectionsReused = 0
  /// Sequences short enough to be attended in full.
  public var fullAttention = 0
  /// Cached positions whose keys were scored (summed over sequences; each is read once for all heads).
  public var keysScored = 0
  /// Positions attended (summed over sequences).
  public var keysAttended = 0
  /// Positions cached (summed over sequences).
  public var keysCached = 0
  /// Distinct positions read (summed over sequences): every position when the sequence was
  /// scored or attended in full, else the attended ones.
  public var keysTouched = 0

  public init() {}
}

/// One TokenSelect decode step's result.
public struct TokenSelectStep: Sendable {
  /// Output `[B, Hq, Nq, Dv]` (or bshd) and, when requested, the log-sum-exp `[B, Hq, Nq]`.
  public var result: AttentionResult
  public var statistics: TokenSelectStatistics
  /// With `recordKeys`: per sequence, the positions attended (before the causal mask of a
  /// multi-query step), sorted.
  public var attendedKeys: [[Int]]?
}

/// TokenSelect decoding over a ``PagedKVCache``, with the selection cache.
///
/// Each ``step(queries:cache:layer:sequences:options:recordKeys:)`` treats the step's `Nq` queries
/// of a sequence as one chunk (``TokenSelect``), so each sequence gets one selection per layer and
/// step, shared by its heads.
///
/// **Selection cache** (the paper's §"Selection Cache"): consecutive decode queries are similar, so
/// a sequence's top-k selection for a layer is kept together with the fingerprint that produced
/// it; the next step reuses it, skipping the scoring pass over the whole cache, while the cosine
/// similarity of the new fingerprint (all heads, flattened) to the stored one is at least
/// `cacheThreshold` (θ = 0.9 in the paper). The comparison is with the fingerprint at the last
/// scoring, not the previous step's, so slow drift eventually forces a rescoring. A reused
/// selection keeps its positions; the local window moves with the sequence. The released code
/// ships this branch disabled and broken (`QUERY_CACHE=False`; it calls `get_topk_tokens` without
/// its `indices` argument and takes the cosine of 1-D tensors); this follows the paper's
/// description instead.
///
/// State is per (sequence, layer). Call ``forget(_:)`` when a sequence is freed and
/// ``fork(_:as:)`` after ``PagedKVCache/fork(_:)`` to carry the cache over. A sequence that got
/// shorter than its cached selection (truncated) is rescored.
public final class TokenSelectDecoder {
  /// The selection parameters (top-k, init, local; `chunk` is not used: a step is one chunk).
  public let method: TokenSelect
  /// Cosine similarity at or above which a cached selection is reused; nil disables the cache.
  public let cacheThreshold: Double?

  struct Entry {
    var fingerprint: [Float]
    var selected: [Int32]
    /// Sequence length when it was scored.
    var length: Int
  }
  struct Key: Hashable { var sequence: Int; var layer: Int }
  private var entries: [Key: Entry] = [:]

  /// - Parameters:
  ///   - method: top-k, initial and local token counts.
  ///   - cacheThreshold: in −1...1, or nil to rescore every step.
  public init(method: TokenSelect = try! TokenSelect(), cacheThreshold: Double? = 0.9) throws(SubqError) {
    if let t = cacheThreshold, !(t >= -1 && t <= 1) {
      throw .argument(op: "tokenselect", name: "cache threshold", value: "\(t)", reason: "must be in -1...1 (or nil to disable the cache)")
    }
    self.method = method
    self.cacheThreshold = cacheThreshold
  }

  /// One decode step of one layer for a batch of sequences.
  ///
  /// - Parameters:
  ///   - queries: `[B, Hq, Nq, D]` (bshd: `[B, Nq, Hq, D]`); batch entry b is `sequences[b]`'s
  ///     queries for its last `Nq` positions (append their keys and values to the cache first).
  ///   - cache: keys and values; Hq must be a multiple of its key/value heads.
  ///   - sequences: distinct sequences, one per batch entry.
  ///   - options: scale, causal (bottom-right), layout, `returnLSE`, threads. Windows, softcap,
  ///     ALiBi, key lengths and packed sequences are rejected.
  ///   - recordKeys: also return the attended positions per sequence.
  /// - Throws: ``SubqError`` for invalid queries or options, unknown sequences or layer, or a
  ///   sequence given twice.
  public func step(
    queries: Tensor, cache: PagedKVCache, layer: Int, sequences: [PagedKVCache.SequenceID], options: AttentionOptions,
    recordKeys: Bool = false
  ) throws(SubqError) -> TokenSelectStep {
    let (p, views) = try validateDecodeStep(op: "tokenselect.step", info: TokenSelect.info, queries: queries, cache: cache, layer: layer,
                                            sequences: sequences, options: options)
    var sources: [KVSource] = []
    for v in views { for g in 0..<p.keyValueHeads { sources.append(KVSource(keys: .keys(v, head: g), values: .values(v, head: g))) } }
    let chunks = method.chunks(p, chunkRows: p.queryLength)
    var stats = TokenSelectStatistics()
    var out = Tensor(shape: p.outputShape) { _ in }
    var lse: Tensor? = p.returnLSE ? Tensor(shape: p.lseShape) { _ in } : nil
    var lists: [[Int32]] = []
    queries.withUnsafeBufferPointer { qb in
      let q = qb.baseAddress!
      var requests: [SoftVote.Request] = []
      var which: [Int] = []
      var picked = [[Int32]?](repeating: nil, count: chunks.count)
      var prints: [[Float]] = []
      for (i, c) in chunks.enumerated() {
        let n = c.selectCount
        stats.keysCached += views[c.sequence].length
        let f = method.fingerprint(p, q: q, sequence: c.sequence, rows: c.rows)
        prints.append(f)
        guard let r = method.request(p, chunk: c, fingerprint: f, sources: sources) else {
          stats.fullAttention += 1
          continue
        }
        let key = Key(sequence: sequences[c.sequence].rawValue, layer: layer)
        if let t = cacheThreshold, let e = entries[key], e.length <= n, cosine(f, e.fingerprint) >= t {
          picked[i] = e.selected
          stats.selectionsReused += 1
        } else {
          requests.append(r)
          which.append(i)
          stats.selectionsComputed += 1
          stats.keysScored += r.candidates.count
        }
      }
      let fresh = SoftVote(queryHeads: p.queryHeads, kvHeads: p.keyValueHeads, headDim: p.headDim, threads: p.threads).select(requests)
      for (r, i) in which.enumerated() {
        picked[i] = fresh[r]
        let c = chunks[i]
        entries[Key(sequence: sequences[c.sequence].rawValue, layer: layer)] = Entry(fingerprint: prints[i], selected: fresh[r], length: c.selectCount)
      }
      lists = chunks.indices.map { method.attendedPositions(chunks[$0], topK: picked[$0]) }
      for l in lists { stats.keysAttended += l.count }
      for (i, c) in chunks.enumerated() { stats.keysTouched += which.contains(i) ? c.keyCount : lists[i].count }
      out.withUnsafeMutableBufferPointer { o in
        if lse != nil {
          lse!.withUnsafeMutableBufferPointer { l in
            method.attend(p, q: q, sources: sources, chunks: chunks, lists: lists, out: o.baseAddress!, lse: l.baseAddress!)
          }
        } else {
          method.attend(p, q: q, sources: sources, chunks: chunks, lists: lists, out: o.baseAddress!, lse: nil)
        }
      }
    }
    withExtendedLifetime(cache) {}
    return TokenSelectStep(result: AttentionResult(output: out, lse: lse), statistics: stats,
                           attendedKeys: recordKeys ? lists.map { $0.map(Int.init) } : nil)
  }

  /// Drops the cached selections of `sequence` (all layers).
  public func forget(_ sequence: PagedKVCache.SequenceID) {
    entries = entries.filter { $0.key.sequence != sequence.rawValue }
  }

  /// Drops every cached selection.
  public func reset() { entries.removeAll() }

  /// Gives `child` (a ``PagedKVCache/fork(_:)`` of `parent`) a copy of `parent`'s cached selections.
  public func fork(_ parent: PagedKVCache.SequenceID, as child: PagedKVCache.SequenceID) {
    for (k, e) in entries where k.sequence == parent.rawValue { entries[Key(sequence: child.rawValue, layer: k.layer)] = e }
  }

  /// Number of (sequence, layer) selections held.
  public var cachedSelections: Int { entries.count }

  /// The decoder's description and parameters (for `subq decode-bench --method … --param`).
  public static let info = MethodInfo(
    name: "tokenselect",
    summary: TokenSelect.info.summary + ", with the selection cache",
    paper: TokenSelect.info.paper,
    complexity: "per step O(Hq·Nk·D) scoring on a selection-cache miss + O(Hq·(init + top-k + local)·D) attention",
    isExact: false,
    parameters: [
      MethodParameter("top-k", default: "2048", "tokens kept by soft voting (besides the initial and local tokens)"),
      MethodParameter("init", default: "128", "initial (sink) tokens always attended"),
      MethodParameter("local", default: "512", "most recent tokens always attended"),
      MethodParameter("cache", default: "true", "reuse a sequence's selection while its queries stay similar"),
      MethodParameter("threshold", default: "0.9", "cosine similarity at or above which the cached selection is reused"),
    ],
    supportedFeatures: ["causal"])

  /// A decoder from named parameters (``info``'s names).
  public convenience init(parameters: MethodParameters) throws(SubqError) {
    try parameters.validate(for: Self.info)
    let i = Self.info
    let method = try TokenSelect(topK: parameters.int("top-k", i, in: 0...(1 << 30)), initTokens: parameters.int("init", i, in: 0...(1 << 30)),
                                 localTokens: parameters.int("local", i, in: 0...(1 << 30)))
    let threshold = try parameters.double("threshold", i, in: -1...1)
    try self.init(method: method, cacheThreshold: try parameters.bool("cache", i) ? threshold : nil)
  }

  /// The parameters in effect, by name.
  public var parameterValues: [String: String] {
    ["top-k": "\(method.topK)", "init": "\(method.initTokens)", "local": "\(method.localTokens)",
     "cache": "\(cacheThreshold != nil)", "threshold": cacheThreshold.map { "\($0)" } ?? "—"]
  }
}
