import ArgumentParser
import Foundation
import Subquadratic
import SubqBench

extension KVStorageType: ExpressibleByArgument {}

/// `subq decode-bench`: decode-step latency of split-KV attention over a paged cache.
struct DecodeBenchCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "decode-bench",
    abstract: "Time one decode step (split-KV attention over a paged KV cache) at several context lengths.",
    discussion: """
      Each sequence's cache is filled to the context length; a step attends --queries new tokens per sequence \
      (causal) to all of it. Reports step latency, tokens/s, bytes of cache read per step, the read bandwidth \
      and its fraction of the copy bandwidth `subq peak` measures, and the time per 1K tokens of context \
      (flat when the step time grows linearly), and the processor time per step (all threads; unlike the \
      wall-clock time it excludes waiting for a core on a loaded machine). Before timing, the first key/value head's query heads are \
      checked against the Float64 reference over the same cached keys and values.
      """)

  @Option(help: "Context lengths, comma-separated (K = 1024).") var context = "4096,32768,131072"
  @Option(help: "Sequences per step.") var batch = 1
  @Option(help: "Query heads.") var heads = 32
  @Option(name: .customLong("kv-heads"), help: "Key/value heads.") var kvHeads = 8
  @Option(help: "Head dimension (keys and values).") var dim = 128
  @Option(help: "New tokens per sequence and step (1–16).") var queries = 1
  @Option(name: .customLong("kv-dtype"), help: "Cache storage: f32 or f16.") var kvDtype: KVStorageType = .float32
  @Option(name: .customLong("page-size"), help: "Tokens per cache page.") var pageSize = 64
  @Option(help: "Key chunks per (sequence, kv head); 0 = automatic.") var splits = 0
  @Option(help: "Timed steps per context length.") var `repeat` = 20
  @Option(help: "Data seed.") var seed: UInt64 = 1
  @Option(help: "Worker threads (default: all cores).") var threads: Int?
  @Option(name: .customLong("peak-bandwidth"), help: "Copy bandwidth to compare with, GB/s (default: measured, as `subq peak`).")
  var peakBandwidth: Double?
  @Flag(help: "Print JSON instead of a table.") var json = false

  func run() throws {
    let contexts = try parseLengths(context, option: "--context")
    for (name, value) in [("--batch", batch), ("--heads", heads), ("--kv-heads", kvHeads), ("--dim", dim), ("--repeat", `repeat`),
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
    if splits < 0 { throw SubqError.argument(op: "decode-bench", name: "--splits", value: "\(splits)", reason: "must be ≥ 0 (0 = automatic)") }
    var config = DecodeBench.Config(contexts: contexts)
    config.batch = batch
    config.heads = heads
    config.kvHeads = kvHeads
    config.dim = dim
    config.queries = queries
    config.storage = kvDtype
    config.pageSize = pageSize
    config.splits = splits
    config.repeats = `repeat`
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
        var build: String, flags: String, cpu: String, threads: Int
        var batch: Int, heads: Int, kvHeads: Int, dim: Int, queries: Int, kvDtype: String, pageSize: Int
        var copyBandwidth: Double
        var rows: [DecodeBench.Row]
      }
      let r = Report(build: BuildInfo.summary, flags: BuildInfo.flags, cpu: MachineInfo.cpuModel, threads: config.threads,
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
}
