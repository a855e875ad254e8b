import Foundation
import Subquadratic
import SubqTestSupport
import Testing

/// `subq attention-backward` end to end on small files.
@Suite struct BackwardCLITests {
  let dir = temporaryDirectory()

  func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

  func write(_ t: Tensor, _ name: String) throws -> String {
    let p = path(name)
    try NPY.write(t, to: p)
    return p
  }

  /// Tolerance 1e-4 relative (Frobenius), the flash backward's tolerance against Float64.
  @Test("flash and naive gradients through files", arguments: ["flash", "naive"])
  func gradientsMatchReference(method: String) throws {
    let qT = Tensor.randomNormal(shape: [4, 70, 24], seed: 1)    // [H, N, D]
    let kT = Tensor.randomNormal(shape: [2, 90, 24], seed: 2)    // grouped-query
    let vT = Tensor.randomNormal(shape: [2, 90, 16], seed: 3)
    let gT = Tensor.randomNormal(shape: [4, 70, 16], seed: 4)
    let q = try write(qT, "q.npy"), k = try write(kT, "k.npy"), v = try write(vT, "v.npy"), g = try write(gT, "do.npy")
    let r = try runSubq(["attention-backward", "--method", method, "--q", q, "--k", k, "--v", v, "--dout", g, "--causal", "--softcap", "4",
                         "--window", "30,-1", "--dq", path("dq.npy"), "--dk", path("dk.npy"), "--dv", path("dv.npy")])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    let dq = try NPY.read(path("dq.npy")), dk = try NPY.read(path("dk.npy")), dv = try NPY.read(path("dv.npy"))
    #expect(dq.shape == [4, 70, 24] && dk.shape == [2, 90, 24] && dv.shape == [2, 90, 16])
    let ref = try NaiveAttention.referenceGradients(
      queries: qT.reshaped([1, 4, 70, 24]), keys: kT.reshaped([1, 2, 90, 24]), values: vT.reshaped([1, 2, 90, 16]),
      outputGradient: gT.reshaped([1, 4, 70, 16]),
      options: AttentionOptions(causal: true, window: AttentionWindow(left: 30, right: nil), softcap: 4))
    #expect(relativeError(dq, ref.dq) <= 1e-4)
    #expect(relativeError(dk, ref.dk) <= 1e-4)
    #expect(relativeError(dv, ref.dv) <= 1e-4)
  }

  /// Each bad input: exit status 2, one line on stderr naming the problem, no output file.
  @Test func badInputsExitTwoWithoutOutput() throws {
    let q = try write(Tensor.randomNormal(shape: [2, 8, 16], seed: 1), "q.npy")
    let k = try write(Tensor.randomNormal(shape: [2, 8, 16], seed: 2), "k.npy")
    let v = try write(Tensor.randomNormal(shape: [2, 8, 16], seed: 3), "v.npy")
    let g = try write(Tensor.randomNormal(shape: [2, 8, 16], seed: 4), "do.npy")
    let gBad = try write(Tensor.randomNormal(shape: [2, 7, 16], seed: 4), "dobad.npy")
    var nanG = Tensor.randomNormal(shape: [2, 8, 16], seed: 4)
    nanG[flat: 9] = .nan
    let gNaN = try write(nanG, "donan.npy")
    let cases: [(args: [String], message: String)] = [
      (["--q", q, "--k", k, "--v", v, "--dout", gBad], "dO has shape"),
      (["--q", q, "--k", k, "--v", v, "--dout", gNaN], "NaN"),
      (["--q", q, "--k", k, "--v", v, "--dout", path("missing.npy")], "no such file"),
      (["--q", q, "--k", k, "--v", v, "--dout", g, "--softcap", "0"], "softcap"),
      (["--q", q, "--k", k, "--v", v, "--dout", g, "--method", "nonsense"], "unknown method"),
    ]
    for c in cases {
      let id = UUID().uuidString
      let outs = [path("dq-\(id).npy"), path("dk-\(id).npy"), path("dv-\(id).npy")]
      let r = try runSubq(["attention-backward"] + c.args + ["--dq", outs[0], "--dk", outs[1], "--dv", outs[2]])
      #expect(r.status == 2, "\(c.args): status \(r.status), stderr \(r.stderr)")
      #expect(r.stderr.split(separator: "\n").count == 1, "\(c.args): \(r.stderr)")
      #expect(r.stderr.contains(c.message), "\(c.args): stderr lacks '\(c.message)': \(r.stderr)")
      for o in outs { #expect(!FileManager.default.fileExists(atPath: o), "\(c.args): \(o) left behind") }
    }
    let same = try runSubq(["attention-backward", "--q", q, "--k", k, "--v", v, "--dout", g, "--dq", path("x.npy"), "--dk", path("x.npy"), "--dv", path("y.npy")])
    #expect(same.status == 2 && same.stderr.contains("must differ"))
    // An output directory that does not exist: nothing is left behind.
    let r = try runSubq(["attention-backward", "--q", q, "--k", k, "--v", v, "--dout", g, "--dq", path("ok-dq.npy"), "--dk", path("ok-dk.npy"),
                         "--dv", path("no/such/dir/dv.npy")])
    #expect(r.status == 2)
    #expect(!FileManager.default.fileExists(atPath: path("ok-dq.npy")) && !FileManager.default.fileExists(atPath: path("ok-dk.npy")))
  }
}
