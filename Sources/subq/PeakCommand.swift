import ArgumentParser
import Foundation
import Subquadratic
import SubqBench

/// `subq peak`: this machine's fp32 FMA rate and memory bandwidth.
struct PeakCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "peak", abstract: "Measure this machine's fp32 FMA rate (one thread, all threads) and memory bandwidth.")

  @Option(help: "Threads for the all-thread figures (default: all cores).") var threads: Int?
  @Option(help: "Also run the all-thread FMA loop for this many seconds in 0.1 s slices and report the rate it holds.")
  var sustain: Double?
  @Flag(help: "Print JSON instead of a table.") var json = false

  func run() throws {
    let t = threads ?? Parallel.defaultThreads
    if t < 1 { throw SubqError.argument(op: "peak", name: "--threads", value: "\(t)", reason: "must be at least 1") }
    if let d = sustain, !(d >= 0.1 && d <= 600) {
      throw SubqError.argument(op: "peak", name: "--sustain", value: "\(d)", reason: "must be 0.1…600 seconds")
    }
    var p = MachinePeak.measure(threads: t)
    if let d = sustain { p.sustained = MachinePeak.measureSustained(threads: t, seconds: d) }
    if json {
      let enc = JSONEncoder()
      enc.outputFormatting = [.prettyPrinted, .sortedKeys]
      print(String(decoding: try enc.encode(p), as: UTF8.self))
      return
    }
    print(BuildInfo.summary)
    print("\(MachineInfo.cpuModel), \(MachineInfo.cores) cores")
    print(String(format: "fp32 FMA, 1 thread:   %7.1f GFLOP/s", p.flopsOneThread))
    print(String(format: "fp32 FMA, %d threads:  %7.1f GFLOP/s", p.threads, p.flopsAllThreads))
    print(String(format: "memory copy, %d threads: %5.1f GB/s (bytes read + written)", p.threads, p.copyBandwidth))
    if let s = p.sustained {
      let sorted = s.slices.sorted()
      print(String(format: "fp32 FMA, %d threads, held for %.1f s (%d slices): median %.1f, min %.1f, max %.1f GFLOP/s",
                   p.threads, s.seconds, s.slices.count, s.median, sorted.first!, sorted.last!))
    }
  }
}
