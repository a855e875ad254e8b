import Foundation
import SubqAttention
import Subquadratic
import SubqTestSupport
import Testing

/// Merging partial attention results over disjoint key sets reproduces attention over their union.
///
/// Tolerance: relative Frobenius error ≤ 1e-5 on the output and ≤ 1e-5 (relative, floor 1) on the
/// log-sum-exp, the forward pass's own tolerance: the merge adds only a few ulp.
struct PartialAttentionTests {
  /// Attention over keys `range` only (as a partial result with −∞ for empty rows), computed with
  /// the forward kernel on a key slice.
  func part(_ q: Tensor, _ k: Tensor, _ v: Tensor, keys range: Range<Int>, options: AttentionOptions) throws -> AttentionResult {
    func slice(_ t: Tensor) -> Tensor {
      let (B, H, N, X) = (t.shape[0], t.shape[1], t.shape[2], t.shape[3])
      _ = N
      return Tensor(shape: [B, H, range.count, X]) { p in
        for b in 0..<B { for h in 0..<H { for j in 0..<range.count { for x in 0..<X {
          p[((b * H + h) * range.count + j) * X + x] = t[b, h, range.lowerBound + j, x]
        } } } }
      }
    }
    let ks = slice(k), vs = slice(v)
    var o = options
    o.returnLSE = true
    let p = try AttentionProblem.validate(op: "test", queries: q, keys: ks, values: vs, options: o)
    var out = poisoned(p.outputShape), lse = poisoned(p.lseShape)
    q.withUnsafeBufferPointer { qb in ks.withUnsafeBufferPointer { kb in vs.withUnsafeBufferPointer { vb in
      out.withUnsafeMutableBufferPointer { ob in lse.withUnsafeMutableBufferPointer { lb in
        try! FlashAttention().forward(p, q: qb.baseAddress!, k: kb.baseAddress!, v: vb.baseAddress!, out: ob.baseAddress!,
                                      lse: lb.baseAddress!, emptyRowLSE: -.infinity)
      } }
    } } }
    return AttentionResult(output: out, lse: lse)
  }

  @Test func mergeOfSplitsEqualsFullAttention() throws {
    let seed = testSeed()
    let q = Tensor.randomNormal(shape: [2, 4, 33, 40], seed: seed)
    let k = Tensor.randomNormal(shape: [2, 2, 300, 40], seed: seed + 1)
    let v = Tensor.randomNormal(shape: [2, 2, 300, 24], seed: seed + 2)
    let opts = AttentionOptions(returnLSE: true)
    let ref = try NaiveAttention.reference(queries: q, keys: k, values: v, options: opts)
    for cuts in [[0, 300], [0, 1, 300], [0, 100, 101, 250, 300], [0, 7, 64, 65, 128, 299, 300]] {
      let parts = try zip(cuts, cuts.dropFirst()).map { try part(q, k, v, keys: $0..<$1, options: opts) }
      let m = try PartialAttention.merge(parts)
      #expect(relativeError(m.output, ref.output) <= 1e-5, "cuts \(cuts) seed \(seed)")
      let (e, i) = worstRelative(m.lse!, ref.lse)
      #expect(e <= 1e-5, "lse error \(e) at \(i), cuts \(cuts) seed \(seed)")
    }
  }

  @Test func emptyPartsContributeNothing() throws {
    // Parts whose rows are empty (lse −∞ for partial results, +∞ for final ones) must not leak
    // their outputs, whatever those hold.
    let q = Tensor.randomNormal(shape: [1, 1, 100, 16], seed: 3)
    let k = Tensor.randomNormal(shape: [1, 1, 100, 16], seed: 4)
    let v = Tensor.randomNormal(shape: [1, 1, 100, 16], seed: 5)
    let opts = AttentionOptions(window: AttentionWindow(left: 5, right: 5), returnLSE: true)
    let ref = try NaiveAttention.reference(queries: q, keys: k, values: v, options: opts)
    let a = try part(q, k, v, keys: 0..<100, options: opts)
    let garbage = Tensor(shape: a.output.shape, repeating: 1e30)
    let empty = AttentionResult(output: garbage, lse: Tensor(shape: a.lse!.shape, repeating: -.infinity))
    let plusInf = AttentionResult(output: garbage, lse: Tensor(shape: a.lse!.shape, repeating: .infinity))
    let m = try PartialAttention.merge([empty, a, plusInf])
    #expect(relativeError(m.output, ref.output) <= 1e-5)
    #expect(worstRelative(m.lse!, ref.lse).error <= 1e-5)
  }

  @Test func allEmptyRowsGiveZerosAndEmptyLSE() throws {
    let shape = [1, 2, 3, 4]
    let e1 = AttentionResult(output: Tensor(shape: shape, repeating: 5), lse: Tensor(shape: [1, 2, 3], repeating: -.infinity))
    let e2 = AttentionResult(output: Tensor(shape: shape, repeating: 7), lse: Tensor(shape: [1, 2, 3], repeating: .infinity))
    let final = try PartialAttention.merge([e1, e2])
    #expect(final.output.scalars.allSatisfy { $0 == 0 })
    #expect(final.lse!.scalars.allSatisfy { $0 == .infinity })
    let partial = try PartialAttention.merge([e1, e2], emptyRowLSE: -.infinity)
    #expect(partial.lse!.scalars.allSatisfy { $0 == -.infinity })
  }

  @Test func mergeIsAssociative() throws {
    let q = Tensor.randomNormal(shape: [1, 2, 20, 16], seed: 7)
    let k = Tensor.randomNormal(shape: [1, 2, 90, 16], seed: 8)
    let v = Tensor.randomNormal(shape: [1, 2, 90, 16], seed: 9)
    let opts = AttentionOptions(causal: true, returnLSE: true)
    let a = try part(q, k, v, keys: 0..<30, options: opts)
    let b = try part(q, k, v, keys: 30..<60, options: opts)
    let c = try part(q, k, v, keys: 60..<90, options: opts)
    let ab = try PartialAttention.merge([a, b], emptyRowLSE: -.infinity)
    let left = try PartialAttention.merge([ab, c])
    let flat = try PartialAttention.merge([a, b, c])
    #expect(relativeError(left.output, flat.output) <= 1e-6)
    #expect(worstRelative(left.lse!, flat.lse!.scalars.map(Double.init)).error <= 1e-6)
  }

  @Test func bshdLayout() throws {
    let q = Tensor.randomNormal(shape: [1, 9, 3, 8], seed: 1)
    let k = Tensor.randomNormal(shape: [1, 40, 3, 8], seed: 2)
    let v = Tensor.randomNormal(shape: [1, 40, 3, 8], seed: 3)
    func slice(_ t: Tensor, _ r: Range<Int>) -> Tensor {
      Tensor(shape: [1, r.count, 3, 8]) { p in for j in 0..<r.count { for h in 0..<3 { for x in 0..<8 { p[(j * 3 + h) * 8 + x] = t[0, r.lowerBound + j, h, x] } } } }
    }
    let opts = AttentionOptions(layout: .bshd, returnLSE: true)
    let a = try FlashAttention().attention(queries: q, keys: slice(k, 0..<13), values: slice(v, 0..<13), options: opts)
    let b = try FlashAttention().attention(queries: q, keys: slice(k, 13..<40), values: slice(v, 13..<40), options: opts)
    let ref = try NaiveAttention.reference(queries: q, keys: k, values: v, options: opts)
    let m = try PartialAttention.merge([a, b], layout: .bshd)
    #expect(relativeError(m.output, ref.output) <= 1e-5)
  }

  @Test func badInputs() throws {
    let good = AttentionResult(output: Tensor(shape: [1, 2, 3, 4]), lse: Tensor(shape: [1, 2, 3]))
    func expectError(_ fragment: String, _ parts: [AttentionResult]) {
      do {
        _ = try PartialAttention.merge(parts)
        Issue.record("expected an error mentioning \(fragment)")
      } catch {
        #expect(error.description.contains(fragment) && error.description.hasPrefix("attention.merge"), "\(error)")
      }
    }
    expectError("at least one", [])
    expectError("log-sum-exp", [good, AttentionResult(output: Tensor(shape: [1, 2, 3, 4]), lse: nil)])
    expectError("differs", [good, AttentionResult(output: Tensor(shape: [1, 2, 3, 5]), lse: Tensor(shape: [1, 2, 3]))])
    expectError("[B, Hq, Nq]", [good, AttentionResult(output: Tensor(shape: [1, 2, 3, 4]), lse: Tensor(shape: [1, 3, 2]))])
    expectError("NaN", [AttentionResult(output: Tensor(shape: [1, 2, 3, 4]), lse: Tensor(shape: [1, 2, 3], repeating: .nan))])
  }
}
