import Foundation
import Subquadratic
import SubqBench
import SubqTestSupport
import Testing

@Suite struct HyperAttentionTests {
  /// A block covering every key makes every part exact: the samples all fall inside the query's
  /// own block and are dropped. min-length 16 makes the causal recursion go several levels deep,
  /// so the recursion, the prefix/suffix parts for Nq ≠ Nk and the log-sum-exp merges all run.
  @Test("exact when the block covers every key", arguments: [0, 37])
  func exactWithFullBlock(samples: Int) throws {
    let m = try HyperAttention(projections: 5, blockSize: 1 << 20, sampleSize: samples, minLength: 16, seed: 3)
    for c in Case.all { try expectExact(m, c, seed: testSeed()) }
  }

  /// min-length ≥ N: causal attention is one exact flash block; non-causal parts are exact too.
  @Test func exactBelowMinLength() throws {
    let m = try HyperAttention(blockSize: 8, sampleSize: 4, minLength: 4096)
    for c in Case.all { try expectExact(m, c, seed: testSeed()) }
  }

  /// Without samples every part is exact attention over the query's hash block, so the output
  /// must equal exact attention over exactly the keys `selectedKeys` reports: this checks the
  /// sorting, the pairing of query groups with key blocks, the recursion and the merges.
  @Test func blocksWithoutSamplesAttendExactlyTheSelectedKeys() throws {
    let m = try HyperAttention(projections: 3, blockSize: 24, sampleSize: 0, minLength: 40, seed: 11)
    let seed = testSeed()
    for c in [Case.all[0], Case.all[1], Case.all[2], Case.all[5], Case.all[8], Case.all[9]] {
      let (q, k, v) = c.inputs(seed: seed)
      let r = try m.attention(queries: q, keys: k, values: v, options: c.options)
      let rows = allRows(c).filter { $0.row % 7 == 0 }
      let sel = try m.selectedKeys(queries: q, keys: k, values: v, options: c.options, rows: rows)
      var worst = 0.0
      var strictSubset = false
      for (row, keys) in zip(rows, sel) {
        let visible = visibleKeys(c, batch: row.batch, row: row.row)
        #expect(keys.allSatisfy(visible.contains), "row \(row) selects an invisible key: \(c)")
        if keys.count < visible.count { strictSubset = true }
        let ref = subsetReference(c, q: q, k: k, v: v, batch: row.batch, head: row.head, row: row.row, keys: keys)
        worst = max(worst, vectorError(outputRow(c, r.output, batch: row.batch, head: row.head, row: row.row), ref))
      }
      #expect(worst <= exactTolerance, "error \(worst) against attention over the selected keys: \(c) seed \(seed)")
      #expect(strictSubset, "the test did not exercise the approximation: \(c)")
    }
  }

  /// The sampled residual is an unbiased estimate of the partition function: averaged over
  /// seeds, e^{lse_est − lse} ≈ 1. Counting the sampled keys once (weight 1 instead of Nk/m)
  /// gives ≈ 0.26 here, counting samples that fall in the query's own block again ≈ 1.18.
  ///
  /// Tolerance 0.03: measured on 5 inputs, the ratio of one row has a standard deviation of
  /// 0.17 over seeds, the mean of the 256 rows of one seed 0.02, so the mean over 60 seeds
  /// deviates by about 0.003 (0.03 is 10σ).
  @Test func sampledPartitionFunctionIsUnbiased() throws {
    let c = Case(hq: 1, hkv: 1, nq: 256, nk: 512, d: 16, dv: 4)
    let (q, k, v) = c.inputs(seed: testSeed())
    var o = c.options
    o.returnLSE = true
    let ref = try NaiveAttention.reference(queries: q, keys: k, values: v, options: o)
    var sum = 0.0
    let seeds = 60
    for s in 0..<seeds {
      let m = try HyperAttention(projections: 4, blockSize: 64, sampleSize: 48, minLength: 1, seed: UInt64(s))
      let lse = try #require(try m.attention(queries: q, keys: k, values: v, options: o).lse)
      for i in 0..<c.nq { sum += Foundation.exp(Double(lse[0, 0, i]) - ref.lse[i]) }
    }
    let mean = sum / Double(seeds * c.nq)
    #expect(abs(mean - 1) <= 0.03, "mean e^(lse_est − lse) = \(mean)")
  }

  @Test func noLookAheadWhenCausal() throws {
    let m = try HyperAttention(projections: 4, blockSize: 32, sampleSize: 24, minLength: 50, seed: 5)
    let seed = testSeed()
    try expectNoLookAhead(m, Case(hq: 2, hkv: 1, nq: 400, nk: 400, causal: true), cut: 217, seed: seed)
    try expectNoLookAhead(m, Case(hq: 2, hkv: 1, nq: 300, nk: 420, causal: true), cut: 301, seed: seed)
    try expectNoLookAhead(m, Case(hq: 2, hkv: 2, nq: 420, nk: 300, causal: true, align: .topLeft), cut: 150, seed: seed)
  }

  @Test func deterministicForASeed() throws {
    let c = Case(hq: 4, hkv: 2, nq: 500, nk: 500, causal: true)
    let (q, k, v) = c.inputs(seed: testSeed())
    let m = try HyperAttention(projections: 5, blockSize: 32, sampleSize: 32, minLength: 64, seed: 7)
    try expectSameOnOneThread(m, q: q, k: k, v: v, options: c.options)
    let other = try HyperAttention(projections: 5, blockSize: 32, sampleSize: 32, minLength: 64, seed: 8)
    let a = try m.attention(queries: q, keys: k, values: v, options: c.options)
    let d = try other.attention(queries: q, keys: k, values: v, options: c.options)
    #expect(a.output != d.output, "the seed changes nothing")
  }

  /// Error against exact attention falls as the budget (block size and samples) grows, on data
  /// where attention is peaked. Mean over 3 seeds; each step must cut the error.
  @Test func errorFallsWithBudget() throws {
    var errors: [Double] = []
    for budget in [16, 64, 256, 1024] {
      let m = try HyperAttention(projections: 6, blockSize: budget, sampleSize: budget, minLength: 256, seed: 1)
      errors.append(try structuredError(m, n: 1024, causal: true, seeds: [1, 2, 3].map { $0 &+ testSeed() }))
    }
    for i in 1..<errors.count { #expect(errors[i] < errors[i - 1], "errors \(errors)") }
    #expect(errors.last! <= 1e-5, "block 1024 covers every key: errors \(errors)")
  }

  @Test func invalidParametersAreTypedErrors() throws {
    let op = "attention.hyper"
    expectError(.argument(op: op, name: "projections", value: "0", reason: "must be in 1...16")) { _ = try HyperAttention(projections: 0) }
    expectError(.argument(op: op, name: "block", value: "0", reason: "must be in 1...16777216")) { _ = try HyperAttention(blockSize: 0) }
    expectError(.argument(op: op, name: "samples", value: "-1", reason: "must be in 0...16777216")) { _ = try HyperAttention(sampleSize: -1) }
    expectError(.argument(op: op, name: "min-length", value: "0", reason: "must be in 1...1073741824")) { _ = try HyperAttention(minLength: 0) }
    expectError(.argument(op: op, name: "seed", value: "-3", reason: "not a non-negative integer seed")) {
      _ = try HyperAttention(parameters: MethodParameters(["seed": "-3"]))
    }
    expectError(.argument(op: op, name: "blocks", value: "4", reason: "unknown parameter (known: block, min-length, projections, samples, seed)")) {
      _ = try HyperAttention(parameters: MethodParameters(["blocks": "4"]))
    }
    let m = try HyperAttention(parameters: MethodParameters(["block": "64", "samples": "0"]))
    #expect(m.blockSize == 64 && m.sampleSize == 0 && m.projections == 7)
    let c = Case(nq: 40, nk: 40)
    let (q, k, v) = c.inputs(seed: 1)
    for (o, feature) in [(AttentionOptions(window: AttentionWindow(left: 4, right: 0)), "window"),
                         (AttentionOptions(softcap: 30), "softcap"),
                         (AttentionOptions(alibiSlopes: Tensor(shape: [2], repeating: 0.1)), "alibi")] {
      expectError(.unsupported(op: op, feature: feature, reason: "hyper implements causal, key-lengths, varlen")) {
        _ = try m.attention(queries: q, keys: k, values: v, options: o)
      }
    }
    expectError(.argument(op: op, name: "row", value: "(batch 0, head 0, row 40)", reason: "outside the queries [1, 2, 40]")) {
      _ = try m.selectedKeys(queries: q, keys: k, values: v, options: AttentionOptions(), rows: [QueryRow(batch: 0, head: 0, row: 40)])
    }
    let k3 = Tensor.randomNormal(shape: [1, 3, 40, 24], seed: 2)
    expectError(.shape(op: op, tensor: "K", shape: [1, 3, 40, 24], reason: "query heads (2) must be a multiple of key/value heads (3)")) {
      _ = try m.attention(queries: q, keys: k3, values: k3, options: AttentionOptions())
    }
  }
}
