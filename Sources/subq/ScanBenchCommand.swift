import ArgumentParser
import Foundation
import Subquadratic
import SubqBench

/// `subq scan-bench`: times the state-space mixers and reports them next to causal flash.
struct ScanBenchCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "scan-bench",
    abstract: "Time the state-space scans (selective-scan, ssd, titans-memory) and causal flash attention at the same lengths.",
    discussion: """
      Each mixer is first checked on a slice of its inputs against the Float64 reference, then timed. GB/s counts \
      the bytes a pass must move at least (every input read once, every output written once) and is compared with \
      the copy bandwidth `subq peak` measures (bytes read + written). The selective scan's default shape is the one \
      of Mamba at d_model 768 (D = 1536 channels, N = 16); --channels and --state change it. Causal flash runs at the \
      same length with --flash-heads × --flash-dim (default 12 × 64, the attention of a d_model 768 model); \
      --no-flash skips it.
      """)

  @Option(help: "Sequence lengths, comma-separated (K = 1024).") var n = "65536"
  @Option(help: "Mixers, comma-separated: selective-scan, ssd, titans-memory.") var mixers = "selective-scan"
  @Option(help: "Selective scan: channels D.") var channels = 1536
  @Option(help: "Selective scan: state size N.") var state = 16
  @Option(help: "Timed runs per length.") var `repeat` = 3
  @Option(help: "Data seed.") var seed: UInt64 = 1
  @Option(help: "Worker threads (default: all cores).") var threads: Int?
  @Flag(name: .customLong("no-flash"), help: "Do not time causal flash attention.") var noFlash = false
  @Option(name: .customLong("flash-heads"), help: "Heads of the causal flash run.") var flashHeads = 12
  @Option(name: .customLong("flash-dim"), help: "Head dimension of the causal flash run.") var flashDim = 64
  @Flag(help: "Print JSON instead of a table.") var json = false

  struct Row: Codable {
    var mixer: String, shape: String, n: Int
    var medianSeconds: Double, minSeconds: Double
    var gbPerSecond: Double?, fractionOfCopyBandwidth: Double?, gflops: Double
    var checkError: Double?
    /// Process CPU time per run (all threads), a load-independent companion to the wall time.
    var cpuSecondsPerRun: Double?
  }

  func run() throws {
    let lengths = try parseLengths(n, option: "--n")
    for (name, value) in [("--repeat", `repeat`), ("--channels", channels), ("--state", state), ("--flash-heads", flashHeads), ("--flash-dim", flashDim)] where value < 1 {
      throw SubqError.argument(op: "scan-bench", name: name, value: "\(value)", reason: "must be at least 1")
    }
    let t = threads ?? Parallel.defaultThreads
    if t < 1 { throw SubqError.argument(op: "scan-bench", name: "--threads", value: "\(t)", reason: "must be at least 1") }
    var benches: [ScanBenchmark] = []
    for name in mixers.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) {
      if name == "selective-scan" {
        benches.append(StateSpaceBenchmarks.selectiveScan(channels: channels, state: state))
      } else if let b = StateSpaceBenchmarks.named(name) {
        benches.append(b)
      } else {
        throw SubqError.argument(op: "scan-bench", name: "--mixers", value: name,
                                 reason: "unknown mixer (known: \(StateSpaceBenchmarks.all.map(\.name).joined(separator: ", ")))")
      }
    }
    if !json {
      print(BuildInfo.summary)
      print("\(MachineInfo.cpuModel), \(MachineInfo.cores) cores, \(t) threads")
    }
    let peak = MachinePeak.measure(threads: t)
    if !json { print(String(format: "copy bandwidth %.1f GB/s, fp32 FMA %.1f GFLOP/s (%d threads)", peak.copyBandwidth, peak.flopsAllThreads, t)) }
    var rows: [Row] = []
    for length in lengths {
      for b in benches {
        let prepared = try b.prepare(length, seed &+ UInt64(length), t)
        let err = try prepared.check()
        if !(err <= 1e-4) {
          throw SubqError.argument(op: "scan-bench", name: b.name, value: String(format: "%.2e", err),
                                   reason: "relative error against the Float64 reference is too large; not timing a wrong result")
        }
        try prepared.run()  // warm-up
        var failure: SubqError? = nil
        let cpu0 = processCPUSeconds()
        let timing = Timing.measure(repeats: `repeat`, warmup: 0) {
          do { try prepared.run() } catch { failure = error as? SubqError }
        }
        let cpu = (processCPUSeconds() - cpu0) / Double(timing.samples.count)
        if let failure { throw failure }
        let gbs = prepared.bytes / timing.median / 1e9
        rows.append(Row(mixer: b.name, shape: prepared.shape, n: length, medianSeconds: timing.median, minSeconds: timing.min,
                        gbPerSecond: gbs, fractionOfCopyBandwidth: gbs / peak.copyBandwidth,
                        gflops: prepared.flops / timing.median / 1e9, checkError: err, cpuSecondsPerRun: cpu))
        if !json { note(String(format: "  %@ N=%d: %.1f ms", b.name, length, timing.median * 1e3)) }
      }
      if !noFlash {
        var config = AttentionBench.Config(lengths: [length])
        config.heads = flashHeads
        config.kvHeads = flashHeads
        config.dim = flashDim
        config.causal = true
        config.repeats = `repeat`
        config.seed = seed
        config.threads = t
        let r = try AttentionBench(method: try FlashAttention(), config: config).run()[0]
        rows.append(Row(mixer: "flash (causal)", shape: "B=1 H=\(flashHeads) D=\(flashDim) L=\(length)", n: length,
                        medianSeconds: r.medianSeconds, minSeconds: r.minSeconds, gbPerSecond: nil, fractionOfCopyBandwidth: nil,
                        gflops: r.gflops, checkError: r.checkError, cpuSecondsPerRun: nil))
        if !json { note(String(format: "  flash N=%d: %.1f ms", length, r.medianSeconds * 1e3)) }
      }
    }
    if json {
      struct Report: Encodable {
        var build: String, flags: String, cpu: String, threads: Int, copyBandwidth: Double, flopsAllThreads: Double
        var rows: [Row]
      }
      let enc = JSONEncoder()
      enc.outputFormatting = [.prettyPrinted, .sortedKeys]
      print(String(decoding: try enc.encode(Report(build: BuildInfo.summary, flags: BuildInfo.flags, cpu: MachineInfo.cpuModel, threads: t,
                                                   copyBandwidth: peak.copyBandwidth, flopsAllThreads: peak.flopsAllThreads, rows: rows)), as: UTF8.self))
      return
    }
    var table = TextTable(header: ["mixer", "shape", "median", "min", "CPU/run", "GB/s", "% of copy", "GFLOP/s", "check err"], rightAligned: Set(2..<9))
    for r in rows {
      table.add([r.mixer, r.shape, formatSeconds(r.medianSeconds), formatSeconds(r.minSeconds), r.cpuSecondsPerRun.map(formatSeconds) ?? "—",
                 r.gbPerSecond.map { String(format: "%.1f", $0) } ?? "—",
                 r.fractionOfCopyBandwidth.map { String(format: "%.0f%%", $0 * 100) } ?? "—",
                 String(format: "%.1f", r.gflops), r.checkError.map { String(format: "%.1e", $0) } ?? "—"])
    }
    print(table.render())
    print("CPU/run: process CPU time per timed run over all threads (wall time × threads on an idle machine).")
  }
}
