import ArgumentParser
import Foundation
import Subquadratic
import SubqBench

extension SelectionDecodeBench.Method: ExpressibleByArgument {}

/// `subq select-bench`: decoding with KV selection (TokenSelect, RetrievalAttention) against exact
/// split-KV decoding over a long paged cache.
struct SelectBenchCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "select-bench",
    abstract: "Benchmark decoding with KV selection (tokenselect, retrieval) against exact split-KV decoding on a long cache.",
    discussion: """
      Fills a paged cache with --context tokens per sequence, builds the retrieval index from generated prefill \
      queries, then runs --warmup + --steps decode steps; each step appends a token and runs exact split-KV decoding \
      and the method on the same queries. Reports step latency of both, the fraction of cached keys the method \
      scanned (scored or searched) and touched, recall of each query's true top --recall-k keys, relative output \
      error against exact decoding, index build time and memory, and TokenSelect's selection-cache hit rate. \
      Method parameters (--param name=value): tokenselect: top-k, init, local, cache, threshold; retrieval: sink, \
      window, top-k, width, exact, build-queries, query-neighbors, degree, build-width, entry-points, seed.
      """)

  @Option(help: "Method: tokenselect or retrieval.") var method: SelectionDecodeBench.Method
  @Option(help: "Cached tokens per sequence before decoding (K = 1024).") var context = "131072"
  @Option(help: "Measured decode steps.") var steps = 32
  @Option(help: "Unmeasured decode steps first.") var warmup = 2
  @Option(help: "Sequences decoded together.") var batch = 1
  @Option(help: "Query heads.") var heads = 8
  @Option(name: .customLong("kv-heads"), help: "Key/value heads.") var kvHeads = 2
  @Option(help: "Head dimension.") var dim = 128
  @Option(help: "Cache storage: f32 or f16.") var storage = "f32"
  @Option(name: .customLong("page-size"), help: "Tokens per cache page.") var pageSize = 64
  @Option(help: "Data: structured (clustered keys, queries near centres) or gaussian.") var data: DataKind = .structured
  @Option(help: "Clusters per kv head (structured data).") var clusters = 64
  @Option(name: .customLong("prefill-queries"), help: "Prefill queries generated per query head (the retrieval index samples from them).")
  var prefillQueries = 1024
  @Option(help: "AR(1) coefficient of the decode queries' drift, 0…1.") var drift = 0.99
  @Option(name: .customLong("topic-switch"), help: "Probability per step that a sequence's heads switch topic.") var topicSwitch = 1.0 / 32
  @Option(name: .customLong("recall-k"), help: "k of the top-k recall metrics.") var recallK = 100
  @Option(help: "Data seed.") var seed: UInt64 = 1
  @Option(help: "Worker threads (default: all cores).") var threads: Int?
  @Option(name: .customLong("param"), help: "Method parameter name=value (repeatable).") var params: [String] = []
  @Flag(help: "Print JSON instead of a table.") var json = false

  func run() throws {
    var config = SelectionDecodeBench.Config(method: method)
    let lengths = try parseLengths(context, option: "--context")
    guard lengths.count == 1 else {
      throw SubqError.argument(op: "select-bench", name: "--context", value: context, reason: "expected one length")
    }
    config.context = lengths[0]
    config.parameters = try parseParams(params, method: method.rawValue)
    config.steps = steps
    config.warmup = warmup
    config.batch = batch
    config.heads = heads
    config.kvHeads = kvHeads
    config.dim = dim
    guard let st = KVStorageType(rawValue: storage) else {
      throw SubqError.argument(op: "select-bench", name: "--storage", value: storage, reason: "must be f32 or f16")
    }
    config.storage = st
    config.pageSize = pageSize
    config.data = data
    config.clusters = clusters
    config.prefillQueries = prefillQueries
    config.drift = drift
    config.topicSwitch = topicSwitch
    config.recallK = recallK
    config.seed = seed
    if let threads { config.threads = threads }
    let report = try SelectionDecodeBench(config: config).run { line in if !json { note("  " + line) } }
    if json {
      struct Output: Encodable {
        var build: String, flags: String, cpu: String
        var report: SelectionDecodeBench.Report
      }
      let enc = JSONEncoder()
      enc.outputFormatting = [.prettyPrinted, .sortedKeys]
      print(String(decoding: try enc.encode(Output(build: BuildInfo.summary, flags: BuildInfo.flags, cpu: MachineInfo.cpuModel, report: report)), as: UTF8.self))
      return
    }
    let r = report
    print(BuildInfo.summary)
    print("\(MachineInfo.cpuModel), \(MachineInfo.cores) cores, \(r.threads) threads")
    print("method \(r.method) \(r.parameters.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))")
    print("context \(r.context) + \(warmup + steps) decoded, B=\(r.batch) Hq=\(r.heads) Hkv=\(r.kvHeads) D=\(r.dim) \(r.storage) data=\(r.data), \(r.steps) measured steps")
    var t = TextTable(header: ["metric", "value"], rightAligned: [1])
    t.add(["exact split-KV step (median / mean / min)",
           "\(formatSeconds(r.exactMedianSeconds)) / \(formatSeconds(r.exactMeanSeconds)) / \(formatSeconds(r.exactMinSeconds))"])
    t.add(["exact split-KV bandwidth", String(format: "%.1f GB/s", r.exactGBps)])
    t.add(["\(r.method) step (median / mean / min)",
           "\(formatSeconds(r.methodMedianSeconds)) / \(formatSeconds(r.methodMeanSeconds)) / \(formatSeconds(r.methodMinSeconds))"])
    t.add(["speed-up vs exact (median / mean)", String(format: "%.1f× / %.1f×", r.speedup, r.meanSpeedup)])
    t.add([r.method == "retrieval" ? "keys scanned per search" : "keys scored per step", String(format: "%.2f%%", 100 * r.scannedFraction)])
    t.add(["keys touched per step", String(format: "%.2f%%", 100 * r.touchedFraction)])
    t.add(["keys attended per query row", String(format: "%.0f", r.attendedPerRow)])
    t.add(["top-\(r.recallK) recall (attended keys)", String(format: "%.3f", r.recallAttended)])
    if let s = r.recallSearch { t.add(["top-\(r.recallK) recall (search, sink/window excluded)", String(format: "%.3f", s)]) }
    t.add(["output relative error vs exact", String(format: "%.3e", r.relativeError)])
    t.add(["exact softmax mass on attended keys", String(format: "%.3f", r.attentionMass)])
    if let h = r.selectionCacheHitRate { t.add(["selection-cache hit rate", String(format: "%.1f%%", 100 * h)]) }
    if let b = r.buildSeconds { t.add(["index build", formatSeconds(b) + (r.buildQueries.map { " (\($0) queries per kv head)" } ?? "")]) }
    if let m = r.indexBytes { t.add(["index memory (graphs)", formatBytes(Double(m))]) }
    t.add(["KV cache (keys + values)", formatBytes(Double(r.cacheBytes))])
    t.add(["setup (data + cache fill)", formatSeconds(r.setupSeconds)])
    print(t.render())
  }
}
