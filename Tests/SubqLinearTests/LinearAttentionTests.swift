import Foundation
import SubqLinear
import Subquadratic
import SubqTestSupport
import Testing

/// Linear attention against its Float64 definitions.
///
/// Tolerance: relative Frobenius error ≤ 1e-5. The kernel accumulates in Float32 over ≤ 1000 keys
/// of positive weights (elu+1) and uses a 1e-7 exp polynomial, leaving errors around 1e-7–1e-6;
/// a wrong mask, chunk boundary or state hand-over costs ≥ 1e-3.
@Suite struct LinearAttentionTests {
  init() { MixerDebug.poisonOutputs = true }

  struct Case: CustomStringConvertible {
    var b = 1, hq = 2, hkv = 2, nq = 65, nk = 65, d = 16, dv = 16
    var causal = true
    var chunk = 64
    var featureMap = FeatureMap.eluPlusOne
    var threads: Int? = nil
    var description: String { "B\(b) H\(hq):\(hkv) Nq\(nq) Nk\(nk) D\(d) Dv\(dv) \(causal ? "causal" : "non-causal") chunk\(chunk) \(featureMap.rawValue) threads \(threads.map(String.init) ?? "default")" }
  }

  func check(_ c: Case, seed: UInt64 = testSeed()) throws {
    let q = Tensor.randomNormal(shape: [c.b, c.hq, c.nq, c.d], seed: seed)
    let k = Tensor.randomNormal(shape: [c.b, c.hkv, c.nk, c.d], seed: seed + 1)
    let v = Tensor.randomNormal(shape: [c.b, c.hkv, c.nk, c.dv], seed: seed + 2)
    let m = try LinearAttention(featureMap: c.featureMap, chunk: c.chunk)
    let out = try m.forward(queries: q, keys: k, values: v, causal: c.causal, threads: c.threads)
    let ref = kernelAttentionReference(q, k, v, featureMap: c.featureMap, causal: c.causal, denominator: true, eps: 1e-6)
    #expect(!hasNaN(out), "NaN (unwritten output?): \(c) seed \(seed)")
    let err = relativeError(out, ref)
    #expect(err <= 1e-5, "error \(err): \(c) seed \(seed)")
  }

  @Test("causal chunked == quadratic definition over lengths and chunk sizes")
  func causalGrid() throws {
    for n in [1, 7, 63, 64, 65, 200, 333] {
      for chunk in [1, 7, 64, 100] where !(chunk == 1 && n > 65) {
        try check(Case(nq: n, nk: n, d: 16, dv: 24, chunk: chunk))
      }
    }
  }

  @Test("head dims, value dims, grouped heads, batches")
  func shapes() throws {
    for (d, dv) in [(1, 1), (5, 3), (33, 17), (64, 64), (80, 40)] {
      try check(Case(nq: 130, nk: 130, d: d, dv: dv))
      try check(Case(nq: 70, nk: 201, d: d, dv: dv, causal: false))
    }
    try check(Case(b: 2, hq: 6, hkv: 2, nq: 150, nk: 150, d: 32, dv: 32))
    try check(Case(b: 3, hq: 4, hkv: 1, nq: 77, nk: 300, d: 24, dv: 8, causal: false))
  }

  @Test("sequence segments across threads give the same result", arguments: [1, 2, 3, 8])
  func segments(threads: Int) throws {
    // One head on many threads splits the sequence into segments with carried states.
    try check(Case(b: 1, hq: 1, hkv: 1, nq: 1000, nk: 1000, d: 32, dv: 32, chunk: 64, threads: threads))
    try check(Case(b: 1, hq: 1, hkv: 1, nq: 999, nk: 1000, d: 32, dv: 32, causal: false, threads: threads))
    try check(Case(b: 1, hq: 3, hkv: 1, nq: 517, nk: 517, d: 16, dv: 20, chunk: 7, threads: threads))
  }

  @Test func reluFeatureMap() throws {
    try check(Case(nq: 200, nk: 200, d: 32, dv: 32, featureMap: .relu))
    try check(Case(nq: 100, nk: 50, d: 32, dv: 32, causal: false, featureMap: .relu))
  }

  @Test("chunked causal == the token-by-token recurrence")
  func recurrence() throws {
    let seed = testSeed()
    let q = Tensor.randomNormal(shape: [2, 2, 150, 24], seed: seed)
    let k = Tensor.randomNormal(shape: [2, 1, 150, 24], seed: seed + 1)
    let v = Tensor.randomNormal(shape: [2, 1, 150, 12], seed: seed + 2)
    let out = try LinearAttention(chunk: 32).forward(queries: q, keys: k, values: v, causal: true)
    let rec = linearRecurrentReference(q, k, v, featureMap: .eluPlusOne, eps: 1e-6)
    let quad = kernelAttentionReference(q, k, v, featureMap: .eluPlusOne, causal: true, denominator: true, eps: 1e-6)
    // The two Float64 definitions agree to rounding; the kernel matches both.
    var diff = 0.0, norm = 0.0
    for i in rec.indices { diff += (rec[i] - quad[i]) * (rec[i] - quad[i]); norm += quad[i] * quad[i] }
    #expect((diff / norm).squareRoot() <= 1e-12)
    #expect(relativeError(out, rec) <= 1e-5, "seed \(seed)")
  }

  @Test("decode steps == the parallel causal form")
  func decodeSteps() throws {
    let seed = testSeed()
    let (B, Hq, Hkv, N, D, Dv) = (2, 4, 2, 90, 20, 12)
    let q = Tensor.randomNormal(shape: [B, Hq, N, D], seed: seed)
    let k = Tensor.randomNormal(shape: [B, Hkv, N, D], seed: seed + 1)
    let v = Tensor.randomNormal(shape: [B, Hkv, N, Dv], seed: seed + 2)
    let m = try LinearAttention(chunk: 16)
    let parallel = try m.forward(queries: q, keys: k, values: v, causal: true)
    // Prefill the first 37 positions, then decode the rest one token at a time.
    let split = 37
    func rows(_ t: Tensor, _ r: Range<Int>) -> Tensor {
      let (b, h, n, x) = (t.shape[0], t.shape[1], t.shape[2], t.shape[3])
      return Tensor(shape: [b, h, r.count, x]) { p in
        for bh in 0..<(b * h) { for (o, i) in r.enumerated() { for c in 0..<x { p[(bh * r.count + o) * x + c] = t[flat: (bh * n + i) * x + c] } } }
      }
    }
    var (prefix, state) = try m.forward(queries: rows(q, 0..<split), keys: rows(k, 0..<split), values: rows(v, 0..<split), causal: true, state: nil)
    var got = [Float](repeating: .nan, count: B * Hq * N * Dv)
    for bh in 0..<(B * Hq) { for i in 0..<split { for c in 0..<Dv { got[(bh * N + i) * Dv + c] = prefix[flat: (bh * split + i) * Dv + c] } } }
    for t in split..<N {
      let y = try state.step(query: rows(q, t..<(t + 1)).reshaped([B, Hq, D]), key: rows(k, t..<(t + 1)).reshaped([B, Hkv, D]),
                             value: rows(v, t..<(t + 1)).reshaped([B, Hkv, Dv]))
      for bh in 0..<(B * Hq) { for c in 0..<Dv { got[(bh * N + t) * Dv + c] = y[flat: bh * Dv + c] } }
    }
    let err = relativeError(try Tensor(shape: [B, Hq, N, Dv], scalars: got), doubles(parallel))
    #expect(err <= 1e-5, "decode vs parallel \(err), seed \(seed)")
    // A carried state continues a chunked causal call exactly.
    (prefix, state) = try m.forward(queries: rows(q, 0..<split), keys: rows(k, 0..<split), values: rows(v, 0..<split), causal: true, state: nil)
    let (rest, _) = try m.forward(queries: rows(q, split..<N), keys: rows(k, split..<N), values: rows(v, split..<N), causal: true, state: state)
    #expect(relativeError(rest, doubles(rows(parallel, split..<N))) <= 1e-5, "seed \(seed)")
  }

  @Test("no look-ahead: changing keys and values after i leaves outputs ≤ i unchanged")
  func noLookAhead() throws {
    let seed = testSeed()
    let q = Tensor.randomNormal(shape: [1, 2, 300, 16], seed: seed)
    var k = Tensor.randomNormal(shape: [1, 2, 300, 16], seed: seed + 1)
    var v = Tensor.randomNormal(shape: [1, 2, 300, 16], seed: seed + 2)
    let m = try LinearAttention(chunk: 64)
    let a = try m.forward(queries: q, keys: k, values: v, causal: true, threads: 2)
    let cut = 130
    for h in 0..<2 { for j in (cut + 1)..<300 { for d in 0..<16 { k[0, h, j, d] = 50; v[0, h, j, d] = 1e6 } } }
    let b = try m.forward(queries: q, keys: k, values: v, causal: true, threads: 2)
    for h in 0..<2 { for i in 0...cut { for c in 0..<16 { #expect(a[0, h, i, c] == b[0, h, i, c], "h\(h) i\(i)") } } }
  }

  @Test func errors() throws {
    let m = try LinearAttention()
    let q = Tensor.randomNormal(shape: [1, 2, 10, 8], seed: 1)
    let k = Tensor.randomNormal(shape: [1, 2, 12, 8], seed: 2)
    let v = Tensor.randomNormal(shape: [1, 2, 12, 8], seed: 3)
    #expect(throws: SubqError.self) { try m.forward(queries: q, keys: k, values: v, causal: true) }
    _ = try m.forward(queries: q, keys: k, values: v, causal: false)
    let k3 = Tensor.randomNormal(shape: [1, 3, 12, 8], seed: 2)
    #expect(throws: SubqError.self) { try m.forward(queries: q, keys: k3, values: k3, causal: false) }
    var bad = q
    bad[0, 1, 3, 2] = .nan
    do {
      _ = try m.forward(queries: bad, keys: k, values: v, causal: false)
      Issue.record("NaN accepted")
    } catch {
      #expect(error.description.contains("NaN") && error.description.contains("[0, 1, 3, 2]"))
    }
    #expect(throws: SubqError.self) { try LinearAttention(parameters: MixerParameters(["feature-map": "tanh"])) }
    #expect(throws: SubqError.self) { try LinearAttention(parameters: MixerParameters(["chunk": "0"])) }
    #expect(throws: SubqError.self) { try LinearAttention(parameters: MixerParameters(["bogus": "1"])) }
    var st = LinearAttentionState(batch: 1, heads: 2, headDim: 7, valueDim: 8)
    #expect(throws: SubqError.self) { try m.forward(queries: q, keys: q, values: q, causal: true, state: st) }
    #expect(throws: SubqError.self) { try st.step(query: Tensor(shape: [1, 2, 7]), key: Tensor(shape: [1, 2, 8]), value: Tensor(shape: [1, 2, 8])) }
  }
}
