import Foundation
import SubqCore

/// The reference attention: every score materialized and every sum accumulated in `Double`.
///
/// For each sequence and query head it builds the full `[Nq, Nk]` score matrix, applies the
/// mask, softcap and ALiBi exactly as ``AttentionOptions`` defines them, and normalizes each row
/// with a max-subtracted softmax in Float64. It is the specification every other method is tested
/// against, and the only code in Subquadratic that allocates an N×N matrix.
///
/// - Complexity: O(B·Hq·Nq·Nk·(D + Dv)) time, O(Nq·Nk) memory per worker thread.
public struct NaiveAttention: AttentionMethod {
  public static let info = MethodInfo(
    name: "naive",
    summary: "Reference attention: materialized scores, Float64 accumulation (O(N²) memory; for tests)",
    paper: "Vaswani et al., Attention Is All You Need (2017)",
    complexity: "O(N²·D) time, O(N²) memory",
    isExact: true,
    supportedFeatures: MethodInfo.allFeatures)

  public init() {}
  public init(parameters: MethodParameters) throws(SubqError) {
    try parameters.validate(for: Self.info)
  }

  public func attention(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions) throws(SubqError) -> AttentionResult {
    let r = try Self.reference(queries: queries, keys: keys, values: values, options: options)
    let out = Tensor(shape: r.problem.outputShape) { p in for i in p.indices { p[i] = Float(r.output[i]) } }
    let lse = options.returnLSE ? Tensor(shape: r.problem.lseShape) { p in for i in p.indices { p[i] = Float(r.lse[i]) } } : nil
    return AttentionResult(output: out, lse: lse)
  }

  /// The Float64 result: output in the queries' layout (`problem.outputShape`) and log-sum-exp
  /// `[B, Hq, Nq]` (+∞ for rows that see no key).
  public static func reference(
    queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions
  ) throws(SubqError) -> (output: [Double], lse: [Double], problem: AttentionProblem) {
    let p = try AttentionProblem.validate(op: "attention.naive", queries: queries, keys: keys, values: values, options: options)
    var out = [Double](repeating: 0, count: p.outputShape.reduce(1, *))
    var lse = [Double](repeating: .infinity, count: p.lseShape.reduce(1, *))
    let items = p.sequences.count * p.queryHeads
    out.withUnsafeMutableBufferPointer { ob in
      lse.withUnsafeMutableBufferPointer { lb in
        let o = SendablePointer(ob.baseAddress!), l = SendablePointer(lb.baseAddress!)
        queries.withUnsafeBufferPointer { qb in
          keys.withUnsafeBufferPointer { kb in
            values.withUnsafeBufferPointer { vb in
              let q = SendablePointer(qb.baseAddress!), k = SendablePointer(kb.baseAddress!), v = SendablePointer(vb.baseAddress!)
              Parallel.forEach(items, threads: p.threads) { item, _ in
                let seq = p.sequences[item / p.queryHeads]
                let h = item % p.queryHeads
                head(p, seq, h, q.pointer, k.pointer, v.pointer, o.pointer, l.pointer)
              }
            }
          }
        }
      }
    }
    return (out, lse, p)
  }

  private static func head(
    _ p: AttentionProblem, _ seq: AttentionSequence, _ h: Int,
    _ q: UnsafePointer<Float>, _ k: UnsafePointer<Float>, _ v: UnsafePointer<Float>,
    _ out: UnsafeMutablePointer<Double>, _ lse: UnsafeMutablePointer<Double>
  ) {
    let g = p.kvHead(h)
    let nq = seq.queryCount, nk = seq.keyCount
    let D = p.headDim, Dv = p.valueDim
    let tau = Double(p.scale)
    let slope = p.alibi.map { Double($0[seq.batch * p.queryHeads + h]) }
    let qr = p.queryRows, kr = p.keyRows, vr = p.valueRows, orows = p.outputRows
    var scores = [Double](repeating: 0, count: nq * nk)  // [Nq, Nk]: the O(N²) matrix
    for i in 0..<nq {
      let qi = q + qr.offset(batch: seq.batch, head: h, row: seq.queryStart + i)
      for j in 0..<nk {
        guard p.isVisible(seq, query: i, key: j) else {
          scores[i * nk + j] = -.infinity
          continue
        }
        let kj = k + kr.offset(batch: seq.batch, head: g, row: seq.keyStart + j)
        var s = 0.0
        for d in 0..<D { s += Double(qi[d]) * Double(kj[d]) }
        s *= tau
        if let c = p.softcap.map(Double.init) { s = c * Foundation.tanh(s / c) }
        if let slope { s -= slope * Double(abs(i + seq.offset - j)) }
        scores[i * nk + j] = s
      }
    }
    for i in 0..<nq {
      let row = seq.queryStart + i
      let o = out + orows.offset(batch: seq.batch, head: h, row: row)
      let lseIndex = (seq.batch * p.queryHeads + h) * p.queryLength + row
      var m = -Double.infinity
      for j in 0..<nk { m = Swift.max(m, scores[i * nk + j]) }
      guard m > -.infinity else {
        for c in 0..<Dv { o[c] = 0 }
        lse[lseIndex] = .infinity
        continue
      }
      var l = 0.0
      var acc = [Double](repeating: 0, count: Dv)
      for j in 0..<nk {
        let e = Foundation.exp(scores[i * nk + j] - m)
        guard e > 0 else { continue }
        l += e
        let vj = v + vr.offset(batch: seq.batch, head: g, row: seq.keyStart + j)
        for c in 0..<Dv { acc[c] += e * Double(vj[c]) }
      }
      for c in 0..<Dv { o[c] = acc[c] / l }
      lse[lseIndex] = m + Foundation.log(l)
    }
  }
}
