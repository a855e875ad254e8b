import SubqCore
import SubqLinear
import SubqStateSpace

/// A linear-time mixer from SubqLinear, timed at the comparison's heads and head dimension
/// (sequence mixers on X get the model width H·D), with random weights.
struct LinearFamilyMixer: SpeedOnlyMixer {
  let type: any SequenceMixer.Type
  var name: String { type.info.name }
  var summary: String { type.info.summary }
  var complexity: String { type.info.complexity }
  /// Causal when the mixer has a causal form (what a language model uses), else non-causal.
  var isCausal: Bool { type.info.supportsCausal }

  func prepare(length: Int, heads: Int, dim: Int, seed: UInt64, threads: Int) throws(SubqError) -> SpeedOnlyWorkload {
    let mixer = try type.init(parameters: MixerParameters())
    let shape = MixerBenchShape(batch: 1, heads: heads, length: length, headDim: dim, causal: isCausal, threads: threads)
    let bench = try mixer.benchmark(shape, seed: seed)
    return SpeedOnlyWorkload(flops: bench.flops, outputBytes: Double(length * heads * dim * 4), run: bench.run)
  }
}

/// A state-space scan from SubqStateSpace, sized from the comparison's width: the selective scan
/// with H·D channels and state 16, SSD with H heads of width D and state 64, the Titans memory at
/// its own width. Scans are causal.
struct ScanFamilyMixer: SpeedOnlyMixer {
  let name: String
  let make: @Sendable (_ heads: Int, _ dim: Int) -> ScanBenchmark
  var summary: String { make(8, 64).summary }
  var complexity: String { make(8, 64).complexity }
  var isCausal: Bool { true }

  func prepare(length: Int, heads: Int, dim: Int, seed: UInt64, threads: Int) throws(SubqError) -> SpeedOnlyWorkload {
    let run = try make(heads, dim).prepare(length, seed, threads)
    return SpeedOnlyWorkload(flops: run.flops, outputBytes: 0, run: run.run)
  }
}

extension SpeedOnlyMixers {
  /// The linear mixers and state-space scans, in registry order.
  static let families: [any SpeedOnlyMixer] =
    SequenceMixers.all.map { LinearFamilyMixer(type: $0) } + [
      ScanFamilyMixer(name: "selective-scan") { h, d in StateSpaceBenchmarks.selectiveScan(channels: h * d, state: 16) },
      ScanFamilyMixer(name: "ssd") { h, d in StateSpaceBenchmarks.ssd(heads: h, headDim: d, state: 64) },
      ScanFamilyMixer(name: "titans-memory") { _, _ in StateSpaceBenchmarks.titansMemory() },
    ]
}
