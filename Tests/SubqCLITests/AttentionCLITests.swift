import Foundation
import Subquadratic
import SubqTestSupport
import Testing

/// `subq attention` end to end on small files.
@Suite struct AttentionCLITests {
  let dir = temporaryDirectory()

  func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

  func write(_ t: Tensor, _ name: String) throws -> String {
    let p = path(name)
    try NPY.write(t, to: p)
    return p
  }

  @Test func flashMatchesReferenceThroughFiles() throws {
    let q = try write(Tensor.randomNormal(shape: [2, 70, 32], seed: 1), "q.npy")   // [H, N, D]
    let k = try write(Tensor.randomNormal(shape: [1, 90, 32], seed: 2), "k.npy")   // MQA
    let v = try write(Tensor.randomNormal(shape: [1, 90, 16], seed: 3), "v.npy")
    let r = try runSubq(["attention", "--q", q, "--k", k, "--v", v, "--causal", "--out", path("o.npy"), "--lse", path("lse.npy")])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    let o = try NPY.read(path("o.npy"))
    #expect(o.shape == [2, 70, 16])
    let lse = try NPY.read(path("lse.npy"))
    #expect(lse.shape == [1, 2, 70])
    let ref = try NaiveAttention.reference(
      queries: NPY.read(q).reshaped([1, 2, 70, 32]), keys: NPY.read(k).reshaped([1, 1, 90, 32]),
      values: NPY.read(v).reshaped([1, 1, 90, 16]), options: AttentionOptions(causal: true))
    #expect(relativeError(o, ref.output) <= 1e-5)
  }

  @Test func bshdLayoutKeepsRank() throws {
    let q = try write(Tensor.randomNormal(shape: [40, 2, 16], seed: 4), "q.npy")   // [N, H, D]
    let k = try write(Tensor.randomNormal(shape: [50, 2, 16], seed: 5), "k.npy")
    let v = try write(Tensor.randomNormal(shape: [50, 2, 16], seed: 6), "v.npy")
    let r = try runSubq(["attention", "--layout", "bshd", "--q", q, "--k", k, "--v", v, "--window", "8,-1", "--out", path("o.npy")])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    let o = try NPY.read(path("o.npy"))
    #expect(o.shape == [40, 2, 16])
    let ref = try NaiveAttention.reference(
      queries: NPY.read(q).reshaped([1, 40, 2, 16]), keys: NPY.read(k).reshaped([1, 50, 2, 16]),
      values: NPY.read(v).reshaped([1, 50, 2, 16]),
      options: AttentionOptions(window: AttentionWindow(left: 8, right: nil), layout: .bshd))
    #expect(relativeError(o, ref.output) <= 1e-5)
  }

  /// Each bad input: exit status 2, one line on stderr naming the problem, no output file.
  @Test func badInputsExitTwoWithoutOutput() throws {
    let q = try write(Tensor.randomNormal(shape: [2, 8, 16], seed: 1), "q.npy")
    let k = try write(Tensor.randomNormal(shape: [2, 8, 16], seed: 2), "k.npy")
    let v = try write(Tensor.randomNormal(shape: [2, 8, 16], seed: 3), "v.npy")
    let kBad = try write(Tensor.randomNormal(shape: [2, 8, 15], seed: 2), "kbad.npy")
    let k3 = try write(Tensor.randomNormal(shape: [3, 8, 16], seed: 2), "k3.npy")
    var nanQ = Tensor.randomNormal(shape: [2, 8, 16], seed: 1)
    nanQ[flat: 17] = .nan
    let qNaN = try write(nanQ, "qnan.npy")
    let qEmpty = try write(Tensor(shape: [2, 0, 16]), "qempty.npy")
    try writeRawNPY(dir.appendingPathComponent("fortran.npy"), header: "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 8, 16), }", payload: Data(count: 2 * 8 * 16 * 4))
    try Data("not an npy file".utf8).write(to: dir.appendingPathComponent("garbage.npy"))
    let cases: [(args: [String], message: String)] = [
      (["--q", q, "--k", kBad, "--v", v], "head dim"),
      (["--q", q, "--k", k3, "--v", k3], "multiple of key/value heads"),
      (["--q", qNaN, "--k", k, "--v", v], "NaN"),
      (["--q", qEmpty, "--k", k, "--v", v], "empty sequence"),
      (["--q", q, "--k", k, "--v", v, "--window", "3"], "--window"),
      (["--q", q, "--k", k, "--v", v, "--window", "-5,2"], "negative"),
      (["--q", path("fortran.npy"), "--k", k, "--v", v], "Fortran"),
      (["--q", path("garbage.npy"), "--k", k, "--v", v], "not a valid .npy"),
      (["--q", path("missing.npy"), "--k", k, "--v", v], "no such file"),
      (["--q", q, "--k", k, "--v", v, "--method", "nonsense"], "unknown method"),
      (["--q", q, "--k", k, "--v", v, "--param", "block-k=0"], "block-k"),
      (["--q", q, "--k", k, "--v", v, "--param", "bogus=1"], "unknown parameter"),
      (["--q", q, "--k", k, "--v", v, "--softcap", "-1"], "softcap"),
      (["--q", q, "--k", k, "--v", v, "--no-such-option"], "no-such-option"),
    ]
    for c in cases {
      let out = path("out-\(UUID().uuidString).npy")
      let r = try runSubq(["attention"] + c.args + ["--out", out])
      #expect(r.status == 2, "\(c.args): status \(r.status), stderr \(r.stderr)")
      let lines = r.stderr.split(separator: "\n")
      #expect(lines.count == 1, "\(c.args): stderr has \(lines.count) lines: \(r.stderr)")
      #expect(r.stderr.contains(c.message), "\(c.args): stderr lacks '\(c.message)': \(r.stderr)")
      #expect(!FileManager.default.fileExists(atPath: out), "\(c.args): output file left behind")
    }
    // NaN accepted when allowed.
    let r = try runSubq(["attention", "--q", qNaN, "--k", k, "--v", v, "--allow-nonfinite", "--out", path("ok.npy")])
    #expect(r.status == 0, "stderr: \(r.stderr)")

    // The tensor cache's environment variable is checked before anything runs.
    let out = path("cache.npy")
    let bad = try runSubq(["attention", "--q", q, "--k", k, "--v", v, "--out", out], environment: ["SUBQ_TENSOR_CACHE_MB": "big"])
    #expect(bad.status == 2 && bad.stderr.split(separator: "\n").count == 1, "stderr: \(bad.stderr)")
    #expect(bad.stderr.contains("SUBQ_TENSOR_CACHE_MB = big"), "stderr: \(bad.stderr)")
    #expect(!FileManager.default.fileExists(atPath: out))
    let off = try runSubq(["attention", "--q", q, "--k", k, "--v", v, "--out", out], environment: ["SUBQ_TENSOR_CACHE_MB": "0"])
    #expect(off.status == 0, "stderr: \(off.stderr)")
  }

  @Test func methodsAndHelp() throws {
    let m = try runSubq(["methods"])
    #expect(m.status == 0)
    #expect(m.stdout.contains("flash") && m.stdout.contains("naive"))
    let h = try runSubq(["attention", "--help"])
    #expect(h.status == 0)
    #expect(h.stdout.contains("--causal-align"))
  }
}
