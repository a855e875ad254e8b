import Foundation
import SubqAttention
import SubqCore

/// Everything `subq compare` measured, as written to `--json` (schema `subq.compare/1`, documented
/// in docs/compare-schema.md).
///
/// Optional figures are always present in the JSON, as `null` where they do not apply (a
/// non-selecting method has no top-k recall, a problem without needles no needle recall, a method
/// that could not run has no timings), so readers can rely on every key.
public struct CompareReport: Codable, Sendable {
  /// The schema identifier this version writes.
  public static let schemaIdentifier = "subq.compare/1"

  /// Always ``schemaIdentifier``.
  public var schema: String = CompareReport.schemaIdentifier
  /// `"complete"`, or `"interrupted"` when the run was stopped (Ctrl-C) and holds only the
  /// measurements finished before.
  public var status: String
  public var metadata: CompareMetadata
  public var suite: CompareSuiteRecord
  public var methods: [CompareMethodRecord]
  public var problems: [CompareProblemRecord]
  public var results: [CompareResult]
  /// Least-squares slope of log(time) against log(N) per method, data kind and causal mode.
  public var scaling: [CompareScaling]
  /// The speed-only table: mixers that compute other functions, timed against exact flash.
  public var speedOnly: [SpeedOnlyResult]

  public init(status: String, metadata: CompareMetadata, suite: CompareSuiteRecord, methods: [CompareMethodRecord],
              problems: [CompareProblemRecord], results: [CompareResult], scaling: [CompareScaling],
              speedOnly: [SpeedOnlyResult]) {
    self.status = status
    self.metadata = metadata
    self.suite = suite
    self.methods = methods
    self.problems = problems
    self.results = results
    self.scaling = scaling
    self.speedOnly = speedOnly
  }
}

/// How, where and with what the run was made.
public struct CompareMetadata: Codable, Sendable {
  /// Subquadratic's version.
  public var version: String
  /// `release` or `debug`.
  public var configuration: String
  /// Code-generation tuning (`SUBQ_TARGET_CPU`).
  public var tuning: String
  /// Compiler flags of the compute targets.
  public var flags: String
  /// SIMD width the kernels use.
  public var simd: String
  /// CPU model.
  public var cpu: String
  /// Active processor count.
  public var cores: Int
  /// Worker threads given to every method.
  public var threads: Int
  /// Seed of the synthetic data and the sampled rows.
  public var seed: UInt64
  /// Start time, ISO 8601 (UTC).
  public var startedAt: String
  /// Wall-clock seconds from start to the report.
  public var wallSeconds: Double
  /// The command line, when run from `subq`.
  public var command: [String]

  public init(version: String = BuildInfo.version, configuration: String = BuildInfo.configuration,
              tuning: String = BuildInfo.tuning, flags: String = BuildInfo.flags, simd: String = BuildInfo.simd,
              cpu: String = MachineInfo.cpuModel, cores: Int = MachineInfo.cores, threads: Int, seed: UInt64,
              startedAt: String, wallSeconds: Double, command: [String]) {
    self.version = version
    self.configuration = configuration
    self.tuning = tuning
    self.flags = flags
    self.simd = simd
    self.cpu = cpu
    self.cores = cores
    self.threads = threads
    self.seed = seed
    self.startedAt = startedAt
    self.wallSeconds = wallSeconds
    self.command = command
  }
}

/// The suite's settings.
public struct CompareSuiteRecord: Codable, Sendable {
  /// Sequence lengths (or prefix lengths of `--data`); empty when `--data` is used whole.
  public var lengths: [Int]
  /// Data kinds (`gaussian`, `structured`, `needles`) or `["file"]`.
  public var kinds: [String]
  /// Causal modes run, in order (`false` = non-causal).
  public var causal: [Bool]
  public var batch: Int
  public var heads: Int
  public var kvHeads: Int
  public var dim: Int
  /// The `--data` directory, or null for built-in data.
  public var dataDirectory: String?
  /// Most timed runs per measurement.
  public var repeats: Int
  /// A measurement stops repeating once its runs have taken this many seconds.
  public var budgetSeconds: Double
  /// k of the top-k recall.
  public var topK: Int
  /// Query rows sampled per problem for the Float64 check, top-k recall and attention statistics.
  public var sampleRows: Int
  /// Needles planted per query head in `needles` data.
  public var needlesPerHead: Int

  public init(lengths: [Int], kinds: [String], causal: [Bool], batch: Int, heads: Int, kvHeads: Int, dim: Int,
              dataDirectory: String?, repeats: Int, budgetSeconds: Double, topK: Int, sampleRows: Int, needlesPerHead: Int) {
    self.lengths = lengths
    self.kinds = kinds
    self.causal = causal
    self.batch = batch
    self.heads = heads
    self.kvHeads = kvHeads
    self.dim = dim
    self.dataDirectory = dataDirectory
    self.repeats = repeats
    self.budgetSeconds = budgetSeconds
    self.topK = topK
    self.sampleRows = sampleRows
    self.needlesPerHead = needlesPerHead
  }

  public func encode(to encoder: any Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(lengths, forKey: .lengths)
    try c.encode(kinds, forKey: .kinds)
    try c.encode(causal, forKey: .causal)
    try c.encode(batch, forKey: .batch)
    try c.encode(heads, forKey: .heads)
    try c.encode(kvHeads, forKey: .kvHeads)
    try c.encode(dim, forKey: .dim)
    try c.encode(dataDirectory, forKey: .dataDirectory)
    try c.encode(repeats, forKey: .repeats)
    try c.encode(budgetSeconds, forKey: .budgetSeconds)
    try c.encode(topK, forKey: .topK)
    try c.encode(sampleRows, forKey: .sampleRows)
    try c.encode(needlesPerHead, forKey: .needlesPerHead)
  }
}

/// One attention method as run.
public struct CompareMethodRecord: Codable, Sendable {
  public var name: String
  public var summary: String
  public var paper: String
  public var complexity: String
  /// Whether the method computes exact softmax attention.
  public var exact: Bool
  /// Whether it reports the keys it attends to (then top-k and needle-key recall are measured).
  public var keySelecting: Bool
  /// Whether it is the exact baseline every speedup and error refers to.
  public var baseline: Bool
  /// Parameter values in effect.
  public var parameters: [String: String]

  public init(name: String, summary: String, paper: String, complexity: String, exact: Bool, keySelecting: Bool,
              baseline: Bool, parameters: [String: String]) {
    self.name = name
    self.summary = summary
    self.paper = paper
    self.complexity = complexity
    self.exact = exact
    self.keySelecting = keySelecting
    self.baseline = baseline
    self.parameters = parameters
  }
}

/// One problem: inputs and masking, with facts about its exact attention.
public struct CompareProblemRecord: Codable, Sendable {
  /// `<kind>-<N>-<causal|noncausal>`, unique in the report.
  public var id: String
  /// `gaussian`, `structured`, `needles` or `file`.
  public var kind: String
  public var causal: Bool
  public var batch: Int
  public var heads: Int
  public var kvHeads: Int
  /// Query length Nq (also the length plotted).
  public var length: Int
  /// Key length Nk.
  public var keyLength: Int
  public var dim: Int
  public var valueDim: Int
  /// FLOPs of exact attention on the visible pairs (4·Nq·Nk·D·Hq·B non-causal, about half causal).
  public var flops: Double
  /// Needles planted (0 unless `needles`).
  public var needlesPlanted: Int
  /// Planted needles that exact attention retrieves (the denominator of needle recall).
  public var needlesValid: Int
  /// Query rows sampled for the statistics below and for top-k recall.
  public var sampledRows: Int
  /// Relative Frobenius error of the baseline's sampled output rows against the Float64
  /// reference: shows the baseline is exact (≈1e-6 in Float32); null if the baseline's output
  /// is not finite.
  public var baselineCheckError: Double?
  /// Median over sampled rows of the fraction of visible keys needed to hold 90% of the exact
  /// softmax weight: small for peaked attention, near 0.9 for uniform attention.
  public var mass90Fraction: Double
  /// Median over sampled rows of the number of keys holding 90% of the weight.
  public var mass90Keys: Double

  public init(id: String, kind: String, causal: Bool, batch: Int, heads: Int, kvHeads: Int, length: Int, keyLength: Int,
              dim: Int, valueDim: Int, flops: Double, needlesPlanted: Int, needlesValid: Int, sampledRows: Int,
              baselineCheckError: Double?, mass90Fraction: Double, mass90Keys: Double) {
    self.id = id
    self.kind = kind
    self.causal = causal
    self.batch = batch
    self.heads = heads
    self.kvHeads = kvHeads
    self.length = length
    self.keyLength = keyLength
    self.dim = dim
    self.valueDim = valueDim
    self.flops = flops
    self.needlesPlanted = needlesPlanted
    self.needlesValid = needlesValid
    self.sampledRows = sampledRows
    self.baselineCheckError = baselineCheckError
    self.mass90Fraction = mass90Fraction
    self.mass90Keys = mass90Keys
  }

  public func encode(to encoder: any Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(id, forKey: .id)
    try c.encode(kind, forKey: .kind)
    try c.encode(causal, forKey: .causal)
    try c.encode(batch, forKey: .batch)
    try c.encode(heads, forKey: .heads)
    try c.encode(kvHeads, forKey: .kvHeads)
    try c.encode(length, forKey: .length)
    try c.encode(keyLength, forKey: .keyLength)
    try c.encode(dim, forKey: .dim)
    try c.encode(valueDim, forKey: .valueDim)
    try c.encode(flops, forKey: .flops)
    try c.encode(needlesPlanted, forKey: .needlesPlanted)
    try c.encode(needlesValid, forKey: .needlesValid)
    try c.encode(sampledRows, forKey: .sampledRows)
    try c.encode(baselineCheckError, forKey: .baselineCheckError)
    try c.encode(mass90Fraction, forKey: .mass90Fraction)
    try c.encode(mass90Keys, forKey: .mass90Keys)
  }
}

/// A query row named by batch entry, head and position.
public struct CompareRowIndex: Codable, Sendable, Equatable {
  public var batch: Int
  public var head: Int
  public var row: Int
  public init(batch: Int, head: Int, row: Int) {
    self.batch = batch
    self.head = head
    self.row = row
  }
}

/// One method on one problem.
public struct CompareResult: Codable, Sendable {
  /// Outcome of a measurement.
  public enum Status: String, Codable, Sendable {
    /// Measured.
    case ok
    /// The method cannot run this problem (it rejected an option or the size); see `reason`.
    case notApplicable = "n/a"
    /// The method ran but returned non-finite values; see `reason`.
    case invalid
  }

  public var method: String
  /// The ``CompareProblemRecord/id``.
  public var problem: String
  public var status: Status
  /// Why the method did not run or its output is invalid; null when `ok`.
  public var reason: String?
  /// Every timed run, seconds, in order. The first run also produced the output measured below.
  public var samples: [Double]
  /// Median of the samples (the first is left out when there are at least 3).
  public var medianSeconds: Double?
  public var minSeconds: Double?
  /// Baseline median / this median, same inputs.
  public var speedup: Double?
  /// Exact-attention FLOPs / median, for exact methods only (approximate methods do other work).
  public var gflops: Double?
  /// Resident memory the method added at its peak, beyond its output (``MemoryProbe``).
  public var extraBytes: Double?
  /// ‖O − O_flash‖_F / ‖O_flash‖_F.
  public var relativeError: Double?
  /// max over rows of ‖o − o_flash‖ / ‖o_flash‖.
  public var worstRowError: Double?
  /// Where ``worstRowError`` occurs.
  public var worstRow: CompareRowIndex?
  /// Mean over sampled rows of |selected ∩ true top-k| / |true top-k| (key-selecting methods).
  public var topKRecall: Double?
  /// Valid needles whose query's output row has cosine ≥ 0.9 with the needle's value row.
  public var needleRecall: Double?
  /// Valid needles whose key the method selects (key-selecting methods).
  public var needleKeyRecall: Double?

  public init(method: String, problem: String, status: Status, reason: String? = nil, samples: [Double] = [],
              medianSeconds: Double? = nil, minSeconds: Double? = nil, speedup: Double? = nil, gflops: Double? = nil,
              extraBytes: Double? = nil, relativeError: Double? = nil, worstRowError: Double? = nil,
              worstRow: CompareRowIndex? = nil, topKRecall: Double? = nil, needleRecall: Double? = nil,
              needleKeyRecall: Double? = nil) {
    self.method = method
    self.problem = problem
    self.status = status
    self.reason = reason
    self.samples = samples
    self.medianSeconds = medianSeconds
    self.minSeconds = minSeconds
    self.speedup = speedup
    self.gflops = gflops
    self.extraBytes = extraBytes
    self.relativeError = relativeError
    self.worstRowError = worstRowError
    self.worstRow = worstRow
    self.topKRecall = topKRecall
    self.needleRecall = needleRecall
    self.needleKeyRecall = needleKeyRecall
  }

  public func encode(to encoder: any Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(method, forKey: .method)
    try c.encode(problem, forKey: .problem)
    try c.encode(status, forKey: .status)
    try c.encode(reason, forKey: .reason)
    try c.encode(samples, forKey: .samples)
    try c.encode(medianSeconds, forKey: .medianSeconds)
    try c.encode(minSeconds, forKey: .minSeconds)
    try c.encode(speedup, forKey: .speedup)
    try c.encode(gflops, forKey: .gflops)
    try c.encode(extraBytes, forKey: .extraBytes)
    try c.encode(relativeError, forKey: .relativeError)
    try c.encode(worstRowError, forKey: .worstRowError)
    try c.encode(worstRow, forKey: .worstRow)
    try c.encode(topKRecall, forKey: .topKRecall)
    try c.encode(needleRecall, forKey: .needleRecall)
    try c.encode(needleKeyRecall, forKey: .needleKeyRecall)
  }
}

/// How a method's time grows with length for one data kind and causal mode.
public struct CompareScaling: Codable, Sendable {
  public var method: String
  public var kind: String
  public var causal: Bool
  /// Lengths with a measured time.
  public var lengths: [Int]
  /// Least-squares slope of ln(median) against ln(N): ≈2 for exact attention at large N, ≈1 for
  /// linear-time methods (small N is dominated by fixed costs, so the slope is lower there).
  public var exponent: Double

  public init(method: String, kind: String, causal: Bool, lengths: [Int], exponent: Double) {
    self.method = method
    self.kind = kind
    self.causal = causal
    self.lengths = lengths
    self.exponent = exponent
  }
}

/// One speed-only mixer at one length.
public struct SpeedOnlyResult: Codable, Sendable {
  public var mixer: String
  public var length: Int
  /// Whether the mixer is causal (then compared with causal flash).
  public var causal: Bool
  public var status: CompareResult.Status
  public var reason: String?
  public var samples: [Double]
  public var medianSeconds: Double?
  /// Exact flash's median on Gaussian data of the same length, heads, dim and causal mode.
  public var flashMedianSeconds: Double?
  /// flashMedianSeconds / medianSeconds.
  public var speedupVsFlash: Double?
  /// The mixer's own FLOP count / median, when it states one.
  public var gflops: Double?
  public var extraBytes: Double?

  public init(mixer: String, length: Int, causal: Bool, status: CompareResult.Status, reason: String? = nil,
              samples: [Double] = [], medianSeconds: Double? = nil, flashMedianSeconds: Double? = nil,
              speedupVsFlash: Double? = nil, gflops: Double? = nil, extraBytes: Double? = nil) {
    self.mixer = mixer
    self.length = length
    self.causal = causal
    self.status = status
    self.reason = reason
    self.samples = samples
    self.medianSeconds = medianSeconds
    self.flashMedianSeconds = flashMedianSeconds
    self.speedupVsFlash = speedupVsFlash
    self.gflops = gflops
    self.extraBytes = extraBytes
  }

  public func encode(to encoder: any Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(mixer, forKey: .mixer)
    try c.encode(length, forKey: .length)
    try c.encode(causal, forKey: .causal)
    try c.encode(status, forKey: .status)
    try c.encode(reason, forKey: .reason)
    try c.encode(samples, forKey: .samples)
    try c.encode(medianSeconds, forKey: .medianSeconds)
    try c.encode(flashMedianSeconds, forKey: .flashMedianSeconds)
    try c.encode(speedupVsFlash, forKey: .speedupVsFlash)
    try c.encode(gflops, forKey: .gflops)
    try c.encode(extraBytes, forKey: .extraBytes)
  }
}

extension CompareReport {
  /// The report as pretty-printed JSON with sorted keys.
  public func jsonData() throws(SubqError) -> Data {
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
    do {
      return try enc.encode(self)
    } catch {
      throw .argument(op: "compare", name: "report", value: "json", reason: "cannot be encoded (\(error))")
    }
  }

  /// The problem with `id`.
  public func problem(_ id: String) -> CompareProblemRecord? { problems.first { $0.id == id } }
}
