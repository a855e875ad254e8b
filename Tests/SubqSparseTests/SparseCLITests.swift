import Foundation
import Subquadratic
import SubqTestSupport
import Testing

/// `subq attention` with the neighborhood, sinks and combiner flags, end to end on .npy files.
@Suite struct SparseCLITests {
  let dir = temporaryDirectory("subq-sparse-cli")

  func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

  func write(_ t: Tensor, _ name: String) throws -> String {
    let p = path(name)
    try NPY.write(t, to: p)
    return p
  }

  /// Runs `subq attention` and compares its output with the library's on the same inputs.
  func matches(_ args: [String], _ method: any AttentionMethod, causal: Bool = false,
               q: Tensor, k: Tensor, v: Tensor) throws {
    let (qp, kp, vp) = (try write(q, "q.npy"), try write(k, "k.npy"), try write(v, "v.npy"))
    let out = path("o-\(UUID().uuidString).npy")
    let r = try runSubq(["attention", "--q", qp, "--k", kp, "--v", vp, "--out", out] + args)
    #expect(r.status == 0, "\(args): \(r.stderr)")
    guard r.status == 0 else { return }
    let o = try NPY.read(out)
    let lib = try method.attention(queries: q.reshaped([1] + q.shape), keys: k.reshaped([1] + k.shape),
                                   values: v.reshaped([1] + v.shape), options: AttentionOptions(causal: causal))
    #expect(o.shape == q.shape.dropLast() + [v.shape.last!])
    #expect(o.scalars == lib.output.scalars, "\(args)")
  }

  @Test func neighborhoodFlags() throws {
    let q = Tensor.randomNormal(shape: [2, 12 * 13, 16], seed: 1)   // [H, N, D], grid 12×13
    let k = Tensor.randomNormal(shape: [1, 12 * 13, 16], seed: 2)
    let v = Tensor.randomNormal(shape: [1, 12 * 13, 8], seed: 3)
    let bias = Tensor.randomNormal(shape: [2, 9, 5], seed: 4)
    let rpb = try write(bias, "rpb.npy")
    try matches(["--method", "neighborhood", "--grid", "12x13", "--kernel", "5x3", "--dilation", "2x1", "--causal-axes", "1,0", "--rpb", rpb],
                try NeighborhoodAttention(grid: [12, 13], kernel: [5, 3], dilation: [2, 1], causalAxes: [true, false], relativePositionBias: bias),
                q: q, k: k, v: v)
    try matches(["--method", "neighborhood", "--param", "grid=12x13", "--kernel", "4"],
                try NeighborhoodAttention(grid: [12, 13], kernel: [4]), q: q, k: k, v: v)
  }

  @Test func sinksFlags() throws {
    let q = Tensor.randomNormal(shape: [2, 150, 16], seed: 5)
    let k = Tensor.randomNormal(shape: [2, 150, 16], seed: 6)
    let v = Tensor.randomNormal(shape: [2, 150, 16], seed: 7)
    try matches(["--method", "sinks", "--sinks", "3", "--window", "20"], try SinkAttention(sinks: 3, window: 20), q: q, k: k, v: v)
    try matches(["--method", "sinks", "--window", "64", "--causal"], try SinkAttention(sinks: 4, window: 64), causal: true, q: q, k: k, v: v)
  }

  @Test func combinerFlags() throws {
    let q = Tensor.randomNormal(shape: [2, 150, 16], seed: 8)
    let k = Tensor.randomNormal(shape: [1, 150, 16], seed: 9)
    let v = Tensor.randomNormal(shape: [1, 150, 16], seed: 10)
    try matches(["--method", "combiner", "--variant", "axial", "--block", "16", "--causal"],
                try CombinerAttention(variant: .axial, block: 16), causal: true, q: q, k: k, v: v)
    try matches(["--method", "combiner", "--variant", "logsparse", "--causal"], try CombinerAttention(variant: .logsparse), causal: true,
                q: q, k: k, v: v)
    try matches(["--method", "combiner"], try CombinerAttention(), q: q, k: k, v: v)
  }

  /// A flag for another method, a bad value or a conflict: status 2, one line naming it, no file.
  @Test func badFlagsExitTwoWithoutOutput() throws {
    let q = try write(Tensor.randomNormal(shape: [1, 64, 8], seed: 1), "q.npy")
    let rpbBad = try write(Tensor(shape: [1, 3, 3]), "rpbbad.npy")
    let base = ["--q", q, "--k", q, "--v", q]
    let cases: [([String], String)] = [
      (["--method", "flash", "--grid", "8x8"], "--grid"),
      (["--method", "sinks", "--kernel", "3"], "applies to --method neighborhood"),
      (["--method", "neighborhood", "--sinks", "4"], "applies to --method sinks"),
      (["--method", "flash", "--variant", "axial"], "applies to --method combiner"),
      (["--method", "sinks", "--block", "8"], "--block"),
      (["--method", "neighborhood", "--grid", "8x9"], "holds 72 tokens"),
      (["--method", "neighborhood", "--grid", "8x8", "--kernel", "9"], "exceeds the axis length"),
      (["--method", "neighborhood", "--grid", "8x8", "--param", "grid=8x8"], "give it once"),
      (["--method", "neighborhood", "--grid", "8x8", "--kernel", "3", "--rpb", rpbBad], "rpb"),
      (["--method", "neighborhood", "--grid", "8x8", "--rpb", path("missing.npy")], "missing.npy"),
      (["--method", "neighborhood", "--grid", "8x8", "--causal-axes", "1,2"], "causal-axes"),
      (["--method", "neighborhood", "--grid", "8x8", "--causal"], "causal is not supported"),
      (["--method", "sinks", "--window", "3,4"], "one integer"),
      (["--method", "sinks", "--sinks", "-1"], "sinks"),
      (["--method", "combiner", "--variant", "mixture"], "variant"),
      (["--method", "combiner", "--variant", "logsparse", "--block", "8", "--causal"], "block"),
      (["--method", "combiner", "--variant", "logsparse"], "causal"),
    ]
    for (args, message) in cases {
      let out = path("out-\(UUID().uuidString).npy")
      let r = try runSubq(["attention"] + base + args + ["--out", out])
      #expect(r.status == 2, "\(args): status \(r.status)")
      #expect(r.stderr.hasPrefix("subq: error:") && r.stderr.contains(message), "\(args): \(r.stderr)")
      #expect(r.stderr.split(separator: "\n").count == 1, "\(args): \(r.stderr)")
      #expect(!FileManager.default.fileExists(atPath: out), "\(args) left \(out)")
    }
  }

  @Test func methodsListsTheNewMethods() throws {
    let r = try runSubq(["methods"])
    #expect(r.status == 0)
    for name in ["neighborhood  [exact over its key pattern]", "sinks  [exact over its key pattern]", "combiner  [approximate]",
                 "--param grid=", "--param window=1024", "--param variant=fixed"] {
      #expect(r.stdout.contains(name), "missing \(name)")
    }
  }
}
