import Foundation
import Subquadratic
import SubqBench
import SubqTestSupport
import Testing

@Suite struct HiPAttentionTests {
  /// k covering every key: every candidate block is selected, so the output is exact for every
  /// geometry (query blocks not a multiple of the tile width, odd key blocks, no sinks, no window).
  @Test("exact when k covers every key", arguments: [
    (24, 2, 3, 5), (64, 1, 0, 0), (100, 3, 16, 40), (1, 2, 2, 1),
  ])
  func exactWithFullBudget(blockQ: Int, blockK: Int, sink: Int, window: Int) throws {
    let m = try HiPAttention(k: 1200 / blockK * blockK, blockQ: blockQ, blockK: blockK, branching: 2, strideQ: 1,
                             sink: sink, window: window)
    for c in Case.all { try expectExact(m, c, seed: testSeed()) }
  }

  /// With a small budget the output must equal exact attention over exactly the keys
  /// `selectedKeys` reports (sinks, selected blocks, local window; all visible).
  @Test("attends exactly the selected keys", arguments: [(2, 2), (3, 4)])
  func attendsTheSelectedKeys(blockK: Int, branching: Int) throws {
    let m = try HiPAttention(k: 8 * blockK, blockQ: 24, blockK: blockK, branching: branching, strideQ: 2, sink: 4, window: 16)
    let seed = testSeed()
    for c in Case.all {
      let (q, k, v) = c.inputs(seed: seed)
      let r = try m.attention(queries: q, keys: k, values: v, options: c.options)
      let rows = allRows(c).filter { $0.row % 5 == 0 }
      let sel = try m.selectedKeys(queries: q, keys: k, values: v, options: c.options, rows: rows)
      var worst = 0.0
      var strictSubset = false
      for (row, keys) in zip(rows, sel) {
        let visible = visibleKeys(c, batch: row.batch, row: row.row)
        #expect(keys.allSatisfy(visible.contains), "row \(row) selects an invisible key: \(c)")
        #expect(keys.count <= 4 + 8 * blockK + 16 + 24 + (c.causal ? 0 : 16), "row \(row) attends \(keys.count) keys")
        if keys.count < visible.count { strictSubset = true }
        let ref = subsetReference(c, q: q, k: k, v: v, batch: row.batch, head: row.head, row: row.row, keys: keys)
        worst = max(worst, vectorError(outputRow(c, r.output, batch: row.batch, head: row.head, row: row.row), ref))
      }
      #expect(worst <= exactTolerance, "error \(worst) against attention over the selected keys: \(c) seed \(seed)")
      #expect(strictSubset, "the test did not exercise the selection: \(c)")
    }
  }

  /// The tree search against a plain re-implementation of the specification, on integer inputs
  /// (every score exact in Float32, so ties are real and both sides break them by position).
  @Test("tree search matches the reference search", arguments: [false, true])
  func treeSearchMatchesReference(causal: Bool) throws {
    var g = SeededGenerator(seed: testSeed())
    let (n, d, bq, bk, k, br, sq, sink, window) = (700, 16, 32, 2, 24, 3, 8, 5, 20)
    func ints(_ shape: [Int]) -> Tensor { Tensor(shape: shape) { p in for i in p.indices { p[i] = Float(Int(g.next() % 5) - 2) } } }
    let q = ints([1, 2, n, d]), keys = ints([1, 1, n, d]), v = ints([1, 1, n, d])
    let m = try HiPAttention(k: k, blockQ: bq, blockK: bk, branching: br, strideQ: sq, sink: sink, window: window)
    let o = AttentionOptions(causal: causal)
    let rows = (0..<2).flatMap { h in stride(from: 0, to: n, by: 37).map { QueryRow(batch: 0, head: h, row: $0) } }
    let got = try m.selectedKeys(queries: q, keys: keys, values: v, options: o, rows: rows)
    for (row, sel) in zip(rows, got) {
      let expected = referenceSelection(q: q, k: keys, head: row.head, row: row.row, n: n, causal: causal,
                                        bq: bq, bk: bk, k: k, branching: br, strideQ: sq, sink: sink, window: window)
      #expect(sel == expected, "row \(row) causal \(causal): got \(sel.count) keys, expected \(expected.count)")
    }
  }

  /// The specification's search, written plainly (square problem, one key head).
  func referenceSelection(q: Tensor, k: Tensor, head: Int, row: Int, n: Int, causal: Bool, bq: Int, bk: Int, k budget: Int,
                          branching: Int, strideQ: Int, sink: Int, window: Int) -> [Int] {
    let q0 = row / bq * bq, q1 = min(q0 + bq, n)
    let horizon = causal ? q1 : n
    let sinkEnd = min(sink, horizon)
    let localStart = min(max(q0 + 1 - window, sinkEnd), horizon)
    let localEnd = causal ? horizon : min(max(q1 - 1 + window, localStart), n)
    var blocks: [Range<Int>] = []
    for s in stride(from: sinkEnd, to: localStart, by: bk) { blocks.append(s..<min(s + bk, localStart)) }
    for s in stride(from: localEnd, to: horizon, by: bk) { blocks.append(s..<min(s + bk, horizon)) }
    var chosen: [Int] = []
    if blocks.reduce(0, { $0 + $1.count }) <= budget {
      chosen = Array(blocks.indices)
    } else {
      let want = budget / bk
      func score(_ b: Int) -> Float {
        var best = -Float.infinity
        for i in stride(from: q0, to: q1, by: strideQ) {
          for j in blocks[b] {
            var s: Float = 0
            for x in 0..<q.shape[3] { s += q[0, head, i, x] * k[0, 0, j, x] }
            best = max(best, s)
          }
        }
        return best
      }
      var nodes = (0..<want).map { (lo: $0 * blocks.count / want, size: ($0 + 1) * blocks.count / want - $0 * blocks.count / want) }
      while nodes.contains(where: { $0.size > 1 }) {
        var children: [(lo: Int, size: Int, score: Float)] = []
        for nd in nodes {
          let parts = min(branching, nd.size)
          for c in 0..<parts {
            let lo = nd.lo + c * nd.size / parts, hi = nd.lo + (c + 1) * nd.size / parts
            children.append((lo, hi - lo, score(lo + (hi - lo) / 2)))
          }
        }
        children.sort { $0.score != $1.score ? $0.score > $1.score : $0.lo < $1.lo }
        nodes = children.prefix(want).map { ($0.lo, $0.size) }
      }
      chosen = nodes.map(\.lo)
    }
    var keys = chosen.flatMap { Array(blocks[$0]) }
    keys += (0..<sinkEnd).filter { !causal || $0 <= row }
    keys += (localStart..<localEnd).filter { !causal || $0 <= row }
    return keys.sorted()
  }

  @Test func noLookAheadWhenCausal() throws {
    let m = try HiPAttention(k: 16, blockQ: 32, blockK: 2, branching: 2, strideQ: 2, sink: 4, window: 24)
    let seed = testSeed()
    try expectNoLookAhead(m, Case(hq: 2, hkv: 1, nq: 400, nk: 400, causal: true), cut: 217, seed: seed)
    try expectNoLookAhead(m, Case(hq: 2, hkv: 1, nq: 300, nk: 420, causal: true), cut: 333, seed: seed)
    try expectNoLookAhead(m, Case(hq: 2, hkv: 2, nq: 420, nk: 300, causal: true, align: .topLeft), cut: 150, seed: seed)
  }

  @Test func deterministicAcrossThreads() throws {
    let c = Case(hq: 4, hkv: 2, nq: 700, nk: 700, causal: true)
    let (q, k, v) = c.inputs(seed: testSeed())
    let m = try HiPAttention(k: 32, blockQ: 64, blockK: 2, sink: 4, window: 32)
    try expectSameOnOneThread(m, q: q, k: k, v: v, options: c.options)
  }

  /// Error against exact attention falls as k grows, on structured data (mean over 3 seeds).
  @Test func errorFallsWithBudget() throws {
    var errors: [Double] = []
    for k in [32, 128, 512, 2048] {
      let m = try HiPAttention(k: k, blockQ: 32, blockK: 2, branching: 2, strideQ: 2, sink: 4, window: 32)
      errors.append(try structuredError(m, n: 2048, causal: true, seeds: [1, 2, 3].map { $0 &+ testSeed() }))
    }
    for i in 1..<errors.count { #expect(errors[i] < errors[i - 1], "errors \(errors)") }
    #expect(errors.last! <= 1e-5, "k = N covers every key: errors \(errors)")
  }

  @Test func invalidParametersAreTypedErrors() throws {
    let op = "attention.hip"
    expectError(.argument(op: op, name: "k", value: "7", reason: "must be a positive multiple of block-k (2), at most 67108864")) { _ = try HiPAttention(k: 7) }
    expectError(.argument(op: op, name: "k", value: "0", reason: "must be a positive multiple of block-k (2), at most 67108864")) { _ = try HiPAttention(k: 0) }
    expectError(.argument(op: op, name: "block-k", value: "0", reason: "must be in 1...512")) { _ = try HiPAttention(blockK: 0) }
    expectError(.argument(op: op, name: "block-q", value: "2000", reason: "must be in 1...1024")) { _ = try HiPAttention(blockQ: 2000) }
    expectError(.argument(op: op, name: "branching", value: "1", reason: "must be in 2...16")) { _ = try HiPAttention(branching: 1) }
    expectError(.argument(op: op, name: "stride-q", value: "65", reason: "must be in 1...block-q (64)")) { _ = try HiPAttention(blockQ: 64, strideQ: 65) }
    expectError(.argument(op: op, name: "sink", value: "-1", reason: "must be in 0...67108864")) { _ = try HiPAttention(sink: -1) }
    expectError(.argument(op: op, name: "window", value: "x", reason: "not an integer")) {
      _ = try HiPAttention(parameters: MethodParameters(["window": "x"]))
    }
    expectError(.argument(op: op, name: "seed", value: "1", reason: "unknown parameter (known: block-k, block-q, branching, k, sink, stride-q, window)")) {
      _ = try HiPAttention(parameters: MethodParameters(["seed": "1"]))
    }
    let m = try HiPAttention()
    let c = Case(nq: 40, nk: 40)
    let (q, k, v) = c.inputs(seed: 1)
    expectError(.unsupported(op: op, feature: "softcap", reason: "hip implements causal, key-lengths, varlen")) {
      _ = try m.attention(queries: q, keys: k, values: v, options: AttentionOptions(softcap: 30))
    }
    expectError(.argument(op: op, name: "row", value: "(batch 0, head 2, row 0)", reason: "outside the queries [1, 2, 40]")) {
      _ = try m.selectedKeys(queries: q, keys: k, values: v, options: AttentionOptions(), rows: [QueryRow(batch: 0, head: 2, row: 0)])
    }
  }
}
