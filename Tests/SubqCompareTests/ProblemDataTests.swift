import Foundation
import SubqBench
import Subquadratic
import SubqTestSupport
import Testing

/// Planted needles: where they are, and that exact attention retrieves them at every length.
struct ProblemDataTests {
  /// The softmax weight exact attention gives key `key` for query row `query`, in Float64.
  func needleWeight(_ d: ProblemData, _ n: ProblemData.Needle, causal: Bool, group: Int) -> Double {
    let (nq, nk, D) = (d.queries.shape[2], d.keys.shape[2], d.queries.shape[3])
    let end = causal ? n.query + (nk - nq) + 1 : nk
    let scores = (0..<end).map { j in
      (0..<D).map { Double(d.queries[n.batch, n.head, n.query, $0]) * Double(d.keys[n.batch, n.head / group, j, $0]) }
        .reduce(0, +) / Double(D).squareRoot()
    }
    let m = scores.max()!
    let total = scores.map { exp($0 - m) }.reduce(0, +)
    return exp(scores[n.key] - m) / total
  }

  @Test(arguments: [(97, 97, true), (300, 300, false), (64, 200, true), (200, 64, true)])
  func needlesArePlacedAndRetrievable(nq: Int, nk: Int, causal: Bool) {
    let seed = testSeed()
    let d = ProblemData.make(kind: .needles, batch: 2, heads: 4, kvHeads: 2, queries: nq, keys: nk, dim: 24, causal: causal,
                             seed: seed, needleCount: 5)
    // 5 per head, but at most D/2 = 12 per key/value head (2 query heads each): 12 / 2 = 6 ≥ 5.
    #expect(d.needles.count == 2 * 4 * 5, "seed \(seed)")
    #expect(Set(d.needles.map { [$0.batch, $0.head, $0.query] }).count == d.needles.count, "query rows repeat, seed \(seed)")
    #expect(Set(d.needles.map { [$0.batch, $0.head / 2, $0.key] }).count == d.needles.count, "keys repeat, seed \(seed)")
    // No needle key scores against another needle's query of the same key/value head.
    for n in d.needles {
      for m in d.needles where m.batch == n.batch && m.head / 2 == n.head / 2 && m.key != n.key {
        var dot = 0.0, qq = 0.0, kk = 0.0
        for c in 0..<24 {
          let a = Double(d.queries[m.batch, m.head, m.query, c]), b = Double(d.keys[n.batch, n.head / 2, n.key, c])
          dot += a * b
          qq += a * a
          kk += b * b
        }
        #expect(abs(dot) / (qq * kk).squareRoot() <= 1e-5, "needle key \(n.key) against query \(m), seed \(seed)")
      }
    }
    for n in d.needles {
      #expect(n.query >= nq / 2 && n.query < nq)
      let visibleEnd = causal ? min(nk, n.query + nk - nq + 1) : nk
      // In the first half of the keys the query sees: far from it, and earlier when causal.
      #expect(n.key >= 0 && n.key < max(1, visibleEnd / 2), "\(n) seed \(seed)")
      // Designed for ≈ 0.993; small sequences fluctuate more, so 0.95.
      let w = needleWeight(d, n, causal: causal, group: 2)
      #expect(w >= 0.95, "needle \(n) has weight \(w), seed \(seed)")
    }
  }

  /// No more than D/2 needles share a key/value head (MQA here: 8 query heads on one).
  @Test func needlesPerKeyValueHeadAreCapped() {
    let d = ProblemData.make(kind: .needles, batch: 1, heads: 8, kvHeads: 1, queries: 400, keys: 400, dim: 16, causal: true,
                             seed: testSeed(), needleCount: 8)
    #expect(d.needles.count == 8)  // 16 / 2 = 8 over 8 heads: one each
    for n in d.needles { #expect(needleWeight(d, n, causal: true, group: 8) >= 0.95, "\(n)") }
  }

  /// At long lengths a fixed margin stops working (12 logits give ≈ 0.92 at 8K keys); the
  /// margin grows with ln(Nk), so the needle keeps ≈ 99% of the weight.
  @Test func needlesDominateAtLongLengths() {
    let seed = testSeed()
    let d = ProblemData.make(kind: .needles, batch: 1, heads: 1, kvHeads: 1, queries: 8192, keys: 8192, dim: 64, causal: true,
                             seed: seed, needleCount: 4)
    #expect(d.needles.count == 4)
    for n in d.needles {
      let w = needleWeight(d, n, causal: true, group: 1)
      #expect(w >= 0.98, "needle \(n) has weight \(w) at N = 8192, seed \(seed)")
    }
  }

  /// `structured` promises attention shaped like a trained model's: 90% of a row's weight on a
  /// few percent of the keys (Gaussian data spreads it over about 60%), and a sink at position 0.
  @Test func structuredAttentionIsConcentratedWithASink() throws {
    let seed = testSeed()
    func rows(_ kind: DataKind) throws -> ExactRows {
      let d = ProblemData.make(kind: kind, batch: 1, heads: 4, kvHeads: 2, queries: 1024, keys: 1024, dim: 64, seed: seed)
      let p = try AttentionProblem.validate(op: "test", queries: d.queries, keys: d.keys, values: d.values, options: AttentionOptions(causal: true))
      let sample = CompareMetrics.sampleRows(count: 64, batch: 1, heads: 4, length: 1024, seed: seed)
      return ExactRows(problem: p, queries: d.queries, keys: d.keys, values: d.values, rows: sample, k: 3)
    }
    func medianFraction(_ e: ExactRows) -> Double {
      let f = zip(e.mass90Keys, e.visibleCounts).map { Double($0) / Double($1) }.sorted()
      return f[f.count / 2]
    }
    let structured = try rows(.structured), gaussian = try rows(.gaussian)
    #expect(medianFraction(structured) <= 0.10, "structured: \(medianFraction(structured)), seed \(seed)")
    #expect(medianFraction(gaussian) >= 0.4, "gaussian: \(medianFraction(gaussian)), seed \(seed)")
    let sinkRows = structured.topKeys.filter { $0.contains(0) }.count
    #expect(sinkRows >= structured.rows.count / 2, "key 0 is among the top 3 of only \(sinkRows) rows, seed \(seed)")
  }
}
