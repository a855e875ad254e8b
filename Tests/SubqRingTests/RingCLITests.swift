import Foundation
import Subquadratic
import SubqTestSupport
import Testing

#if SUBQ_MPI

/// `subq ring` under `mpirun` on this machine (loopback/shared memory): the result must equal
/// single-process flash (relative error ≤ 1e-5, as in SequenceParallelTests: only the order of
/// floating-point operations differs) for every variant, P = 1…4, causal and not, a length not
/// divisible by P, grouped-query heads. A handful of mpirun calls: each costs about a second.
@Suite(.serialized) struct RingCLITests {
  let dir = temporaryDirectory("subq-ring")
  func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

  struct Run { var status: Int32; var stdout: String; var stderr: String }

  /// Runs `mpirun -np P subq <arguments>` (oversubscribed, allowed as root).
  func mpirun(_ np: Int, _ arguments: [String]) throws -> Run {
    let env = ProcessInfo.processInfo.environment
    let launcher = (env["PATH"] ?? "/usr/bin:/bin").split(separator: ":").map { "\($0)/mpirun" }
      .first { FileManager.default.isExecutableFile(atPath: $0) }
    guard let launcher else {
      Issue.record("subq was built with MPI but mpirun is not in PATH: install openmpi-bin")
      return Run(status: -1, stdout: "", stderr: "")
    }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: launcher)
    p.arguments = ["-np", "\(np)", "--oversubscribe", "--bind-to", "none", subqExecutable().path] + arguments
    var e = env
    e["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
    e["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    e["SUBQ_THREADS"] = "1"
    p.environment = e
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    let r = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return Run(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: r, as: UTF8.self))
  }

  @Test func matchesSingleProcessFlash() throws {
    let seed = testSeed()
    // [H, N, D] files: 4 query heads over 2 key/value heads, N = 37 (not divisible by 2, 3, 4, 6 or 8).
    let q = Tensor.randomNormal(shape: [4, 37, 16], seed: seed)
    let k = Tensor.randomNormal(shape: [2, 37, 16], seed: seed &+ 1)
    let v = Tensor.randomNormal(shape: [2, 37, 12], seed: seed &+ 2)
    try NPY.write(q, to: path("q.npy"))
    try NPY.write(k, to: path("k.npy"))
    try NPY.write(v, to: path("v.npy"))
    var reference: [Bool: AttentionResult] = [:]
    for causal in [false, true] {
      reference[causal] = try FlashAttention().attention(
        queries: q.reshaped([1, 4, 37, 16]), keys: k.reshaped([1, 2, 37, 16]), values: v.reshaped([1, 2, 37, 12]),
        options: AttentionOptions(causal: causal, returnLSE: true))
    }
    let runs: [(np: Int, variant: String, causal: Bool)] = [
      (2, "ring", true), (2, "tokenring", false), (2, "heads", true),
      (3, "ring", false), (3, "tokenring", true), (3, "heads", false),
      (1, "tokenring", true), (4, "ring", true), (4, "heads", false),
    ]
    for (i, run) in runs.enumerated() {
      let label = "np \(run.np) \(run.variant) causal=\(run.causal) seed \(seed)"
      let out = path("o\(i).npy"), lse = path("lse\(i).npy")
      let r = try mpirun(run.np, ["ring", "--q", path("q.npy"), "--k", path("k.npy"), "--v", path("v.npy"), "--variant", run.variant,
                                  "--out", out, "--lse", lse] + (run.causal ? ["--causal"] : []))
      #expect(r.status == 0, "\(label): status \(r.status), stderr \(r.stderr)")
      guard r.status == 0 else { continue }
      let o = try NPY.read(out)
      #expect(o.shape == [4, 37, 12], "\(label)")
      let ref = reference[run.causal]!
      let e = relativeError(try o.reshaped([1, 4, 37, 12]), ref.output)
      #expect(e <= 1e-5, "\(label): error vs flash \(e)")
      let l = try NPY.read(lse)
      #expect(l.shape == [1, 4, 37], "\(label)")
      #expect(worstRelative(l, ref.lse!.scalars.map(Double.init)).error <= 1e-5, "\(label): LSE")
    }
  }

  /// A bad input: non-zero status, one error line (from rank 0 only), no output file.
  @Test func errorsComeFromRankZeroOnly() throws {
    try NPY.write(Tensor.randomNormal(shape: [2, 9, 8], seed: 1), to: path("q.npy"))
    try NPY.write(Tensor.randomNormal(shape: [2, 11, 8], seed: 2), to: path("k.npy"))
    let cases: [(args: [String], message: String)] = [
      (["--q", path("q.npy"), "--k", path("missing.npy"), "--v", path("q.npy")], "no such file"),
      (["--q", path("q.npy"), "--k", path("k.npy"), "--v", path("k.npy")], "self-attention"),
      (["--q", path("q.npy"), "--k", path("q.npy"), "--v", path("q.npy"), "--softcap=-1"], "softcap"),
      (["--q", path("q.npy"), "--k", path("q.npy"), "--v", path("q.npy"), "--n", "64"], "only used with --bench"),
    ]
    for c in cases {
      let out = path("bad-\(UUID().uuidString).npy")
      let r = try mpirun(3, ["ring"] + c.args + ["--out", out])
      #expect(r.status == 2, "\(c.args): status \(r.status)")  // rank 0's status
      let errors = r.stderr.split(separator: "\n").filter { $0.hasPrefix("subq: error:") }
      #expect(errors.count == 1, "\(c.args): \(r.stderr)")
      #expect(errors.first?.contains(c.message) == true, "\(c.args): \(r.stderr)")
      #expect(!FileManager.default.fileExists(atPath: out), "\(c.args): output left behind")
    }
  }

  /// The benchmark reports every rank of every variant, checks each against flash, and counts
  /// bytes as the algorithms send them; `--ranks` runs it for several P.
  @Test func benchmark() throws {
    let r = try mpirun(3, ["ring", "--bench", "--n", "300", "--heads", "4", "--kv-heads", "2", "--dim", "16", "--repeat", "1", "--json"])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    let line = try #require(r.stdout.split(separator: "\n").last)
    let report = try JSONDecoder().decode(SequenceParallelBench.Report.self, from: Data(line.utf8))
    #expect(report.ranks == 3)
    #expect(report.results.map(\.variant) == [.ring, .tokenring, .heads])
    for v in report.results {
      #expect(v.ranks.count == 3)
      #expect(v.errorVsFlash <= 1e-5, "\(v.variant): \(v.errorVsFlash)")
    }
    // Ring, non-causal, 300 rows on 3 ranks: each rank sends 2 chunks of 100 rows of K and V.
    let ring = report.results[0]
    #expect(ring.ranks.allSatisfy { $0.bytesSent == 2 * 2 * 100 * (16 + 16) * 4 })
    #expect(report.transferRate.map { $0 > 0 } == true)
    #expect(report.render().contains("expected on P machines") || report.render().contains("Expected on P machines"))

    // The launcher: one table over P = 1, 2.
    let p = Process()
    p.executableURL = subqExecutable()
    p.arguments = ["ring", "--bench", "--ranks", "1,2", "--n", "128", "--heads", "2", "--dim", "8", "--repeat", "1", "--variants", "ring"]
    var e = ProcessInfo.processInfo.environment
    e["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
    e["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    p.environment = e
    let out = Pipe()
    p.standardOutput = out
    p.standardError = Pipe()
    try p.run()
    let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    #expect(p.terminationStatus == 0, "\(text)")
    let rows = text.split(separator: "\n").filter { $0.hasPrefix("ring ") }
    #expect(rows.count == 2, "\(text)")
    #expect(text.contains("S(2/4/8/16)"), "\(text)")
  }
}

#else

/// Without MPI, `subq ring` fails with one clear line and status 2.
@Test func ringWithoutMPIExplains() throws {
  let r = try runSubq(["ring", "--q", "q.npy", "--k", "k.npy", "--v", "v.npy", "--out", "o.npy"])
  #expect(r.status == 2)
  #expect(r.stderr.split(separator: "\n").count == 1, "\(r.stderr)")
  #expect(r.stderr.contains("built without MPI"), "\(r.stderr)")
  #expect(!FileManager.default.fileExists(atPath: "o.npy"))
}

#endif
