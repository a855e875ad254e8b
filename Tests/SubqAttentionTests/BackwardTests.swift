import Foundation
import SubqAttention
import Subquadratic
import SubqTestSupport
import Testing

extension AttentionCase {
  /// Q, K, V and options as ``AttentionCase/inputs(seed:)``, and a fresh N(0, 1) output gradient
  /// (seed `seed + 3`).
  func backwardInputs(seed: UInt64) -> (q: Tensor, k: Tensor, v: Tensor, dout: Tensor, options: AttentionOptions) {
    let (q, k, v, o) = inputs(seed: seed)
    return (q, k, v, Tensor.randomNormal(shape: shape(hq, nq, dv), seed: seed + 3), o)
  }
}

/// The Float64 reference backward pass against central finite differences of the Float64
/// forward pass.
///
/// Tolerance: |fd − analytic| ≤ 1e-6·(1 + |analytic|). With h = 1e-5 on unit-scale inputs the
/// truncation error is O(h²) ≈ 1e-10 and the rounding error ε·|loss|/h ≈ 1e-10, so a correct
/// gradient lands near 1e-9; a wrong term (a missing softcap derivative, a wrong group sum or
/// scale) is off by ≥ 1e-3.
struct NaiveBackwardFiniteDifferenceTests {
  static let cases: [AttentionCase] = [
    AttentionCase(hq: 2, hkv: 1, nq: 7, nk: 11, d: 5, dv: 3),
    AttentionCase(hq: 4, hkv: 2, nq: 9, nk: 6, d: 4, dv: 6, causal: true),
    AttentionCase(nq: 6, nk: 9, d: 3, dv: 3, causal: true, align: .topLeft, window: AttentionWindow(left: 2, right: 1)),
    AttentionCase(hq: 2, hkv: 1, nq: 8, nk: 8, d: 4, dv: 4, softcap: 1.5, alibi: true),
    AttentionCase(b: 2, hq: 2, hkv: 2, nq: 5, nk: 9, d: 3, dv: 2, causal: true, keyLengths: [9, 4]),
    AttentionCase(hq: 2, hkv: 1, nq: 10, nk: 9, d: 3, dv: 3, causal: true, varlen: ([0, 4, 10], [0, 5, 9]), layout: .bshd),
  ]

  @Test("naive gradients match finite differences", arguments: cases)
  func finiteDifferences(c: AttentionCase) throws {
    let seed = testSeed()
    let (q, k, v, dout, opts) = c.backwardInputs(seed: seed)
    var o = opts
    o.allowNonFinite = true  // the huge padded keys are finite anyway
    if c.keyLengths != nil {
      // Keep padded rows moderate here: the finite differences perturb them too.
      o.allowNonFinite = false
    }
    let kk: Tensor, vv: Tensor
    if let kl = c.keyLengths {
      var k2 = k, v2 = v
      fillRows(&k2, layout: c.layout, from: kl, value: 7)
      fillRows(&v2, layout: c.layout, from: kl, value: -5)
      kk = k2
      vv = v2
    } else {
      kk = k
      vv = v
    }
    let p = try AttentionProblem.validate(op: "test", queries: q, keys: kk, values: vv, options: o)
    func doubles(_ t: Tensor) -> [Double] { t.scalars.map(Double.init) }
    let qd = doubles(q), kd = doubles(kk), vd = doubles(vv), w = doubles(dout)
    let grads = NaiveAttention.gradients64(p, q: qd, k: kd, v: vd, dout: w)
    func loss(_ q: [Double], _ k: [Double], _ v: [Double]) -> Double {
      let out = NaiveAttention.forward64(p, q: q, k: k, v: v).output
      var s = 0.0
      for i in out.indices { s += out[i] * w[i] }
      return s
    }
    // The Float64 forward agrees with the reference forward.
    let ref = try NaiveAttention.reference(queries: q, keys: kk, values: vv, options: o)
    let f64 = NaiveAttention.forward64(p, q: qd, k: kd, v: vd)
    for i in ref.output.indices { #expect(abs(ref.output[i] - f64.output[i]) <= 1e-12, "forward64 differs at \(i): \(c)") }

    var g = SeededGenerator(seed: seed + 9)
    let h = 1e-5
    for (name, x, an) in [("Q", qd, grads.dq), ("K", kd, grads.dk), ("V", vd, grads.dv)] {
      // Every coordinate for small tensors, else a random sample.
      let coords = x.count <= 400 ? Array(x.indices) : (0..<200).map { _ in Int(g.next() % UInt64(x.count)) }
      var worst = 0.0
      for i in coords {
        var plus = x, minus = x
        plus[i] += h
        minus[i] -= h
        let fd: Double
        switch name {
        case "Q": fd = (loss(plus, kd, vd) - loss(minus, kd, vd)) / (2 * h)
        case "K": fd = (loss(qd, plus, vd) - loss(qd, minus, vd)) / (2 * h)
        default: fd = (loss(qd, kd, plus) - loss(qd, kd, minus)) / (2 * h)
        }
        let err = abs(fd - an[i]) / (1 + abs(an[i]))
        worst = max(worst, err)
        #expect(err <= 1e-6, "d\(name)[\(i)]: analytic \(an[i]), finite difference \(fd): \(c) seed \(seed)")
        if err > 1e-6 { break }
      }
      // The gradient is not trivially zero.
      #expect(an.contains { abs($0) > 1e-3 }, "d\(name) is all zero: \(c)")
      _ = worst
    }
  }
}

/// FlashAttention backward against the Float64 reference backward.
///
/// Tolerance: relative Frobenius error ≤ 1e-4 for each of dQ, dK, dV. The Float32 kernel
/// accumulates over ≤ 1000 keys or queries and forms dS = P ∘ (dP − D), whose cancellation costs
/// a few bits; observed errors are ~1e-6. A wrong mask, scale, softcap derivative or group sum
/// costs ≥ 1e-2.
struct FlashBackwardTests {
  func check(_ c: AttentionCase, method: FlashAttention = try! FlashAttention(), seed: UInt64 = testSeed()) throws {
    let (q, k, v, dout, opts) = c.backwardInputs(seed: seed)
    let ref = try NaiveAttention.referenceGradients(queries: q, keys: k, values: v, outputGradient: dout, options: opts)
    let g = try method.gradients(queries: q, keys: k, values: v, outputGradient: dout, options: opts)
    #expect(g.queries.shape == q.shape && g.keys.shape == k.shape && g.values.shape == v.shape)
    for (name, got, want) in [("dQ", g.queries, ref.dq), ("dK", g.keys, ref.dk), ("dV", g.values, ref.dv)] {
      #expect(!hasNaN(got), "NaN in \(name): \(c) seed \(seed)")
      let err = relativeError(got, want)
      #expect(err <= 1e-4, "\(name) error \(err): \(c) seed \(seed)")
    }
    if let kl = c.keyLengths {
      // Keys past a sequence's length get exactly zero gradient.
      let rows = RowAddressing(layout: c.layout, heads: c.hkv, length: c.nk, width: c.d)
      for b in 0..<c.b {
        for h in 0..<c.hkv {
          for j in kl[b]..<c.nk {
            let base = rows.offset(batch: b, head: h, row: j)
            for d in 0..<c.d { #expect(g.keys[flat: base + d] == 0, "dK leak at b\(b) h\(h) j\(j): \(c)") }
          }
        }
      }
    }
  }

  static let lengths = [1, 7, 63, 64, 65, 200, 1000]

  @Test("Nq × Nk grid, non-causal and causal", arguments: [false, true])
  func lengthGrid(causal: Bool) throws {
    for nq in Self.lengths {
      for nk in Self.lengths where nq * nk <= 200_000 || nq == nk {
        try check(AttentionCase(hq: 2, hkv: 1, nq: nq, nk: nk, d: 32, dv: 32, causal: causal))
      }
    }
  }

  @Test("head dims", arguments: [1, 16, 32, 33, 63, 64, 80, 128, 256])
  func headDims(d: Int) throws {
    try check(AttentionCase(nq: 130, nk: 97, d: d, dv: d))
    try check(AttentionCase(nq: 65, nk: 150, d: d, dv: d == 1 ? 3 : d - 1, causal: true))
  }

  @Test func valueDimDiffers() throws {
    try check(AttentionCase(nq: 100, nk: 77, d: 64, dv: 128))
    try check(AttentionCase(nq: 100, nk: 77, d: 128, dv: 40, causal: true))
    try check(AttentionCase(nq: 33, nk: 300, d: 17, dv: 5))
  }

  @Test func groupedAndMultiQuery() throws {
    try check(AttentionCase(b: 2, hq: 8, hkv: 2, nq: 70, nk: 130, d: 64, dv: 64))
    try check(AttentionCase(b: 1, hq: 6, hkv: 1, nq: 129, nk: 65, d: 40, dv: 40, causal: true))
  }

  @Test("causal alignments with Nq ≠ Nk", arguments: CausalAlignment.allCases)
  func alignments(align: CausalAlignment) throws {
    for (nq, nk) in [(65, 200), (200, 65), (1, 500), (500, 7), (64, 64)] {
      try check(AttentionCase(nq: nq, nk: nk, d: 32, dv: 32, causal: true, align: align))
    }
  }

  @Test func windows() throws {
    for (l, r) in [(16, 0), (0, 0), (100, 20), (nil, 5), (3, nil), (250, 250)] as [(Int?, Int?)] {
      try check(AttentionCase(nq: 200, nk: 300, d: 32, dv: 32, window: AttentionWindow(left: l, right: r)))
      try check(AttentionCase(nq: 300, nk: 200, d: 32, dv: 32, causal: true, align: .topLeft, window: AttentionWindow(left: l, right: r)))
    }
  }

  @Test func softcapAndAlibi() throws {
    try check(AttentionCase(nq: 130, nk: 200, d: 64, dv: 64, softcap: 5))
    try check(AttentionCase(nq: 130, nk: 200, d: 64, dv: 64, causal: true, softcap: 30))
    try check(AttentionCase(hq: 4, hkv: 2, nq: 150, nk: 150, d: 64, dv: 64, alibi: true))
    try check(AttentionCase(hq: 4, hkv: 1, nq: 77, nk: 300, d: 32, dv: 32, causal: true, window: AttentionWindow(left: 90, right: nil), softcap: 2, alibi: true))
  }

  @Test func keyLengthsNeverLeak() throws {
    try check(AttentionCase(b: 3, hq: 4, hkv: 2, nq: 65, nk: 300, d: 64, dv: 64, keyLengths: [300, 129, 1]))
    try check(AttentionCase(b: 3, hq: 2, hkv: 2, nq: 65, nk: 300, d: 64, dv: 64, causal: true, keyLengths: [0, 200, 37]))
  }

  @Test func packedVariableLength() throws {
    try check(AttentionCase(hq: 4, hkv: 2, nq: 300, nk: 260, d: 64, dv: 64, varlen: ([0, 100, 101, 300], [0, 64, 64, 260])))
    try check(AttentionCase(hq: 2, hkv: 2, nq: 300, nk: 300, d: 48, dv: 48, causal: true, varlen: ([0, 7, 200, 300], [0, 7, 200, 300])))
  }

  @Test func bshdLayout() throws {
    try check(AttentionCase(b: 2, hq: 4, hkv: 2, nq: 77, nk: 130, d: 64, dv: 32, causal: true, layout: .bshd))
  }

  @Test("block sizes", arguments: [(64, 1), (128, 7), (64, 500), (192, 96)])
  func blockSizes(bq: Int, bk: Int) throws {
    try check(AttentionCase(hq: 2, hkv: 1, nq: 300, nk: 257, d: 40, dv: 40, causal: true), method: try FlashAttention(blockQ: bq, blockK: bk))
  }

  @Test("fully masked rows: zero gradients, no NaN")
  func fullyMasked() throws {
    // Bottom-right causal with Nq > Nk: the first rows see no key (LSE +∞).
    try check(AttentionCase(nq: 200, nk: 65, d: 32, dv: 32, causal: true))
    let (q, k, v, dout, opts) = AttentionCase(nq: 5, nk: 3, d: 8, dv: 8, causal: true).backwardInputs(seed: 1)
    let g = try FlashAttention().gradients(queries: q, keys: k, values: v, outputGradient: dout, options: opts)
    for h in 0..<2 { for i in 0..<2 { for d in 0..<8 { #expect(g.queries[0, h, i, d] == 0) } } }
  }

  /// The raw kernel writes every dQ element (NaN poison) and reads only what it must.
  @Test func writesEveryQueryGradient() throws {
    let c = AttentionCase(b: 2, hq: 4, hkv: 2, nq: 150, nk: 140, d: 40, dv: 24, causal: true, window: AttentionWindow(left: 30, right: nil))
    let (q, k, v, dout, opts) = c.backwardInputs(seed: testSeed())
    var o = opts
    o.returnLSE = true
    let flash = try FlashAttention()
    let f = try flash.attention(queries: q, keys: k, values: v, options: o)
    let p = try AttentionProblem.validate(op: "test", queries: q, keys: k, values: v, options: o)
    var dq = poisoned(q.shape)
    var dk = Tensor(shape: k.shape, repeating: 0), dv = Tensor(shape: v.shape, repeating: 0)
    q.withUnsafeBufferPointer { qb in k.withUnsafeBufferPointer { kb in v.withUnsafeBufferPointer { vb in
      f.output.withUnsafeBufferPointer { ob in f.lse!.withUnsafeBufferPointer { lb in dout.withUnsafeBufferPointer { gb in
        dq.withUnsafeMutableBufferPointer { a in dk.withUnsafeMutableBufferPointer { b in dv.withUnsafeMutableBufferPointer { c in
          flash.backward(p, q: qb.baseAddress!, k: kb.baseAddress!, v: vb.baseAddress!, o: ob.baseAddress!, lse: lb.baseAddress!,
                         dout: gb.baseAddress!, dq: a.baseAddress!, dk: b.baseAddress!, dv: c.baseAddress!)
        } } }
      } } }
    } } }
    #expect(!hasNaN(dq))
    let ref = try NaiveAttention.referenceGradients(queries: q, keys: k, values: v, outputGradient: dout, options: opts)
    #expect(relativeError(dq, ref.dq) <= 1e-4)
    #expect(relativeError(dk, ref.dk) <= 1e-4)
    #expect(relativeError(dv, ref.dv) <= 1e-4)
  }

  /// Bit-identical results on every run and for any number of threads.
  @Test func deterministicForAnyThreadCount() throws {
    for c in [AttentionCase(hq: 4, hkv: 1, nq: 500, nk: 700, d: 64, dv: 64, causal: true),
              AttentionCase(b: 2, hq: 4, hkv: 2, nq: 300, nk: 300, d: 32, dv: 48, softcap: 3)] {
      let (q, k, v, dout, opts) = c.backwardInputs(seed: testSeed())
      var results: [AttentionGradients] = []
      for threads in [1, 2, 3, 7, 2] {
        var o = opts
        o.threads = threads
        results.append(try FlashAttention().gradients(queries: q, keys: k, values: v, outputGradient: dout, options: o))
      }
      for r in results.dropFirst() {
        #expect(r.queries == results[0].queries, "dQ differs across thread counts: \(c)")
        #expect(r.keys == results[0].keys, "dK differs: \(c)")
        #expect(r.values == results[0].values, "dV differs: \(c)")
      }
    }
  }

  /// The plan splits the key blocks into several chunks with partial dQ buffers when there are
  /// few key/value heads (so the deterministic reduction is exercised), independent of threads.
  @Test func chunkingDependsOnlyOnShape() throws {
    let c = AttentionCase(hq: 4, hkv: 1, nq: 500, nk: 700, d: 64, dv: 64, causal: true)
    let (q, k, v, _, opts) = c.backwardInputs(seed: 1)
    var o1 = opts, o2 = opts
    o1.threads = 1
    o2.threads = 5
    let p1 = try AttentionProblem.validate(op: "t", queries: q, keys: k, values: v, options: o1)
    let p2 = try AttentionProblem.validate(op: "t", queries: q, keys: k, values: v, options: o2)
    let a = FlashBackwardPlan(p1, blockQ: 64, blockK: 96), b = FlashBackwardPlan(p2, blockQ: 64, blockK: 96)
    #expect(a.chunks > 1)
    #expect(a.chunks == b.chunks && a.items.map(\.firstBlock) == b.items.map(\.firstBlock))
    // Chunks cover every key block exactly once, in order.
    let blocks = (700 + 95) / 96
    var next = 0
    for item in a.items {
      #expect(item.firstBlock == next && item.endBlock > item.firstBlock)
      next = item.endBlock
    }
    #expect(next == blocks)
  }

  @Test func backwardFromSavedForward() throws {
    let c = AttentionCase(hq: 4, hkv: 2, nq: 90, nk: 120, d: 32, dv: 32, causal: true)
    let (q, k, v, dout, opts) = c.backwardInputs(seed: testSeed())
    var o = opts
    o.returnLSE = true
    let f = try FlashAttention().attention(queries: q, keys: k, values: v, options: o)
    let a = try FlashAttention().backward(queries: q, keys: k, values: v, output: f.output, lse: f.lse!, outputGradient: dout, options: opts)
    let b = try FlashAttention().gradients(queries: q, keys: k, values: v, outputGradient: dout, options: opts)
    #expect(a.queries == b.queries && a.keys == b.keys && a.values == b.values)
  }

  @Test func badInputs() throws {
    let (q, k, v, dout, opts) = AttentionCase(nq: 10, nk: 12, d: 8, dv: 8).backwardInputs(seed: 1)
    var o = opts
    o.returnLSE = true
    let f = try FlashAttention().attention(queries: q, keys: k, values: v, options: o)
    let flash = try FlashAttention()
    func expectError(_ fragment: String, _ body: () throws -> Void) {
      do {
        try body()
        Issue.record("expected an error mentioning \(fragment)")
      } catch let e as SubqError {
        #expect(e.description.contains(fragment), "\(e)")
        #expect(e.description.hasPrefix("attention.flash.backward"), "\(e)")
      } catch { Issue.record("unexpected \(error)") }
    }
    expectError("dO") { _ = try flash.gradients(queries: q, keys: k, values: v, outputGradient: Tensor(shape: [1, 2, 10, 7]), options: opts) }
    var nanDO = dout
    nanDO[flat: 5] = .nan
    expectError("NaN") { _ = try flash.gradients(queries: q, keys: k, values: v, outputGradient: nanDO, options: opts) }
    expectError("LSE") { _ = try flash.backward(queries: q, keys: k, values: v, output: f.output, lse: Tensor(shape: [1, 2, 9]), outputGradient: dout, options: opts) }
    var badLSE = f.lse!
    badLSE[flat: 3] = -.infinity
    expectError("-inf") { _ = try flash.backward(queries: q, keys: k, values: v, output: f.output, lse: badLSE, outputGradient: dout, options: opts) }
    expectError("O has shape") { _ = try flash.backward(queries: q, keys: k, values: v, output: dout.reshaped([1, 2, 8, 10]), lse: f.lse!, outputGradient: dout, options: opts) }
  }
}
