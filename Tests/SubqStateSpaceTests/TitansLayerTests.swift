import Foundation
import Subquadratic
import SubqTestSupport
import Testing

/// Titans layers (LMM and MAC) against a plain Float64 rendering of the same equations.
///
/// Tolerance: relative Frobenius error ≤ 1e-4. The Float32 path rounds projections, softmax
/// attention, two memory reads and the chunked memory update (~1e-6 each); the memory's
/// test-time learning then feeds those errors through later segments, so errors reach ~1e-5.
/// A wrong mask, segment boundary, gate or update order costs ≥ 1e-2.
struct TitansLayerTests {
  typealias MLP = StateSpaceReference.MLP

  /// [n, k]·[k, m] in Double.
  static func mm(_ a: [Double], _ n: Int, _ k: Int, _ w: Tensor) -> [Double] {
    let m = w.shape[1], wv = w.scalars.map(Double.init)
    var o = [Double](repeating: 0, count: n * m)
    for i in 0..<n { for r in 0..<k { for c in 0..<m { o[i * m + c] += a[i * k + r] * wv[r * m + c] } } }
    return o
  }

  static func sigmoid(_ x: Double) -> Double { 1 / (1 + Foundation.exp(-x)) }

  /// Stores rows of `y` (keys/values/gates from y) token by token with chunk-start gradients.
  static func memorize(_ mem: inout MLP, _ mom: inout [[Double]], _ y: [Double], _ n: Int, _ d: Int, _ w: TitansWeights, chunk: Int) {
    let k = mm(y, n, d, w.key), v = mm(y, n, d, w.value)
    let g = w.gates.scalars.map(Double.init), lr = Double(w.maxLearningRate)
    let (d0, dm) = (w.key.shape[1], w.value.shape[1])
    var start = mem
    for t in 0..<n {
      if t % chunk == 0 { start = mem }
      var z = [g[d * 3], g[d * 3 + 1], g[d * 3 + 2]]
      for c in 0..<d { for j in 0..<3 { z[j] += y[t * d + c] * g[c * 3 + j] } }
      let th = lr * sigmoid(z[0]), et = sigmoid(z[1]), al = sigmoid(z[2])
      let grad = start.gradient(Array(k[(t * d0)..<((t + 1) * d0)]), Array(v[(t * dm)..<((t + 1) * dm)]))
      for l in mem.layers.indices {
        for i in mem.layers[l].indices {
          mom[l][i] = et * mom[l][i] - th * grad[l][i]
          mem.layers[l][i] = (1 - al) * mem.layers[l][i] + mom[l][i]
        }
      }
    }
  }

  static func read(_ mem: MLP, _ q: [Double], _ n: Int, _ d0: Int) -> [Double] {
    (0..<n).flatMap { mem(Array(q[($0 * d0)..<(($0 + 1) * d0)])) }
  }

  /// LMM in Double: each token reads the memory as of its chunk's start.
  static func referenceLMM(_ x: [Double], _ n: Int, _ d: Int, _ w: TitansWeights, chunk: Int) -> [Double] {
    var mem = MLP(w.memory)
    var mom = mem.layers.map { [Double](repeating: 0, count: $0.count) }
    let q = mm(x, n, d, w.query), d0 = w.query.shape[1]
    var out: [Double] = []
    var t0 = 0
    while t0 < n {
      let c = min(chunk, n - t0)
      out += read(mem, Array(q[(t0 * d0)..<((t0 + c) * d0)]), c, d0)
      memorize(&mem, &mom, Array(x[(t0 * d)..<((t0 + c) * d)]), c, d, w, chunk: chunk)
      t0 += c
    }
    return out
  }

  /// MAC in Double, straight from the equations.
  static func referenceMAC(_ x: [Double], _ n: Int, _ d: Int, _ w: TitansWeights, segment: Int, heads: Int, chunk: Int) -> [Double] {
    var mem = MLP(w.memory)
    var mom = mem.layers.map { [Double](repeating: 0, count: $0.count) }
    let p = w.persistent!.scalars.map(Double.init), np = w.persistent!.shape[0]
    let dh = d / heads
    var out: [Double] = []
    var r0 = 0
    while r0 < n {
      let c = min(segment, n - r0)
      let s = Array(x[(r0 * d)..<((r0 + c) * d)])
      let h = read(mem, mm(s, c, d, w.query), c, d)
      let ctx = p + h + s, nk = np + 2 * c
      let qa = mm(s, c, d, w.attentionQuery!), ka = mm(ctx, nk, d, w.attentionKey!), va = mm(ctx, nk, d, w.attentionValue!)
      var att = [Double](repeating: 0, count: c * d)
      for hd in 0..<heads {
        for i in 0..<c {
          let visible = np + c + i + 1
          var scores = (0..<visible).map { j in
            (0..<dh).reduce(0.0) { $0 + qa[i * d + hd * dh + $1] * ka[j * d + hd * dh + $1] } / Double(dh).squareRoot()
          }
          let mx = scores.max()!
          scores = scores.map { Foundation.exp($0 - mx) }
          let sum = scores.reduce(0, +)
          for j in 0..<visible { for e in 0..<dh { att[i * d + hd * dh + e] += scores[j] / sum * va[j * d + hd * dh + e] } }
        }
      }
      let y = mm(att, c, d, w.attentionOutput!)
      memorize(&mem, &mom, y, c, d, w, chunk: chunk)
      let m = read(mem, mm(y, c, d, w.query), c, d)
      out += zip(y, m).map { $0 * $1 }
      r0 += c
    }
    return out
  }

  @Test("LMM layer == Float64 equations", arguments: [1, 5, 16])
  func lmm(chunk: Int) throws {
    let seed = testSeed()
    let (n, d) = (45, 12)
    var w = TitansWeights.random(width: d, hidden: 20, seed: seed)
    w.maxLearningRate = 0.05
    let x = Tensor.randomNormal(shape: [2, n, d], seed: seed &+ 1, std: 0.5)
    let r = try TitansLayer(arrangement: .memory, chunk: chunk)(x, weights: w)
    #expect(r.output.shape == [2, n, d] && r.memory.count == 2)
    let xs = x.scalars.map(Double.init)
    let ref = referenceLMMBatch(xs, n, d, w, chunk: chunk)
    #expect(relativeError(r.output, ref) <= 1e-4, "chunk \(chunk) seed \(seed)")
  }

  func referenceLMMBatch(_ xs: [Double], _ n: Int, _ d: Int, _ w: TitansWeights, chunk: Int) -> [Double] {
    (0..<2).flatMap { b in Self.referenceLMM(Array(xs[(b * n * d)..<((b + 1) * n * d)]), n, d, w, chunk: chunk) }
  }

  @Test("MAC layer == Float64 equations", arguments: [(16, 2, 4), (10, 4, 3), (7, 1, 7)])
  func mac(segment: Int, heads: Int, chunk: Int) throws {
    let seed = testSeed()
    let (n, d) = (37, 8)
    var w = TitansWeights.random(width: d, hidden: 16, persistent: 3, seed: seed)
    w.maxLearningRate = 0.05
    let x = Tensor.randomNormal(shape: [n, d], seed: seed &+ 1, std: 0.5)
    let r = try TitansLayer(arrangement: .memoryAsContext(segment: segment, heads: heads), chunk: chunk)(x, weights: w)
    #expect(r.output.shape == [n, d])
    let ref = Self.referenceMAC(x.scalars.map(Double.init), n, d, w, segment: segment, heads: heads, chunk: chunk)
    let e = relativeError(r.output, ref)
    #expect(e <= 1e-4, "segment \(segment) heads \(heads) chunk \(chunk) error \(e) seed \(seed)")
  }

  /// A MAC output depends only on its own and earlier segments.
  @Test func macSegmentCausal() throws {
    let seed = testSeed()
    let (n, d, seg) = (40, 8, 12)
    let w = TitansWeights.random(width: d, hidden: 16, persistent: 2, seed: seed)
    let layer = try TitansLayer(arrangement: .memoryAsContext(segment: seg, heads: 2), chunk: 4)
    let x = Tensor.randomNormal(shape: [n, d], seed: seed &+ 1, std: 0.5)
    var x2 = x
    for i in (24 * d)..<(n * d) { x2[flat: i] = -x2[flat: i] + 0.3 }
    let a = try layer(x, weights: w).output.scalars, b = try layer(x2, weights: w).output.scalars
    #expect(Array(a[0..<(24 * d)]) == Array(b[0..<(24 * d)]), "seed \(seed)")
    #expect(Array(a[(24 * d)...]) != Array(b[(24 * d)...]))
  }

  @Test func badWeightsThrow() throws {
    var w = TitansWeights.random(width: 8, hidden: 16, seed: 1)
    let x = Tensor.randomNormal(shape: [10, 8], seed: 2)
    let mac = try TitansLayer(arrangement: .memoryAsContext(segment: 4, heads: 2))
    #expect(throws: SubqError.argument(op: "titans", name: "persistent", value: "missing", reason: "MAC needs the persistent tokens [N_p, d]")) {
      try mac(x, weights: w)
    }
    w.gates = Tensor(shape: [8, 3])
    #expect(throws: SubqError.self) { try TitansLayer()(x, weights: w) }
    w = TitansWeights.random(width: 8, hidden: 16, persistent: 2, seed: 1)
    #expect(throws: SubqError.self) { try TitansLayer(arrangement: .memoryAsContext(segment: 4, heads: 3))(x, weights: w) }
    #expect(throws: SubqError.self) { try TitansLayer(arrangement: .memoryAsContext(segment: 0, heads: 2)) }
    w.maxLearningRate = 2
    #expect(throws: SubqError.self) { try TitansLayer()(x, weights: w) }
  }
}
