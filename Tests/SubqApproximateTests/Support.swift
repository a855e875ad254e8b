import Foundation
import Subquadratic
import SubqBench
import SubqTestSupport
import Testing

/// One attention problem shape and option set for the approximate-method tests.
struct Case: CustomStringConvertible, Sendable {
  var b = 1, hq = 2, hkv = 1, nq = 300, nk = 300, d = 24, dv = 24
  var causal = false
  var align = CausalAlignment.bottomRight
  var keyLengths: [Int]? = nil
  var varlen: ([Int], [Int])? = nil
  var layout = AttentionLayout.bhsd

  var description: String {
    var s = "B\(b) H\(hq):\(hkv) Nq\(nq) Nk\(nk) D\(d) Dv\(dv) \(layout)"
    if causal { s += " causal(\(align.rawValue))" }
    if let keyLengths { s += " keylens \(keyLengths)" }
    if let varlen { s += " varlen \(varlen.0) \(varlen.1)" }
    return s
  }

  var options: AttentionOptions {
    var o = AttentionOptions(causal: causal, alignment: align, keyLengths: keyLengths, layout: layout)
    if let (cq, ck) = varlen {
      o.cuSeqlensQ = cq
      o.cuSeqlensK = ck
    }
    return o
  }

  /// Gaussian inputs; keys and values past the key lengths hold huge values a method must not read.
  func inputs(seed: UInt64) -> (q: Tensor, k: Tensor, v: Tensor) {
    func shape(_ h: Int, _ n: Int, _ x: Int) -> [Int] { layout == .bhsd ? [b, h, n, x] : [b, n, h, x] }
    let q = Tensor.randomNormal(shape: shape(hq, nq, d), seed: seed)
    var k = Tensor.randomNormal(shape: shape(hkv, nk, d), seed: seed &+ 1)
    var v = Tensor.randomNormal(shape: shape(hkv, nk, dv), seed: seed &+ 2)
    if let kl = keyLengths {
      fillRows(&k, layout: layout, from: kl, value: 3e4)
      fillRows(&v, layout: layout, from: kl, value: 1e30)
    }
    return (q, k, v)
  }

  /// Shapes every exactness test runs: non-causal, causal square and both alignments with
  /// Nq ≠ Nk, grouped heads, key lengths, packed sequences (one of them empty), bshd layout.
  static let all: [Case] = [
    Case(hq: 2, hkv: 1, nq: 300, nk: 300),
    Case(hq: 2, hkv: 2, nq: 301, nk: 301, d: 17, dv: 9, causal: true),
    Case(hq: 3, hkv: 1, nq: 200, nk: 333, causal: true),
    Case(hq: 1, hkv: 1, nq: 333, nk: 200, causal: true),
    Case(hq: 2, hkv: 1, nq: 200, nk: 333, causal: true, align: .topLeft),
    Case(hq: 2, hkv: 1, nq: 333, nk: 200, causal: true, align: .topLeft),
    Case(b: 2, hq: 4, hkv: 2, nq: 260, nk: 300, d: 16, dv: 16, causal: true, keyLengths: [150, 300]),
    Case(b: 2, hq: 2, hkv: 2, nq: 130, nk: 210, keyLengths: [210, 77]),
    Case(hq: 2, hkv: 1, nq: 250, nk: 300, causal: true, varlen: ([0, 100, 100, 250], [0, 120, 170, 300])),
    Case(hq: 4, hkv: 2, nq: 190, nk: 190, d: 8, dv: 12, causal: true, layout: .bshd),
    Case(hq: 2, hkv: 2, nq: 150, nk: 170, layout: .bshd),
  ]
}

/// Tolerance of exact results against the Float64 reference: relative Frobenius error ≤ 1e-5 on
/// the output and ≤ 1e-5 (relative, floor 1) on the log-sum-exp, as for flash. The methods run
/// the same Float32 tiles over ≤ 1000 keys and merge parts in Float64, leaving errors around
/// 1e-7–1e-6; a wrong key, weight or merge costs ≥ 1e-3.
let exactTolerance = 1e-5

/// Checks that `method` equals exact attention on `c`.
func expectExact(_ method: any AttentionMethod, _ c: Case, seed: UInt64, checkLSE: Bool = true) throws {
  let (q, k, v) = c.inputs(seed: seed)
  var o = c.options
  o.returnLSE = true
  let ref = try NaiveAttention.reference(queries: q, keys: k, values: v, options: o)
  o.returnLSE = checkLSE
  let r = try method.attention(queries: q, keys: k, values: v, options: o)
  #expect(!hasNaN(r.output), "NaN in output: \(c) \(method.parameterValues) seed \(seed)")
  let err = SubqTestSupport.relativeError(r.output, ref.output)
  #expect(err <= exactTolerance, "output error \(err): \(c) \(method.parameterValues) seed \(seed)")
  if checkLSE {
    let lse = try #require(r.lse)
    let (lerr, li) = worstRelative(lse, ref.lse)
    #expect(lerr <= exactTolerance, "lse error \(lerr) at \(li): \(c) \(method.parameterValues) seed \(seed)")
  }
}

/// Float64 softmax attention of one query row over the given key rows (tensor rows, bhsd or
/// bshd as in `c`).
func subsetReference(_ c: Case, q: Tensor, k: Tensor, v: Tensor, batch: Int, head: Int, row: Int, keys: [Int]) -> [Double] {
  let g = head / (c.hq / c.hkv)
  func at(_ t: Tensor, _ h: Int, _ n: Int, _ x: Int) -> Double {
    Double(c.layout == .bhsd ? t[batch, h, n, x] : t[batch, n, h, x])
  }
  let tau = 1 / Double(c.d).squareRoot()
  let scores = keys.map { j in (0..<c.d).reduce(0.0) { $0 + at(q, head, row, $1) * at(k, g, j, $1) } * tau }
  guard let m = scores.max() else { return [Double](repeating: 0, count: c.dv) }
  var out = [Double](repeating: 0, count: c.dv)
  var l = 0.0
  for (s, j) in zip(scores, keys) {
    let e = Foundation.exp(s - m)
    l += e
    for x in 0..<c.dv { out[x] += e * at(v, g, j, x) }
  }
  return out.map { $0 / l }
}

/// Row `row` of head `head` of an output tensor.
func outputRow(_ c: Case, _ o: Tensor, batch: Int, head: Int, row: Int) -> [Double] {
  (0..<c.dv).map { Double(c.layout == .bhsd ? o[batch, head, row, $0] : o[batch, row, head, $0]) }
}

/// Relative error of two vectors (absolute when the reference is 0).
func vectorError(_ x: [Double], _ ref: [Double]) -> Double {
  var num = 0.0, den = 0.0
  for (a, b) in zip(x, ref) {
    num += (a - b) * (a - b)
    den += b * b
  }
  return den > 0 ? (num / den).squareRoot() : num.squareRoot()
}

/// Every query row of a case, as (batch, sequence-local query row range offset) pairs.
func allRows(_ c: Case) -> [QueryRow] {
  var rows: [QueryRow] = []
  for b in 0..<c.b { for h in 0..<c.hq { for i in 0..<c.nq { rows.append(QueryRow(batch: b, head: h, row: i)) } } }
  return rows
}

/// The last key position query row `i` of batch `b` may see (tensor rows), or nil if none; the
/// first visible key row.
func visibleKeys(_ c: Case, batch b: Int, row i: Int) -> Range<Int> {
  var qs = 0, nq = c.nq, ks = 0, nk = c.keyLengths?[b] ?? c.nk
  if let (cq, ck) = c.varlen {
    guard let s = (0..<(cq.count - 1)).first(where: { i >= cq[$0] && i < cq[$0 + 1] }) else { return 0..<0 }
    qs = cq[s]; nq = cq[s + 1] - cq[s]; ks = ck[s]; nk = ck[s + 1] - ck[s]
  }
  let local = i - qs
  var hi = nk
  if c.causal {
    let off = c.align == .bottomRight ? nk - nq : 0
    hi = max(0, min(nk, local + off + 1))
  }
  return ks..<(ks + hi)
}

/// Replaces every key and value row at position ≥ `from` (tensor rows, all heads, batch `b`) by
/// fresh random values.
func perturbKeys(_ c: Case, k: inout Tensor, v: inout Tensor, batch b: Int, from: Int, seed: UInt64) {
  var g = SeededGenerator(seed: seed)
  for h in 0..<c.hkv {
    for j in from..<c.nk {
      for x in 0..<c.d {
        if c.layout == .bhsd { k[b, h, j, x] = Float(g.nextNormal()) } else { k[b, j, h, x] = Float(g.nextNormal()) }
      }
      for x in 0..<c.dv {
        if c.layout == .bhsd { v[b, h, j, x] = Float(g.nextNormal()) } else { v[b, j, h, x] = Float(g.nextNormal()) }
      }
    }
  }
}

/// Checks that changing keys and values after position `cut` leaves every output row that cannot
/// see them bit-for-bit unchanged, and changes some row that can.
func expectNoLookAhead(_ method: any AttentionMethod, _ c: Case, cut: Int, seed: UInt64) throws {
  precondition(c.causal && c.b == 1 && c.varlen == nil)
  let (q, k0, v0) = c.inputs(seed: seed)
  let before = try method.attention(queries: q, keys: k0, values: v0, options: c.options)
  var k = k0, v = v0
  perturbKeys(c, k: &k, v: &v, batch: 0, from: cut, seed: seed &+ 99)
  let after = try method.attention(queries: q, keys: k, values: v, options: c.options)
  var changedLater = false
  for h in 0..<c.hq {
    for i in 0..<c.nq {
      let a = outputRow(c, before.output, batch: 0, head: h, row: i)
      let b = outputRow(c, after.output, batch: 0, head: h, row: i)
      if visibleKeys(c, batch: 0, row: i).upperBound <= cut {
        #expect(a == b, "row \(i) head \(h) changed although it sees only keys < \(cut): \(c) \(method.parameterValues) seed \(seed)")
      } else if a != b {
        changedLater = true
      }
    }
  }
  #expect(changedLater, "no row changed at all: the perturbation did not reach the method")
}

/// Mean relative Frobenius error of `method` against exact attention on structured data
/// (clustered keys, queries near cluster centres), over `seeds`.
func structuredError(_ method: any AttentionMethod, n: Int, heads: Int = 2, d: Int = 32, causal: Bool, seeds: [UInt64]) throws -> Double {
  var total = 0.0
  for s in seeds {
    let data = ProblemData.make(kind: .structured, batch: 1, heads: heads, kvHeads: heads, queries: n, keys: n, dim: d,
                                causal: causal, seed: s, clusters: 16)
    let o = AttentionOptions(causal: causal)
    let exact = try FlashAttention().attention(queries: data.queries, keys: data.keys, values: data.values, options: o)
    let r = try method.attention(queries: data.queries, keys: data.keys, values: data.values, options: o)
    total += SubqTestSupport.relativeError(r.output, exact.output)
  }
  return total / Double(seeds.count)
}

/// Expects `body` to throw exactly `expected`.
func expectError(_ expected: SubqError, _ body: () throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) {
  do {
    try body()
    Issue.record("expected \(expected), nothing thrown", sourceLocation: sourceLocation)
  } catch let error as SubqError {
    #expect(error == expected, sourceLocation: sourceLocation)
  } catch {
    Issue.record("expected \(expected), got \(error)", sourceLocation: sourceLocation)
  }
}

/// Expects `method` to give a bit-identical output with `options`' threads and with one thread.
func expectSameOnOneThread(_ method: any AttentionMethod, q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions,
                           sourceLocation: SourceLocation = #_sourceLocation) throws {
  var o = options
  let a = try method.attention(queries: q, keys: k, values: v, options: o)
  o.threads = 1
  let b = try method.attention(queries: q, keys: k, values: v, options: o)
  #expect(a.output == b.output, "different result with 1 thread", sourceLocation: sourceLocation)
}
