import Foundation
import Subquadratic
import SubqTestSupport
import Testing

/// MambaMixer against a plain Float64 rendering of the paper's equations.
///
/// Tolerance: relative Frobenius error ≤ 1e-5 per layer stack: Float32 projections, convolution
/// and scans round at ~1e-7 each and the stack has ≤ 10 of them in sequence. A wrong flip,
/// gate, averaging index or conv tap costs ≥ 1e-2.
struct MambaMixerTests {
  /// Row-major Double matrix.
  struct M {
    var r: Int, c: Int, v: [Double]
    init(_ t: Tensor) { r = t.shape[0]; c = t.shape[1]; v = t.scalars.map(Double.init) }
    init(r: Int, c: Int, v: [Double]) { self.r = r; self.c = c; self.v = v }
    subscript(i: Int, j: Int) -> Double { v[i * c + j] }
    static func * (a: M, b: M) -> M {
      var o = [Double](repeating: 0, count: a.r * b.c)
      for i in 0..<a.r { for k in 0..<a.c { for j in 0..<b.c { o[i * b.c + j] += a[i, k] * b[k, j] } } }
      return M(r: a.r, c: b.c, v: o)
    }
    var t: M { M(r: c, c: r, v: (0..<(r * c)).map { v[($0 % r) * c + $0 / r] }) }
    var flipped: M { M(r: r, c: c, v: (0..<r).flatMap { i in v[((r - 1 - i) * c)..<((r - i) * c)] }) }
  }

  static func silu(_ x: Double) -> Double { x / (1 + Foundation.exp(-x)) }
  static func softplus(_ x: Double) -> Double { x > 20 ? x : Foundation.log1p(Foundation.exp(x)) }

  /// (S6(x̄) + D·x̄) ⊙ SiLU(gate) for x [n, d].
  static func branch(_ x: M, _ w: SelectiveBranchWeights, _ gate: M) -> M {
    let pre = x * M(w.inProj)
    let (n, e) = (pre.r, pre.c)
    let conv = M(w.conv), cb = w.convBias.scalars.map(Double.init), k = conv.c
    var xbar = M(r: n, c: e, v: [Double](repeating: 0, count: n * e))
    for t in 0..<n { for ch in 0..<e {
      var s = cb[ch]
      for j in 0..<k where t - (k - 1) + j >= 0 { s += conv[ch, j] * pre[t - (k - 1) + j, ch] }
      xbar.v[t * e + ch] = silu(s)
    } }
    let bm = x * M(w.bProj), cm = x * M(w.cProj), dl = x * M(w.deltaProj)
    let a = M(w.A), db = w.deltaBias.scalars.map(Double.init), skip = w.skip.scalars.map(Double.init)
    var y = M(r: n, c: e, v: [Double](repeating: 0, count: n * e))
    for ch in 0..<e {
      var h = [Double](repeating: 0, count: a.c)
      for t in 0..<n {
        let dt = softplus(dl[t, ch] + db[ch])
        var out = 0.0
        for s in 0..<a.c {
          h[s] = Foundation.exp(dt * a[ch, s]) * h[s] + dt * bm[t, s] * xbar[t, ch]
          out += cm[t, s] * h[s]
        }
        y.v[t * e + ch] = (out + skip[ch] * xbar[t, ch]) * silu(gate[t, ch])
      }
    }
    return y
  }

  static func reference(_ x: M, _ w: MambaMixerWeights) -> M {
    var yTok = [x], yCh = [x]
    func mix(_ ys: [M], _ a: [Float], _ zs: [M], _ b: [Float]) -> M {
      var o = M(r: x.r, c: x.c, v: [Double](repeating: 0, count: x.v.count))
      for (m, c) in zip(ys, a) { for i in o.v.indices { o.v[i] += Double(c) * m.v[i] } }
      for (m, c) in zip(zs, b) { for i in o.v.indices { o.v[i] += Double(c) * m.v[i] } }
      return o
    }
    for l in 0..<w.token.count {
      let xt = mix(yTok, w.alpha[l], yCh, w.beta[l])
      let tw = w.token[l]
      yTok.append(branch(xt, tw.branch, xt * M(tw.gate)) * M(tw.outProj))
      let xc = mix(yTok, w.theta[l], yCh, w.gamma[l]).t  // [D, L]
      let cw = w.channel[l]
      let g = xc * M(cw.gate)
      let f = branch(xc, cw.forward, g), b = branch(xc.flipped, cw.backward, g.flipped).flipped
      let sum = M(r: f.r, c: f.c, v: zip(f.v, b.v).map { $0 + $1 })
      yCh.append((sum * M(cw.outProj)).t)
    }
    return yCh.last!
  }

  static func weights(layers: Int, length l: Int, width d: Int, seed: UInt64, randomAveraging: Bool) -> MambaMixerWeights {
    var g = SeededGenerator(seed: seed)
    func u(_ r: Int, _ c: Int) -> Tensor { .randomUniform(shape: [r, c], seed: g.next(), in: -0.5...0.5) }
    var token: [TokenMixerWeights] = [], channel: [ChannelMixerWeights] = []
    for _ in 0..<layers {
      let e = 2 * d, ec = 6
      token.append(TokenMixerWeights(branch: .random(width: d, inner: e, state: 5, conv: 3, seed: g.next()), gate: u(d, e), outProj: u(e, d)))
      channel.append(ChannelMixerWeights(forward: .random(width: l, inner: ec, state: 3, conv: 2, seed: g.next()),
                                         backward: .random(width: l, inner: ec, state: 3, conv: 2, seed: g.next()),
                                         gate: u(l, ec), outProj: u(ec, l)))
    }
    var avg = MambaMixerWeights.sequentialAveraging(layers: layers)
    if randomAveraging {
      func r(_ rows: [[Float]]) -> [[Float]] { rows.map { $0.map { _ in Float(g.nextUnit() - 0.3) } } }
      avg = (r(avg.alpha), r(avg.beta), r(avg.theta), r(avg.gamma))
    }
    return MambaMixerWeights(token: token, channel: channel, alpha: avg.alpha, beta: avg.beta, theta: avg.theta, gamma: avg.gamma)
  }

  @Test("stack == Float64 equations", arguments: [(1, false), (3, true), (2, false)])
  func stack(layers: Int, randomAveraging: Bool) throws {
    let seed = testSeed()
    let (b, l, d) = (2, 19, 6)
    let w = Self.weights(layers: layers, length: l, width: d, seed: seed, randomAveraging: randomAveraging)
    let x = Tensor.randomNormal(shape: [b, l, d], seed: seed &+ 7)
    let y = try MambaMixer()(x, weights: w)
    #expect(y.shape == [b, l, d])
    var ref: [Double] = []
    for bi in 0..<b {
      let xb = M(r: l, c: d, v: x.scalars[(bi * l * d)..<((bi + 1) * l * d)].map(Double.init))
      ref += Self.reference(xb, w).v
    }
    let e = relativeError(y, ref)
    #expect(e <= 1e-5, "layers \(layers) error \(e) seed \(seed)")
  }

  /// The token mixer alone is causal (the channel mixer mixes positions by design).
  @Test func tokenMixerIsCausal() throws {
    let (l, d) = (30, 4)
    let w = Self.weights(layers: 1, length: l, width: d, seed: 9, randomAveraging: false)
    let m = try MambaMixer()
    let x = Tensor.randomNormal(shape: [l, d], seed: 10)
    var x2 = x
    for i in (20 * d)..<(l * d) { x2[flat: i] += 1 }
    let a = try m.tokenMixer(x, weights: w.token[0]).scalars, b = try m.tokenMixer(x2, weights: w.token[0]).scalars
    #expect(Array(a[0..<(20 * d)]) == Array(b[0..<(20 * d)]))
    #expect(Array(a[(20 * d)...]) != Array(b[(20 * d)...]))
  }

  @Test func badWeightsThrow() throws {
    var w = Self.weights(layers: 2, length: 10, width: 4, seed: 1, randomAveraging: false)
    let x = Tensor.randomNormal(shape: [10, 4], seed: 2)
    _ = try MambaMixer()(x, weights: w)
    #expect(throws: SubqError.self) { try MambaMixer()(Tensor.randomNormal(shape: [11, 4], seed: 2), weights: w) }
    w.theta[1] = [0, 1]
    #expect(throws: SubqError.argument(op: "mamba-mixer", name: "theta[2]", value: "2 weights", reason: "layer 2 needs 3")) {
      try MambaMixer()(x, weights: w)
    }
  }
}
