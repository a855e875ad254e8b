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
/// **Data.** `structured` follows ``ProblemData``'s recipe per key/value head: `clusters` centres of
/// norm 2·D^¼, keys a Zipf-chosen centre plus N(0, 0.5²) noise, values N(0, 1). Prefill queries
/// are a centre plus N(0, 0.5²) noise. Decode queries form a stream per query head: a centre
/// (the head's current topic) plus noise that drifts as an AR(1) process
/// `n_t = ρ·n_{t−1} + √(1−ρ²)·ε_t` (ε ~ N(0, 0.5²), so each query has the prefill queries'
/// distribution); with probability `topicSwitch` per step every head of a sequence picks a new
/// topic. Each generated token's key is near its group's current topic. `gaussian` uses N(0, 1)
/// keys, values and prefill queries and the same AR(1) drift for decode queries.
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
    public var data: String
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

    // Data: cluster centres per (sequence, kv head), Zipf weights.
    let t0 = monotonicSeconds()
    var g = SeededGenerator(seed: c.seed)
    let structured = c.data == .structured
    let radius = 2 * Foundation.pow(Double(D), 0.25)
    var centres = [Float](repeating: 0, count: B * Hkv * c.clusters * D)
    for i in 0..<(B * Hkv * c.clusters) {
      var v = (0..<D).map { _ in g.nextNormal() }
      let n = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
      v = v.map { $0 / n * radius }
      for d in 0..<D { centres[i * D + d] = Float(v[d]) }
    }
    var cdf: [Double] = []
    let hsum = (0..<c.clusters).reduce(0.0) { $0 + 1 / Double($1 + 1) }
    var acc = 0.0
    for k in 0..<c.clusters { acc += 1 / Double(k + 1) / hsum; cdf.append(acc) }
    func pick(_ g: inout SeededGenerator) -> Int {
      let u = g.nextUnit()
      var lo = 0, hi = c.clusters - 1
      while lo < hi { let mid = (lo + hi) / 2; if cdf[mid] < u { lo = mid + 1 } else { hi = mid } }
      return lo
    }
    func centre(_ b: Int, _ kv: Int, _ k: Int) -> Int { ((b * Hkv + kv) * c.clusters + k) * D }

    // Fill the context, a chunk at a time.
    progress("filling the cache: \(B) × \(c.context) tokens, Hkv=\(Hkv), D=\(D), \(c.storage.rawValue)")
    let chunk = 4096
    for (b, s) in sequences.enumerated() {
      var done = 0
      while done < c.context {
        let n = min(chunk, c.context - done)
        let keys = Tensor(shape: [Hkv, n, D]) { p in
          for h in 0..<Hkv {
            for j in 0..<n {
              let o = (h * n + j) * D
              if structured {
                let ce = centre(b, h, pick(&g))
                for d in 0..<D { p[o + d] = centres[ce + d] + Float(0.5 * g.nextNormal()) }
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
    }
    // Prefill queries [Hq, Np, D] per sequence.
    let Np = c.prefillQueries
    let prefill: [Tensor] = (0..<B).map { b in
      Tensor(shape: [Hq, Np, D]) { p in
        for h in 0..<Hq {
          for i in 0..<Np {
            let o = (h * Np + i) * D
            if structured {
              let ce = centre(b, h / G, pick(&g))
              for d in 0..<D { p[o + d] = centres[ce + d] + Float(0.5 * g.nextNormal()) }
            } else {
              for d in 0..<D { p[o + d] = Float(g.nextNormal()) }
            }
          }
        }
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

    // Decode stream state: topic per (sequence, head), noise per (sequence, head).
    var topic = [Int](repeating: 0, count: B * Hq)
    var noise = [Float](repeating: 0, count: B * Hq * D)
    for i in 0..<(B * Hq) { topic[i] = pick(&g) }
    for i in noise.indices { noise[i] = Float((structured ? 0.5 : 1) * g.nextNormal()) }
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
    progress("decoding: \(c.warmup) warm-up + \(c.steps) measured steps")
    for step in 0..<(c.warmup + c.steps) {
      // New token for every sequence, near its group's topic.
      for (b, s) in sequences.enumerated() {
        if structured && g.nextUnit() < c.topicSwitch {
          for h in 0..<Hq { topic[b * Hq + h] = pick(&g) }
        }
        let k = Tensor(shape: [Hkv, 1, D]) { p in
          for kv in 0..<Hkv {
            let ce = centre(b, kv, topic[b * Hq + kv * G])
            for d in 0..<D { p[kv * D + d] = structured ? centres[ce + d] + Float(0.5 * g.nextNormal()) : Float(g.nextNormal()) }
          }
        }
        let v = Tensor(shape: [Hkv, 1, D]) { p in for i in p.indices { p[i] = Float(g.nextNormal()) } }
        try cache.append(s, keys: k, values: v)
      }
      // Queries: topic centre + drifting noise.
      for i in noise.indices { noise[i] = rho * noise[i] + fresh * Float((structured ? 0.5 : 1) * g.nextNormal()) }
      let q = Tensor(shape: [B, Hq, 1, D]) { p in
        for b in 0..<B {
          for h in 0..<Hq {
            let ce = centre(b, h / G, topic[b * Hq + h])
            for d in 0..<D { p[(b * Hq + h) * D + d] = (structured ? centres[ce + d] : 0) + noise[(b * Hq + h) * D + d] }
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
      storage: c.storage.rawValue, data: c.data.rawValue, threads: c.threads, setupSeconds: setupSeconds, buildSeconds: buildSeconds,
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
      selectionCacheHitRate: tokenSelect != nil ? Double(hits) / Double(max(1, decisions)) : nil)
  }
}
