import ArgumentParser
import Foundation
import Subquadratic
import SubqBench
#if SUBQ_MPI
import SubqMPI
#endif

extension SequenceParallelAttention.Variant: ExpressibleByArgument {}

/// `subq ring`: exact attention of one sequence split across MPI processes.
struct RingCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "ring",
    abstract: "Exact attention of one sequence split across MPI processes (ring, tokenring or heads); run under mpirun.",
    discussion: """
      Run as `mpirun -np P subq ring --q Q.npy --k K.npy --v V.npy --out O.npy`. Rank 0 reads the inputs \
      (.npy of rank 2 [N, D], 3 [H, N, D] or 4 [B, H, N, D]; self-attention, so K and V have Q's length), \
      sends every rank its rows, the ranks compute together, and rank 0 gathers and writes O (float32, Q's \
      rank) and the log-sum-exp [B, Hq, N] with --lse. Variants: ring (key/value chunks travel around the \
      ring, overlapped with compute; zig-zag chunks when causal), tokenring (queries travel one way, \
      partial outputs the other), heads (all-to-all to a head split and back). Threads per rank default \
      to the machine's cores divided by the ranks on it. \
      --bench measures each variant on random inputs instead (per rank: time, compute, wait, bytes sent) \
      and prints the speedup expected on P machines; --ranks 1,2,3,4 runs that under mpirun for each P. \
      Needs a subq built with Open MPI (see README).
      """)

  @Option(help: "Queries .npy.") var q: String?
  @Option(help: "Keys .npy.") var k: String?
  @Option(help: "Values .npy.") var v: String?
  @Option(help: "Output .npy path (written by rank 0).") var out: String?
  @Option(help: "Write the log-sum-exp per query row to this .npy path.") var lse: String?
  @Flag(help: "Causal masking.") var causal = false
  @Option(help: "ring, tokenring or heads.") var variant: SequenceParallelAttention.Variant = .ring
  @Option(help: "Softmax scale (default 1/√D).") var scale: Float?
  @Option(help: "Logit soft-capping value c > 0: s = c·tanh(s/c).") var softcap: Float?
  @Option(help: "Worker threads per rank (default: cores / ranks on this machine).") var threads: Int?

  @Flag(help: "Benchmark every variant on random inputs instead of reading files.") var bench = false
  @Option(help: "Benchmark: sequence length (K = 1024).") var n: String?
  @Option(help: "Benchmark: batch size (default 1).") var batch: Int?
  @Option(help: "Benchmark: query heads (default 8).") var heads: Int?
  @Option(name: .customLong("kv-heads"), help: "Benchmark: key/value heads (default: --heads).") var kvHeads: Int?
  @Option(help: "Benchmark: head dimension (default 64).") var dim: Int?
  @Option(help: "Benchmark: variants, comma-separated (default all).") var variants: String?
  @Option(help: "Benchmark: timed runs per variant (default 3).") var `repeat`: Int?
  @Option(help: "Benchmark: launch `mpirun -np P` for each P of this list (e.g. 1,2,3,4) and report all.") var ranks: String?
  @Flag(help: "Benchmark: print JSON.") var json = false

  func run() throws {
    #if SUBQ_MPI
    if let ranks { return try launch(ranks) }
    do {
      try validateArguments()
    } catch {
      // Every rank finds the same problem; only rank 0 reports it, and the job's status (2) is
      // rank 0's. The other ranks exit quietly with 0: a non-zero exit makes mpirun abort the job
      // at once, which could kill rank 0 before its message was written (seen under load).
      let env = ProcessInfo.processInfo.environment
      if let r = env["OMPI_COMM_WORLD_RANK"] ?? env["PMI_RANK"], r != "0" { Foundation.exit(0) }
      throw error
    }
    let comm = try MPICommunicator.world()
    if let error = runOnRanks(comm) {
      // Errors are agreed by every rank; rank 0 reports before MPI stops (MPI_Finalize waits for
      // every rank), so mpirun cannot end it before the message is out.
      if comm.rank == 0 {
        let line = error.description.split(whereSeparator: \.isNewline).joined(separator: "; ")
        FileHandle.standardError.write(Data("subq: error: \(line)\n".utf8))
      }
      comm.finalize()
      Foundation.exit(2)
    }
    comm.finalize()
    #else
    throw SubqError.unsupported(
      op: "subq ring", feature: "MPI",
      reason: "this subq was built without MPI; install Open MPI (apt-get install openmpi-bin libopenmpi-dev), run `swift package reset` and rebuild (see README, Sequence parallelism)")
    #endif
  }

  /// Rejects options that do not belong to the chosen mode (never silently ignored).
  func validateArguments() throws(SubqError) {
    let benchOnly: [(String, Bool)] = [("--n", n != nil), ("--batch", batch != nil), ("--heads", heads != nil),
                                       ("--kv-heads", kvHeads != nil), ("--dim", dim != nil), ("--variants", variants != nil),
                                       ("--repeat", `repeat` != nil), ("--ranks", ranks != nil), ("--json", json)]
    let filesOnly: [(String, Bool)] = [("--q", q != nil), ("--k", k != nil), ("--v", v != nil), ("--out", out != nil),
                                       ("--lse", lse != nil), ("--scale", scale != nil), ("--softcap", softcap != nil)]
    if bench {
      if let f = filesOnly.first(where: \.1) {
        throw .argument(op: "subq ring", name: f.0, value: "given", reason: "--bench makes random inputs; it takes no files or scoring options")
      }
    } else {
      if let f = benchOnly.first(where: \.1) {
        throw .argument(op: "subq ring", name: f.0, value: "given", reason: "only used with --bench")
      }
      for (name, value) in [("--q", q), ("--k", k), ("--v", v), ("--out", out)] where value == nil {
        throw .argument(op: "subq ring", name: name, value: "missing", reason: "required (or use --bench)")
      }
    }
    if let threads, threads < 1 { throw .argument(op: "subq ring", name: "--threads", value: "\(threads)", reason: "must be at least 1") }
  }

  #if SUBQ_MPI
  /// The run on every rank; the error every rank agreed on, if any.
  func runOnRanks(_ comm: MPICommunicator) -> SubqError? {
    do throws(SubqError) {
      if bench { try runBench(comm) } else { try runFiles(comm) }
      return nil
    } catch {
      return error
    }
  }

  func threadsPerRank(_ comm: MPICommunicator) -> Int {
    threads ?? max(1, Parallel.defaultThreads / max(1, comm.localSize))
  }

  func runFiles(_ comm: MPICommunicator) throws(SubqError) {
    // Rank 0 reads the files; every rank learns whether that worked.
    var inputs: (q: Tensor, k: Tensor, v: Tensor, rank: Int)? = nil
    var failure: SubqError? = nil
    if comm.rank == 0 {
      do throws(SubqError) {
        let (qt, qRank) = try AttentionFiles.load(q!, tensor: "Q", layout: .bhsd)
        let (kt, _) = try AttentionFiles.load(k!, tensor: "K", layout: .bhsd)
        let (vt, _) = try AttentionFiles.load(v!, tensor: "V", layout: .bhsd)
        inputs = (qt, kt, vt, qRank)
      } catch {
        failure = error
      }
    }
    var status: Int32 = failure == nil ? 0 : 1
    withUnsafeMutableBytes(of: &status) { comm.broadcast($0, root: 0) }
    if let failure { throw failure }
    if status != 0 { throw .file(path: q!, reason: "rank 0 could not read the inputs") }

    let method = try SequenceParallelAttention(variant: variant)
    let options = AttentionOptions(scale: scale, causal: causal, softcap: softcap, returnLSE: lse != nil, threads: threadsPerRank(comm))
    let (result, _) = try method.attention(queries: inputs?.q, keys: inputs?.k, values: inputs?.v, options: options, communicator: comm)
    guard let result, let inputs else { return }
    let output = try AttentionFiles.fromRank4(result.output, rank: inputs.rank, layout: .bhsd)
    try NPY.write(output, to: out!)
    if let lse, let l = result.lse {
      do throws(SubqError) {
        try NPY.write(l, to: lse)
      } catch {
        try? FileManager.default.removeItem(atPath: out!)
        throw error
      }
    }
  }

  func benchConfig(_ threadsPerRank: Int) throws(SubqError) -> SequenceParallelBench.Config {
    var c = SequenceParallelBench.Config()
    if let n {
      let lengths = try parseLengths(n, option: "--n")
      guard lengths.count == 1 else { throw .argument(op: "subq ring", name: "--n", value: n, reason: "one length (run again for others)") }
      c.length = lengths[0]
    }
    c.batch = batch ?? 1
    c.heads = heads ?? 8
    c.kvHeads = kvHeads ?? c.heads
    c.dim = dim ?? 64
    c.causal = causal
    c.repeats = `repeat` ?? 3
    c.threads = threadsPerRank
    for (name, value) in [("--batch", c.batch), ("--heads", c.heads), ("--kv-heads", c.kvHeads), ("--dim", c.dim), ("--repeat", c.repeats)] where value < 1 {
      throw .argument(op: "subq ring", name: name, value: "\(value)", reason: "must be at least 1")
    }
    if c.heads % c.kvHeads != 0 {
      throw .argument(op: "subq ring", name: "--kv-heads", value: "\(c.kvHeads)", reason: "must divide --heads (\(c.heads))")
    }
    if let variants {
      c.variants = []
      for name in variants.split(separator: ",") {
        guard let v = SequenceParallelAttention.Variant(rawValue: name.trimmingCharacters(in: .whitespaces)) else {
          throw .argument(op: "subq ring", name: "--variants", value: variants, reason: "known: ring, tokenring, heads")
        }
        c.variants.append(v)
      }
    }
    return c
  }

  func runBench(_ comm: MPICommunicator) throws(SubqError) {
    let config = try benchConfig(threadsPerRank(comm))
    guard let report = try SequenceParallelBench(config: config).run(communicator: comm) else { return }
    if json {
      let enc = JSONEncoder()
      enc.outputFormatting = [.sortedKeys]
      print(String(decoding: (try? enc.encode(report)) ?? Data(), as: UTF8.self))
    } else {
      print(BuildInfo.summary)
      print("\(MachineInfo.cpuModel), \(MachineInfo.cores) cores, host \(comm.processorName)")
      print(report.render())
    }
  }

  /// `--ranks`: runs this benchmark under `mpirun -np P` for each P and prints one table.
  func launch(_ list: String) throws {
    guard bench else { throw SubqError.argument(op: "subq ring", name: "--ranks", value: list, reason: "only used with --bench") }
    if ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_SIZE"] != nil {
      throw SubqError.argument(op: "subq ring", name: "--ranks", value: list, reason: "launches mpirun itself; run it without mpirun")
    }
    let counts = try parseLengths(list, option: "--ranks")
    guard let mpirun = findExecutable("mpirun") else {
      throw SubqError.unsupported(op: "subq ring", feature: "--ranks", reason: "mpirun not found in PATH (install openmpi-bin)")
    }
    var args = Array(CommandLine.arguments.dropFirst())
    if let i = args.firstIndex(where: { $0 == "--ranks" }) { args.removeSubrange(i...(i + 1)) }
    args.removeAll { $0.hasPrefix("--ranks=") || $0 == "--json" }
    let me = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().path
    var reports: [SequenceParallelBench.Report] = []
    for p in counts {
      note("subq ring --bench: mpirun -np \(p) …")
      var mpiArgs = ["-np", "\(p)", "--oversubscribe", "--bind-to", "none"]
      if getuid() == 0 { mpiArgs.append("--allow-run-as-root") }
      let proc = Process()
      proc.executableURL = URL(fileURLWithPath: mpirun)
      proc.arguments = mpiArgs + [me] + args + ["--json"]
      let pipe = Pipe()
      proc.standardOutput = pipe
      try proc.run()
      let data = pipe.fileHandleForReading.readDataToEndOfFile()
      proc.waitUntilExit()
      guard proc.terminationStatus == 0, let line = String(decoding: data, as: UTF8.self).split(separator: "\n").last,
            let report = try? JSONDecoder().decode(SequenceParallelBench.Report.self, from: Data(line.utf8)) else {
        throw SubqError.argument(op: "subq ring", name: "--ranks", value: "\(p)", reason: "mpirun -np \(p) failed (status \(proc.terminationStatus))")
      }
      reports.append(report)
    }
    print(BuildInfo.summary)
    print("\(MachineInfo.cpuModel), \(MachineInfo.cores) cores")
    var table = TextTable(header: ["variant", "P", "threads/rank", "time", "max compute", "max wait", "sent/rank (max)", "err"],
                          rightAligned: Set(1..<8))
    for r in reports {
      for v in r.results {
        table.add([v.variant.rawValue, "\(r.ranks)", "\(r.config.threads)", formatSeconds(v.seconds),
                   formatSeconds(v.ranks.map(\.computeSeconds).max() ?? 0), formatSeconds(v.ranks.map(\.waitSeconds).max() ?? 0),
                   formatBytes(Double(v.ranks.map(\.bytesSent).max() ?? 0)), String(format: "%.1e", v.errorVsFlash)])
      }
    }
    print(table.render())
    // The model: R of one machine from P = 1 (one rank, every core), W between ranks from the
    // run with the most ranks that does not oversubscribe the cores (else the fastest measured).
    if let last = reports.last {
      let rate = reports.first { $0.ranks == 1 }?.computeRate
      let fit = reports.filter { $0.transferRate != nil && $0.ranks <= MachineInfo.cores }.last
      let bandwidth = fit?.transferRate ?? reports.compactMap(\.transferRate).max()
      print("")
      print(last.render(rate: rate, bandwidth: bandwidth).split(separator: "\n").drop { !$0.hasPrefix("measured:") }.joined(separator: "\n"))
    }
  }
  #endif
}

/// The first executable called `name` in PATH.
func findExecutable(_ name: String) -> String? {
  for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
    let p = "\(dir)/\(name)"
    if FileManager.default.isExecutableFile(atPath: p) { return p }
  }
  return nil
}
