import ArgumentParser
import Dispatch
import Foundation
import Subquadratic
import SubqBench
import Synchronization

/// `subq compare`: every attention method side by side against exact flash.
struct CompareCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "compare",
    abstract: "Compare every attention method's speed, memory and accuracy against exact flash, on built-in data or yours.",
    discussion: """
      For each problem (data kind × length × causal mode; B=1, H=8, D=64 by default) it runs exact flash, then \
      each method: median time, speedup over flash on the same inputs, GFLOP/s (exact methods), extra memory, \
      relative error against flash (Frobenius and worst row), recall of each sampled row's true top-k keys \
      (methods that select keys) and needle recall (needles data). Methods that cannot run a problem show n/a \
      with the reason. Speed-only mixers (linear attention, scans) get their own table. The default suite \
      (1K, 4K, 16K; gaussian, structured, needles; non-causal and causal) takes a few minutes on 2 cores. \
      Ctrl-C stops at once, prints and writes what finished, and exits with status 130. \
      See docs/compare.md and docs/compare-schema.md.
      """)

  @Option(help: "Methods to compare, comma-separated, or `all` (default: every registered method but naive; flash always runs as the baseline).")
  var methods: String?

  @Option(name: .customLong("param"), help: "Method parameter method.name=value (repeatable), e.g. flash.block-k=128.")
  var params: [String] = []

  @Option(help: "Sequence lengths, comma-separated (K = 1024; default 1K,4K,16K). With --data: prefix lengths of the files.")
  var lengths: String?

  @Flag(help: "Add 64K and 128K to the lengths (flash alone then takes about 40 minutes on 2 cores).")
  var full = false

  @Option(help: "Built-in data kinds, comma-separated: gaussian, structured, needles (default: all three).")
  var kinds: String?

  @Option(help: "A directory with q.npy, k.npy, v.npy (rank 2–4, as `subq attention` reads them) to use instead of built-in data.")
  var data: String?

  @Option(help: "Memory layout of the --data arrays: bhsd ([B, H, N, D]) or bshd ([B, N, H, D]).")
  var layout: AttentionLayout?

  @Option(help: "Query heads (default 8).") var heads: Int?
  @Option(name: .customLong("kv-heads"), help: "Key/value heads (default: --heads).") var kvHeads: Int?
  @Option(help: "Head dimension (default 64).") var dim: Int?

  @Flag(help: "Run only causal problems (default: non-causal and causal).") var causal = false
  @Flag(name: .customLong("non-causal"), help: "Run only non-causal problems.") var nonCausal = false

  @Option(help: "Most timed runs per measurement.") var repeats = 5
  @Option(help: "Seconds after which a measurement stops repeating (it always makes one run).") var budget = 1.0
  @Option(name: .customLong("top-k"), help: "k of the top-k key recall.") var topK = 10
  @Option(name: .customLong("sample-rows"), help: "Query rows sampled per problem for top-k recall and the Float64 check.") var sampleRows = 64
  @Option(help: "Seed of the built-in data and the sampled rows.") var seed: UInt64 = 1
  @Option(help: "Worker threads (default: all cores, or SUBQ_THREADS).") var threads: Int?
  @Option(help: "Speed-only mixers, comma-separated, or `none` (default: every registered one).") var mixers: String?

  @Option(help: "Write every figure and the run's metadata as JSON (schema subq.compare/1).") var json: String?
  @Option(help: "Write every figure as CSV, one row per measurement.") var csv: String?
  @Option(help: "Write SVG plots (time vs length, error vs speedup) into this directory.") var svg: String?
  @Option(help: "Write a self-contained HTML report (plots and tables inline).") var html: String?
  @Flag(name: .customLong("no-progress"), help: "Print no progress on stderr.") var noProgress = false

  func run() throws {
    let config = try makeConfig()
    let outputs = CompareOutputs(json: json, csv: csv, svgDirectory: svg, html: html)
    try outputs.check()

    let cancellation = CompareCancellation()
    let runner = try CompareRunner(config: config, cancellation: cancellation)
    let steps = runner.plan()
    let interactive = isatty(STDERR_FILENO) == 1
    let progress: CompareProgress? = noProgress ? nil : CompareProgress(steps: steps, interactive: interactive) { text in
      FileHandle.standardError.write(Data(text.utf8))
    }
    let finisher = CompareFinisher(recorder: runner.recorder, outputs: outputs, progress: progress)

    // Ctrl-C: stop now, write what finished, exit 130. The handler runs on its own queue, so it
    // does not wait for the measurement in progress (kernels cannot be interrupted).
    signal(SIGINT, SIG_IGN)
    let source = DispatchSource.makeSignalSource(signal: SIGINT, queue: DispatchQueue(label: "subq.compare.sigint"))
    source.setEventHandler {
      cancellation.cancel()
      finisher.finish(interrupted: true)
    }
    source.resume()

    _ = runner.run { event in progress?.handle(event) }
    finisher.finish(interrupted: cancellation.isCancelled)
  }

  /// The comparison these options describe; every option is checked here, before anything runs.
  func makeConfig() throws(SubqError) -> CompareConfig {
    let op = "compare"
    // Methods.
    var names: [String]
    let registered = AttentionMethods.all.map { $0.info.name }
    if let methods {
      let list = methods.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
      if list.isEmpty { throw .argument(op: op, name: "--methods", value: methods, reason: "empty list") }
      names = list == ["all"] ? registered : list
      for n in names where !registered.contains(n) {
        throw .argument(op: op, name: "--methods", value: n, reason: "unknown method (known: \(registered.joined(separator: ", ")))")
      }
    } else {
      names = registered.filter { $0 != "naive" }
    }
    // Parameters: method.name=value, for a selected method.
    var perMethod: [String: [String: String]] = [:]
    for item in params {
      guard let eq = item.firstIndex(of: "="), let dot = item[..<eq].firstIndex(of: "."), dot != item.startIndex else {
        throw .argument(op: op, name: "--param", value: item, reason: "expected method.name=value (e.g. flash.block-k=128)")
      }
      let method = String(item[..<dot]), name = String(item[item.index(after: dot)..<eq]), value = String(item[item.index(after: eq)...])
      let running = names.contains(method) || method == "flash"
      guard running else {
        throw .argument(op: op, name: "--param", value: item,
                        reason: registered.contains(method) ? "method \(method) is not being compared (see --methods)" : "unknown method \(method)")
      }
      perMethod[method, default: [:]][name] = value
    }
    if !names.contains("flash"), perMethod["flash"] != nil { names.insert("flash", at: 0) }
    let instances = try names.map { (n) throws(SubqError) in try AttentionMethods.make(n, parameters: MethodParameters(perMethod[n] ?? [:])) }
    var config = CompareConfig(methods: instances)

    // Problems.
    if causal && nonCausal { throw .argument(op: op, name: "--causal", value: "with --non-causal", reason: "give at most one of them") }
    config.causalModes = causal ? [true] : nonCausal ? [false] : [false, true]
    var lengthList = try lengths.map { (s) throws(SubqError) in try parseLengths(s, option: "--lengths") }
    if let data {
      for (given, name) in [(kinds != nil, "--kinds"), (heads != nil, "--heads"), (kvHeads != nil, "--kv-heads"), (dim != nil, "--dim"), (full, "--full")] where given {
        throw .argument(op: op, name: name, value: "with --data", reason: "the --data arrays set the problem; use --lengths for prefixes")
      }
      config.source = .files(try CompareFiles.load(directory: data, layout: layout ?? .bhsd))
      config.lengths = lengthList ?? []
    } else {
      if layout != nil { throw .argument(op: op, name: "--layout", value: layout!.rawValue, reason: "applies to --data only") }
      if let kinds {
        var list: [DataKind] = []
        for k in kinds.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) {
          guard let kind = DataKind(rawValue: k) else {
            throw .argument(op: op, name: "--kinds", value: k, reason: "unknown data kind (known: \(DataKind.allCases.map(\.rawValue).joined(separator: ", ")))")
          }
          if !list.contains(kind) { list.append(kind) }
        }
        config.source = .synthetic(list)
      }
      if lengthList == nil { lengthList = CompareConfig.defaultLengths }
      if full { lengthList! += CompareConfig.fullLengths.filter { !lengthList!.contains($0) } }
      config.lengths = lengthList!
      config.heads = heads ?? 8
      config.kvHeads = kvHeads ?? config.heads
      config.dim = dim ?? 64
    }
    config.repeats = repeats
    config.budgetSeconds = budget
    config.topK = topK
    config.sampleRows = sampleRows
    config.seed = seed
    if let threads { config.threads = threads }

    // Speed-only mixers.
    if let mixers {
      let list = mixers.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
      if list == ["none"] {
        config.mixers = []
      } else {
        let known = SpeedOnlyMixers.all.map(\.name)
        config.mixers = try list.map { (n) throws(SubqError) in
          guard let m = SpeedOnlyMixers.named(n) else {
            throw .argument(op: op, name: "--mixers", value: n,
                            reason: known.isEmpty ? "no speed-only mixers are registered in this build" : "unknown mixer (known: \(known.joined(separator: ", ")))")
          }
          return m
        }
      }
    }
    config.command = ["subq"] + Array(CommandLine.arguments.dropFirst())
    try config.validate()
    return config
  }
}

/// Ends a comparison exactly once, from the main thread when the run completes or from the
/// SIGINT handler: prints the tables, writes the files and exits (0, or 130 when interrupted).
final class CompareFinisher: Sendable {
  private let started = Mutex(false)
  let recorder: CompareRecorder
  let outputs: CompareOutputs
  let progress: CompareProgress?

  init(recorder: CompareRecorder, outputs: CompareOutputs, progress: CompareProgress?) {
    self.recorder = recorder
    self.outputs = outputs
    self.progress = progress
  }

  func finish(interrupted: Bool) {
    let first = started.withLock { s -> Bool in
      defer { s = true }
      return !s
    }
    guard first else {
      // The other caller is writing and will exit the process; wait for it.
      while true { Thread.sleep(forTimeInterval: 60) }
    }
    progress?.close()
    let report = recorder.snapshot(status: interrupted ? "interrupted" : "complete")
    print(CompareText.render(report))
    do {
      let written = try outputs.write(report)
      for path in written { note("wrote \(path)") }
    } catch {
      fail(error.description)
    }
    if interrupted {
      note("subq: interrupted: \(report.results.count) measurements finished and were written")
      exit(130)
    }
    exit(0)
  }
}
