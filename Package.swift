// swift-tools-version:6.0
// Subquadratic: fast attention and sequence mixers for long sequences on CPUs.
import Foundation
import PackageDescription

// MARK: - Build tuning
//
// Numeric Swift needs a target CPU: without one the compiler emits SSE2 code and turns every
// `addingProduct` into a per-lane `fmaf` call (about 1 GFLOP/s instead of 100+). The environment
// variable SUBQ_TARGET_CPU picks the code generation for the whole package:
//
//   (unset) / "default"  x86-64: AVX2 + FMA + F16C (`-march=x86-64-v3`), runs on any x86-64 CPU
//                        from 2015 on. arm64: the baseline (NEON and FMA are always there).
//   "native"             tune for the build machine (`-march=native`); AVX-512 kernels when the
//                        machine has AVX-512F. The binary may not run on other CPUs.
//   "x86-64-v4"          AVX-512 (Skylake-X, Zen 4 and later), portable across such machines.
//   "none"               no CPU flags and no unsafe flags at all: the slow but universal build a
//                        package that depends on Subquadratic by version gets (SwiftPM refuses
//                        unsafe flags in such dependencies).
//
// Release builds also use -Ounchecked and exclusivity checks off in the compute targets.
// `subq` prints the resulting flags in every benchmark report (BuildInfo).

let env = ProcessInfo.processInfo.environment
let tuning = env["SUBQ_TARGET_CPU"].flatMap { $0.isEmpty ? nil : $0 } ?? "default"

func hostHasAVX512() -> Bool {
  guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return false }
  return info.split(separator: "\n").first { $0.hasPrefix("flags") }?
    .split(separator: " ").contains("avx512f") ?? false
}

var computeFlags: [String] = []
var computeDefines: [SwiftSetting] = []
#if arch(x86_64)
switch tuning {
case "none":
  break
case "native":
  computeFlags = ["-Xcc", "-march=native"]
  computeDefines = [.define("SUBQ_FMA"), .define("SUBQ_TUNE_NATIVE")]
  if hostHasAVX512() { computeDefines.append(.define("SUBQ_AVX512")) }
case "x86-64-v4":
  computeFlags = ["-Xcc", "-march=x86-64-v4"]
  computeDefines = [.define("SUBQ_FMA"), .define("SUBQ_AVX512"), .define("SUBQ_TUNE_V4")]
default:
  computeFlags = ["-Xcc", "-march=x86-64-v3"]
  computeDefines = [.define("SUBQ_FMA"), .define("SUBQ_TUNE_V3")]
}
#elseif arch(arm64)
if tuning == "native" {
  computeFlags = ["-Xcc", "-mcpu=native"]
  computeDefines = [.define("SUBQ_TUNE_NATIVE")]
}
computeDefines.append(.define("SUBQ_FMA"))
#endif
if tuning == "none" { computeDefines = [.define("SUBQ_TUNE_NONE")] }

let releaseFlags: [String] = tuning == "none" ? [] : ["-Ounchecked", "-enforce-exclusivity=unchecked"]

/// Settings for every target that does arithmetic.
let compute: [SwiftSetting] =
  computeDefines
  + (computeFlags.isEmpty ? [] : [.unsafeFlags(computeFlags)])
  + (releaseFlags.isEmpty ? [] : [.unsafeFlags(releaseFlags, .when(configuration: .release))])

let package = Package(
  name: "Subquadratic",
  platforms: [.macOS(.v15)],
  products: [
    .library(name: "Subquadratic", targets: ["Subquadratic"]),
    .executable(name: "subq", targets: ["subq"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0")
  ],
  targets: [
    // MARK: - Public API
    /// Tensors, errors, threading, random numbers, .npy files.
    .target(name: "SubqCore", swiftSettings: compute),
    /// SIMD microkernels shared by every method (`package` access only).
    .target(name: "SubqKernels", dependencies: ["SubqCore"], swiftSettings: compute),
    /// Exact attention: the Float64 reference and FlashAttention-2.
    .target(name: "SubqAttention", dependencies: ["SubqCore", "SubqKernels"], swiftSettings: compute),
    /// A software prefetch hint for kernels that read rows at random (Swift has none).
    .target(name: "SubqPrefetch"),
    /// Approximate attention by hashing, sampling and hierarchical pruning: HyperAttention, HiP, ProbSparse.
    .target(name: "SubqApproximate", dependencies: ["SubqCore", "SubqKernels", "SubqAttention", "SubqPrefetch"], swiftSettings: compute),
    /// The umbrella module: re-exports every family and holds the method registry.
    .target(name: "Subquadratic", dependencies: ["SubqCore", "SubqAttention", "SubqApproximate"], swiftSettings: compute),

    // MARK: - Tools
    /// Benchmark harness, machine limits and the comparison reports behind `subq`.
    .target(name: "SubqBench", dependencies: ["Subquadratic"], swiftSettings: compute),
    .executableTarget(
      name: "subq",
      dependencies: ["Subquadratic", "SubqBench", .product(name: "ArgumentParser", package: "swift-argument-parser")],
      swiftSettings: compute),

    // MARK: - Tests
    .target(name: "SubqTestSupport", dependencies: ["Subquadratic"], path: "Tests/SubqTestSupport", swiftSettings: compute),
    .testTarget(name: "SubqCoreTests", dependencies: ["SubqCore", "SubqTestSupport"], swiftSettings: compute),
    .testTarget(name: "SubqKernelsTests", dependencies: ["SubqKernels", "SubqTestSupport"], swiftSettings: compute),
    .testTarget(name: "SubqAttentionTests", dependencies: ["SubqAttention", "SubqTestSupport"], swiftSettings: compute),
    .testTarget(name: "SubqApproximateTests", dependencies: ["SubqApproximate", "SubqBench", "SubqTestSupport"], swiftSettings: compute),
    .testTarget(name: "SubqCLITests", dependencies: ["subq", "SubqTestSupport"], swiftSettings: compute),
  ],
  swiftLanguageModes: [.v6]
)
