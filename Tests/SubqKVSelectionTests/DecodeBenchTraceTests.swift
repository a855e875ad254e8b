import Foundation
import SubqCore
import SubqTestSupport
import Testing

/// `subq decode-bench --trace DIR`: replaying recorded attention (q.npy, k.npy, v.npy) as decoding.
@Suite(.serialized)
struct DecodeBenchTraceTests {
  /// A small trace: Hq = 4, Hkv = 2, D = 16, N = 260, Gaussian keys and values, queries of
  /// varying norm (so that attention is peaked for some rows and flat for others).
  func writeTrace(_ dir: URL, n: Int = 260, seed: UInt64) throws -> (q: Tensor, k: Tensor, v: Tensor) {
    var g = SeededGenerator(seed: seed)
    let (Hq, Hkv, D) = (4, 2, 16)
    let k = Tensor(shape: [Hkv, n, D]) { p in for i in p.indices { p[i] = Float(g.nextNormal()) } }
    let v = Tensor(shape: [Hkv, n, D]) { p in for i in p.indices { p[i] = Float(g.nextNormal()) } }
    let q = Tensor(shape: [Hq, n, D]) { p in
      for r in 0..<(Hq * n) {
        let s = Float(0.5 + 2.5 * g.nextUnit())
        for d in 0..<D { p[r * D + d] = s * Float(g.nextNormal()) }
      }
    }
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    try NPY.write(q, to: dir.appendingPathComponent("q.npy").path)
    try NPY.write(k, to: dir.appendingPathComponent("k.npy").path)
    try NPY.write(v, to: dir.appendingPathComponent("v.npy").path)
    return (q, k, v)
  }

  func report(_ r: CommandResult) throws -> [String: Any] {
    let top = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
    return try #require((top?["reports"] as? [[String: Any]])?.first)
  }

  /// Float64 concentration of the decode queries at positions `context + s` (s in `measured`)
  /// over keys `0...context + s`: mean fraction of keys holding 90 % of the weight, mean weight
  /// on the top `k`.
  func concentration(_ t: (q: Tensor, k: Tensor, v: Tensor), context: Int, measured: Range<Int>, k topK: Int) -> (Double, Double) {
    let Hq = t.q.shape[0], N = t.q.shape[1], D = t.q.shape[2], G = Hq / t.k.shape[0]
    let qs = t.q.scalars, ks = t.k.scalars
    var f90 = 0.0, top = 0.0, rows = 0.0
    for s in measured {
      let pos = context + s, n = pos + 1
      for h in 0..<Hq {
        var sc = (0..<n).map { j in
          (0..<D).reduce(0.0) { $0 + Double(qs[(h * N + pos) * D + $1]) * Double(ks[((h / G) * N + j) * D + $1]) } / Double(D).squareRoot()
        }
        sc.sort(by: >)
        let w = sc.map { Foundation.exp($0 - sc[0]) }
        let z = w.reduce(0, +)
        var acc = 0.0, need = n
        for (i, x) in w.enumerated() { acc += x; if acc >= 0.9 * z { need = i + 1; break } }
        f90 += Double(need) / Double(n)
        top += w.prefix(topK).reduce(0, +) / z
        rows += 1
      }
    }
    return (f90 / rows, top / rows)
  }

  /// The replay takes the shape from the files, decodes positions context..<N, and measures on
  /// them: the data's concentration equals a Float64 computation on the recorded tensors at those
  /// positions (an off-by-one position, a wrong kv head for a query head or keys missing from the
  /// cache change it by ≥ 1e-3), and TokenSelect with a budget covering every key is exact.
  @Test func replaysTheRecordedPositions() throws {
    let dir = temporaryDirectory("subq-trace")
    defer { try? FileManager.default.removeItem(at: dir) }
    let t = try writeTrace(dir, seed: testSeed(71))
    let r = try runSubq(["decode-bench", "--method", "tokenselect", "--trace", dir.path, "--steps", "3", "--warmup", "2", "--recall-k", "20",
                         "--param", "top-k=300", "--param", "cache=false", "--json", "--threads", "2"])
    #expect(r.status == 0, "\(r.stderr)")
    let rep = try report(r)
    #expect(rep["context"] as? Int == 255 && rep["heads"] as? Int == 4 && rep["kvHeads"] as? Int == 2 && rep["dim"] as? Int == 16)
    #expect(rep["data"] as? String == "trace" && rep["trace"] as? String == dir.path)
    let (f90, top) = concentration(t, context: 255, measured: 2..<5, k: 20)
    let gotF90 = try #require(rep["keysFor90PercentMass"] as? Double), gotTop = try #require(rep["topKMass"] as? Double)
    #expect(abs(gotF90 - f90) <= 1e-9 && abs(gotTop - top) <= 1e-5, "concentration \(gotF90), \(gotTop) vs Float64 \(f90), \(top)")
    #expect(try #require(rep["relativeError"] as? Double) <= 1e-5)
    #expect(rep["recallAttended"] as? Double == 1)

    // A shorter context from the same trace: positions 100..<105 decoded.
    let short = try runSubq(["decode-bench", "--method", "tokenselect", "--trace", dir.path, "--context", "100", "--steps", "3", "--warmup", "2",
                             "--recall-k", "20", "--json", "--heads", "4", "--kv-heads", "2", "--dim", "16"])
    #expect(short.status == 0, "\(short.stderr)")
    let srep = try report(short)
    let (sf90, stop) = concentration(t, context: 100, measured: 2..<5, k: 20)
    #expect(srep["context"] as? Int == 100)
    #expect(abs((srep["keysFor90PercentMass"] as? Double ?? -1) - sf90) <= 1e-9 && abs((srep["topKMass"] as? Double ?? -1) - stop) <= 1e-5)
  }

  /// RetrievalAttention builds its index from the context's recorded queries and searches it.
  @Test func retrievalRunsOnATrace() throws {
    let dir = temporaryDirectory("subq-trace")
    defer { try? FileManager.default.removeItem(at: dir) }
    _ = try writeTrace(dir, seed: testSeed(72))
    let r = try runSubq(["decode-bench", "--method", "retrieval", "--trace", dir.path, "--steps", "3", "--recall-k", "20",
                         "--param", "top-k=20", "--param", "width=40", "--param", "window=8", "--json"])
    #expect(r.status == 0, "\(r.stderr)")
    let rep = try report(r)
    #expect(rep["context"] as? Int == 255 && rep["buildQueries"] as? Int == 4 * 255 / 2)
    let recall = try #require(rep["recallSearch"] as? Double)
    #expect(recall > 0.3 && recall <= 1, "search recall \(recall)")
    // With the whole context retrievable and a pool covering it, the search is exact.
    let full = try runSubq(["decode-bench", "--method", "retrieval", "--trace", dir.path, "--steps", "3", "--recall-k", "20",
                            "--param", "top-k=300", "--param", "width=300", "--param", "exact=true", "--json"])
    #expect(full.status == 0, "\(full.stderr)")
    #expect(try #require(report(full)["relativeError"] as? Double) <= 1e-5)
  }

  /// Missing or inconsistent files and options that contradict the trace: status 2, one line.
  @Test func badTracesAndContradictionsExitTwo() throws {
    let root = temporaryDirectory("subq-trace")
    defer { try? FileManager.default.removeItem(at: root) }
    let good = root.appendingPathComponent("good")
    let t = try writeTrace(good, seed: testSeed(73))
    func variant(_ name: String, _ edit: (URL) throws -> Void) throws -> String {
      let d = root.appendingPathComponent(name)
      _ = try writeTrace(d, seed: 1)
      try edit(d)
      return d.path
    }
    let noV = try variant("nov") { try FileManager.default.removeItem(at: $0.appendingPathComponent("v.npy")) }
    let rank2 = try variant("rank2") { try NPY.write(Tensor(shape: [4, 16]), to: $0.appendingPathComponent("q.npy").path) }
    let shortV = try variant("shortv") { try NPY.write(Tensor(shape: [2, 250, 16]), to: $0.appendingPathComponent("v.npy").path) }
    let otherD = try variant("otherd") { try NPY.write(Tensor(shape: [4, 260, 8]), to: $0.appendingPathComponent("q.npy").path) }
    let valueD = try variant("valued") { try NPY.write(Tensor(shape: [2, 260, 8]), to: $0.appendingPathComponent("v.npy").path) }
    let heads3 = try variant("heads3") { try NPY.write(Tensor(shape: [3, 260, 16]), to: $0.appendingPathComponent("q.npy").path) }
    let nan = try variant("nan") {
      var k = t.k
      k.withUnsafeMutableBufferPointer { $0[16 * 7 + 3] = .nan }
      try NPY.write(k, to: $0.appendingPathComponent("k.npy").path)
    }
    let cases: [([String], String)] = [
      (["--trace", root.appendingPathComponent("none").path], "no such directory"),
      (["--trace", noV], "v.npy: no such file"),
      (["--trace", rank2], "q.npy has shape [4, 16]: expected rank 3"),
      (["--trace", shortV], "has 250 positions, k.npy has 260"),
      (["--trace", otherD], "head dimension 8 differs"),
      (["--trace", valueD], "value dimension 8"),
      (["--trace", heads3], "not a multiple"),
      (["--trace", nan], "k.npy holds NaN at index [0, 7, 3]"),
      (["--trace", good.path, "--heads", "8"], "--heads = 8: the trace"),
      (["--trace", good.path, "--kv-heads", "1"], "--kv-heads = 1: the trace"),
      (["--trace", good.path, "--dim", "32"], "--dim = 32: the trace"),
      (["--trace", good.path, "--batch", "2"], "--batch = 2"),
      (["--trace", good.path, "--context", "256"], "--context = 256: the trace"),
      (["--trace", good.path, "--steps", "300"], "--steps = 300"),
      (["--trace", good.path, "--data", "structured"], "--data is not supported"),
      (["--trace", good.path, "--seed", "3"], "--seed is not supported"),
      (["--trace", good.path, "--prefill-queries", "8"], "--prefill-queries is not supported"),
      (["--trace", good.path, "--clusters", "8"], "--clusters is not supported"),
    ]
    for (args, needle) in cases {
      let r = try runSubq(["decode-bench", "--method", "retrieval"] + args)
      #expect(r.status == 2, "\(args): status \(r.status), \(r.stderr)")
      #expect(r.stderr.contains(needle) && r.stderr.split(separator: "\n").count == 1, "\(args): \(r.stderr)")
    }
    let splitkv = try runSubq(["decode-bench", "--trace", good.path, "--peak-bandwidth", "1"])
    #expect(splitkv.status == 2 && splitkv.stderr.contains("--trace"), "\(splitkv.stderr)")
  }
}
