import ArgumentParser
import Foundation
import Subquadratic
import SubqBench

extension KVStorageType: ExpressibleByArgument {}

/// The decoding methods `subq decode-bench` measures.
enum DecodeBenchMethod: String, CaseIterable, ExpressibleByArgument {
  /// Exact split-KV (Flash-Decoding) attention over the whole cache.
  case splitkv
  /// TokenSelect: soft-voted top-k tokens plus sinks and a recent window (``TokenSelectDecoder``).
  case tokenselect
  /// RetrievalAttention: graph-index search plus static tokens (``RetrievalDecoder``).
  case retrieval

  var selection: SelectionDecodeBench.Method? {
    switch self {
    case .splitkv: nil
    case .tokenselect: .tokenselect
    case .retrieval: .retrieval
    }
  }
}

/// `subq decode-bench`: decode-step latency over a paged KV cache — exact split-KV decoding, or
/// decoding with KV selection (TokenSelect, RetrievalAttention) against exact decoding in the same run.
struct DecodeBenchCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "decode-bench",
    abstract: "Time decode steps over a paged KV cache: exact split-KV, or KV selection (tokenselect, retrieval) against it.",
    discussion: """
      --method splitkv (default): each sequence's cache is filled to the context length; a step attends --queries new \
      tokens per sequence (causal) to all of it. Reports step latency, tokens/s, bytes of cache read per step, the read \
      bandwidth and its fraction of the copy bandwidth `subq peak` measures, the time per 1K tokens of context (flat \
      when the step time grows linearly), and the processor time per step (all threads; unlike the wall-clock time it \
      excludes waiting for a core on a loaded machine). Before timing, the first key/value head's query heads are \
      checked against the Float64 reference over the same cached keys and values. Options: --queries, --splits (or \
      --param splits=N), --repeat, --peak-bandwidth.

      --method tokenselect|retrieval: fills a paged cache with --context tokens per sequence from --data, builds the \
      retrieval index from generated prefill queries, then runs --warmup + --steps decode steps; each step appends a \
      token and runs exact split-KV decoding and the method on the same query (one per sequence and head), alternating \
      which goes first. Reports step latency (wall and processor time) of both and the speed-up, the fraction of cached \
      keys the method scanned (scored or searched) and touched, recall of each query's true top --recall-k keys, \
      relative output error against exact decoding, the exact softmax mass on the attended keys, index build time and \
      memory, TokenSelect's selection-cache hit rate, and the data's concentration (keys holding 90% of a query's \
      weight, weight on its top --recall-k keys). Method parameters (--param name=value): tokenselect: top-k, \
      init, local, cache, threshold; retrieval: sink, window, top-k, width, exact, grouped, half-search, patience, \
      warm-start, carry, build-queries, query-neighbors, degree, build-width, entry-points, alpha, seed. Options: --steps, --warmup, --data, --clusters, --prefill-queries, \
      --drift, --topic-switch, --recall-k, --trace. Several --context lengths give one report each.

      --trace DIR replays one layer of a real model's attention recorded by `subq trace` (DIR holds q.npy [Hq, N, D], \
      k.npy and v.npy [Hkv, N, D], post-RoPE, Float32) instead of generated data: the first --context positions \
      (default: N − warmup − steps) are the prompt in the cache and their queries the prefill queries the retrieval \
      index is built from; each decode step appends the next position's key and value and runs its queries. Heads, \
      kv heads and head dimension come from the files (--heads, --kv-heads, --dim may only repeat them), the batch is \
      1, and the options that shape generated data (--data, --clusters, --prefill-queries, --drift, --topic-switch, \
      --seed) are errors.

      An option that does not apply to the chosen method is an error.
      """)

  @Option(help: "Method: splitkv (exact), tokenselect or retrieval.") var method: DecodeBenchMethod = .splitkv
  @Option(help: "Context lengths, comma-separated (K = 1024; default 4096,32768,131072, with --trace its length − warmup − steps).")
  var context: String?
  @Option(help: "Sequences per step.") var batch = 1
  @Option(help: "Query heads (default: 32 for splitkv, 8 for tokenselect and retrieval).") var heads: Int?
  @Option(name: .customLong("kv-heads"), help: "Key/value heads (default: 8 for splitkv, 2 for tokenselect and retrieval).")
  var kvHeads: Int?
  @Option(help: "Head dimension (keys and values; default 128).") var dim: Int?
  @Option(name: .customLong("kv-dtype"), help: "Cache storage: f32 or f16.") var kvDtype: KVStorageType = .float32
  @Option(name: .customLong("page-size"), help: "Tokens per cache page.") var pageSize = 64
  @Option(help: "Data seed (default 1).") var seed: UInt64?
  @Option(help: "Worker threads (default: all cores).") var threads: Int?
  @Option(name: .customLong("param"), help: "Method parameter name=value (repeatable).") var params: [String] = []
  @Flag(help: "Print JSON instead of a table.") var json = false

  // splitkv only.
  @Option(help: "splitkv: new tokens per sequence and step (1–16; default 1).") var queries: Int?
  @Option(help: "splitkv: key chunks per (sequence, kv head); 0 = automatic (default).") var splits: Int?
  @Option(help: "splitkv: timed steps per context length (default 20).") var `repeat`: Int?
  @Option(name: .customLong("peak-bandwidth"), help: "splitkv: copy bandwidth to compare with, GB/s (default: measured, as `subq peak`).")
  var peakBandwidth: Double?

  // tokenselect and retrieval only.
  @Option(help: "Selection: measured decode steps (default 32).") var steps: Int?
  @Option(help: "Selection: unmeasured decode steps first (default 2).") var warmup: Int?
  @Option(help: "Selection: data, structured (ProblemData's recipe: content clusters, locality, a sink; default) or gaussian.") var data: DataKind?
  @Option(help: "Selection: content clusters per kv head for structured data, at least context/64 (default 64).") var clusters: Int?
  @Option(name: .customLong("prefill-queries"), help: "Selection: prefill queries per query head; the retrieval index samples from them (default 1024).")
  var prefillQueries: Int?
  @Option(help: "Selection: AR(1) coefficient of the decode queries' drift, 0…1 (default 0.99).") var drift: Double?
  @Option(name: .customLong("topic-switch"), help: "Selection: probability per step that a sequence's heads switch topic (default 1/32).")
  var topicSwitch: Double?
  @Option(name: .customLong("recall-k"), help: "Selection: k of the top-k recall metrics (default 100).") var recallK: Int?
  @Option(help: "Selection: replay this `subq trace` layer directory (q.npy, k.npy, v.npy) instead of generated data.")
  var trace: String?

  func run() throws {
    if let selection = method.selection {
      try rejectGiven([("--queries", queries != nil), ("--splits", splits != nil), ("--repeat", `repeat` != nil),
                       ("--peak-bandwidth", peakBandwidth != nil)])
      try runSelection(selection)
    } else {
      try rejectGiven([("--steps", steps != nil), ("--warmup", warmup != nil), ("--data", data != nil), ("--clusters", clusters != nil),
                       ("--prefill-queries", prefillQueries != nil), ("--drift", drift != nil), ("--topic-switch", topicSwitch != nil),
                       ("--recall-k", recallK != nil), ("--trace", trace != nil)])
      try runSplitKV(contexts: try parseLengths(context ?? "4096,32768,131072", option: "--context"))
    }
  }

  private func rejectGiven(_ options: [(String, Bool)]) throws(SubqError) {
    for (name, given) in options where given {
      throw .unsupported(op: "decode-bench", feature: name, reason: "does not apply to --method \(method.rawValue)")
    }
  }

  // MARK: - Exact split-KV

  private func runSplitKV(contexts: [Int]) throws {
    let heads = heads ?? 32, kvHeads = kvHeads ?? 8, queries = queries ?? 1, repeats = `repeat` ?? 20
    let dim = dim ?? 128, seed = seed ?? 1
    for (name, value) in [("--batch", batch), ("--heads", heads), ("--kv-heads", kvHeads), ("--dim", dim), ("--repeat", repeats),
                          ("--page-size", pageSize)] where value < 1 {
      throw SubqError.argument(op: "decode-bench", name: name, value: "\(value)", reason: "must be at least 1")
    }
    if heads % kvHeads != 0 {
      throw SubqError.argument(op: "decode-bench", name: "--heads", value: "\(heads)", reason: "must be a multiple of --kv-heads (\(kvHeads))")
    }
    if !(1...16).contains(queries) {
      throw SubqError.argument(op: "decode-bench", name: "--queries", value: "\(queries)", reason: "must be in 1...16")
    }
    if let t = threads, t < 1 { throw SubqError.argument(op: "decode-bench", name: "--threads", value: "\(t)", reason: "must be at least 1") }
    if let p = peakBandwidth, !(p > 0 && p.isFinite) {
      throw SubqError.argument(op: "decode-bench", name: "--peak-bandwidth", value: "\(p)", reason: "must be a positive number of GB/s")
    }
    if let s = splits, s < 0 { throw SubqError.argument(op: "decode-bench", name: "--splits", value: "\(s)", reason: "must be ≥ 0 (0 = automatic)") }
    var splitCount = splits ?? 0
    if !params.isEmpty {
      if splits != nil {
        throw SubqError.argument(op: "decode-bench", name: "--param", value: params.joined(separator: " "),
                                 reason: "give the number of splits once, as --splits or as --param splits=N")
      }
      splitCount = try SplitKVAttention(parameters: parseParams(params, method: "splitkv")).splits
    }
    var config = DecodeBench.Config(contexts: contexts)
    config.batch = batch
    config.heads = heads
    config.kvHeads = kvHeads
    config.dim = dim
    config.queries = queries
    config.storage = kvDtype
    config.pageSize = pageSize
    config.splits = splitCount
    config.repeats = repeats
    config.seed = seed
    config.peakBandwidth = peakBandwidth
    if let threads { config.threads = threads }
    let bench = DecodeBench(config: config)
    let peak = bench.peakBandwidth()
    if !json {
      print(BuildInfo.summary)
      print("\(MachineInfo.cpuModel), \(MachineInfo.cores) cores, \(config.threads) threads")
      print("splitkv decode  B=\(batch) Hq=\(heads) Hkv=\(kvHeads) D=\(dim) queries=\(queries) kv=\(kvDtype.rawValue) page=\(pageSize)"
            + String(format: "  copy bandwidth %.1f GB/s%@", peak, peakBandwidth == nil ? " (measured)" : " (given)"))
    }
    let rows = try bench.run(peak: peak) { row in
      if !json { note(String(format: "  context=%d done: %.2f ms", row.context, row.medianSeconds * 1e3)) }
    }
    if json {
      struct Report: Encodable {
        var build: String, flags: String, cpu: String, threads: Int, method: String
        var batch: Int, heads: Int, kvHeads: Int, dim: Int, queries: Int, kvDtype: String, pageSize: Int
        var copyBandwidth: Double
        var rows: [DecodeBench.Row]
      }
      let r = Report(build: BuildInfo.summary, flags: BuildInfo.flags, cpu: MachineInfo.cpuModel, threads: config.threads, method: "splitkv",
                     batch: batch, heads: heads, kvHeads: kvHeads, dim: dim, queries: queries, kvDtype: kvDtype.rawValue,
                     pageSize: pageSize, copyBandwidth: peak, rows: rows)
      let enc = JSONEncoder()
      enc.outputFormatting = [.prettyPrinted, .sortedKeys]
      print(String(decoding: try enc.encode(r), as: UTF8.self))
      return
    }
    var table = TextTable(header: ["context", "step", "min", "tokens/s", "cache read", "GB/s", "of peak", "µs/1K ctx", "CPU/step", "check err"],
                          rightAligned: Set(0..<10))
    for r in rows {
      table.add([String(r.context), formatSeconds(r.medianSeconds), formatSeconds(r.minSeconds), String(format: "%.1f", r.tokensPerSecond),
                 formatBytes(r.cacheBytes), String(format: "%.1f", r.gbPerSecond), String(format: "%.0f%%", r.fractionOfPeak * 100),
                 String(format: "%.1f", r.microsecondsPer1K), formatSeconds(r.cpuSecondsPerStep), String(format: "%.1e", r.checkError)])
    }
    print(table.render())
  }

  // MARK: - KV selection against exact decoding

  private func runSelection(_ selection: SelectionDecodeBench.Method) throws {
    var config = SelectionDecodeBench.Config(method: selection)
    config.parameters = try parseParams(params, method: method.rawValue)
    if let v = steps { config.steps = v }
    if let v = warmup { config.warmup = v }
    config.batch = batch
    if let trace {
      // Recorded data: the options that shape generated data do not apply; the shape is the files'.
      for (name, given) in [("--data", data != nil), ("--clusters", clusters != nil), ("--prefill-queries", prefillQueries != nil),
                            ("--drift", drift != nil), ("--topic-switch", topicSwitch != nil), ("--seed", seed != nil)] where given {
        throw SubqError.unsupported(op: "decode-bench", feature: name, reason: "shapes generated data; --trace replays recorded data")
      }
      let t = try DecodeTrace.load(directory: trace)
      config.trace = t
      config.heads = t.heads
      config.kvHeads = t.kvHeads
      config.dim = t.dim
    }
    if let v = heads { config.heads = v }
    if let v = kvHeads { config.kvHeads = v }
    if let v = dim { config.dim = v }
    config.storage = kvDtype
    config.pageSize = pageSize
    if let v = data { config.data = v }
    if let v = clusters { config.clusters = v }
    if let v = prefillQueries { config.prefillQueries = v }
    if let v = drift { config.drift = v }
    if let v = topicSwitch { config.topicSwitch = v }
    if let v = recallK { config.recallK = v }
    if let seed { config.seed = seed }
    if let threads { config.threads = threads }
    let contexts: [Int]
    if let context {
      contexts = try parseLengths(context, option: "--context")
    } else if let t = config.trace {
      contexts = [t.tokens - config.warmup - config.steps]
      if contexts[0] < 1 {
        throw SubqError.argument(op: "decode-bench", name: "--steps", value: "\(config.steps)",
                                 reason: "the trace \(t.directory) has \(t.tokens) positions, too few for --warmup \(config.warmup) + --steps \(config.steps) and a context")
      }
    } else {
      contexts = try parseLengths("4096,32768,131072", option: "--context")
    }
    // Validate every length and the method's parameters before the first (long) run.
    for n in contexts {
      config.context = n
      try SelectionDecodeBench(config: config).validate()
    }
    var reports: [SelectionDecodeBench.Report] = []
    for n in contexts {
      config.context = n
      reports.append(try SelectionDecodeBench(config: config).run { line in if !json { note("  " + line) } })
    }
    if json {
      struct Output: Encodable {
        var build: String, flags: String, cpu: String, method: String
        var reports: [SelectionDecodeBench.Report]
      }
      let enc = JSONEncoder()
      enc.outputFormatting = [.prettyPrinted, .sortedKeys]
      let out = Output(build: BuildInfo.summary, flags: BuildInfo.flags, cpu: MachineInfo.cpuModel, method: method.rawValue, reports: reports)
      print(String(decoding: try enc.encode(out), as: UTF8.self))
      return
    }
    print(BuildInfo.summary)
    print("\(MachineInfo.cpuModel), \(MachineInfo.cores) cores, \(config.threads) threads")
    for r in reports {
      print("")
      print("method \(r.method) \(r.parameters.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))")
      print("context \(r.context) + \(r.warmup + r.steps) decoded, B=\(r.batch) Hq=\(r.heads) Hkv=\(r.kvHeads) D=\(r.dim) "
            + "\(r.storage) data=\(r.trace.map { "trace \($0)" } ?? r.data), \(r.steps) measured steps")
      var t = TextTable(header: ["metric", "value"], rightAligned: [1])
      t.add(["exact split-KV step (median / mean / min)",
             "\(formatSeconds(r.exactMedianSeconds)) / \(formatSeconds(r.exactMeanSeconds)) / \(formatSeconds(r.exactMinSeconds))"])
      t.add(["exact split-KV processor time per step (median)", formatSeconds(r.exactCPUMedianSeconds)])
      t.add(["exact split-KV bandwidth", String(format: "%.1f GB/s", r.exactGBps)])
      t.add(["\(r.method) step (median / mean / min)",
             "\(formatSeconds(r.methodMedianSeconds)) / \(formatSeconds(r.methodMeanSeconds)) / \(formatSeconds(r.methodMinSeconds))"])
      t.add(["\(r.method) processor time per step (median)", formatSeconds(r.methodCPUMedianSeconds)])
      t.add(["speed-up vs exact (median / mean / processor time)",
             String(format: "%.1f× / %.1f× / %.1f×", r.speedup, r.meanSpeedup, r.exactCPUMedianSeconds / r.methodCPUMedianSeconds)])
      t.add([r.method == "retrieval" ? "keys scanned per search (per query head; per kv head if grouped)" : "keys scored per step", String(format: "%.2f%%", 100 * r.scannedFraction)])
      t.add(["keys touched per step", String(format: "%.2f%%", 100 * r.touchedFraction)])
      t.add(["keys attended per query row", String(format: "%.0f", r.attendedPerRow)])
      t.add(["top-\(r.recallK) recall (attended keys)", String(format: "%.3f", r.recallAttended)])
      if let s = r.recallSearch { t.add(["top-\(r.recallK) recall (search, sink/window excluded)", String(format: "%.3f", s)]) }
      t.add(["output relative error vs exact", String(format: "%.3e", r.relativeError)])
      t.add(["exact softmax mass on attended keys", String(format: "%.3f", r.attentionMass)])
      t.add(["data: keys holding 90% of a query's weight", String(format: "%.2f%%", 100 * r.keysFor90PercentMass)])
      t.add(["data: weight on a query's top-\(r.recallK) keys", String(format: "%.3f", r.topKMass)])
      if let h = r.selectionCacheHitRate { t.add(["selection-cache hit rate", String(format: "%.1f%%", 100 * h)]) }
      if let b = r.buildSeconds { t.add(["index build", formatSeconds(b) + (r.buildQueries.map { " (\($0) queries per kv head)" } ?? "")]) }
      if let m = r.indexBytes { t.add(["index memory (graphs)", formatBytes(Double(m))]) }
      t.add(["KV cache (keys + values)", formatBytes(Double(r.cacheBytes))])
      t.add(["setup (data + cache fill)", formatSeconds(r.setupSeconds)])
      print(t.render())
    }
  }
}
