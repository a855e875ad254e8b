import Foundation
import Subquadratic
import SubqTestSupport
import Testing

/// Attention sinks against the Float64 reference with the equivalent dense mask
/// (`j < S or j ≥ P − W + 1`, and `j ≤ P`, P = i + alignment offset).
///
/// Tolerance: relative Frobenius error ≤ 1e-5 (output) and ≤ 1e-5 relative, floor 1 (LSE), as for
/// flash: the kernel is flash's tiles over two key ranges; a wrong range or mask costs ≥ 1e-3.
struct SinkAttentionTests {
  struct Case: CustomStringConvertible {
    var sinks = 4, window = 16
    var b = 1, hq = 2, hkv = 1, nq = 100, nk = 100, d = 32, dv = 32
    var align = CausalAlignment.bottomRight
    var keyLengths: [Int]? = nil
    var varlen: ([Int], [Int])? = nil
    var softcap: Float? = nil
    var layout = AttentionLayout.bhsd
    var description: String {
      "S\(sinks) W\(window) B\(b) H\(hq):\(hkv) Nq\(nq) Nk\(nk) D\(d) Dv\(dv) \(align.rawValue) \(layout)"
        + (keyLengths.map { " keylens \($0)" } ?? "") + (varlen.map { " varlen \($0.0) \($0.1)" } ?? "")
        + (softcap.map { " softcap \($0)" } ?? "")
    }
  }

  func check(_ c: Case, seed: UInt64 = testSeed()) throws {
    func shape(_ h: Int, _ n: Int, _ x: Int) -> [Int] { c.layout == .bhsd ? [c.b, h, n, x] : [c.b, n, h, x] }
    let q = Tensor.randomNormal(shape: shape(c.hq, c.nq, c.d), seed: seed)
    var k = Tensor.randomNormal(shape: shape(c.hkv, c.nk, c.d), seed: seed + 1)
    var v = Tensor.randomNormal(shape: shape(c.hkv, c.nk, c.dv), seed: seed + 2)
    var opts = AttentionOptions(causal: true, alignment: c.align, softcap: c.softcap, keyLengths: c.keyLengths,
                                layout: c.layout, returnLSE: true)
    if let (cq, ck) = c.varlen { opts.cuSeqlensQ = cq; opts.cuSeqlensK = ck }
    if let kl = c.keyLengths {
      fillRows(&k, layout: c.layout, from: kl, value: 3e4)
      fillRows(&v, layout: c.layout, from: kl, value: 1e30)
    }
    let p = try AttentionProblem.validate(op: "test", queries: q, keys: k, values: v, options: opts)
    let r = try SinkAttention(sinks: c.sinks, window: c.window).attention(queries: q, keys: k, values: v, options: opts)
    let ref2 = try referenceBySequence(q, k, v, opts, p, c)
    #expect(!hasNaN(r.output), "NaN: \(c) seed \(seed)")
    let err = relativeError(r.output, ref2.output)
    #expect(err <= 1e-5, "output error \(err): \(c) seed \(seed)")
    let (lerr, li) = worstRelative(try #require(r.lse), ref2.lse)
    #expect(lerr <= 1e-5, "lse error \(lerr) at \(li): \(c) seed \(seed)")
  }

  /// The masked reference, one sequence at a time so the predicate knows the alignment offset.
  func referenceBySequence(_ q: Tensor, _ k: Tensor, _ v: Tensor, _ opts: AttentionOptions, _ p: AttentionProblem, _ c: Case) throws
    -> (output: [Double], lse: [Double])
  {
    var out = [Double](repeating: 0, count: p.outputShape.reduce(1, *))
    var lse = [Double](repeating: .infinity, count: p.lseShape.reduce(1, *))
    for seq in p.sequences {
      let r = try maskedReference(queries: q, keys: k, values: v, options: opts) { b, _, i, j in
        // Only rows of this sequence are taken from r below; other sequences' rows are ignored.
        let pos = i + seq.offset
        return j <= pos && (j < c.sinks || j >= pos - c.window + 1) && b == seq.batch
      }
      for h in 0..<p.queryHeads {
        for i in 0..<seq.queryCount {
          let row = seq.queryStart + i
          let o = p.outputRows.offset(batch: seq.batch, head: h, row: row)
          for x in 0..<p.valueDim { out[o + x] = r.output[o + x] }
          let l = (seq.batch * p.queryHeads + h) * p.queryLength + row
          lse[l] = r.lse[l]
        }
      }
    }
    return (out, lse)
  }

  @Test func shapesAndSizes() throws {
    try check(Case(sinks: 4, window: 16, nq: 300, nk: 300))
    try check(Case(sinks: 0, window: 1, nq: 70, nk: 70))
    try check(Case(sinks: 3, window: 200, nq: 130, nk: 130))        // window covers everything: causal
    try check(Case(sinks: 500, window: 5, nq: 90, nk: 90))         // sinks cover everything
    try check(Case(sinks: 7, window: 33, b: 2, hq: 6, hkv: 2, nq: 150, nk: 150, d: 17, dv: 9))
    try check(Case(sinks: 4, window: 64, nq: 1, nk: 500))           // one decoding step
    try check(Case(sinks: 2, window: 40, nq: 77, nk: 300))
    try check(Case(sinks: 2, window: 40, nq: 300, nk: 77))          // leading rows see nothing
    try check(Case(sinks: 5, window: 20, nq: 200, nk: 150, align: .topLeft))
    try check(Case(sinks: 4, window: 30, hq: 4, hkv: 2, nq: 129, nk: 129, layout: .bshd))
    try check(Case(sinks: 4, window: 30, nq: 129, nk: 129, softcap: 4))
  }

  @Test func keyLengthsAndPackedSequences() throws {
    try check(Case(sinks: 3, window: 25, b: 3, hq: 2, hkv: 1, nq: 40, nk: 200, keyLengths: [200, 57, 1]))
    try check(Case(sinks: 3, window: 25, hq: 2, hkv: 2, nq: 300, nk: 300, varlen: ([0, 100, 101, 300], [0, 100, 101, 300])))
  }

  @Test func equalsCausalAttentionWhenTheBudgetCoversEveryKey() throws {
    let seed = testSeed()
    let q = Tensor.randomNormal(shape: [1, 2, 150, 32], seed: seed)
    let k = Tensor.randomNormal(shape: [1, 2, 150, 32], seed: seed + 1)
    let v = Tensor.randomNormal(shape: [1, 2, 150, 32], seed: seed + 2)
    let ref = try NaiveAttention.reference(queries: q, keys: k, values: v, options: AttentionOptions(causal: true))
    let r = try SinkAttention(sinks: 4, window: 150).attention(queries: q, keys: k, values: v, options: AttentionOptions())
    #expect(relativeError(r.output, ref.output) <= 1e-5, "seed \(seed)")
  }

  /// Keys a query must not see are huge: its output must not change at all.
  @Test func neverReadsOutsideThePattern() throws {
    let seed = testSeed()
    let (n, S, W) = (400, 4, 50)
    let q = Tensor.randomNormal(shape: [1, 1, n, 32], seed: seed)
    var k = Tensor.randomNormal(shape: [1, 1, n, 32], seed: seed + 1)
    var v = Tensor.randomNormal(shape: [1, 1, n, 32], seed: seed + 2)
    let m = try SinkAttention(sinks: S, window: W)
    let clean = try m.attention(queries: q, keys: k, values: v, options: AttentionOptions())
    let rows = 300..<310          // their keys: [0, 4) ∪ [251, 310)
    k.withUnsafeMutableBufferPointer { p in for j in Array(S..<251) + Array(310..<n) { for d in 0..<32 { p[j * 32 + d] = 3e4 } } }
    v.withUnsafeMutableBufferPointer { p in for j in Array(S..<251) + Array(310..<n) { for d in 0..<32 { p[j * 32 + d] = 1e30 } } }
    let dirty = try m.attention(queries: q, keys: k, values: v, options: AttentionOptions())
    for i in rows { for d in 0..<32 { #expect(dirty.output[0, 0, i, d] == clean.output[0, 0, i, d], "row \(i) seed \(seed)") } }
  }

  @Test func selectedKeysAndErrors() throws {
    let q = Tensor.randomNormal(shape: [1, 1, 20, 8], seed: 1)
    let m = try SinkAttention(sinks: 2, window: 3)
    let sel = try m.selectedKeys(queries: q, keys: q, values: q, options: AttentionOptions(),
                                 rows: [0, 1, 2, 3, 10, 19].map { QueryRow(batch: 0, head: 0, row: $0) })
    #expect(sel == [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3], [0, 1, 8, 9, 10], [0, 1, 17, 18, 19]])
    #expect(try m.attendedPairs(queries: q, keys: q, values: q, options: AttentionOptions()) == Double(1 + 2 + 3 + 4 + 16 * 5))
    #expect(throws: SubqError.self) { try SinkAttention(sinks: -1, window: 3) }
    #expect(throws: SubqError.self) { try SinkAttention(sinks: 1, window: 0) }
    #expect(throws: SubqError.self) { try m.attention(queries: q, keys: q, values: q, options: AttentionOptions(window: AttentionWindow(left: 3, right: 0))) }
  }
}
