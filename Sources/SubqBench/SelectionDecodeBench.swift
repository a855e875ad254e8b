import Foundation
import SubqAttention
import SubqCore
import SubqDecoding
import SubqKVSelection

/// `subq decode-bench --method tokenselect|retrieval`: long-context decoding with KV selection
/// (TokenSelect or RetrievalAttention) against exact split-KV decoding, step by step in the same run.
///
/// Setup: a paged cache holding `context` tokens per sequence (one layer), a sample of prefill
/// queries (the RetrievalAttention index is built from them), then `warmup + steps` decode
/// steps. Each step appends one token to every sequence, then runs exact split-KV decoding and the
/// method on the same queries (alternating which goes first), timing each (wall clock and the
/// process's processor time); the ground truth (every key's inner product) is computed outside the
/// timings.
///
/// **Data.** `structured` is ``ProblemData``'s structured recipe (attention shaped like a trained
/// model's: peaked, different per query, with a local part and an attention sink), generated as
/// a stream. Per (sequence, key/value head), with t = (head + ½)/Hkv running from local to
/// retrieval heads, content strength A = 0.35 + 0.25·t and locality strength G = 1 − 0.45·t:
/// - C = max(`clusters`, context/64) unit cluster centres c, chosen Zipf (P ∝ 1/(rank+1));
/// - a context vector h(p) that drifts with position (AR(1), correlation length 32, N(0, 1) entries);
/// - key p = (A·√D·c + ε)·a + G·h(p), with ε ~ N(0, I) and a log-normal norm a = exp(0.3·z);
///   key 0 is an attention sink u·(ln(context) + 2), u a unit vector;
/// - a query at position p for cluster c: A·√D·c + ε + G·h(p) + √D·u, so it scores about
///   ln(context) + 2 on the sink, about A²·√D·a more on the keys of its cluster and up to G²·√D
///   more on the last few dozen keys;
/// - values N(0, 1).
///
/// The `prefillQueries` prefill queries per query head sit at random positions of the prompt,
/// each for a Zipf-chosen cluster. The decode queries form a stream per query head: its current
/// topic's centre, noise that drifts as an AR(1) process `n_t = ρ·n_{t−1} + √(1−ρ²)·ε_t`
/// (ρ = `drift`, ε ~ N(0, I), so each query has the prefill queries' distribution), the context
/// vector at the new position and the sink direction; with probability `topicSwitch` per step
/// every head of a sequence picks a new topic. Each generated token's key is made like a prompt
/// key for its group's current topic, at its position (so incremental inserts matter).
///
/// Measured at 128K, D = 128, Hq = 8, Hkv = 2 (seed 1, 32 steps, mean over decode queries): 90 %
/// of a query's weight lies on 0.21 % of the keys (≈ 275 of 131K) and its top 100 keys hold 0.90
/// of it; the earlier recipe (centres of norm 2·D^¼, keys = centre + N(0, 0.5²) noise, no
/// locality or sink) spread it over thousands of keys of a cluster (the 100–2700 keys the methods
/// attended held 4–8 % of it). Peaked is not easy to search, though: beyond the keys of its own
/// cluster (often fewer than 100), a query's top keys are decided by inner products of
/// independent 128-dimensional noise vectors (see docs/KV-SELECTION.md). `gaussian` uses N(0, 1) keys, values and prefill queries and the same AR(1) drift for
/// the decode queries (attention close to uniform).
///
/// `trace` (``Config/trace``) replaces the generated data with one layer of a real model's
/// attention (``DecodeTrace``, from `subq trace`): the first `context` positions are the prompt in
/// the cache and their queries the prefill queries; each decode step appends the next position's
/// key and value and runs its queries. Heads, kv heads and head dimension are the trace's, the
/// batch is 1, and `context + warmup + steps` must not exceed the recorded positions.
public struct SelectionDecodeBench {
  /// The selection method.
  public enum Method: String, Sendable, CaseIterable, Codable {
    case tokenselect, retrieval
  }

  public struct Config: Sendable {
    public var method: Method
    public var parameters = MethodParameters()
    public var context = 131_072
    public var steps = 32
    public var warmup = 2
    public var batch = 1
    public var heads = 8
    public var kvHeads = 2
    public var dim = 128
    public var storage = KVStorageType.float32
    public var pageSize = 64
    public var data = DataKind.structured
    /// Recorded attention to replay instead of `data` (see the type's documentation).
    public var trace: DecodeTrace? = nil
    public var clusters = 64
    /// Prefill queries generated per query head (the retrieval index samples from them).
    public var prefillQueries = 1024
    /// AR(1) coefficient ρ of the decode queries' noise.
    public var drift = 0.99
    /// Probability per step and sequence that its heads switch topic.
    public var topicSwitch = 1.0 / 32
    /// k of the recall metrics.
    public var recallK = 100
    public var seed: UInt64 = 1
    public var threads = Parallel.defaultThreads

    public init(method: Method) { self.method = method }
  }

  public struct Report: Sendable, Codable {
    public var method: String
    public var parameters: [String: String]
    public var context: Int
    public var steps: Int
    /// Unmeasured decode steps before the measured ones.
    public var warmup: Int
    public var batch: Int, heads: Int, kvHeads: Int, dim: Int
    public var storage: String
    /// `structured`, `gaussian` or `trace`.
    public var data: String
    /// The trace directory when `data` is `trace`.
    public var trace: String?
    public var threads: Int
    /// Seconds to fill the cache (and generate data).
    public var setupSeconds: Double
    /// Index build (retrieval): seconds, bytes of the graphs, sampled queries per kv head.
    public var buildSeconds: Double?
    public var indexBytes: Int?
    public var buildQueries: Int?
    /// Bytes of the keys and values in the cache.
    public var cacheBytes: Int
    /// Per-step latency of exact split-KV decoding and of the method.
    public var exactMedianSeconds: Double
    public var exactMinSeconds: Double
    public var methodMedianSeconds: Double
    public var methodMinSeconds: Double
    /// Mean step latencies (TokenSelect's rescoring steps are slower than its cache hits, so the
    /// mean is its amortized cost).
    public var exactMeanSeconds: Double
    public var methodMeanSeconds: Double
    /// Median processor time (all threads) per step of exact decoding and of the method. On a
    /// loaded machine the wall-clock time includes waiting for a core; this does not.
    public var exactCPUMedianSeconds: Double
    public var methodCPUMedianSeconds: Double
    /// exact median / method median, and exact mean / method mean.
    public var speedup: Double
    public var meanSpeedup: Double
    /// Exact decoding's effective bandwidth: K and V bytes read per step / median time.
    public var exactGBps: Double
    /// Fraction of the cached keys the method read to choose (TokenSelect: keys scored;
    /// RetrievalAttention: keys scanned by a search), averaged over steps (and searches).
    public var scannedFraction: Double
    /// Fraction of the cached keys the method read in all: chosen-from plus attended.
    public var touchedFraction: Double
    /// Keys attended per query row, on average.
    public var attendedPerRow: Double
    /// Recall of each query's true top-`recallK` keys (over all cached keys) by the keys it attended.
    public var recallAttended: Double
    /// RetrievalAttention: recall of the true top-`recallK` among the retrievable keys (sinks and
    /// window excluded) by the search's results — the index's recall.
    public var recallSearch: Double?
    public var recallK: Int
    /// Relative Frobenius error of the outputs against exact decoding, over all measured steps.
    public var relativeError: Double
    /// Share of each query's exact softmax mass on the keys it attended, `exp(lse_method − lse_exact)`,
    /// averaged over rows and steps (1 = nothing left out).
    public var attentionMass: Double
    /// TokenSelect: fraction of steps that reused the cached selection.
    public var selectionCacheHitRate: Double?
    /// The data's concentration, whatever the method: the smallest fraction of the cached keys
    /// holding 90 % of a decode query's exact softmax weight, and the weight on its top-`recallK`
    /// keys, averaged over rows and measured steps.
    public var keysFor90PercentMass: Double
    public var topKMass: Double
  }

  public let config: Config
  public init(config: Config) { self.config = config }

  /// Checks the configuration and the method's parameters without running anything.
  public func validate() throws(SubqError) {
    let c = config
    let op = "decode-bench"
    for (name, v) in [("--context", c.context), ("--steps", c.steps), ("--batch", c.batch), ("--heads", c.heads), ("--kv-heads", c.kvHeads),
                      ("--dim", c.dim), ("--page-size", c.pageSize), ("--clusters", c.clusters), ("--prefill-queries", c.prefillQueries),
                      ("--recall-k", c.recallK), ("--threads", c.threads)] where v < 1 {
      throw .argument(op: op, name: name, value: "\(v)", reason: "must be at least 1")
    }
    if c.warmup < 0 { throw .argument(op: op, name: "--warmup", value: "\(c.warmup)", reason: "must be ≥ 0") }
    if let t = c.trace {
      let what = "the trace \(t.directory) has"
      if c.batch != 1 { throw .argument(op: op, name: "--batch", value: "\(c.batch)", reason: "must be 1 with --trace (one recorded sequence)") }
      if c.heads != t.heads { throw .argument(op: op, name: "--heads", value: "\(c.heads)", reason: "\(what) \(t.heads) query heads") }
      if c.kvHeads != t.kvHeads { throw .argument(op: op, name: "--kv-heads", value: "\(c.kvHeads)", reason: "\(what) \(t.kvHeads) kv heads") }
      if c.dim != t.dim { throw .argument(op: op, name: "--dim", value: "\(c.dim)", reason: "\(what) head dimension \(t.dim)") }
      if c.context + c.warmup + c.steps > t.tokens {
        throw .argument(op: op, name: "--context", value: "\(c.context)",
                        reason: "\(what) \(t.tokens) positions: context + warmup (\(c.warmup)) + steps (\(c.steps)) must not exceed them (at most \(max(0, t.tokens - c.warmup - c.steps)))")
      }
    }
    if c.heads % c.kvHeads != 0 {
      throw .argument(op: op, name: "--heads", value: "\(c.heads)", reason: "must be a multiple of --kv-heads (\(c.kvHeads))")
    }
    if !(c.drift >= 0 && c.drift <= 1) { throw .argument(op: op, name: "--drift", value: "\(c.drift)", reason: "must be in 0...1") }
    if !(c.topicSwitch >= 0 && c.topicSwitch <= 1) {
      throw .argument(op: op, name: "--topic-switch", value: "\(c.topicSwitch)", reason: "must be in 0...1")
    }
    if c.data == .needles { throw .unsupported(op: op, feature: "--data needles", reason: "use structured or gaussian") }
    switch c.method {
    case .tokenselect: _ = try TokenSelectDecoder(parameters: c.parameters)
    case .retrieval: _ = try RetrievalDecoder(configuration: RetrievalDecoder.configuration(c.parameters))
    }
  }

  /// Runs the benchmark; `progress` gets status lines.
  public func run(progress: (String) -> Void = { _ in }) throws(SubqError) -> Report {
    let c = config
    try validate()
    // Construct the method first, so bad parameters fail before the long setup.
    var tokenSelect: TokenSelectDecoder? = nil
    var retrieval: RetrievalDecoder? = nil
    switch c.method {
    case .tokenselect: tokenSelect = try TokenSelectDecoder(parameters: c.parameters)
    case .retrieval: retrieval = try RetrievalDecoder(configuration: RetrievalDecoder.configuration(c.parameters))
    }
    let parameterValues = tokenSelect?.parameterValues ?? retrieval!.parameterValues

    let B = c.batch, Hq = c.heads, Hkv = c.kvHeads, D = c.dim, G = Hq / Hkv
    let total = c.context + c.warmup + c.steps
    let pagesPer = (total + c.pageSize - 1) / c.pageSize
    let cache = try PagedKVCache(PagedKVCache.Configuration(
      kvHeads: Hkv, headDim: D, pageSize: c.pageSize, pageCount: B * pagesPer, storage: c.storage))
    let sequences = (0..<B).map { _ in cache.createSequence() }

    // Data (see the type's documentation). Per (sequence, kv head): unit cluster centres, a sink
    // direction, the content and locality strengths, and the context vector h's current value.
    let t0 = monotonicSeconds()
    var g = SeededGenerator(seed: c.seed)
    let structured = c.data == .structured && c.trace == nil
    let rootD = Double(D).squareRoot()
    let C = structured ? Swift.max(c.clusters, c.context / 64) : 1
    func unit(_ g: inout SeededGenerator) -> [Float] {
      let v = (0..<D).map { _ in g.nextNormal() }
      let n = Swift.max(v.reduce(0) { $0 + $1 * $1 }.squareRoot(), 1e-12)
      return v.map { Float($0 / n) }
    }
    var centres = [Float](repeating: 0, count: structured ? B * Hkv * C * D : 0)
    var sinks = [Float](repeating: 0, count: B * Hkv * D)
    var contextVector = [Float](repeating: 0, count: B * Hkv * D)
    var strength: [(content: Float, locality: Float)] = []
    if structured {
      for i in 0..<(B * Hkv * C) { centres.replaceSubrange((i * D)..<((i + 1) * D), with: unit(&g)) }
      for i in 0..<(B * Hkv) {
        sinks.replaceSubrange((i * D)..<((i + 1) * D), with: unit(&g))
        for d in 0..<D { contextVector[i * D + d] = Float(g.nextNormal()) }
        let t = (Double(i % Hkv) + 0.5) / Double(Hkv)
        strength.append((Float(0.35 + 0.25 * t), Float(1 - 0.45 * t)))
      }
    }
    let contextRho = Float(1 - 1 / 32.0), contextFresh = (1 - contextRho * contextRho).squareRoot()
    /// Moves h to the next position.
    func advanceContext(_ bk: Int, _ g: inout SeededGenerator) {
      for d in 0..<D { contextVector[bk * D + d] = contextRho * contextVector[bk * D + d] + contextFresh * Float(g.nextNormal()) }
    }
    var cdf: [Double] = []
    let hsum = (0..<C).reduce(0.0) { $0 + 1 / Double($1 + 1) }
    var acc = 0.0
    for k in 0..<C { acc += 1 / Double(k + 1) / hsum; cdf.append(acc) }
    func pick(_ g: inout SeededGenerator) -> Int {
      let u = g.nextUnit()
      var lo = 0, hi = C - 1
      while lo < hi { let mid = (lo + hi) / 2; if cdf[mid] < u { lo = mid + 1 } else { hi = mid } }
      return lo
    }
    func centre(_ b: Int, _ kv: Int, _ k: Int) -> Int { ((b * Hkv + kv) * C + k) * D }
    /// Writes the key of position `pos` (cluster `k`) of (sequence b, kv head kv) at `p`; h must be at `pos`.
    func structuredKey(_ b: Int, _ kv: Int, pos: Int, cluster k: Int, _ g: inout SeededGenerator, into p: UnsafeMutableBufferPointer<Float>, at o: Int) {
      let bk = b * Hkv + kv
      if pos == 0 {
        // The sink: every query scores about ln(context) + 2 on it (after the 1/√D scale).
        let score = Float(Foundation.log(Double(c.context)) + 2)
        for d in 0..<D { p[o + d] = sinks[bk * D + d] * score }
        return
      }
      let (A, G) = strength[bk]
      let a = Float(Foundation.exp(0.3 * g.nextNormal()))
      let ce = centre(b, kv, k)
      for d in 0..<D {
        p[o + d] = (A * Float(rootD) * centres[ce + d] + Float(g.nextNormal())) * a + G * contextVector[bk * D + d]
      }
    }
    /// A query of (sequence b, kv head kv) for cluster `k` with noise `noise` (N(0, 1) entries); h at its position.
    func structuredQuery(_ b: Int, _ kv: Int, cluster k: Int, noise: (Int) -> Float, into p: UnsafeMutableBufferPointer<Float>, at o: Int) {
      let bk = b * Hkv + kv
      let (A, G) = strength[bk]
      let ce = centre(b, kv, k)
      for d in 0..<D {
        p[o + d] = A * Float(rootD) * centres[ce + d] + noise(d) + G * contextVector[bk * D + d] + Float(rootD) * sinks[bk * D + d]
      }
    }

    // Prefill queries [Hq, Np, D] per sequence, at random positions of the prompt (sorted, so
    // they are generated as the context vector passes them).
    let Np = c.prefillQueries
    var prefill: [Tensor] = (0..<B).map { _ in Tensor(shape: [Hq, Np, D], repeating: 0) }
    var prefillAt: [[(pos: Int, head: Int, row: Int)]] = []  // per kv head of a sequence
    for kv in 0..<Hkv {
      var list: [(pos: Int, head: Int, row: Int)] = []
      for x in 0..<G { for i in 0..<Np { list.append((Int(g.next() % UInt64(c.context)), kv * G + x, i)) } }
      list.sort { $0.pos < $1.pos || ($0.pos == $1.pos && ($0.head, $0.row) < ($1.head, $1.row)) }
      prefillAt.append(list)
    }

    // Fill the context, a chunk at a time.
    let dataName = c.trace != nil ? "trace" : c.data.rawValue
    progress("filling the cache: \(B) × \(c.context) tokens, Hkv=\(Hkv), D=\(D), \(c.storage.rawValue), \(dataName) data")
    let chunk = 4096
    if let trace = c.trace {
      // The recorded prompt: its keys and values in the cache, its queries for the index.
      var done = 0
      while done < c.context {
        let n = min(chunk, c.context - done)
        try cache.append(sequences[0], keys: DecodeTrace.slice(trace.keys, done..<(done + n)),
                         values: DecodeTrace.slice(trace.values, done..<(done + n)))
        done += n
      }
      prefill[0] = DecodeTrace.slice(trace.queries, 0..<c.context)
    }
    for (b, s) in sequences.enumerated() where c.trace == nil {
      var done = 0
      var nextPrefill = [Int](repeating: 0, count: Hkv)
      while done < c.context {
        let n = min(chunk, c.context - done)
        var keys = Tensor(shape: [Hkv, n, D], repeating: 0)
        keys.withUnsafeMutableBufferPointer { p in
          for h in 0..<Hkv {
            for j in 0..<n {
              let o = (h * n + j) * D, pos = done + j
              if structured {
                if pos > 0 { advanceContext(b * Hkv + h, &g) }
                structuredKey(b, h, pos: pos, cluster: pick(&g), &g, into: p, at: o)
                // The prefill queries at this position.
                let list = prefillAt[h]
                prefill[b].withUnsafeMutableBufferPointer { qp in
                  while nextPrefill[h] < list.count && list[nextPrefill[h]].pos == pos {
                    let e = list[nextPrefill[h]]
                    structuredQuery(b, h, cluster: pick(&g), noise: { _ in Float(g.nextNormal()) }, into: qp, at: (e.head * Np + e.row) * D)
                    nextPrefill[h] += 1
                  }
                }
              } else {
                for d in 0..<D { p[o + d] = Float(g.nextNormal()) }
              }
            }
          }
        }
        let values = Tensor(shape: [Hkv, n, D]) { p in for i in p.indices { p[i] = Float(g.nextNormal()) } }
        try cache.append(s, keys: keys, values: values)
        done += n
      }
      if !structured {
        prefill[b].withUnsafeMutableBufferPointer { p in for i in p.indices { p[i] = Float(g.nextNormal()) } }
      }
    }
    let setupSeconds = monotonicSeconds() - t0

    // Index build (retrieval).
    var buildSeconds: Double? = nil, indexBytes: Int? = nil, buildQueries: Int? = nil
    if let r = retrieval {
      progress("building the index: \(B) sequence(s) × \(Hkv) kv heads over \(c.context) keys")
      var secs = 0.0
      for (b, s) in sequences.enumerated() {
        let rep = try r.buildIndex(cache: cache, layer: 0, sequence: s, prefillQueries: prefill[b], threads: c.threads)
        secs += rep.seconds
        progress(String(format: "index of sequence %d: %.2f s (exact query lists %.2f s, projection %.2f s, linking %.2f s), %d edges, %d keys covered by query lists",
                        b, rep.seconds, rep.listSeconds, rep.projectSeconds, rep.linkSeconds, rep.edges, rep.coveredKeys))
        buildQueries = rep.sampledQueries
      }
      buildSeconds = secs
      indexBytes = r.memoryBytes
    }

    // Decode stream state: topic per (sequence, head), noise per (sequence, head) with N(0, 1)
    // entries (as the prefill queries' noise).
    var topic = [Int](repeating: 0, count: B * Hq)
    var noise = [Float](repeating: 0, count: B * Hq * D)
    for i in 0..<(B * Hq) { topic[i] = structured ? pick(&g) : 0 }
    for i in noise.indices { noise[i] = Float(g.nextNormal()) }
    let rho = Float(c.drift), fresh = Float((1 - c.drift * c.drift).squareRoot())

    let exact = try SplitKVAttention()
    let options = AttentionOptions(causal: true, returnLSE: true, threads: c.threads)
    var exactTimes: [Double] = [], methodTimes: [Double] = []
    var exactCPU: [Double] = [], methodCPU: [Double] = []
    var errNum = 0.0, errDen = 0.0
    var scanned = 0.0, touched = 0.0, attendedRows = 0.0, rowsCount = 0.0
    var recallA = 0.0, recallS = 0.0, recallSCount = 0.0, recallACount = 0.0
    var hits = 0, decisions = 0
    var mass = 0.0, massCount = 0.0
    var keys90 = 0.0, topMass = 0.0, concentrationRows = 0.0
    progress("decoding: \(c.warmup) warm-up + \(c.steps) measured steps")
    for step in 0..<(c.warmup + c.steps) {
      // New token for every sequence, near its group's topic; the context vector moves on.
      var q = Tensor(shape: [B, Hq, 1, D], repeating: 0)
      if let trace = c.trace {
        // The recorded next position: its key and value, then its queries.
        let at = (c.context + step)..<(c.context + step + 1)
        try cache.append(sequences[0], keys: DecodeTrace.slice(trace.keys, at), values: DecodeTrace.slice(trace.values, at))
        q = try DecodeTrace.slice(trace.queries, at).reshaped([1, Hq, 1, D])
      }
      for (b, s) in sequences.enumerated() where c.trace == nil {
        let pos = c.context + step
        if structured && g.nextUnit() < c.topicSwitch {
          for h in 0..<Hq { topic[b * Hq + h] = pick(&g) }
        }
        var k = Tensor(shape: [Hkv, 1, D], repeating: 0)
        k.withUnsafeMutableBufferPointer { p in
          for kv in 0..<Hkv {
            if structured {
              advanceContext(b * Hkv + kv, &g)
              structuredKey(b, kv, pos: pos, cluster: topic[b * Hq + kv * G], &g, into: p, at: kv * D)
            } else {
              for d in 0..<D { p[kv * D + d] = Float(g.nextNormal()) }
            }
          }
        }
        let v = Tensor(shape: [Hkv, 1, D]) { p in for i in p.indices { p[i] = Float(g.nextNormal()) } }
        try cache.append(s, keys: k, values: v)
      }
      // Queries: (structured) topic centre + drifting noise + context vector + sink direction.
      if c.trace == nil {
        for i in noise.indices { noise[i] = rho * noise[i] + fresh * Float(g.nextNormal()) }
        q.withUnsafeMutableBufferPointer { p in
          for b in 0..<B {
            for h in 0..<Hq {
              let o = (b * Hq + h) * D
              if structured {
                structuredQuery(b, h / G, cluster: topic[b * Hq + h], noise: { noise[o + $0] }, into: p, at: o)
              } else {
                for d in 0..<D { p[o + d] = noise[o + d] }
              }
            }
          }
        }
      }
      let measured = step >= c.warmup
      var exactResult: AttentionResult? = nil
      var methodResult: AttentionResult? = nil
      var attended: [[Int]] = []  // per row
      var retrieved: [[Int]]? = nil
      func runExact() throws(SubqError) {
        let cpu = processCPUSeconds(), t = monotonicSeconds()
        exactResult = try exact.attention(queries: q, cache: cache, layer: 0, sequences: sequences, options: options)
        if measured {
          exactTimes.append(monotonicSeconds() - t)
          exactCPU.append(processCPUSeconds() - cpu)
        }
      }
      func runMethod() throws(SubqError) {
        let cpu = processCPUSeconds(), t = monotonicSeconds()
        if let ts = tokenSelect {
          let r = try ts.step(queries: q, cache: cache, layer: 0, sequences: sequences, options: options, recordKeys: true)
          if measured {
            methodTimes.append(monotonicSeconds() - t)
            methodCPU.append(processCPUSeconds() - cpu)
          }
          methodResult = r.result
          let st = r.statistics
          if measured {
            hits += st.selectionsReused
            decisions += st.selectionsReused + st.selectionsComputed
            scanned += Double(st.keysScored) / Double(st.keysCached)
            touched += Double(st.keysTouched) / Double(st.keysCached)
          }
          attended = (0..<(B * Hq)).map { r.attendedKeys![$0 / Hq] }
        } else if let rd = retrieval {
          let r = try rd.step(queries: q, cache: cache, layer: 0, sequences: sequences, options: options, recordKeys: true)
          if measured {
            methodTimes.append(monotonicSeconds() - t)
            methodCPU.append(processCPUSeconds() - cpu)
          }
          methodResult = r.result
          let st = r.statistics
          if measured {
            scanned += st.scannedFraction
            // Per search: the keys it scanned plus the static ones (an upper bound: a search may
            // scan static keys too).
            // (The static keys are read once per traversal's key/value head.)
            touched += (Double(st.keysScanned) + Double(st.staticKeys * st.searches) / Double(B)) / Double(max(1, st.keysCached))
          }
          attended = r.attendedKeys!
          retrieved = r.retrievedKeys
        }
      }
      if step % 2 == 0 { try runExact(); try runMethod() } else { try runMethod(); try runExact() }
      guard measured, let e = exactResult, let m = methodResult else { continue }
      e.output.withUnsafeBufferPointer { ep in
        m.output.withUnsafeBufferPointer { mp in
          for i in 0..<ep.count {
            let d = Double(mp[i]) - Double(ep[i])
            errNum += d * d
            errDen += Double(ep[i]) * Double(ep[i])
          }
        }
      }
      for a in attended { attendedRows += Double(a.count); rowsCount += 1 }
      if let le = e.lse, let lm = m.lse {
        for i in 0..<le.count {
          mass += Foundation.exp(min(0, Double(lm[flat: i]) - Double(le[flat: i])))
          massCount += 1
        }
      }
      for r in try SelectionMetrics.concentration(queries: q, cache: cache, layer: 0, sequences: sequences, mass: 0.9, k: c.recallK,
                                                   threads: c.threads) {
        keys90 += r.keysForMass
        topMass += r.topKMass
        concentrationRows += 1
      }
      let truth = try SelectionMetrics.exactTopKeys(queries: q, cache: cache, layer: 0, sequences: sequences, k: c.recallK, threads: c.threads)
      for (r, t) in truth.enumerated() {
        recallA += SelectionMetrics.recall(truth: t, selected: attended[r])
        recallACount += 1
      }
      if let retrieved, let rd = retrieval {
        let rc = rd.configuration
        let truthS = try SelectionMetrics.exactTopKeys(queries: q, cache: cache, layer: 0, sequences: sequences, k: c.recallK,
                                                       excludingFirst: rc.sinkTokens, excludingLast: rc.windowTokens, threads: c.threads)
        for (r, t) in truthS.enumerated() {
          recallS += SelectionMetrics.recall(truth: t, selected: retrieved[r])
          recallSCount += 1
        }
      }
    }
    let exactMedian = Timing(samples: exactTimes).median, methodMedian = Timing(samples: methodTimes).median
    let n = Double(c.context + c.warmup + c.steps)
    let bytes = Double(B * Hkv) * n * Double(2 * D * c.storage.bytes)
    let steps = Double(c.steps)
    return Report(
      method: c.method.rawValue, parameters: parameterValues, context: c.context, steps: c.steps, warmup: c.warmup, batch: B, heads: Hq, kvHeads: Hkv, dim: D,
      storage: c.storage.rawValue, data: dataName, trace: c.trace?.directory, threads: c.threads, setupSeconds: setupSeconds, buildSeconds: buildSeconds,
      indexBytes: indexBytes, buildQueries: buildQueries, cacheBytes: Int(bytes),
      exactMedianSeconds: exactMedian, exactMinSeconds: Timing(samples: exactTimes).min,
      methodMedianSeconds: methodMedian, methodMinSeconds: Timing(samples: methodTimes).min,
      exactMeanSeconds: exactTimes.reduce(0, +) / Double(max(1, exactTimes.count)),
      methodMeanSeconds: methodTimes.reduce(0, +) / Double(max(1, methodTimes.count)),
      exactCPUMedianSeconds: Timing(samples: exactCPU).median, methodCPUMedianSeconds: Timing(samples: methodCPU).median,
      speedup: exactMedian / methodMedian,
      meanSpeedup: exactTimes.reduce(0, +) / max(1e-12, methodTimes.reduce(0, +)), exactGBps: bytes / exactMedian / 1e9,
      scannedFraction: scanned / steps, touchedFraction: touched / steps, attendedPerRow: attendedRows / max(1, rowsCount),
      recallAttended: recallA / max(1, recallACount), recallSearch: retrieval != nil ? recallS / max(1, recallSCount) : nil,
      recallK: c.recallK, relativeError: errDen > 0 ? (errNum / errDen).squareRoot() : errNum.squareRoot(),
      attentionMass: mass / max(1, massCount),
      selectionCacheHitRate: tokenSelect != nil ? Double(hits) / Double(max(1, decisions)) : nil,
      keysFor90PercentMass: keys90 / max(1, concentrationRows), topKMass: topMass / max(1, concentrationRows))
  }
}
