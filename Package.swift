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
// Release builds also use -Ounchecked and exclusivity checks off in the compute targets;
// SUBQ_SAFETY_CHECKS=1 keeps both checks (to measure what they cost).
// `subq` prints the resulting flags in every benchmark report (BuildInfo).

let env = ProcessInfo.processInfo.environment
let tuning = env["SUBQ_TARGET_CPU"].flatMap { $0.isEmpty ? nil : $0 } ?? "default"

/// AVX-512 F and DQ (every AVX-512 CPU but Xeon Phi; the kernels use DQ's vreduceps).
func hostHasAVX512() -> Bool {
  guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return false }
  let flags = info.split(separator: "\n").first { $0.hasPrefix("flags") }?.split(separator: " ") ?? []
  return flags.contains("avx512f") && flags.contains("avx512dq")
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

let keepChecks = env["SUBQ_SAFETY_CHECKS"] == "1"
let releaseFlags: [String] = tuning == "none" || keepChecks ? [] : ["-Ounchecked", "-enforce-exclusivity=unchecked"]
if keepChecks { computeDefines.append(.define("SUBQ_SAFETY_CHECKS")) }

/// Settings for every target that does arithmetic.
let compute: [SwiftSetting] =
  computeDefines
  + (computeFlags.isEmpty ? [] : [.unsafeFlags(computeFlags)])
  + (releaseFlags.isEmpty ? [] : [.unsafeFlags(releaseFlags, .when(configuration: .release))])

// MARK: - MPI (optional)
//
// Sequence-parallel attention across processes (`subq ring`, module SubqMPI) runs on Open MPI.
// Everything else builds and tests without it. SUBQ_MPI picks:
//
//   (unset)   build the MPI targets when Open MPI's headers are installed (Debian/Ubuntu:
//             `apt-get install openmpi-bin libopenmpi-dev`; Homebrew: `brew install open-mpi`)
//   "1"       build them (pkg-config must find `ompi`)
//   "0"       never build them; `subq ring` then says MPI is missing
//
// SwiftPM caches this manifest: after installing or removing Open MPI, run `swift package reset`
// (or set SUBQ_MPI) so the change is seen.
func openMPIInstalled() -> Bool {
  let headers = [
    "/usr/lib/x86_64-linux-gnu/openmpi/include/mpi.h", "/usr/lib/aarch64-linux-gnu/openmpi/include/mpi.h",
    "/usr/include/openmpi-x86_64/mpi.h", "/usr/include/openmpi-aarch64/mpi.h",
    "/opt/homebrew/opt/open-mpi/include/mpi.h", "/usr/local/opt/open-mpi/include/mpi.h",
  ]
  return headers.contains { FileManager.default.fileExists(atPath: $0) }
}
let useMPI: Bool = {
  switch env["SUBQ_MPI"] {
  case "1"?: return true
  case "0"?: return false
  default: return openMPIInstalled()
  }
}()
/// Compiled into `subq` and the ring tests when the MPI targets are built.
let mpiDefine: [SwiftSetting] = useMPI ? [.define("SUBQ_MPI")] : []

let package = Package(
  name: "Subquadratic",
  platforms: [.macOS(.v15)],
  products: [
    .library(name: "Subquadratic", targets: ["Subquadratic"]),
    .executable(name: "subq", targets: ["subq"]),
  ] + (useMPI ? [.library(name: "SubqMPI", targets: ["SubqMPI"])] : []),
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0")
  ],
  targets: [
    // MARK: - Public API
    /// Tensors, errors, threading, random numbers, .npy files.
    .target(name: "SubqCore", swiftSettings: compute),
    /// Header-only C helpers for what Swift cannot express (a prefetch hint).
    .target(name: "SubqCShims"),
    /// SIMD microkernels shared by every method (`package` access only).
    .target(name: "SubqKernels", dependencies: ["SubqCore", "SubqCShims"], swiftSettings: compute),
    /// Exact attention: the Float64 reference and FlashAttention-2.
    .target(name: "SubqAttention", dependencies: ["SubqCore", "SubqKernels"], swiftSettings: compute),
    /// Approximate attention by hashing, sampling and hierarchical pruning: HyperAttention, HiP, ProbSparse.
    .target(name: "SubqApproximate", dependencies: ["SubqCore", "SubqKernels", "SubqAttention"], swiftSettings: compute),
    /// Linear-time mixers: linear attention, TransNormer, LinFusion, PoNet, Monarch Mixer; FFT.
    .target(name: "SubqLinear", dependencies: ["SubqCore", "SubqKernels", "SubqAttention"], swiftSettings: compute),
    /// The umbrella module: re-exports every family and holds the method registry.
    .target(name: "Subquadratic", dependencies: ["SubqCore", "SubqAttention", "SubqApproximate", "SubqRing", "SubqLinear", "SubqStateSpace", "SubqDecoding", "SubqSparse", "SubqLLM", "SubqKVSelection"], swiftSettings: compute),
    /// Language models on the library: GGUF files, quantized products, BPE tokenizer, LLaMA
    /// forward pass with pluggable attention, sampling, perplexity and needle evaluation.
    .target(name: "SubqLLM", dependencies: ["SubqCore", "SubqKernels", "SubqAttention", "SubqDecoding"], swiftSettings: compute),
    /// Sequence-parallel exact attention (ring, tokenring, heads) over any `Communicator`; no MPI needed.
    .target(name: "SubqRing", dependencies: ["SubqCore", "SubqKernels", "SubqAttention"], swiftSettings: compute),
    /// The AVX-512 block of the selective scan in C intrinsics (header-only, inlined into Swift).
    .target(name: "SubqScanC"),
    /// State-space scans: Mamba selective scan, Mamba-2 SSD, MambaMixer, Titans memory.
    .target(name: "SubqStateSpace", dependencies: ["SubqCore", "SubqKernels", "SubqAttention", "SubqScanC"], swiftSettings: compute),
    /// Decoding: split-KV (Flash-Decoding) attention and the paged KV cache.
    .target(name: "SubqDecoding", dependencies: ["SubqCore", "SubqKernels", "SubqAttention"], swiftSettings: compute),
    /// Long-context decoding that attends only to selected cached tokens: TokenSelect and
    /// RetrievalAttention (with its inner-product graph index).
    .target(name: "SubqKVSelection", dependencies: ["SubqCore", "SubqKernels", "SubqAttention", "SubqDecoding"], swiftSettings: compute),
    /// Local and structured sparse attention: neighborhood attention, attention sinks, Combiner.
    .target(name: "SubqSparse", dependencies: ["SubqCore", "SubqCShims", "SubqKernels", "SubqAttention"], swiftSettings: compute),

    // MARK: - Tools
    /// Benchmark harness, machine limits and the comparison reports behind `subq`.
    .target(name: "SubqBench", dependencies: ["Subquadratic"], swiftSettings: compute),
    .executableTarget(
      name: "subq",
      dependencies: ["Subquadratic", "SubqBench", "SubqLLM", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        + (useMPI ? ["SubqMPI"] : []),
      swiftSettings: compute + mpiDefine),

    // MARK: - Tests
    .target(name: "SubqTestSupport", dependencies: ["Subquadratic"], path: "Tests/SubqTestSupport", swiftSettings: compute),
    .testTarget(name: "SubqCoreTests", dependencies: ["SubqCore", "SubqTestSupport"], swiftSettings: compute),
    .testTarget(name: "SubqKernelsTests", dependencies: ["SubqKernels", "SubqTestSupport"], swiftSettings: compute),
    .testTarget(name: "SubqAttentionTests", dependencies: ["SubqAttention", "SubqTestSupport"], swiftSettings: compute),
    .testTarget(name: "SubqApproximateTests", dependencies: ["SubqApproximate", "SubqBench", "SubqTestSupport"], swiftSettings: compute),
    .testTarget(name: "SubqLinearTests", dependencies: ["SubqLinear", "SubqKernels", "SubqTestSupport"], swiftSettings: compute),
    .testTarget(name: "SubqStateSpaceTests", dependencies: ["SubqStateSpace", "SubqTestSupport"], swiftSettings: compute),
    .testTarget(name: "SubqDecodingTests", dependencies: ["SubqDecoding", "SubqTestSupport"], swiftSettings: compute),
    .testTarget(name: "SubqKVSelectionTests", dependencies: ["SubqKVSelection", "subq", "SubqTestSupport"], swiftSettings: compute),
    .testTarget(name: "SubqSparseTests", dependencies: ["SubqSparse", "SubqTestSupport", "subq"], swiftSettings: compute),
    .testTarget(name: "SubqCLITests", dependencies: ["subq", "SubqTestSupport"], swiftSettings: compute),
    .testTarget(name: "SubqRingTests", dependencies: ["SubqRing", "subq", "SubqTestSupport"], swiftSettings: compute + mpiDefine),
    /// `subq compare`: metrics, runner, report schema, SVG and HTML.
    .testTarget(name: "SubqCompareTests", dependencies: ["SubqBench", "SubqTestSupport"], swiftSettings: compute),
    .testTarget(name: "SubqLLMTests", dependencies: ["SubqLLM", "subq", "SubqTestSupport"], swiftSettings: compute),
    /// README.md's Swift example, compiled against the umbrella module.
    .testTarget(name: "SubquadraticTests", dependencies: ["Subquadratic"], swiftSettings: compute),
  ]
    + (useMPI
      ? [
        // MARK: - MPI (only when Open MPI is installed; see above)
        /// Open MPI's C API (system library, pkg-config `ompi`).
        .systemLibrary(name: "CMPI", path: "Sources/CMPI", pkgConfig: "ompi",
                       providers: [.apt(["libopenmpi-dev", "openmpi-bin"]), .brew(["open-mpi"])]),
        /// `Communicator` over MPI, and the MPI process lifetime.
        .target(name: "SubqMPI", dependencies: ["CMPI", "SubqRing", "SubqCore"], swiftSettings: compute),
      ] : []),
  swiftLanguageModes: [.v6]
)
