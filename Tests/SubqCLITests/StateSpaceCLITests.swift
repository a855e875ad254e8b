import Foundation
import Subquadratic
import SubqTestSupport
import Testing

/// `subq scan`, `subq ssd` and `subq titans` end to end on small files.
@Suite struct StateSpaceCLITests {
  let dir = temporaryDirectory()

  func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

  func write(_ t: Tensor, _ name: String) throws -> String {
    let p = path(name)
    try NPY.write(t, to: p)
    return p
  }

  func scanFiles(batched: Bool) throws -> (SelectiveScanInputs, [String]) {
    let (b, d, l, n) = (2, 4, 37, 5)
    var g = SeededGenerator(seed: 11)
    let x = SelectiveScanInputs(
      u: .randomNormal(shape: [b, d, l], seed: g.next()), delta: .randomNormal(shape: [b, d, l], seed: g.next(), mean: -1),
      A: .randomUniform(shape: [d, n], seed: g.next(), in: -3 ... -0.5), B: .randomNormal(shape: [b, 2, n, l], seed: g.next()),
      C: .randomNormal(shape: [b, n, l], seed: g.next()), D: .randomNormal(shape: [d], seed: g.next()),
      z: .randomNormal(shape: [b, d, l], seed: g.next()), deltaBias: .randomNormal(shape: [d], seed: g.next(), std: 0.3),
      deltaSoftplus: true, initialState: .randomNormal(shape: [b, d, n], seed: g.next()))
    func f(_ t: Tensor, _ name: String) throws -> String { try write(batched ? t : sliceFirst(t), name) }
    let args = ["scan", "--u", try f(x.u, "u.npy"), "--delta", try f(x.delta, "delta.npy"), "--A", try write(x.A, "a.npy"),
                "--B", try f(x.B, "b.npy"), "--C", try f(x.C, "c.npy"), "--D", try write(x.D!, "d.npy"), "--z", try f(x.z!, "z.npy"),
                "--delta-bias", try write(x.deltaBias!, "bias.npy"), "--delta-softplus", "--initial-state", try f(x.initialState!, "h0.npy")]
    return (x, args)
  }

  /// Batch entry 0 without its batch axis.
  func sliceFirst(_ t: Tensor) -> Tensor {
    let inner = t.shape.dropFirst().reduce(1, *)
    return t.withUnsafeBufferPointer { p in Tensor(shape: Array(t.shape.dropFirst())) { o in for i in 0..<inner { o[i] = p[i] } } }
  }

  @Test func scanMatchesReference() throws {
    let (x, args) = try scanFiles(batched: true)
    let r = try runSubq(args + ["--out", path("y.npy"), "--last-state", path("s.npy"), "--chunk", "10"])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    let ref = try StateSpaceReference.selectiveScan(x)
    #expect(relativeError(try NPY.read(path("y.npy")), ref.output) <= 1e-5)
    #expect(relativeError(try NPY.read(path("s.npy")), ref.lastState) <= 1e-5)
  }

  @Test func scanWithoutBatchAxis() throws {
    let (x, args) = try scanFiles(batched: false)
    let r = try runSubq(args + ["--out", path("y1.npy"), "--last-state", path("s1.npy")])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    var one = x
    one.u = sliceFirst(x.u).reshapedOrDie([1] + sliceFirst(x.u).shape)
    one.delta = sliceFirst(x.delta).reshapedOrDie([1] + sliceFirst(x.delta).shape)
    one.B = sliceFirst(x.B).reshapedOrDie([1] + sliceFirst(x.B).shape)
    one.C = sliceFirst(x.C).reshapedOrDie([1] + sliceFirst(x.C).shape)
    one.z = sliceFirst(x.z!).reshapedOrDie([1] + sliceFirst(x.z!).shape)
    one.initialState = sliceFirst(x.initialState!).reshapedOrDie([1] + sliceFirst(x.initialState!).shape)
    let ref = try StateSpaceReference.selectiveScan(one)
    let y = try NPY.read(path("y1.npy")), s = try NPY.read(path("s1.npy"))
    #expect(y.shape == [4, 37] && s.shape == [4, 5])
    #expect(relativeError(y, ref.output) <= 1e-5)
    #expect(relativeError(s, ref.lastState) <= 1e-5)
  }

  @Test func ssdMatchesReference() throws {
    var g = SeededGenerator(seed: 12)
    let (b, l, h, p, gr, n) = (1, 50, 4, 6, 2, 8)
    let x = SSDInputs(
      x: .randomNormal(shape: [b, l, h, p], seed: g.next()), dt: .randomNormal(shape: [b, l, h], seed: g.next(), mean: -1),
      A: .randomUniform(shape: [h], seed: g.next(), in: -4 ... -0.5), B: .randomNormal(shape: [b, l, gr, n], seed: g.next()),
      C: .randomNormal(shape: [b, l, gr, n], seed: g.next()), D: .randomNormal(shape: [h, p], seed: g.next()),
      z: .randomNormal(shape: [b, l, h, p], seed: g.next()), dtBias: .randomNormal(shape: [h], seed: g.next(), std: 0.3), dtSoftplus: true)
    let r = try runSubq(["ssd", "--x", try write(x.x, "x.npy"), "--dt", try write(x.dt, "dt.npy"), "--A", try write(x.A, "a.npy"),
                         "--B", try write(x.B, "b.npy"), "--C", try write(x.C, "c.npy"), "--D", try write(x.D!, "d.npy"),
                         "--z", try write(x.z!, "z.npy"), "--dt-bias", try write(x.dtBias!, "bias.npy"), "--dt-softplus",
                         "--chunk", "16", "--out", path("y.npy"), "--final-state", path("s.npy")])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    let ref = try StateSpaceReference.ssdRecurrence(x)
    #expect(relativeError(try NPY.read(path("y.npy")), ref.output) <= 1e-5)
    #expect(relativeError(try NPY.read(path("s.npy")), ref.finalState) <= 1e-5)
  }

  func writeWeights(_ w: TitansWeights, _ sub: String) throws -> String {
    let wdir = dir.appendingPathComponent(sub)
    try FileManager.default.createDirectory(at: wdir, withIntermediateDirectories: true)
    for (i, m) in w.memory.enumerated() { try NPY.write(m, to: wdir.appendingPathComponent("memory_\(i).npy").path) }
    var files = [("wq", w.query), ("wk", w.key), ("wv", w.value), ("gates", w.gates)]
    if let p = w.persistent {
      files += [("persistent", p), ("attn_wq", w.attentionQuery!), ("attn_wk", w.attentionKey!), ("attn_wv", w.attentionValue!), ("attn_wo", w.attentionOutput!)]
    }
    for (name, t) in files { try NPY.write(t, to: wdir.appendingPathComponent("\(name).npy").path) }
    return wdir.path
  }

  @Test func titansLayers() throws {
    let w = TitansWeights.random(width: 8, hidden: 12, persistent: 2, seed: 5)
    let wdir = try writeWeights(w, "weights")
    let x = Tensor.randomNormal(shape: [2, 30, 8], seed: 6, std: 0.5)
    let xp = try write(x, "tx.npy")
    let fdir = dir.appendingPathComponent("final")
    try FileManager.default.createDirectory(at: fdir, withIntermediateDirectories: true)
    for (arr, layer) in [("lmm", try TitansLayer(arrangement: .memory, chunk: 4)),
                         ("mac", try TitansLayer(arrangement: .memoryAsContext(segment: 10, heads: 2), chunk: 4))] {
      var wl = w
      wl.maxLearningRate = 0.05
      let r = try runSubq(["titans", "--x", xp, "--weights", wdir, "--arrangement", arr, "--chunk", "4", "--segment", "10",
                           "--heads", "2", "--max-lr", "0.05", "--out", path("o-\(arr).npy"), "--final-memory", fdir.path])
      #expect(r.status == 0, "stderr: \(r.stderr)")
      let lib = try layer(x, weights: wl)
      #expect(try NPY.read(path("o-\(arr).npy")) == lib.output)
      let m1 = try NPY.read(fdir.appendingPathComponent("memory_1.npy").path)
      #expect(m1.shape == [2, 12, 8])
    }
  }

  /// Each bad input: exit status 2, one line on stderr naming the problem, no output file.
  @Test func badInputsExitTwoWithoutOutput() throws {
    let (_, args) = try scanFiles(batched: true)
    let badA = try write(Tensor(shape: [3, 5]), "bada.npy")
    var nanU = try NPY.read(path("u.npy"))
    nanU[flat: 40] = .nan
    let nanUPath = try write(nanU, "nanu.npy")
    func replacing(_ flag: String, _ value: String) -> [String] {
      var a = args
      if let i = a.firstIndex(of: flag) { a[i + 1] = value }
      return a
    }
    let w = TitansWeights.random(width: 8, hidden: 12, seed: 5)
    let wdir = try writeWeights(w, "lmm-weights")
    let x = try write(Tensor.randomNormal(shape: [10, 8], seed: 6), "tx1.npy")
    let cases: [(args: [String], message: String)] = [
      (replacing("--A", badA), "expected [D, N]"),
      (replacing("--u", nanUPath), "NaN"),
      (replacing("--z", path("missing.npy")), "no such file"),
      (args + ["--chunk", "0"], "chunk length"),
      (["ssd", "--x", path("u.npy"), "--dt", path("u.npy"), "--A", path("d.npy"), "--B", path("b.npy"), "--C", path("c.npy")], "expected [B, L, H]"),
      (["ssd", "--x", path("u.npy"), "--dt", path("u.npy"), "--A", path("d.npy"), "--B", path("b.npy"), "--C", path("c.npy"), "--chunk", "0"], "chunk"),
      (["titans", "--x", x, "--weights", wdir, "--arrangement", "mac"], "persistent.npy"),
      (["titans", "--x", x, "--weights", wdir, "--max-lr", "3"], "max learning rate"),
      (["titans", "--x", x, "--weights", dir.path], "memory_0.npy"),
    ]
    for c in cases {
      let out = path("out-\(UUID().uuidString).npy"), second = path("second-\(UUID().uuidString).npy")
      let extra = c.args.first == "titans" ? ["--out", out] : ["--out", out, c.args.first == "ssd" ? "--final-state" : "--last-state", second]
      let r = try runSubq(c.args + extra)
      #expect(r.status == 2, "\(c.args): status \(r.status), stderr \(r.stderr)")
      #expect(r.stderr.split(separator: "\n").count == 1, "\(c.args): \(r.stderr)")
      #expect(r.stderr.contains(c.message), "\(c.args): stderr lacks '\(c.message)': \(r.stderr)")
      #expect(!FileManager.default.fileExists(atPath: out) && !FileManager.default.fileExists(atPath: second), "\(c.args): output left behind")
    }
    // A last state that cannot be written removes the output already written.
    let out = path("kept.npy")
    let r = try runSubq(args + ["--out", out, "--last-state", dir.appendingPathComponent("no/such/dir/s.npy").path])
    #expect(r.status == 2 && !FileManager.default.fileExists(atPath: out))
  }
}

extension Tensor {
  func reshapedOrDie(_ s: [Int]) -> Tensor { try! reshaped(s) }
}
