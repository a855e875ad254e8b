import ArgumentParser
import Foundation
import Subquadratic
import SubqBench

/// `subq bench`: time one attention method over lengths.
struct BenchCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "bench",
    abstract: "Time an attention method over sequence lengths and report GFLOP/s and memory.",
    discussion: """
      Before timing, the last rows of head 0 are checked against the Float64 reference. GFLOP/s counts \
      4·B·Hq·N²·D for non-causal attention and only the visible pairs for causal (about half). \
      Approximate methods also report their error against exact flash on the same inputs, the time of \
      that flash run and the speed-up over it (flash time / median).
      """)

  @Option(help: "Method name (see `subq methods`).") var method = "flash"
  @Option(help: "Sequence lengths, comma-separated (K = 1024).") var n = "1024,4096,16384"
  @Option(help: "Batch size.") var batch = 1
  @Option(help: "Query heads.") var heads = 8
  @Option(name: .customLong("kv-heads"), help: "Key/value heads (default: --heads).") var kvHeads: Int?
  @Option(help: "Head dimension.") var dim = 64
  @Flag(help: "Causal attention.") var causal = false
  @Option(help: "Timed runs per length.") var `repeat` = 5
  @Option(help: "Input data: gaussian, structured or needles.") var data: DataKind = .gaussian
  @Option(help: "Data seed.") var seed: UInt64 = 1
  @Option(help: "Worker threads (default: all cores).") var threads: Int?
  @Option(name: .customLong("param"), help: "Method parameter name=value (repeatable).") var params: [String] = []
  @Flag(help: "Print JSON instead of a table.") var json = false
  @Flag(help: "Time the backward pass (flash only) next to the forward; backward GFLOP/s count 2.5× the forward's FLOPs.")
  var backward = false
  @Flag(name: .customLong("vs-peak"), help: "Measure the FMA peak (all threads) around every timed run and report each run's share of it.")
  var vsPeak = false

  func run() throws {
    let lengths = try parseLengths(n, option: "--n")
    for (name, value) in [("--batch", batch), ("--heads", heads), ("--dim", dim), ("--repeat", `repeat`)] where value < 1 {
      throw SubqError.argument(op: "bench", name: name, value: "\(value)", reason: "must be at least 1")
    }
    let m = try AttentionMethods.make(method, parameters: try parseParams(params, method: method))
    var config = AttentionBench.Config(lengths: lengths)
    config.batch = batch
    config.heads = heads
    config.kvHeads = kvHeads ?? heads
    config.dim = dim
    config.causal = causal
    config.repeats = `repeat`
    config.data = data
    config.seed = seed
    if let threads { config.threads = threads }
    config.interleavedPeak = vsPeak
    if backward {
      if vsPeak { throw SubqError.unsupported(op: "bench", feature: "--vs-peak with --backward", reason: "the interleaved peak is measured for forward runs only") }
      guard let flash = m as? FlashAttention else {
        throw SubqError.unsupported(op: "bench", feature: "--backward with method \(method)", reason: "only flash has a fast backward pass")
      }
      try runBackward(BackwardBench(method: flash, config: config))
      return
    }
    let bench = AttentionBench(method: m, config: config)
    if !json {
      print(BuildInfo.summary)
      print("\(MachineInfo.cpuModel), \(MachineInfo.cores) cores, \(config.threads) threads")
      print("method \(method) \(m.parameterValues.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))"
            + "  B=\(batch) H=\(heads) Hkv=\(config.kvHeads) D=\(dim) \(causal ? "causal" : "non-causal") data=\(data.rawValue)")
    }
    let rows = try bench.run { row in
      if !json { note(String(format: "  N=%d done: %.1f ms", row.n, row.medianSeconds * 1e3)) }
    }
    if json {
      struct Report: Encodable {
        var build: String, flags: String, cpu: String, threads: Int, method: String, parameters: [String: String]
        var batch: Int, heads: Int, kvHeads: Int, dim: Int, causal: Bool, data: String
        var rows: [AttentionBench.Row]
      }
      let r = Report(build: BuildInfo.summary, flags: BuildInfo.flags, cpu: MachineInfo.cpuModel, threads: config.threads,
                     method: method, parameters: m.parameterValues, batch: batch, heads: heads, kvHeads: config.kvHeads,
                     dim: dim, causal: causal, data: data.rawValue, rows: rows)
      let enc = JSONEncoder()
      enc.outputFormatting = [.prettyPrinted, .sortedKeys]
      print(String(decoding: try enc.encode(r), as: UTF8.self))
      return
    }
    let approx = rows.contains { $0.errorVsFlash != nil }
    var table = TextTable(header: ["N", "median", "min", "CPU/run", "GFLOP/s", "peak RSS", "extra mem", "check err"]
                            + (approx ? ["err vs flash", "flash (1 run)", "speed-up"] : [])
                            + (vsPeak ? ["FMA peak", "of peak"] : []),
                          rightAligned: Set(0..<13))
    for r in rows {
      // Approximate methods do other work than exact attention's FLOPs: no rate (as in compare).
      let rate = r.errorVsFlash == nil ? String(format: "%.1f", r.gflops) : "—"
      var cells: [String] = [String(r.n), formatSeconds(r.medianSeconds), formatSeconds(r.minSeconds), formatSeconds(r.cpuSeconds),
                             rate, formatBytes(r.peakResidentBytes), r.extraBytes.map(formatBytes) ?? "—",
                             String(format: "%.1e", r.checkError)]
      if approx {
        cells.append(r.errorVsFlash.map { String(format: "%.2e", $0) } ?? "—")
        cells.append(r.flashSeconds.map(formatSeconds) ?? "—")
        cells.append(r.flashSeconds.map { String(format: "%.1f×", $0 / r.medianSeconds) } ?? "—")
      }
      if vsPeak {
        cells.append(r.peakGFlops.map { String(format: "%.1f", $0) } ?? "—")
        cells.append(r.peakFraction.map { String(format: "%.1f%%", 100 * $0) } ?? "—")
      }
      table.add(cells)
    }
    print(table.render())
  }
}

extension BenchCommand {
  /// `--backward`: forward and backward rates side by side.
  func runBackward(_ bench: BackwardBench) throws {
    let config = bench.config
    if !json {
      print(BuildInfo.summary)
      print("\(MachineInfo.cpuModel), \(MachineInfo.cores) cores, \(config.threads) threads")
      print("method flash backward \(bench.method.parameterValues.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))"
            + "  B=\(batch) H=\(heads) Hkv=\(config.kvHeads) D=\(dim) \(causal ? "causal" : "non-causal") data=\(data.rawValue)")
    }
    let rows = try bench.run { row in
      if !json { note(String(format: "  N=%d done: forward %.1f ms, backward %.1f ms", row.n, row.forwardMedianSeconds * 1e3, row.backwardMedianSeconds * 1e3)) }
    }
    if json {
      struct Report: Encodable {
        var build: String, flags: String, cpu: String, threads: Int, method: String, parameters: [String: String]
        var batch: Int, heads: Int, kvHeads: Int, dim: Int, causal: Bool, data: String
        var rows: [BackwardBench.Row]
      }
      let r = Report(build: BuildInfo.summary, flags: BuildInfo.flags, cpu: MachineInfo.cpuModel, threads: config.threads,
                     method: "flash", parameters: bench.method.parameterValues, batch: batch, heads: heads, kvHeads: config.kvHeads,
                     dim: dim, causal: causal, data: data.rawValue, rows: rows)
      let enc = JSONEncoder()
      enc.outputFormatting = [.prettyPrinted, .sortedKeys]
      print(String(decoding: try enc.encode(r), as: UTF8.self))
      return
    }
    var table = TextTable(header: ["N", "forward", "fwd GFLOP/s", "backward", "bwd min", "bwd GFLOP/s", "bwd/fwd rate", "peak RSS", "dQ check err"],
                          rightAligned: Set(0..<9))
    for r in rows {
      table.add([String(r.n), formatSeconds(r.forwardMedianSeconds), String(format: "%.1f", r.forwardGflops),
                 formatSeconds(r.backwardMedianSeconds), formatSeconds(r.backwardMinSeconds), String(format: "%.1f", r.backwardGflops),
                 String(format: "%.2f", r.rateRatio), formatBytes(r.peakResidentBytes), String(format: "%.1e", r.checkError)])
    }
    print(table.render())
  }
}
