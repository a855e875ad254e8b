import Dispatch
import Foundation
import SubqCore

/// Wall-clock timing of repeated runs, with the processor time they used.
public struct Timing: Sendable, Codable, Equatable {
  /// Every measured time, in seconds, in run order.
  public var samples: [Double]
  /// Processor time of the whole process (all threads) per run, in seconds, in run order. On a
  /// machine shared with other work it is steadier than wall time (it excludes time spent
  /// waiting for a core), though caches shared with other work still disturb it.
  public var cpuSamples: [Double]

  public init(samples: [Double], cpuSamples: [Double] = []) {
    self.samples = samples
    self.cpuSamples = cpuSamples
  }

  /// Median processor time per run (NaN when not measured).
  public var medianCPU: Double {
    let s = cpuSamples.sorted()
    guard !s.isEmpty else { return .nan }
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
  }

  /// Median of the samples.
  public var median: Double {
    let s = samples.sorted()
    guard !s.isEmpty else { return .nan }
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
  }
  /// Fastest sample.
  public var min: Double { samples.min() ?? .nan }

  /// Runs `body` `warmup` times untimed, then `repeats` times timed.
  public static func measure(repeats: Int, warmup: Int = 1, _ body: () throws -> Void) rethrows -> Timing {
    for _ in 0..<warmup { try body() }
    var samples: [Double] = [], cpu: [Double] = []
    for _ in 0..<max(1, repeats) {
      let c0 = processCPUSeconds()
      let t0 = DispatchTime.now().uptimeNanoseconds
      try body()
      samples.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
      cpu.append(processCPUSeconds() - c0)
    }
    return Timing(samples: samples, cpuSamples: cpu)
  }
}

/// Formats seconds as a short human string ("812 µs", "12.3 ms", "4.56 s").
public func formatSeconds(_ s: Double) -> String {
  if !s.isFinite { return "—" }
  if s < 1e-3 { return String(format: "%.0f µs", s * 1e6) }
  if s < 1 { return String(format: s < 0.1 ? "%.2f ms" : "%.1f ms", s * 1e3) }
  return String(format: "%.2f s", s)
}

/// Formats a byte count ("512 KiB", "1.5 GiB").
public func formatBytes(_ b: Double) -> String {
  if !b.isFinite { return "—" }
  let units = ["B", "KiB", "MiB", "GiB", "TiB"]
  var v = b, u = 0
  while abs(v) >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
  return u == 0 ? String(format: "%.0f B", v) : String(format: "%.1f %@", v, units[u])
}

/// An aligned plain-text table.
public struct TextTable {
  public var header: [String]
  public var rows: [[String]] = []
  /// Columns aligned to the right (numbers); the others align left.
  public var rightAligned: Set<Int>

  public init(header: [String], rightAligned: Set<Int> = []) {
    self.header = header
    self.rightAligned = rightAligned
  }

  public mutating func add(_ row: [String]) { rows.append(row) }

  public func render() -> String {
    var widths = header.map(\.count)
    for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
    func line(_ cells: [String]) -> String {
      cells.enumerated().map { i, c in
        let pad = String(repeating: " ", count: max(0, widths[i] - c.count))
        return rightAligned.contains(i) ? pad + c : c + pad
      }.joined(separator: "  ").replacingOccurrences(of: "\\s+$", with: "", options: .regularExpression)
    }
    var out = [line(header), widths.map { String(repeating: "─", count: $0) }.joined(separator: "  ")]
    out += rows.map(line)
    return out.joined(separator: "\n")
  }
}
