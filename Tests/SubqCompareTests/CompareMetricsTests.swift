import Foundation
import SubqBench
import Subquadratic
import SubqTestSupport
import Testing

/// The accuracy measures, each against an independent computation.
struct CompareMetricsTests {
  /// Frobenius and worst-row errors against a direct Float64 computation on random data with one
  /// row made much worse than the others.
  @Test func outputErrorMatchesDirectComputation() throws {
    let seed = testSeed()
    let ref = Tensor.randomNormal(shape: [2, 3, 17, 5], seed: seed)
    var x = ref
    var g = SeededGenerator(seed: seed &+ 1)
    x.withUnsafeMutableBufferPointer { p in for i in p.indices { p[i] += Float(0.01 * g.nextNormal()) } }
    // Row (b 1, h 2, i 9) gets a large error.
    let bad = ((1 * 3 + 2) * 17 + 9) * 5
    x[flat: bad + 3] += 4
    let e = CompareMetrics.outputError(x, reference: ref)
    let xs = x.scalars.map(Double.init), rs = ref.scalars.map(Double.init)
    let num = zip(xs, rs).map { ($0 - $1) * ($0 - $1) }.reduce(0, +), den = rs.map { $0 * $0 }.reduce(0, +)
    #expect(abs(e.relative - (num / den).squareRoot()) <= 1e-12 * e.relative, "seed \(seed)")
    var worst = 0.0
    for r in 0..<(2 * 3 * 17) {
      let d = (0..<5).map { xs[r * 5 + $0] - rs[r * 5 + $0] }.map { $0 * $0 }.reduce(0, +)
      let n = (0..<5).map { rs[r * 5 + $0] * rs[r * 5 + $0] }.reduce(0, +)
      worst = max(worst, (d / n).squareRoot())
    }
    #expect(abs(e.worstRow - worst) <= 1e-12 * worst, "seed \(seed)")
    #expect(e.worstIndex == CompareRowIndex(batch: 1, head: 2, row: 9), "seed \(seed): \(e.worstIndex)")
    #expect(CompareMetrics.outputError(ref, reference: ref).relative == 0)
    var nan = x
    nan[flat: 7] = .nan
    #expect(CompareMetrics.outputError(nan, reference: ref).relative == .infinity)
  }

  @Test func recallCountsTheTrueKeysSelected() {
    let r = CompareMetrics.recall(selected: [[1, 2, 3], [9], [4, 5]], truth: [[3, 2, 7, 8], [9], []])
    // Row 0: 2 of 4; row 1: 1 of 1; row 2 has no truth and is skipped.
    #expect(r == 0.75)
    #expect(CompareMetrics.recall(selected: [[1]], truth: [[]]) == nil)
  }

  @Test func sampledRowsAreDistinctAndSpreadOverHeads() {
    let rows = CompareMetrics.sampleRows(count: 40, batch: 1, heads: 4, length: 1000, seed: 3)
    #expect(rows.count == 40)
    #expect(Set(rows).count == 40)
    #expect(Set(rows.map(\.head)) == [0, 1, 2, 3])
    #expect(rows.allSatisfy { $0.row >= 0 && $0.row < 1000 })
    // Fewer rows than asked for: all of them.
    let all = CompareMetrics.sampleRows(count: 100, batch: 2, heads: 2, length: 7, seed: 3)
    #expect(all.count == 28 && Set(all).count == 28)
  }

  /// ExactRows against the Float64 reference (outputs) and a brute-force sort (top-k, mass), on
  /// grouped heads, Nq ≠ Nk and causal masking (short early rows).
  @Test(arguments: [false, true])
  func exactRowsMatchReference(causal: Bool) throws {
    let seed = testSeed()
    let q = Tensor.randomNormal(shape: [1, 4, 37, 9], seed: seed)
    let k = Tensor.randomNormal(shape: [1, 2, 53, 9], seed: seed + 1, std: 2)
    let v = Tensor.randomNormal(shape: [1, 2, 53, 7], seed: seed + 2)
    let opts = AttentionOptions(causal: causal)
    let p = try AttentionProblem.validate(op: "test", queries: q, keys: k, values: v, options: opts)
    let rows = (0..<37).map { QueryRow(batch: 0, head: $0 % 4, row: $0) }
    let ex = ExactRows(problem: p, queries: q, keys: k, values: v, rows: rows, k: 5)
    let ref = try NaiveAttention.reference(queries: q, keys: k, values: v, options: opts)
    for (i, r) in rows.enumerated() {
      let base = ((r.head) * 37 + r.row) * 7
      for c in 0..<7 {
        #expect(abs(ex.outputs[i][c] - ref.output[base + c]) <= 1e-12 * max(1, abs(ref.output[base + c])), "row \(r) seed \(seed)")
      }
      // Brute force: all visible scores, sorted.
      let visible = causal ? 0...(r.row + 53 - 37) : 0...52
      let scores = visible.map { j -> (Int, Double) in
        (j, (0..<9).map { Double(q[0, r.head, r.row, $0]) * Double(k[0, r.head / 2, j, $0]) }.reduce(0, +) / 3)
      }.sorted { $0.1 > $1.1 }
      #expect(ex.topKeys[i] == scores.prefix(5).map(\.0), "row \(r) seed \(seed)")
      #expect(ex.visibleCounts[i] == visible.count)
      let m = scores[0].1
      let w = scores.map { exp($0.1 - m) }
      let total = w.reduce(0, +)
      var acc = 0.0, n = 0
      while acc < 0.9 * total { acc += w[n]; n += 1 }
      #expect(ex.mass90Keys[i] == n, "row \(r) seed \(seed)")
    }
    // Rows of a Float32 exact method agree to ~1e-7; a perturbed output does not.
    let flash = try FlashAttention().attention(queries: q, keys: k, values: v, options: opts).output
    #expect(ex.relativeError(of: flash) <= 1e-5)
    var off = flash
    off[flat: 0] += 1
    #expect(ex.relativeError(of: off) > 1e-3)
  }

  /// The needle test: a row equal to the needle's value row passes, an average of other rows and
  /// an orthogonal row do not.
  @Test func needleCriterion() {
    let v = Tensor.randomNormal(shape: [1, 1, 64, 32], seed: 9)
    let needle = ProblemData.Needle(batch: 0, head: 1, query: 3, key: 10)
    func output(_ fill: (Int) -> Float) -> Tensor {
      var o = Tensor.randomNormal(shape: [1, 2, 8, 32], seed: 10)
      for c in 0..<32 { o[0, 1, 3, c] = fill(c) }
      return o
    }
    let exact = output { 0.99 * v[0, 0, 10, $0] + 0.01 * v[0, 0, 11, $0] }
    #expect(CompareMetrics.needleFound(output: exact, values: v, needle: needle, groupSize: 2))
    let miss = output { c in (0..<64).filter { $0 != 10 }.map { v[0, 0, $0, c] }.reduce(0, +) / 63 }
    #expect(!CompareMetrics.needleFound(output: miss, values: v, needle: needle, groupSize: 2))
    let scaled = output { 0.3 * v[0, 0, 10, $0] }  // right direction, wrong magnitude: found
    #expect(CompareMetrics.needleFound(output: scaled, values: v, needle: needle, groupSize: 2))
  }

  @Test func paretoFrontKeepsUndominatedPoints() {
    let f = CompareFigures.paretoFront([(1, 1e-7), (4, 1e-2), (3, 1e-1), (8, 5e-2), (2, 1e-3), (8, 9e-2)])
    #expect(f.map(\.x) == [1, 2, 4, 8])
    #expect(f.map(\.y) == [1e-7, 1e-3, 1e-2, 5e-2])
  }
}
