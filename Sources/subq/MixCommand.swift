import ArgumentParser
import Foundation
import Subquadratic
import SubqBench

extension MixerBench.Mode: ExpressibleByArgument {}

/// `subq mix`: one sequence-mixer call on .npy files.
struct MixCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "mix",
    abstract: "Run a linear-time sequence mixer (linear, transnormer, linfusion, ponet, monarch) on .npy files.",
    discussion: """
      Attention-like mixers (linear, transnormer, linfusion) take --q --k --v of rank 2 ([N, D]), 3 ([H, N, D]) or \
      4 ([B, H, N, D]); mixers on the model dimension (ponet, monarch) take --x of rank 2 ([N, C]) or 3 ([B, N, C]) \
      and read their weights from --weights DIR, one .npy per array (names: `subq mix --list`). The output is written \
      as float32 in the input's rank. `--random-weights SEED` uses random weights instead (for trying a mixer out).
      """)

  @Flag(help: "List the mixers with their parameters and weight files, then exit.") var list = false
  @Option(help: "Mixer name (see --list).") var method: String?
  @Option(help: "Queries .npy (attention-like mixers).") var q: String?
  @Option(help: "Keys .npy.") var k: String?
  @Option(help: "Values .npy.") var v: String?
  @Option(help: "Input .npy [B, N, C] (mixers on the model dimension).") var x: String?
  @Option(help: "Directory of weight .npy files named as --list shows.") var weights: String?
  @Option(name: .customLong("random-weights"), help: "Use random weights drawn from this seed instead of --weights.") var randomWeights: UInt64?
  @Flag(help: "Causal mixing.") var causal = false
  @Option(name: .customLong("param"), help: "Mixer parameter name=value (repeatable).") var params: [String] = []
  @Option(help: "Worker threads (default: all cores, or SUBQ_THREADS).") var threads: Int?
  @Flag(name: .customLong("allow-nonfinite"), help: "Accept NaN and ±∞ in the inputs.") var allowNonFinite = false
  @Option(help: "Output .npy path.") var out: String?

  func run() throws {
    if list {
      printMixers()
      return
    }
    guard let method else { throw SubqError.argument(op: "mix", name: "--method", value: "missing", reason: "give a mixer name (see subq mix --list)") }
    guard let out else { throw SubqError.argument(op: "mix", name: "--out", value: "missing", reason: "give the output .npy path") }
    let mixer = try SequenceMixers.make(method, parameters: MixerParameters(try parseParams(params, method: method).values))
    let info = mixer.info
    try info.check(causal: causal)
    let options = MixerOptions(causal: causal, threads: threads, allowNonFinite: allowNonFinite)
    let inputs: MixerInputs
    let rank: Int
    var shape = MixerBenchShape(length: 1, causal: causal)
    switch info.input {
    case .attention:
      if x != nil { throw SubqError.argument(op: info.op, name: "--x", value: x!, reason: "\(info.name) takes --q, --k and --v") }
      guard let q, let k, let v else {
        throw SubqError.argument(op: info.op, name: [("--q", self.q), ("--k", self.k), ("--v", self.v)].filter { $0.1 == nil }.map(\.0).joined(separator: ", "),
                                 value: "missing", reason: "\(info.name) needs --q, --k and --v")
      }
      let (qt, r) = try AttentionFiles.load(q, tensor: "Q", layout: .bhsd)
      let (kt, _) = try AttentionFiles.load(k, tensor: "K", layout: .bhsd)
      let (vt, _) = try AttentionFiles.load(v, tensor: "V", layout: .bhsd)
      inputs = .attention(qt, kt, vt)
      rank = r
    case .sequence:
      if q != nil || k != nil || v != nil {
        throw SubqError.argument(op: info.op, name: "--q/--k/--v", value: "given", reason: "\(info.name) mixes one sequence: give --x [B, N, C]")
      }
      guard let x else { throw SubqError.argument(op: info.op, name: "--x", value: "missing", reason: "\(info.name) needs --x [B, N, C]") }
      let t = try NPY.read(x)
      switch t.rank {
      case 3: inputs = .sequence(t)
      case 2: inputs = .sequence(try t.reshaped([1] + t.shape))
      default: throw SubqError.shape(op: info.op, tensor: "X (\(x))", shape: t.shape, reason: "expected rank 2 [N, C] or 3 [B, N, C]")
      }
      rank = t.rank
      shape = MixerBenchShape(heads: 1, length: inputs.x!.shape[1], headDim: inputs.x!.shape[2], causal: causal)
    }
    let w: MixerWeights
    if let weights {
      if randomWeights != nil {
        throw SubqError.argument(op: info.op, name: "--random-weights", value: "\(randomWeights!)", reason: "give either --weights or --random-weights, not both")
      }
      if info.weights.isEmpty {
        throw SubqError.argument(op: info.op, name: "--weights", value: weights, reason: "\(info.name) takes no weights (it mixes the given Q, K, V)")
      }
      w = try MixerWeights.load(directory: weights)
    } else if let seed = randomWeights {
      if info.weights.isEmpty {
        throw SubqError.argument(op: info.op, name: "--random-weights", value: "\(seed)", reason: "\(info.name) takes no weights")
      }
      w = mixer.randomWeights(shape: shape, seed: seed)
    } else {
      if info.weights.contains(where: \.required) {
        throw SubqError.argument(op: info.op, name: "--weights", value: "missing",
                                 reason: "\(info.name) needs weights: --weights DIR with \(info.weights.filter(\.required).map { $0.name + ".npy" }.joined(separator: ", ")) (or --random-weights SEED)")
      }
      w = MixerWeights()
    }
    let y = try mixer.mix(inputs, weights: w, options: options)
    let output: Tensor
    switch info.input {
    case .attention: output = try AttentionFiles.fromRank4(y, rank: rank, layout: .bhsd)
    case .sequence: output = rank == 2 ? try y.reshaped(Array(y.shape.dropFirst())) : y
    }
    try NPY.write(output, to: out)
  }

  func printMixers() {
    for t in SequenceMixers.all {
      let i = t.info
      let forms = [i.supportsNonCausal ? "non-causal" : nil, i.supportsCausal ? "causal" : nil].compactMap { $0 }.joined(separator: ", ")
      print("\(i.name)  [\(i.input == .attention ? "--q --k --v [B, H, N, D]" : "--x [B, N, C]"); \(forms)]")
      print("  \(i.summary)")
      print("  complexity: \(i.complexity)")
      print("  paper: \(i.paper)")
      for p in i.parameters { print("  --param \(p.name)=\(p.defaultValue)  \(p.summary)") }
      for w in i.weights { print("  weight \(w.name).npy \(w.shape)\(w.required ? "" : " (optional)")  \(w.summary)") }
      print()
    }
  }
}

/// `subq mix-bench`: time every mixer over lengths, with causal flash as the yardstick.
struct MixBenchCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "mix-bench",
    abstract: "Time the linear-time mixers over sequence lengths against causal flash attention.",
    discussion: """
      Attention-like mixers get Q, K, V [B, H, N, D]; ponet and monarch get X [B, N, H·D] and random weights. Each \
      mixer runs causal when it has a causal form (--mode auto), else non-causal. Causal flash runs at the same shapes \
      up to --flash-max (quadratic: longer runs are skipped and said so). The speed-up of causal linear over causal \
      flash is printed at the largest length where both ran. Times are wall-clock medians; ns/token staying flat as N \
      grows is linear scaling.
      """)

  @Option(help: "Mixers, comma-separated, or all.") var method = "all"
  @Option(help: "Sequence lengths, comma-separated (K = 1024).") var n = "4K,16K,64K,256K"
  @Option(help: "Batch size.") var batch = 1
  @Option(help: "Heads (model width H·D for ponet and monarch).") var heads = 8
  @Option(help: "Head dimension.") var dim = 64
  @Option(help: "auto (causal where supported), causal or non-causal.") var mode: MixerBench.Mode = .auto
  @Option(help: "Timed runs per length.") var `repeat` = 3
  @Option(name: .customLong("flash-max"), help: "Longest N at which causal flash is timed (K = 1024).") var flashMax = "64K"
  @Flag(name: .customLong("no-flash"), help: "Do not time flash.") var noFlash = false
  @Option(help: "Data seed.") var seed: UInt64 = 1
  @Option(help: "Worker threads (default: all cores).") var threads: Int?
  @Option(name: .customLong("param"), help: "Mixer parameter method.name=value (repeatable).") var params: [String] = []
  @Flag(help: "Print JSON instead of a table.") var json = false

  func run() throws {
    let lengths = try parseLengths(n, option: "--n")
    for (name, value) in [("--batch", batch), ("--heads", heads), ("--dim", dim), ("--repeat", `repeat`)] where value < 1 {
      throw SubqError.argument(op: "mix-bench", name: name, value: "\(value)", reason: "must be at least 1")
    }
    let names = method == "all" ? SequenceMixers.all.map { $0.info.name } : method.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }
    var mixers: [any SequenceMixer] = []
    for name in names {
      let p = try parseParams(params.filter { $0.hasPrefix(name + ".") }, method: name)
      mixers.append(try SequenceMixers.make(name, parameters: MixerParameters(p.values)))
    }
    if let bad = params.first(where: { p in !names.contains(where: { p.hasPrefix($0 + ".") }) }) {
      throw SubqError.argument(op: "mix-bench", name: "--param", value: bad, reason: "prefix each parameter with its mixer: method.name=value (mixers: \(names.joined(separator: ", ")))")
    }
    var config = MixerBench.Config(mixers: mixers, lengths: lengths)
    config.batch = batch
    config.heads = heads
    config.dim = dim
    config.mode = mode
    config.repeats = `repeat`
    config.flashMaxLength = try parseLengths(flashMax, option: "--flash-max").first!
    config.includeFlash = !noFlash
    config.seed = seed
    if let threads {
      guard threads >= 1 else { throw SubqError.argument(op: "mix-bench", name: "--threads", value: "\(threads)", reason: "must be at least 1") }
      config.threads = threads
    }
    if !json {
      print(BuildInfo.summary)
      print("\(MachineInfo.cpuModel), \(MachineInfo.cores) cores, \(config.threads) threads")
      print("B=\(batch) H=\(heads) D=\(dim) (model width \(heads * dim)) mode=\(mode.rawValue) repeat=\(`repeat`)")
    }
    var notes: [String] = []
    let rows = try MixerBench(config: config).run(
      progress: { r in if !json { note(String(format: "  %@ N=%d: %.1f ms", r.method, r.n, r.medianSeconds * 1e3)) } },
      skipped: { notes.append($0) })
    let both = lengths.filter { n in rows.contains { $0.method == "linear" && $0.n == n && $0.causal } && rows.contains { $0.method == "flash" && $0.n == n } }
    let speedN = both.max()
    let speedup = speedN.flatMap { MixerBench.speedup(rows, method: "linear", at: $0) }
    if json {
      struct Report: Encodable {
        var build: String, flags: String, cpu: String, threads: Int, batch: Int, heads: Int, dim: Int, mode: String
        var rows: [MixerBench.Row]
        var notes: [String]
        var linearOverFlash: [String: Double]
      }
      var s: [String: Double] = [:]
      if let speedN, let speedup { s["\(speedN)"] = speedup }
      let enc = JSONEncoder()
      enc.outputFormatting = [.prettyPrinted, .sortedKeys]
      print(String(decoding: try enc.encode(Report(build: BuildInfo.summary, flags: BuildInfo.flags, cpu: MachineInfo.cpuModel, threads: config.threads,
                                                  batch: batch, heads: heads, dim: dim, mode: mode.rawValue, rows: rows, notes: notes, linearOverFlash: s)),
                          as: UTF8.self))
      return
    }
    var table = TextTable(header: ["method", "form", "N", "median", "min", "GFLOP/s", "ns/token", "×time vs prev N", "peak RSS"], rightAligned: Set(2..<9))
    var prev: [String: Double] = [:]
    for r in rows {
      let ratio = prev[r.method].map { String(format: "%.2f", r.medianSeconds / $0) } ?? "—"
      prev[r.method] = r.medianSeconds
      table.add([r.method, r.causal ? "causal" : "non-causal", String(r.n), formatSeconds(r.medianSeconds), formatSeconds(r.minSeconds),
                 String(format: "%.1f", r.gflops), String(format: "%.1f", r.nsPerToken), ratio, formatBytes(r.peakResidentBytes)])
    }
    print(table.render())
    for n in notes { print("note: \(n)") }
    if let speedN, let speedup {
      print(String(format: "causal linear vs causal flash at N=%d: %.1f× faster", speedN, speedup))
    }
  }
}
