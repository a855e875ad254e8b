import Foundation
import Subquadratic

/// The reference attention with an extra visibility rule: `NaiveAttention`'s formula (scale,
/// softcap, the options' own masks), computed in Float64, where key `j` also has to satisfy
/// `visible(batch, head, i, j)` for query `i` (positions local to the sequence), and `bias(batch,
/// head, i, j)`, when given, is added to its score after the softcap. Memory is O(Nk) per
/// query row: no N×N matrix.
///
/// Returns the output in the queries' layout and the log-sum-exp `[B, Hq, Nq]` (+∞ for rows that
/// see no key), like ``NaiveAttention/reference(queries:keys:values:options:)``. ALiBi is not
/// supported here.
public func maskedReference(
  queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions,
  visible: (_ batch: Int, _ head: Int, _ i: Int, _ j: Int) -> Bool,
  bias: ((_ batch: Int, _ head: Int, _ i: Int, _ j: Int) -> Double)? = nil
) throws -> (output: [Double], lse: [Double]) {
  precondition(options.alibiSlopes == nil, "maskedReference: ALiBi is not supported")
  let p = try AttentionProblem.validate(op: "reference.masked", queries: queries, keys: keys, values: values, options: options)
  var out = [Double](repeating: 0, count: p.outputShape.reduce(1, *))
  var lse = [Double](repeating: .infinity, count: p.lseShape.reduce(1, *))
  let q = queries.scalars, k = keys.scalars, v = values.scalars
  let qr = p.queryRows, kr = p.keyRows, vr = p.valueRows, orows = p.outputRows
  let tau = Double(p.scale)
  var scores = [Double](repeating: 0, count: p.keyLength)
  for seq in p.sequences {
    for h in 0..<p.queryHeads {
      let g = p.kvHead(h)
      for i in 0..<seq.queryCount {
        let qo = qr.offset(batch: seq.batch, head: h, row: seq.queryStart + i)
        var m = -Double.infinity
        for j in 0..<seq.keyCount {
          guard p.isVisible(seq, query: i, key: j), visible(seq.batch, h, i, j) else {
            scores[j] = -.infinity
            continue
          }
          let ko = kr.offset(batch: seq.batch, head: g, row: seq.keyStart + j)
          var s = 0.0
          for d in 0..<p.headDim { s += Double(q[qo + d]) * Double(k[ko + d]) }
          s *= tau
          if let c = p.softcap.map(Double.init) { s = c * Foundation.tanh(s / c) }
          if let bias { s += bias(seq.batch, h, i, j) }
          scores[j] = s
          m = max(m, s)
        }
        let oo = orows.offset(batch: seq.batch, head: h, row: seq.queryStart + i)
        let li = (seq.batch * p.queryHeads + h) * p.queryLength + seq.queryStart + i
        guard m > -.infinity else {
          for c in 0..<p.valueDim { out[oo + c] = 0 }
          continue
        }
        var l = 0.0
        var acc = [Double](repeating: 0, count: p.valueDim)
        for j in 0..<seq.keyCount where scores[j] > -.infinity {
          let e = Foundation.exp(scores[j] - m)
          l += e
          let vo = vr.offset(batch: seq.batch, head: g, row: seq.keyStart + j)
          for c in 0..<p.valueDim { acc[c] += e * Double(v[vo + c]) }
        }
        for c in 0..<p.valueDim { out[oo + c] = acc[c] / l }
        lse[li] = m + Foundation.log(l)
      }
    }
  }
  return (out, lse)
}
