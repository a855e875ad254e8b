import Foundation
import SubqAttention
import SubqCore

/// The Float64 reference of a ``PatternAttentionMethod`` on a few query rows: softmax attention
/// (scale and softcap as ``AttentionOptions`` define them) over exactly the keys the method says it
/// attends to. Used by `subq bench` to check such methods before timing them.
public enum PatternCheck {
  /// Output rows `[rows.count][Dv]` for `rows` (bhsd layout, batch-major sequences only).
  public static func reference(
    method: any PatternAttentionMethod, queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions, rows: [QueryRow]
  ) throws(SubqError) -> [[Double]] {
    let p = try AttentionProblem.validate(op: "bench.check", queries: queries, keys: keys, values: values, options: options)
    let selected = try method.selectedKeys(queries: queries, keys: keys, values: values, options: options, rows: rows)
    let q = queries.scalars, k = keys.scalars, v = values.scalars
    var out: [[Double]] = []
    for (r, keysOfRow) in zip(rows, selected) {
      let g = p.kvHead(r.head)
      let qo = p.queryRows.offset(batch: r.batch, head: r.head, row: r.row)
      var s: [Double] = []
      for j in keysOfRow {
        let ko = p.keyRows.offset(batch: r.batch, head: g, row: j)
        var x = 0.0
        for d in 0..<p.headDim { x += Double(q[qo + d]) * Double(k[ko + d]) }
        x *= Double(p.scale)
        if let c = p.softcap.map(Double.init) { x = c * Foundation.tanh(x / c) }
        s.append(x)
      }
      let m = s.max() ?? 0
      var l = 0.0
      var acc = [Double](repeating: 0, count: p.valueDim)
      for (j, x) in zip(keysOfRow, s) {
        let e = Foundation.exp(x - m)
        l += e
        let vo = p.valueRows.offset(batch: r.batch, head: g, row: j)
        for c in 0..<p.valueDim { acc[c] += e * Double(v[vo + c]) }
      }
      out.append(l > 0 ? acc.map { $0 / l } : acc)
    }
    return out
  }
}
