import ArgumentParser
import Foundation
import Subquadratic
import SubqBench

/// `subq bench-sparse`: neighborhood attention against flash, and how neighborhood, sinks and
/// Combiner scale with N.
struct SparseBenchCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "bench-sparse",
    abstract: "Benchmark neighborhood attention against flash, and time neighborhood, sinks and Combiner over N.",
    discussion: """
      Part 1 runs neighborhood attention on a --grid with a --kernel window and flash on the same inputs; \
      neighborhood's GFLOP/s count only the attended pairs (4·D FLOPs each), flash's count every pair. \
      They alternate in --flash-repeat rounds (one flash run, then --repeat neighborhood runs), and the \
      reported share is the median of the rounds' shares, so a machine that drifts in speed between \
      the two measurements skews it less. \
      Part 2 times each method at every --n (neighborhood on a square grid, or N/128 × 128) and prints the \
      growth factor from one length to the next (4.0 for linear scaling when lengths grow 4×). \
      Pattern methods are checked against the Float64 reference over their own keys before timing.
      """)

  @Option(help: "Sequence lengths of the scaling part, comma-separated (K = 1024).") var n = "4K,16K,64K"
  @Option(help: "Heads (query and key/value).") var heads = 4
  @Option(help: "Head dimension.") var dim = 64
  @Option(help: "Grid of the flash comparison, e.g. 128x128.") var grid = "128x128"
  @Option(help: "Neighborhood window per axis.") var kernel = 7
  @Option(help: "Attention sinks S.") var sinks = 4
  @Option(help: "Sinks recent window W.") var window = 1024
  @Option(help: "Timed runs per measurement.") var `repeat` = 3
  @Option(name: .customLong("flash-repeat"), help: "Rounds of the flash comparison: one timed flash run (slow) and --repeat neighborhood runs each.")
  var flashRepeat = SparseBench.Config().flashRepeats
  @Option(help: "Worker threads (default: all cores).") var threads: Int?
  @Flag(name: .customLong("skip-flash"), help: "Only the scaling part.") var skipFlash = false
  @Flag(help: "Print JSON instead of tables.") var json = false

  func run() throws {
    var c = SparseBench.Config()
    c.lengths = try parseLengths(n, option: "--n")
    for (name, value) in [("--heads", heads), ("--dim", dim), ("--kernel", kernel), ("--window", window), ("--repeat", `repeat`),
                          ("--flash-repeat", flashRepeat)] where value < 1 {
      throw SubqError.argument(op: "bench-sparse", name: name, value: "\(value)", reason: "must be at least 1")
    }
    if sinks < 0 { throw SubqError.argument(op: "bench-sparse", name: "--sinks", value: "\(sinks)", reason: "must be ≥ 0") }
    let g = grid.lowercased().split(separator: "x").compactMap { Int($0) }
    guard g.count == 2, g.allSatisfy({ $0 >= kernel }) else {
      throw SubqError.argument(op: "bench-sparse", name: "--grid", value: grid, reason: "expected AxB with both ≥ --kernel, e.g. 128x128")
    }
    c.heads = heads
    c.dim = dim
    c.grid = g
    c.kernel = kernel
    c.sinks = sinks
    c.window = window
    c.repeats = `repeat`
    c.flashRepeats = flashRepeat
    if let threads {
      guard threads >= 1 else { throw SubqError.argument(op: "bench-sparse", name: "--threads", value: "\(threads)", reason: "must be at least 1") }
      c.threads = threads
    }
    let bench = SparseBench(config: c)
    if !json {
      print(BuildInfo.summary)
      print("\(MachineInfo.cpuModel), \(MachineInfo.cores) cores, \(c.threads) threads; B=1 H=\(heads) D=\(dim) gaussian data")
    }
    var comparison: SparseBench.Comparison? = nil
    if !skipFlash {
      if !json { note("neighborhood \(grid) kernel \(kernel) and flash on the same inputs…") }
      let r = try bench.compare()
      comparison = r
      if !json {
        print()
        print("neighborhood \(g[0])×\(g[1]), kernel \(kernel)×\(kernel), against flash (N=\(r.n)):")
        var t = TextTable(header: ["method", "median", "GFLOP/s", "pairs counted", "check err"], rightAligned: [1, 2, 4])
        t.add(["neighborhood", formatSeconds(r.neighborhoodSeconds), String(format: "%.1f", r.neighborhoodGflops), "attended",
               String(format: "%.1e", r.checkError)])
        t.add(["flash", formatSeconds(r.flashSeconds), String(format: "%.1f", r.flashGflops), "all", "—"])
        print(t.render())
        let rounds = r.roundRatios.map { String(format: "%.0f%%", $0 * 100) }.joined(separator: ", ")
        print(String(format: "neighborhood runs at %.0f%% of flash's GFLOP/s", r.ratio * 100)
          + (r.roundRatios.count > 1 ? " (median of \(r.roundRatios.count) alternating rounds: \(rounds))" : ""))
      }
    }
    let rows = try bench.scaling { row in
      if !json { note(String(format: "  %@ N=%d: %@", row.method, row.n, formatSeconds(row.medianSeconds))) }
    }
    if json {
      struct Report: Encodable {
        var build: String, cpu: String, threads: Int, heads: Int, dim: Int
        var comparison: SparseBench.Comparison?
        var scaling: [SparseBench.ScalingRow]
      }
      let enc = JSONEncoder()
      enc.outputFormatting = [.prettyPrinted, .sortedKeys]
      print(String(decoding: try enc.encode(Report(build: BuildInfo.summary, cpu: MachineInfo.cpuModel, threads: c.threads, heads: heads,
                                                   dim: dim, comparison: comparison, scaling: rows)), as: UTF8.self))
      return
    }
    print()
    print("time against N (growth = time ÷ time at the previous N):")
    var t = TextTable(header: ["method", "parameters", "N", "median", "min", "growth", "check err"], rightAligned: [2, 3, 4, 5, 6])
    for r in rows {
      t.add([r.method, r.parameters, String(r.n), formatSeconds(r.medianSeconds), formatSeconds(r.minSeconds),
             r.growth.map { String(format: "%.2f×", $0) } ?? "—", r.checkError.map { String(format: "%.1e", $0) } ?? "—"])
    }
    print(t.render())
  }
}
