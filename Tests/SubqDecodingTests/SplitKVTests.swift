import Foundation
import SubqAttention
import SubqCore
import SubqDecoding
import SubqTestSupport
import Testing

/// Split-KV decoding over contiguous tensors against the Float64 reference.
///
/// Tolerance: relative Frobenius error ≤ 1e-5 on the output and ≤ 1e-5 (relative, floor 1) on the
/// log-sum-exp, as for FlashAttention: Float32 accumulation over ≤ 3000 keys, a 1e-7 exp2
/// polynomial and a Float64-weighted merge of ≤ 128 partials stay near 1e-6; a wrong mask, scale,
/// rescale or merge costs ≥ 1e-3.
struct SplitKVTests {
  func check(_ c: AttentionCase, splits: [Int] = [0, 1, 3], seed: UInt64 = testSeed()) throws {
    let (q, k, v, caseOptions) = c.inputs(seed: seed)
    var opts = caseOptions
    opts.returnLSE = true
    let ref = try NaiveAttention.reference(queries: q, keys: k, values: v, options: opts)
    for s in splits {
      let r = try SplitKVAttention(splits: s).attention(queries: q, keys: k, values: v, options: opts)
      #expect(!hasNaN(r.output), "NaN: \(c) splits \(s) seed \(seed)")
      let err = relativeError(r.output, ref.output)
      #expect(err <= 1e-5, "output error \(err): \(c) splits \(s) seed \(seed)")
      let (lerr, li) = worstRelative(try #require(r.lse), ref.lse)
      #expect(lerr <= 1e-5, "lse error \(lerr) at \(li): \(c) splits \(s) seed \(seed)")
    }
  }

  @Test("decode shapes: Nq 1…16 against long and awkward key counts", arguments: [1, 2, 3, 5, 16])
  func decodeShapes(nq: Int) throws {
    for nk in [1, 7, 63, 64, 65, 200, 1000, 3000] {
      try check(AttentionCase(hq: 8, hkv: 2, nq: nq, nk: nk, d: 64, dv: 64, causal: nk >= nq))
    }
  }

  @Test func longerQueryBlocks() throws {
    try check(AttentionCase(hq: 2, hkv: 1, nq: 40, nk: 200, d: 32, dv: 32, causal: true))
    try check(AttentionCase(hq: 2, hkv: 2, nq: 130, nk: 77, d: 16, dv: 24))
  }

  @Test("head dims", arguments: [1, 17, 32, 80, 128, 256])
  func headDims(d: Int) throws {
    try check(AttentionCase(hq: 4, hkv: 2, nq: 3, nk: 333, d: d, dv: d))
    try check(AttentionCase(hq: 4, hkv: 1, nq: 2, nk: 129, d: d, dv: d == 1 ? 3 : d - 1, causal: true))
  }

  @Test func groupSizes() throws {
    for (hq, hkv) in [(1, 1), (8, 8), (8, 1), (6, 2), (32, 8)] {
      try check(AttentionCase(b: 2, hq: hq, hkv: hkv, nq: 1, nk: 500, d: 64, dv: 64))
    }
  }

  @Test("causal alignments", arguments: CausalAlignment.allCases)
  func alignments(align: CausalAlignment) throws {
    for (nq, nk) in [(1, 300), (4, 300), (16, 17), (16, 10), (3, 1)] {
      try check(AttentionCase(hq: 2, hkv: 1, nq: nq, nk: nk, d: 32, dv: 32, causal: true, align: align))
    }
  }

  @Test func windowsSoftcapAlibi() throws {
    for (l, r) in [(16, 0), (0, 0), (100, 20), (nil, 5), (600, nil)] as [(Int?, Int?)] {
      try check(AttentionCase(hq: 4, hkv: 2, nq: 4, nk: 700, d: 32, dv: 32, causal: true, window: AttentionWindow(left: l, right: r)))
    }
    try check(AttentionCase(hq: 4, hkv: 1, nq: 2, nk: 600, softcap: 5))
    try check(AttentionCase(hq: 4, hkv: 2, nq: 3, nk: 600, causal: true, alibi: true))
    try check(AttentionCase(hq: 4, hkv: 1, nq: 5, nk: 900, d: 48, dv: 48, causal: true, window: AttentionWindow(left: 300, right: nil), softcap: 20, alibi: true))
  }

  @Test func keyLengthsVarlenLayout() throws {
    try check(AttentionCase(b: 3, hq: 4, hkv: 2, nq: 2, nk: 900, d: 64, dv: 64, causal: true, keyLengths: [900, 1, 513]))
    try check(AttentionCase(b: 3, hq: 4, hkv: 2, nq: 1, nk: 300, d: 64, dv: 64, keyLengths: [0, 300, 64]))
    try check(AttentionCase(hq: 4, hkv: 2, nq: 5, nk: 900, d: 32, dv: 32, causal: true, varlen: ([0, 1, 3, 5], [0, 300, 301, 900])))
    try check(AttentionCase(b: 2, hq: 4, hkv: 2, nq: 3, nk: 555, d: 40, dv: 24, causal: true, layout: .bshd))
  }

  @Test("many splits, empty and tiny chunks", arguments: [2, 7, 64, 1000])
  func splitCounts(splits: Int) throws {
    try check(AttentionCase(hq: 4, hkv: 1, nq: 3, nk: 1000, causal: true), splits: [splits])
    try check(AttentionCase(hq: 2, hkv: 1, nq: 1, nk: 70, window: AttentionWindow(left: 3, right: 3)), splits: [splits])
  }

  @Test func matchesFlash() throws {
    let q = Tensor.randomNormal(shape: [2, 8, 4, 128], seed: 11)
    let k = Tensor.randomNormal(shape: [2, 2, 5000, 128], seed: 12)
    let v = Tensor.randomNormal(shape: [2, 2, 5000, 128], seed: 13)
    let o = AttentionOptions(causal: true, returnLSE: true)
    let a = try SplitKVAttention().attention(queries: q, keys: k, values: v, options: o)
    let b = try FlashAttention().attention(queries: q, keys: k, values: v, options: o)
    #expect(relativeError(a.output, b.output) <= 1e-5)
    #expect(worstRelative(a.lse!, b.lse!.scalars.map(Double.init)).error <= 1e-5)
  }

  @Test func sameResultForAnyThreadCount() throws {
    let q = Tensor.randomNormal(shape: [1, 8, 2, 64], seed: 1)
    let k = Tensor.randomNormal(shape: [1, 2, 4000, 64], seed: 2)
    let v = Tensor.randomNormal(shape: [1, 2, 4000, 64], seed: 3)
    var results: [Tensor] = []
    for t in [1, 2, 5] {
      results.append(try SplitKVAttention().attention(queries: q, keys: k, values: v, options: AttentionOptions(causal: true, threads: t)).output)
    }
    #expect(results[1] == results[0] && results[2] == results[0])
  }

  @Test func registeredAndParameters() throws {
    #expect(SplitKVAttention.info.name == "splitkv" && SplitKVAttention.info.isExact)
    #expect(try SplitKVAttention(parameters: MethodParameters(["splits": "4"])).splits == 4)
    #expect(throws: SubqError.self) { try SplitKVAttention(parameters: MethodParameters(["splits": "-1"])) }
    #expect(throws: SubqError.self) { try SplitKVAttention(parameters: MethodParameters(["chunks": "4"])) }
  }
}
