import Foundation
import SubqAttention
import SubqCore

/// What `subq compare` runs: methods, problems, and how it measures.
public struct CompareConfig: Sendable {
  /// Where the problems' inputs come from.
  public enum Source: Sendable {
    /// Built-in data of these kinds, at every length of ``CompareConfig/lengths``.
    case synthetic([DataKind])
    /// The user's q/k/v arrays: whole, or prefixes of ``CompareConfig/lengths`` positions.
    case files(CompareFiles)
  }

  /// The methods to compare, in order. The first exact ``FlashAttention`` among them is the
  /// baseline; without one, flash with default parameters is added first as the baseline.
  public var methods: [any AttentionMethod]
  public var source: Source = .synthetic(DataKind.allCases)
  /// Sequence lengths (Nq = Nk). With `.files`, prefix lengths; empty means the files whole.
  public var lengths: [Int] = CompareConfig.defaultLengths
  /// Causal modes to run, in order.
  public var causalModes: [Bool] = [false, true]
  public var batch = 1
  public var heads = 8
  public var kvHeads = 8
  public var dim = 64
  /// Seed of the built-in data and of the sampled rows.
  public var seed: UInt64 = 1
  public var threads = Parallel.defaultThreads
  /// Most timed runs per measurement.
  public var repeats = 5
  /// A measurement stops repeating once its runs have taken this long (it always makes one run).
  public var budgetSeconds = 1.0
  /// k of the top-k recall.
  public var topK = 10
  /// Query rows sampled per problem for the Float64 check, the top-k recall and the attention
  /// statistics.
  public var sampleRows = 64
  /// Needles planted per query head in `needles` data.
  public var needlesPerHead = 8
  /// `naive` materializes an Nq×Nk Float64 score matrix per worker; it is skipped (n/a) where
  /// those matrices would take more than this many bytes.
  public var naiveMaxBytes = 512 << 20
  /// The speed-only mixers to time.
  public var mixers: [any SpeedOnlyMixer] = SpeedOnlyMixers.all
  /// The command line, recorded in the report.
  public var command: [String] = []

  /// 1K, 4K and 16K.
  public static let defaultLengths = [1024, 4096, 16384]
  /// What `--full` adds: 64K and 128K.
  public static let fullLengths = [65536, 131072]

  public init(methods: [any AttentionMethod]) { self.methods = methods }

  /// Checks every setting and, for files, the inputs (with the same validation and errors as
  /// `subq attention`), before anything runs.
  public func validate() throws(SubqError) {
    let op = "compare"
    for (name, value) in [("--heads", heads), ("--dim", dim), ("--repeats", repeats), ("--top-k", topK),
                          ("--sample-rows", sampleRows), ("--threads", threads), ("batch", batch), ("--kv-heads", kvHeads)] where value < 1 {
      throw .argument(op: op, name: name, value: "\(value)", reason: "must be at least 1")
    }
    if needlesPerHead < 0 {
      throw .argument(op: op, name: "needles per head", value: "\(needlesPerHead)", reason: "must not be negative")
    }
    if !(budgetSeconds > 0 && budgetSeconds.isFinite) {
      throw .argument(op: op, name: "--budget", value: "\(budgetSeconds)", reason: "must be a positive number of seconds")
    }
    if heads % kvHeads != 0 {
      throw .argument(op: op, name: "--kv-heads", value: "\(kvHeads)", reason: "query heads (\(heads)) must be a multiple of key/value heads")
    }
    if causalModes.isEmpty { throw .argument(op: op, name: "causal modes", value: "[]", reason: "need at least one") }
    for n in lengths where n < 1 {
      throw .argument(op: op, name: "--lengths", value: "\(n)", reason: "lengths must be at least 1")
    }
    if Set(lengths).count != lengths.count {
      throw .argument(op: op, name: "--lengths", value: lengths.map(String.init).joined(separator: ","), reason: "lengths repeat")
    }
    var names = Set<String>()
    for m in methods {
      let name = type(of: m).info.name
      if !names.insert(name).inserted {
        throw .argument(op: op, name: "--methods", value: name, reason: "listed twice")
      }
    }
    switch source {
    case .synthetic(let kinds):
      if kinds.isEmpty { throw .argument(op: op, name: "--kinds", value: "", reason: "need at least one data kind") }
      if lengths.isEmpty { throw .argument(op: op, name: "--lengths", value: "", reason: "need at least one length") }
    case .files(let f):
      // The baseline's own validation: the same checks and messages as `subq attention`.
      _ = try AttentionProblem.validate(op: "attention.flash", queries: f.queries, keys: f.keys, values: f.values,
                                        options: AttentionOptions(threads: threads))
      if !lengths.isEmpty {
        let nq = f.queries.shape[2], nk = f.keys.shape[2]
        if nq != nk {
          throw .argument(op: op, name: "--lengths", value: lengths.map(String.init).joined(separator: ","),
                          reason: "prefixes of --data need Q and K of the same length (Q has \(nq) rows, K \(nk))")
        }
        for n in lengths where n > nq {
          throw .argument(op: op, name: "--lengths", value: "\(n)", reason: "longer than the --data arrays (\(nq) positions)")
        }
      }
    }
  }
}

/// The user's attention inputs for `subq compare --data DIR`: `q.npy`, `k.npy`, `v.npy`.
public struct CompareFiles: Sendable {
  /// The directory they were read from.
  public var directory: String
  /// Rank-4 bhsd tensors `[B, H, N, D]`.
  public var queries: Tensor
  public var keys: Tensor
  public var values: Tensor

  public init(directory: String, queries: Tensor, keys: Tensor, values: Tensor) {
    self.directory = directory
    self.queries = queries
    self.keys = keys
    self.values = values
  }

  /// Reads `DIR/q.npy`, `DIR/k.npy` and `DIR/v.npy` as `subq attention` reads its inputs (rank 2–4,
  /// float16/32/64), converting bshd arrays to bhsd.
  /// - Throws: the same ``SubqError`` values as `subq attention` for missing or malformed files.
  public static func load(directory: String, layout: AttentionLayout) throws(SubqError) -> CompareFiles {
    let url = URL(fileURLWithPath: directory)
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDir), isDir.boolValue else {
      throw .file(path: directory, reason: "no such directory (--data needs a directory holding q.npy, k.npy and v.npy)")
    }
    func load(_ name: String, _ tensor: String) throws(SubqError) -> Tensor {
      let t = try AttentionFiles.load(url.appendingPathComponent(name).path, tensor: tensor, layout: layout).tensor
      return layout == .bhsd ? t : bshdToBhsd(t)
    }
    return CompareFiles(directory: directory, queries: try load("q.npy", "Q"), keys: try load("k.npy", "K"),
                        values: try load("v.npy", "V"))
  }

  /// The first `n` positions of each tensor.
  public func prefix(_ n: Int) -> (q: Tensor, k: Tensor, v: Tensor) {
    (prefixRows(queries, n), prefixRows(keys, n), prefixRows(values, n))
  }
}

/// `[B, N, H, X]` → `[B, H, N, X]`.
func bshdToBhsd(_ t: Tensor) -> Tensor {
  let (B, N, H, X) = (t.shape[0], t.shape[1], t.shape[2], t.shape[3])
  return t.withUnsafeBufferPointer { p in
    Tensor(shape: [B, H, N, X]) { o in
      for b in 0..<B { for n in 0..<N { for h in 0..<H {
        let src = ((b * N + n) * H + h) * X, dst = ((b * H + h) * N + n) * X
        for x in 0..<X { o[dst + x] = p[src + x] }
      } } }
    }
  }
}

/// The first `n` rows of every head of a `[B, H, N, X]` tensor.
func prefixRows(_ t: Tensor, _ n: Int) -> Tensor {
  let (B, H, N, X) = (t.shape[0], t.shape[1], t.shape[2], t.shape[3])
  if n == N { return t }
  return t.withUnsafeBufferPointer { p in
    Tensor(shape: [B, H, n, X]) { o in
      for bh in 0..<(B * H) {
        let src = bh * N * X, dst = bh * n * X
        for i in 0..<(n * X) { o[dst + i] = p[src + i] }
      }
    }
  }
}
