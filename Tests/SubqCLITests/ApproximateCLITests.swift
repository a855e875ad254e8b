import Foundation
import Subquadratic
import SubqTestSupport
import Testing

/// `subq attention`, `subq methods` and `subq bench` with the approximate methods.
@Suite struct ApproximateCLITests {
  let dir = temporaryDirectory("subq-approx")

  func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

  func inputs() throws -> (q: String, k: String, v: String) {
    let q = path("q.npy"), k = path("k.npy"), v = path("v.npy")
    try NPY.write(Tensor.randomNormal(shape: [1, 2, 300, 16], seed: 1), to: q)
    try NPY.write(Tensor.randomNormal(shape: [1, 1, 300, 16], seed: 2), to: k)
    try NPY.write(Tensor.randomNormal(shape: [1, 1, 300, 16], seed: 3), to: v)
    return (q, k, v)
  }

  /// `--param` and `--seed` reach the method: the file output equals the library call with the
  /// same parameters, the same seed gives the same file, another seed another output.
  @Test func hyperParametersAndSeed() throws {
    let (q, k, v) = try inputs()
    func run(_ seed: Int, _ out: String) throws -> Tensor {
      let r = try runSubq(["attention", "--method", "hyper", "--q", q, "--k", k, "--v", v, "--causal",
                           "--param", "block=16", "--param", "hyper.samples=8", "--param", "min-length=32",
                           "--param", "flash.block-q=32", "--seed", "\(seed)", "--out", path(out)])
      #expect(r.status == 0, "stderr: \(r.stderr)")
      return try NPY.read(path(out))
    }
    let a = try run(3, "a.npy"), b = try run(3, "b.npy"), c = try run(4, "c.npy")
    #expect(a == b)
    #expect(a != c)
    let m = try HyperAttention(blockSize: 16, sampleSize: 8, minLength: 32, seed: 3)
    let lib = try m.attention(queries: NPY.read(q), keys: NPY.read(k), values: NPY.read(v), options: AttentionOptions(causal: true))
    #expect(a == lib.output)
  }

  /// Bad parameters and unsupported options: status 2, one line naming the problem, no file.
  @Test func badParametersExitTwoWithoutOutput() throws {
    let (q, k, v) = try inputs()
    let cases: [([String], String)] = [
      (["--method", "hip", "--seed", "3"], "attention.hip: seed = 3: unknown parameter"),
      (["--method", "hip", "--param", "k=7"], "attention.hip: k = 7: must be a positive multiple of block-k (2)"),
      (["--method", "hyper", "--param", "projections=17"], "attention.hyper: projections = 17: must be in 1...16"),
      (["--method", "probsparse", "--lse", path("lse.npy")], "attention.probsparse: log-sum-exp is not supported"),
      (["--method", "hyper", "--window", "8,0"], "attention.hyper: window is not supported"),
      (["--method", "probsparse", "--softcap", "30"], "attention.probsparse: softcap is not supported"),
    ]
    for (args, message) in cases {
      let out = path("o-\(UUID().uuidString).npy")
      let r = try runSubq(["attention", "--q", q, "--k", k, "--v", v, "--out", out] + args)
      #expect(r.status == 2, "\(args): status \(r.status)")
      #expect(r.stderr.hasPrefix("subq: error: \(message)"), "\(args): \(r.stderr)")
      #expect(r.stderr.split(separator: "\n").count == 1, "\(args): \(r.stderr)")
      #expect(!FileManager.default.fileExists(atPath: out), "\(args) left \(out)")
    }
  }

  @Test func methodsListsParametersAndPapers() throws {
    let r = try runSubq(["methods"])
    #expect(r.status == 0)
    for expected in ["hyper  [approximate]", "--param projections=7", "--param min-length=4096", "HyperAttention",
                     "hip  [approximate]", "--param k=512", "--param block-q=128", "Hierarchically Pruned Attention",
                     "probsparse  [approximate]", "--param factor=5", "Informer"] {
      #expect(r.stdout.contains(expected), "missing \(expected)")
    }
  }

  /// The bench reports error and speed-up against flash run on the same structured inputs.
  @Test func benchReportsErrorAndSpeedupAgainstFlash() throws {
    let r = try runSubq(["bench", "--method", "probsparse", "--n", "600", "--heads", "2", "--data", "structured",
                         "--causal", "--repeat", "1"])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    for column in ["err vs flash", "flash (1 run)", "speed-up", "data=structured"] {
      #expect(r.stdout.contains(column), "missing \(column): \(r.stdout)")
    }
    let j = try runSubq(["bench", "--method", "hip", "--n", "500", "--heads", "2", "--repeat", "1", "--json", "--param", "k=64"])
    #expect(j.status == 0, "stderr: \(j.stderr)")
    let json = try JSONSerialization.jsonObject(with: Data(j.stdout.utf8)) as? [String: Any]
    let row = try #require((json?["rows"] as? [[String: Any]])?.first)
    #expect((row["errorVsFlash"] as? Double).map { $0 > 0 && $0 < 10 } == true, "\(row)")
    #expect((row["flashSeconds"] as? Double).map { $0 > 0 } == true, "\(row)")
  }
}
