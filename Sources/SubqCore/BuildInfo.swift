import Foundation

/// How this copy of Subquadratic was built, for benchmark reports.
public enum BuildInfo {
  /// The library version.
  public static let version = "0.1.0"

  /// Whether the build is optimized.
  public static var configuration: String {
    #if DEBUG
    return "debug"
    #else
    return "release"
    #endif
  }

  /// The code-generation tuning chosen through `SUBQ_TARGET_CPU` (see Package.swift).
  public static var tuning: String {
    #if SUBQ_TUNE_NATIVE
    return "native"
    #elseif SUBQ_TUNE_V4
    return "x86-64-v4"
    #elseif SUBQ_TUNE_V3
    return "x86-64-v3"
    #elseif SUBQ_TUNE_NONE
    return "none"
    #else
    return "default"
    #endif
  }

  /// The compiler flags the compute targets were built with.
  public static var flags: String {
    var f: [String] = []
    #if DEBUG
    f.append("-Onone")
    #else
    #if SUBQ_TUNE_NONE || SUBQ_SAFETY_CHECKS
    f.append("-O")
    #else
    f.append("-Ounchecked -enforce-exclusivity=unchecked")
    #endif
    #endif
    #if SUBQ_TUNE_NATIVE
    #if arch(x86_64)
    f.append("-Xcc -march=native")
    #else
    f.append("-Xcc -mcpu=native")
    #endif
    #elseif SUBQ_TUNE_V4
    f.append("-Xcc -march=x86-64-v4")
    #elseif SUBQ_TUNE_V3
    f.append("-Xcc -march=x86-64-v3")
    #endif
    return f.joined(separator: " ")
  }

  /// The SIMD width the kernels were compiled for.
  public static var simd: String {
    #if SUBQ_AVX512
    return "AVX-512 (16 floats per vector)"
    #elseif arch(x86_64) && SUBQ_FMA
    return "AVX2+FMA (8 floats per vector)"
    #elseif arch(arm64)
    return "NEON (4 floats per vector)"
    #else
    return "SSE2, no FMA (slow: set SUBQ_TARGET_CPU)"
    #endif
  }

  /// A one-line summary: version, configuration, flags, SIMD.
  public static var summary: String {
    "subquadratic \(version) \(configuration) [\(flags)] \(simd)"
  }
}

/// Facts about the machine, for reports.
public enum MachineInfo {
  /// The CPU model name, from /proc/cpuinfo on Linux.
  public static var cpuModel: String {
    if let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
       let line = info.split(separator: "\n").first(where: { $0.hasPrefix("model name") }),
       let colon = line.firstIndex(of: ":") {
      return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
    }
    #if arch(arm64)
    return "arm64"
    #else
    return "unknown CPU"
    #endif
  }

  /// Active processor count.
  public static var cores: Int { ProcessInfo.processInfo.activeProcessorCount }

  /// Host name.
  public static var host: String { ProcessInfo.processInfo.hostName }

  /// Peak resident set size of this process so far, in bytes (VmHWM on Linux).
  public static func peakResidentBytes() -> Int {
    residentField("VmHWM:")
  }

  /// Current resident set size of this process, in bytes (VmRSS on Linux).
  public static func residentBytes() -> Int {
    residentField("VmRSS:")
  }

  private static func residentField(_ key: String) -> Int {
    guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
          let line = s.split(separator: "\n").first(where: { $0.hasPrefix(key) }) else { return 0 }
    let kb = line.split(separator: " ").compactMap { Int($0) }.first ?? 0
    return kb * 1024
  }

  /// Resets the peak resident set size to the current value (Linux ≥ 4.0: writing 5 to
  /// /proc/self/clear_refs). Returns false when the kernel refuses.
  @discardableResult
  public static func resetPeakResident() -> Bool {
    guard let h = FileHandle(forWritingAtPath: "/proc/self/clear_refs") else { return false }
    defer { try? h.close() }
    do { try h.write(contentsOf: Data("5".utf8)) } catch { return false }
    return true
  }
}
