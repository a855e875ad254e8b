import Foundation
import SubqBench
import Subquadratic

// Small honest methods with known behaviour, to check what `compare` measures. Each computes a
// real function of its inputs; none is registered in the library.

/// Attends to each query's `k` highest-scoring visible keys only (softmax over those), computed in
/// Float64. Its selection is exactly the true top-k, so its top-k recall must be 1, and it finds
/// every planted needle.
struct TopKTestMethod: KeySelectingMethod {
  static let info = MethodInfo(
    name: "test-topk", summary: "exact top-k attention (test)", paper: "—", complexity: "O(N²·D)", isExact: false,
    parameters: [MethodParameter("k", default: "8", "keys per query")], supportedFeatures: ["causal"])
  let k: Int
  init(parameters: MethodParameters) throws(SubqError) {
    try parameters.validate(for: Self.info)
    k = try parameters.int("k", Self.info, in: 1...100_000)
  }
  var parameterValues: [String: String] { ["k": "\(k)"] }

  func keys(_ p: AttentionProblem, _ q: UnsafeBufferPointer<Float>, _ kb: UnsafeBufferPointer<Float>, _ row: QueryRow) -> [(Int, Double)] {
    let seq = p.sequences[row.batch]
    let g = p.kvHead(row.head)
    let qi = p.queryRows.offset(batch: row.batch, head: row.head, row: row.row)
    var scored: [(Int, Double)] = p.visibleKeys(seq, query: row.row).map { j in
      let kj = p.keyRows.offset(batch: row.batch, head: g, row: j)
      var s = 0.0
      for d in 0..<p.headDim { s += Double(q[qi + d]) * Double(kb[kj + d]) }
      return (j, s * Double(p.scale))
    }
    scored.sort { $0.1 != $1.1 ? $0.1 > $1.1 : $0.0 < $1.0 }
    return Array(scored.prefix(k))
  }

  func attention(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions) throws(SubqError) -> AttentionResult {
    let p = try AttentionProblem.validate(op: "attention.test-topk", queries: queries, keys: keys, values: values, options: options)
    try Self.info.check(options)
    let out = queries.withUnsafeBufferPointer { q in
      keys.withUnsafeBufferPointer { kb in
        values.withUnsafeBufferPointer { vb in
          Tensor(shape: p.outputShape) { o in
            for b in 0..<p.batch { for h in 0..<p.queryHeads { for i in 0..<p.queryLength {
              let sel = self.keys(p, q, kb, QueryRow(batch: b, head: h, row: i))
              let m = sel.map(\.1).max() ?? 0
              var acc = [Double](repeating: 0, count: p.valueDim)
              var l = 0.0
              for (j, s) in sel {
                let w = Foundation.exp(s - m)
                l += w
                let vj = p.valueRows.offset(batch: b, head: p.kvHead(h), row: j)
                for c in 0..<p.valueDim { acc[c] += w * Double(vb[vj + c]) }
              }
              let oo = p.outputRows.offset(batch: b, head: h, row: i)
              for c in 0..<p.valueDim { o[oo + c] = l > 0 ? Float(acc[c] / l) : 0 }
            } } }
          }
        }
      }
    }
    return AttentionResult(output: out, lse: nil)
  }

  func selectedKeys(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions, rows: [QueryRow]) throws(SubqError) -> [[Int]] {
    let p = try AttentionProblem.validate(op: "attention.test-topk", queries: queries, keys: keys, values: values, options: options)
    return queries.withUnsafeBufferPointer { q in
      keys.withUnsafeBufferPointer { kb in rows.map { self.keys(p, q, kb, $0).map(\.0).sorted() } }
    }
  }
}

/// Exact attention restricted to keys less than `w` positions from the query (flash with a
/// window; causal: the last `w` keys): a sliding window. It misses every needle (they sit at
/// least a quarter of the sequence away) unless the window covers them, and is exact once `w` ≥ N.
struct WindowTestMethod: KeySelectingMethod {
  static let info = MethodInfo(
    name: "test-window", summary: "sliding window (test)", paper: "—", complexity: "O(N·w·D)", isExact: false,
    parameters: [MethodParameter("w", default: "16", "keys per query")], supportedFeatures: ["causal"])
  let w: Int
  init(parameters: MethodParameters) throws(SubqError) {
    try parameters.validate(for: Self.info)
    w = try parameters.int("w", Self.info, in: 1...1_000_000)
  }
  var parameterValues: [String: String] { ["w": "\(w)"] }

  func windowed(_ o: AttentionOptions) -> AttentionOptions {
    var o = o
    o.window = AttentionWindow(left: w - 1, right: w - 1)
    return o
  }

  func attention(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions) throws(SubqError) -> AttentionResult {
    try Self.info.check(options)
    return try FlashAttention().attention(queries: queries, keys: keys, values: values, options: windowed(options))
  }

  func selectedKeys(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions, rows: [QueryRow]) throws(SubqError) -> [[Int]] {
    let p = try AttentionProblem.validate(op: "attention.test-window", queries: queries, keys: keys, values: values, options: windowed(options))
    return rows.map { Array(p.visibleKeys(p.sequences[$0.batch], query: $0.row)) }
  }
}

/// Exact attention that rejects causal masking (it implements no masking options) and lengths
/// above 100: it must show as n/a, not crash.
struct PickyTestMethod: AttentionMethod {
  static let info = MethodInfo(name: "test-picky", summary: "non-causal only, N ≤ 100 (test)", paper: "—", complexity: "—",
                               isExact: true, supportedFeatures: [])
  init(parameters: MethodParameters) throws(SubqError) { try parameters.validate(for: Self.info) }
  func attention(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions) throws(SubqError) -> AttentionResult {
    let p = try AttentionProblem.validate(op: "attention.test-picky", queries: queries, keys: keys, values: values, options: options)
    try Self.info.check(options)
    if p.keyLength > 100 {
      throw .argument(op: "attention.test-picky", name: "N", value: "\(p.keyLength)", reason: "must be at most 100")
    }
    return try FlashAttention().attention(queries: queries, keys: keys, values: values, options: options)
  }
}

/// Returns NaN in one output element: must show as invalid.
struct BrokenTestMethod: AttentionMethod {
  static let info = MethodInfo(name: "test-broken", summary: "writes a NaN (test)", paper: "—", complexity: "—",
                               isExact: false, supportedFeatures: ["causal"])
  init(parameters: MethodParameters) throws(SubqError) { try parameters.validate(for: Self.info) }
  func attention(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions) throws(SubqError) -> AttentionResult {
    var r = try FlashAttention().attention(queries: queries, keys: keys, values: values, options: options)
    r.output[flat: 5] = .nan
    return r
  }
}

/// A real speed-only mixer for the tests: a causal running mean over positions per head and
/// channel (a prefix-sum scan), O(N·H·D).
struct RunningMeanMixer: SpeedOnlyMixer {
  var name: String { "test-running-mean" }
  var summary: String { "causal running mean (test)" }
  var complexity: String { "O(N·D)" }
  var isCausal: Bool { true }
  func prepare(length: Int, heads: Int, dim: Int, seed: UInt64, threads: Int) throws(SubqError) -> SpeedOnlyWorkload {
    if length > 4096 { throw .argument(op: "test-running-mean", name: "length", value: "\(length)", reason: "must be at most 4096") }
    let x = Tensor.randomNormal(shape: [heads, length, dim], seed: seed)
    return SpeedOnlyWorkload(flops: Double(2 * heads * length * dim), outputBytes: Double(heads * length * dim * 4)) { () throws(SubqError) -> Void in
      let y = x.withUnsafeBufferPointer { p in
        Tensor(shape: [heads, length, dim]) { o in
          for h in 0..<heads {
            var acc = [Float](repeating: 0, count: dim)
            for i in 0..<length {
              for d in 0..<dim {
                acc[d] += p[(h * length + i) * dim + d]
                o[(h * length + i) * dim + d] = acc[d] / Float(i + 1)
              }
            }
          }
        }
      }
      blackHole(y)
    }
  }
}
