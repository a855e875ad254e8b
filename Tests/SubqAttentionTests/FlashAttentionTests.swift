import Foundation
import Subquadratic
import SubqTestSupport
import Testing

/// FlashAttention forward against the Float64 reference.
///
/// Tolerance: relative Frobenius error ≤ 1e-5 on the output and ≤ 1e-5 (relative, floor 1) on
/// the log-sum-exp. Float32 accumulation over ≤ 1000 keys and a 1e-7 exp2 polynomial leave errors
/// around 1e-7–1e-6, so 1e-5 catches every real bug (a wrong mask, scale or rescale costs ≥ 1e-3).
struct FlashForwardTests {
  func check(_ c: AttentionCase, method: FlashAttention = try! FlashAttention(), seed: UInt64 = testSeed()) throws {
    let (q, k, v, caseOptions) = c.inputs(seed: seed)
    var opts = caseOptions
    opts.returnLSE = true
    let ref = try NaiveAttention.reference(queries: q, keys: k, values: v, options: opts)
    let r = try method.attention(queries: q, keys: k, values: v, options: opts)
    #expect(!hasNaN(r.output), "NaN in output: \(c) seed \(seed)")
    let err = relativeError(r.output, ref.output)
    #expect(err <= 1e-5, "output error \(err): \(c) seed \(seed)")
    let lse = try #require(r.lse)
    let (lerr, li) = worstRelative(lse, ref.lse)
    #expect(lerr <= 1e-5, "lse error \(lerr) at \(li): \(c) seed \(seed)")
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

  @Test("head dims", arguments: [1, 16, 32, 63, 64, 80, 128, 256])
  func headDims(d: Int) throws {
    try check(AttentionCase(nq: 200, nk: 131, d: d, dv: d))
    try check(AttentionCase(nq: 65, nk: 200, d: d, dv: d == 1 ? 3 : d - 1, causal: true))
  }

  @Test func valueDimDiffers() throws {
    try check(AttentionCase(nq: 100, nk: 77, d: 64, dv: 128))
    try check(AttentionCase(nq: 100, nk: 77, d: 128, dv: 40, causal: true))
    try check(AttentionCase(nq: 33, nk: 300, d: 17, dv: 5))
  }

  @Test func groupedAndMultiQuery() throws {
    try check(AttentionCase(b: 2, hq: 8, hkv: 2, nq: 70, nk: 130, d: 64, dv: 64))
    try check(AttentionCase(b: 1, hq: 8, hkv: 1, nq: 129, nk: 65, d: 80, dv: 80, causal: true))
  }

  @Test("causal alignments with Nq ≠ Nk", arguments: CausalAlignment.allCases)
  func alignments(align: CausalAlignment) throws {
    for (nq, nk) in [(65, 200), (200, 65), (1, 1000), (1000, 7), (64, 64)] {
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
    try check(AttentionCase(hq: 4, hkv: 1, nq: 77, nk: 300, d: 32, dv: 32, causal: true, softcap: 10, alibi: true))
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

  @Test("fully masked rows give zeros and lse = +∞")
  func fullyMasked() throws {
    // top-left causal with Nq > Nk window: rows past the keys; bottom-right causal with Nq > Nk.
    try check(AttentionCase(nq: 200, nk: 65, d: 32, dv: 32, causal: true))
    let q = Tensor.randomNormal(shape: [1, 1, 5, 8], seed: 1)
    let k = Tensor.randomNormal(shape: [1, 1, 3, 8], seed: 2)
    let v = Tensor.randomNormal(shape: [1, 1, 3, 8], seed: 3)
    let r = try FlashAttention().attention(queries: q, keys: k, values: v, options: AttentionOptions(causal: true, returnLSE: true))
    for i in 0..<2 {
      for c in 0..<8 { #expect(r.output[0, 0, i, c] == 0) }
      #expect(r.lse![0, 0, i] == .infinity)
    }
    #expect(r.lse![0, 0, 2].isFinite)
  }

  @Test("block sizes", arguments: [(64, 1), (128, 7), (64, 500), (192, 96)])
  func blockSizes(bq: Int, bk: Int) throws {
    guard bq % 64 == 0 else { return }
    try check(AttentionCase(hq: 2, hkv: 1, nq: 300, nk: 257, d: 40, dv: 40, causal: true), method: try FlashAttention(blockQ: bq, blockK: bk))
  }

  /// Scores that keep growing along the keys force the lazy softmax shift to move inside and
  /// across key blocks; scores spanning hundreds of log units must still give the exact result.
  @Test("growing scores move the softmax shift", arguments: [false, true])
  func growingScores(causal: Bool) throws {
    let seed = testSeed()
    let (n, d) = (300, 32)
    let q = Tensor.randomNormal(shape: [1, 2, n, d], seed: seed)
    var k = Tensor.randomNormal(shape: [1, 2, n, d], seed: seed + 1)
    k.withUnsafeMutableBufferPointer { p in
      for h in 0..<2 { for j in 0..<n { for x in 0..<d { p[(h * n + j) * d + x] *= 1 + Float(j) / 15 } } }
    }
    let v = Tensor.randomNormal(shape: [1, 2, n, d], seed: seed + 2)
    let opts = AttentionOptions(causal: causal, returnLSE: true)
    let ref = try NaiveAttention.reference(queries: q, keys: k, values: v, options: opts)
    for bk in [1, 7, 96] {
      let r = try FlashAttention(blockK: bk).attention(queries: q, keys: k, values: v, options: opts)
      let err = relativeError(r.output, ref.output)
      #expect(err <= 1e-5, "block-k \(bk) error \(err) seed \(seed)")
      let (lerr, _) = worstRelative(r.lse!, ref.lse)
      #expect(lerr <= 1e-5, "block-k \(bk) lse error \(lerr) seed \(seed)")
    }
  }

  /// Adding the same constant to every logit of a row changes nothing but the log-sum-exp;
  /// offsets of ±80 (e^80 overflows Float) must not overflow.
  @Test("logit offsets of ±80", arguments: [-80.0, 80.0] as [Float])
  func logitOffset(offset: Float) throws {
    let seed = testSeed()
    let (n, d) = (130, 16)
    let base = Tensor.randomNormal(shape: [1, 1, n, d], seed: seed)
    let k = Tensor.randomNormal(shape: [1, 1, n, d], seed: seed + 1)
    let v = Tensor.randomNormal(shape: [1, 1, n, d], seed: seed + 2)
    // One extra dimension: q gets offset·√(D+1), k gets 1, so every score moves by `offset`.
    func widen(_ t: Tensor, extra: Float) -> Tensor {
      Tensor(shape: [1, 1, n, d + 1]) { p in
        for i in 0..<n { for x in 0..<d { p[i * (d + 1) + x] = t[0, 0, i, x] }; p[i * (d + 1) + d] = extra }
      }
    }
    let tau = 1 / Float(d + 1).squareRoot()
    let q1 = widen(base, extra: offset / tau), k1 = widen(k, extra: 1)
    let q0 = widen(base, extra: 0)
    let opts = AttentionOptions(causal: true, returnLSE: true)
    let shifted = try FlashAttention().attention(queries: q1, keys: k1, values: v, options: opts)
    let plain = try FlashAttention().attention(queries: q0, keys: k1, values: v, options: opts)
    #expect(!hasNaN(shifted.output))
    #expect(relativeError(shifted.output, plain.output) <= 1e-5)
    for i in 0..<n {
      let dl = Double(shifted.lse![0, 0, i]) - Double(plain.lse![0, 0, i])
      #expect(abs(dl - Double(offset)) <= 1e-4 * 80, "row \(i): lse moved by \(dl)")
    }
  }
}
