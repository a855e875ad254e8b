import Foundation
import Subquadratic
import SubqBench
import SubqTestSupport
import Testing

@Suite struct ProbSparseAttentionTests {
  /// A factor large enough that u = Nq: every query is active, so the output is exact.
  @Test func exactWhenEveryQueryIsActive() throws {
    let m = try ProbSparseAttention(factor: 1000, seed: 2)
    for c in Case.all { try expectExact(m, c, seed: testSeed(), checkLSE: false) }
  }

  /// With a small factor: active queries get exact attention over the keys they may see, lazy
  /// ones the mean of those values; u = c·⌈ln Nq⌉ queries are active (causal: one per chunk).
  @Test func activeRowsExactLazyRowsMean() throws {
    let m = try ProbSparseAttention(factor: 2, seed: 9)
    let seed = testSeed()
    for c in Case.all {
      let (q, k, v) = c.inputs(seed: seed)
      let r = try m.attention(queries: q, keys: k, values: v, options: c.options)
      let active = try m.activeQueries(queries: q, keys: k, values: v, options: c.options)
      var worst = 0.0
      var lazyCount = 0
      for b in 0..<c.b {
        for h in 0..<c.hq {
          // Sequences of batch b: one per batch entry, or the packed ones.
          let seqs: [Int] = c.varlen == nil ? [b] : Array(0..<(c.varlen!.0.count - 1))
          var activeRows = Set<Int>()
          for s in seqs {
            activeRows.formUnion(active[s][h])
            let nq = c.varlen.map { $0.0[s + 1] - $0.0[s] } ?? c.nq
            let u = nq == 0 ? 0 : min(2 * max(1, Int(Foundation.log(Double(nq)).rounded(.up))), nq)
            #expect(active[s][h].count <= u && active[s][h].count >= (c.causal ? 0 : min(u, 1)),
                    "\(active[s][h].count) active rows, budget \(u): \(c)")
            if !c.causal { #expect(active[s][h].count == u, "\(active[s][h].count) active rows, budget \(u): \(c)") }
          }
          for i in 0..<c.nq {
            let visible = Array(visibleKeys(c, batch: b, row: i))
            let got = outputRow(c, r.output, batch: b, head: h, row: i)
            if activeRows.contains(i) {
              let ref = subsetReference(c, q: q, k: k, v: v, batch: b, head: h, row: i, keys: visible)
              worst = max(worst, vectorError(got, ref))
            } else {
              lazyCount += 1
              var mean = [Double](repeating: 0, count: c.dv)
              let g = h / (c.hq / c.hkv)
              for j in visible {
                for x in 0..<c.dv { mean[x] += Double(c.layout == .bhsd ? v[b, g, j, x] : v[b, j, g, x]) / Double(visible.count) }
              }
              worst = max(worst, vectorError(got, mean))
            }
          }
        }
      }
      #expect(worst <= exactTolerance, "error \(worst): \(c) seed \(seed)")
      #expect(lazyCount > 0, "no lazy query: \(c)")
    }
  }

  /// Queries with a large norm have the most spread-out scores (largest max − mean): the
  /// measure must rank them first.
  @Test func peakedQueriesAreSelected() throws {
    let c = Case(hq: 1, hkv: 1, nq: 512, nk: 512, d: 16, dv: 16)
    var (q, k, v) = c.inputs(seed: testSeed())
    let planted = [17, 200, 311, 480]
    for i in planted { for x in 0..<c.d { q[0, 0, i, x] *= 20 } }
    let m = try ProbSparseAttention(factor: 1, seed: 4)  // u = 7
    let active = try m.activeQueries(queries: q, keys: k, values: v, options: c.options)
    #expect(Set(planted).isSubset(of: Set(active[0][0])), "active \(active[0][0])")
  }

  @Test func noLookAheadWhenCausal() throws {
    let m = try ProbSparseAttention(factor: 3, seed: 5)
    let seed = testSeed()
    try expectNoLookAhead(m, Case(hq: 2, hkv: 1, nq: 400, nk: 400, causal: true), cut: 217, seed: seed)
    try expectNoLookAhead(m, Case(hq: 2, hkv: 1, nq: 300, nk: 420, causal: true), cut: 333, seed: seed)
    try expectNoLookAhead(m, Case(hq: 2, hkv: 2, nq: 420, nk: 300, causal: true, align: .topLeft), cut: 150, seed: seed)
  }

  @Test func deterministicForASeed() throws {
    let c = Case(hq: 4, hkv: 2, nq: 600, nk: 600, causal: true)
    let (q, k, v) = c.inputs(seed: testSeed())
    let m = try ProbSparseAttention(factor: 3, seed: 7)
    try expectSameOnOneThread(m, q: q, k: k, v: v, options: c.options)
    let actives = try (0..<6).map { s in
      try ProbSparseAttention(factor: 3, seed: UInt64(s)).activeQueries(queries: q, keys: k, values: v, options: c.options)
    }
    #expect(Set(actives.map { $0.description }).count > 1, "the seed changes nothing")
  }

  /// Error against exact attention falls as the factor grows (mean over 3 seeds).
  @Test func errorFallsWithBudget() throws {
    var errors: [Double] = []
    for factor in [2, 8, 32, 1000] {
      let m = try ProbSparseAttention(factor: factor, seed: 1)
      errors.append(try structuredError(m, n: 1024, causal: false, seeds: [1, 2, 3].map { $0 &+ testSeed() }))
    }
    for i in 1..<errors.count { #expect(errors[i] < errors[i - 1], "errors \(errors)") }
    #expect(errors.last! <= 1e-5, "u = N: errors \(errors)")
  }

  @Test func invalidParametersAreTypedErrors() throws {
    let op = "attention.probsparse"
    expectError(.argument(op: op, name: "factor", value: "0", reason: "must be in 1...1048576")) { _ = try ProbSparseAttention(factor: 0) }
    expectError(.argument(op: op, name: "factor", value: "2.5", reason: "not an integer")) {
      _ = try ProbSparseAttention(parameters: MethodParameters(["factor": "2.5"]))
    }
    let m = try ProbSparseAttention()
    let c = Case(nq: 40, nk: 40)
    let (q, k, v) = c.inputs(seed: 1)
    expectError(.unsupported(op: op, feature: "log-sum-exp", reason: "lazy queries output the mean of the values, which has no log-sum-exp")) {
      _ = try m.attention(queries: q, keys: k, values: v, options: AttentionOptions(returnLSE: true))
    }
    expectError(.unsupported(op: op, feature: "window", reason: "probsparse implements causal, key-lengths, varlen")) {
      _ = try m.attention(queries: q, keys: k, values: v, options: AttentionOptions(window: AttentionWindow(left: 3, right: 3)))
    }
  }
}
