import Foundation
import Subquadratic
import SubqTestSupport
import Testing

/// `subq mix` and `subq mix-bench` end to end on small files.
@Suite struct MixCLITests {
  let dir = temporaryDirectory("subq-mix-test")

  func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

  func write(_ t: Tensor, _ name: String) throws -> String {
    let p = path(name)
    try NPY.write(t, to: p)
    return p
  }

  @Test func linearThroughFilesMatchesLibrary() throws {
    let q = Tensor.randomNormal(shape: [2, 70, 16], seed: 1), k = Tensor.randomNormal(shape: [2, 70, 16], seed: 2)
    let v = Tensor.randomNormal(shape: [2, 70, 8], seed: 3)
    let (qp, kp, vp) = (try write(q, "q.npy"), try write(k, "k.npy"), try write(v, "v.npy"))
    let r = try runSubq(["mix", "--method", "linear", "--q", qp, "--k", kp, "--v", vp, "--causal", "--param", "chunk=16", "--out", path("o.npy")])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    let o = try NPY.read(path("o.npy"))
    #expect(o.shape == [2, 70, 8])
    let ref = try LinearAttention(chunk: 16).forward(queries: q.reshaped([1, 2, 70, 16]), keys: k.reshaped([1, 2, 70, 16]),
                                                    values: v.reshaped([1, 2, 70, 8]), causal: true)
    #expect(relativeError(o, try ref.reshaped([2, 70, 8])) <= 1e-6)
  }

  @Test func monarchWithWeightsDirectory() throws {
    let (N, C) = (40, 12)
    let wdir = dir.appendingPathComponent("m2")
    try FileManager.default.createDirectory(at: wdir, withIntermediateDirectories: true)
    let w = MonarchMixer().randomWeights(shape: MixerBenchShape(heads: 1, length: N, headDim: C, causal: false), seed: 5)
    for (name, t) in w.tensors { try NPY.write(t, to: wdir.appendingPathComponent("\(name).npy").path) }
    let x = Tensor.randomNormal(shape: [N, C], seed: 6)
    let xp = try write(x, "x.npy")
    let r = try runSubq(["mix", "--method", "monarch", "--x", xp, "--weights", wdir.path, "--out", path("y.npy")])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    let y = try NPY.read(path("y.npy"))
    #expect(y.shape == [N, C])
    let ref = try MonarchMixer().mix(.sequence(try x.reshaped([1, N, C])), weights: w, options: MixerOptions())
    #expect(relativeError(y, try ref.reshaped([N, C])) <= 1e-6)
    // Causal with the reverse filter present: refused, naming the file.
    let rc = try runSubq(["mix", "--method", "monarch", "--x", xp, "--weights", wdir.path, "--causal", "--out", path("yc.npy")])
    #expect(rc.status == 2 && rc.stderr.contains("filter_fn.k_rev"))
    #expect(!FileManager.default.fileExists(atPath: path("yc.npy")))
  }

  /// Each bad call: exit status 2, one line on stderr naming the problem, no output file.
  @Test func badCallsExitTwoWithoutOutput() throws {
    let x = try write(Tensor.randomNormal(shape: [1, 16, 8], seed: 1), "x.npy")
    let q = try write(Tensor.randomNormal(shape: [1, 2, 16, 8], seed: 2), "q.npy")
    let q5 = try write(Tensor.randomNormal(shape: [1, 2, 16, 5], seed: 2), "q5.npy")
    let wdir = dir.appendingPathComponent("w")
    try FileManager.default.createDirectory(at: wdir, withIntermediateDirectories: true)
    let good = try PoNetMixer(heads: 2).randomWeights(shape: MixerBenchShape(heads: 1, length: 16, headDim: 8, causal: false), seed: 1)
    for (name, t) in good.tensors { try NPY.write(t, to: wdir.appendingPathComponent("\(name).npy").path) }
    let bad = dir.appendingPathComponent("bad")
    try FileManager.default.createDirectory(at: bad, withIntermediateDirectories: true)
    for (name, t) in good.tensors { try NPY.write(name == "k_proj.weight" ? Tensor(shape: [8, 7]) : t, to: bad.appendingPathComponent("\(name).npy").path) }
    let extra = dir.appendingPathComponent("extra")
    try FileManager.default.createDirectory(at: extra, withIntermediateDirectories: true)
    for (name, t) in good.tensors { try NPY.write(t, to: extra.appendingPathComponent("\(name).npy").path) }
    try NPY.write(Tensor(shape: [3]), to: extra.appendingPathComponent("surprise.npy").path)
    let cases: [(args: [String], message: String)] = [
      (["--method", "ponet", "--x", x, "--param", "heads=2"], "needs weights"),
      (["--method", "ponet", "--x", x, "--param", "heads=2", "--weights", bad.path], "k_proj.weight.npy"),
      (["--method", "ponet", "--x", x, "--param", "heads=2", "--weights", extra.path], "surprise"),
      (["--method", "ponet", "--x", x, "--param", "heads=3", "--weights", wdir.path], "heads"),
      (["--method", "ponet", "--x", x, "--param", "heads=2", "--weights", path("nodir")], "no such directory"),
      (["--method", "ponet", "--x", x, "--param", "heads=2", "--weights", wdir.path, "--causal"], "causal"),
      (["--method", "ponet", "--q", q, "--k", q, "--v", q, "--weights", wdir.path], "--x"),
      (["--method", "linear", "--q", q, "--k", q, "--v", q, "--weights", wdir.path], "takes no weights"),
      (["--method", "linear", "--q", q, "--k", q5, "--v", q], "head dim"),
      (["--method", "linear", "--q", q, "--k", q], "--v"),
      (["--method", "linfusion", "--q", q, "--k", q, "--v", q, "--causal"], "causal"),
      (["--method", "linear", "--q", q, "--k", q, "--v", q, "--param", "feature-map=tanh"], "feature-map"),
      (["--method", "nonsense", "--x", x], "unknown mixer"),
      (["--method", "transnormer", "--q", q, "--k", q, "--v", q, "--param", "bogus=1"], "unknown parameter"),
    ]
    for c in cases {
      let out = path("out-\(UUID().uuidString).npy")
      let r = try runSubq(["mix"] + c.args + ["--out", out])
      #expect(r.status == 2, "\(c.args): status \(r.status), stderr \(r.stderr)")
      #expect(r.stderr.hasPrefix("subq: error: ") && r.stderr.contains(c.message), "\(c.args): \(r.stderr)")
      #expect(r.stderr.split(separator: "\n").count == 1, "\(c.args): \(r.stderr)")
      #expect(!FileManager.default.fileExists(atPath: out), "\(c.args) left \(out)")
    }
  }

  @Test func listAndBench() throws {
    let l = try runSubq(["mix", "--list"])
    #expect(l.status == 0)
    for name in ["linear", "transnormer", "linfusion", "ponet", "monarch", "in_linear.weight.npy"] { #expect(l.stdout.contains(name)) }
    let b = try runSubq(["mix-bench", "--n", "200,300", "--repeat", "1", "--heads", "2", "--dim", "16", "--flash-max", "200", "--threads", "2"])
    #expect(b.status == 0, "stderr: \(b.stderr)")
    #expect(b.stdout.contains("causal linear vs causal flash at N=200"))
    #expect(b.stdout.contains("flash (causal) at N=300: skipped"))
    for name in ["transnormer", "linfusion", "ponet", "monarch"] { #expect(b.stdout.contains(name)) }
    let bad = try runSubq(["mix-bench", "--param", "chunk=3"])
    #expect(bad.status == 2 && bad.stderr.contains("prefix"))
  }
}
