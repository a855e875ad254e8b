import Foundation
import SubqAttention
import SubqCore

/// The accuracy measures of `subq compare`. Tensors are `[B, H, N, X]` (bhsd).
public enum CompareMetrics {
  /// The cosine a method's output row must reach with a needle's value row for the needle to count
  /// as retrieved (see ``needleFound(output:values:needle:groupSize:)``).
  public static let needleCosine = 0.9

  /// Errors of an output against a reference output of the same shape.
  public struct OutputError: Sendable, Equatable {
    /// ‖x − ref‖_F / ‖ref‖_F (absolute when ref is zero).
    public var relative: Double
    /// The largest ‖x_r − ref_r‖ / ‖ref_r‖ over rows r (absolute for a zero reference row).
    public var worstRow: Double
    /// Where the worst row is.
    public var worstIndex: CompareRowIndex
  }

  /// Relative Frobenius error and worst row error of `x` against `reference`, both `[B, H, N, X]`.
  ///
  /// Accumulates in Float64. A non-finite entry in `x` makes both errors +∞.
  public static func outputError(_ x: Tensor, reference: Tensor) -> OutputError {
    precondition(x.shape == reference.shape && x.rank == 4, "outputError: shapes \(x.shape) and \(reference.shape)")
    let (B, H, N, X) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
    var num = 0.0, den = 0.0
    var worst = -1.0
    var worstIndex = CompareRowIndex(batch: 0, head: 0, row: 0)
    x.withUnsafeBufferPointer { xp in
      reference.withUnsafeBufferPointer { rp in
        for r in 0..<(B * H * N) {
          var dn = 0.0, rn = 0.0
          let base = r * X
          for c in 0..<X {
            let a = Double(xp[base + c]), b = Double(rp[base + c])
            dn += (a - b) * (a - b)
            rn += b * b
          }
          if dn.isNaN { dn = .infinity }
          num += dn
          den += rn
          let e = rn > 0 ? (dn / rn).squareRoot() : dn.squareRoot()
          if e > worst {
            worst = e
            worstIndex = CompareRowIndex(batch: r / (H * N), head: (r / N) % H, row: r % N)
          }
        }
      }
    }
    let rel = den > 0 ? (num / den).squareRoot() : num.squareRoot()
    return OutputError(relative: rel, worstRow: max(worst, 0), worstIndex: worstIndex)
  }

  /// Mean over rows of |selected ∩ truth| / |truth| (rows with an empty truth are skipped; nil
  /// when every truth is empty).
  public static func recall(selected: [[Int]], truth: [[Int]]) -> Double? {
    precondition(selected.count == truth.count, "recall: \(selected.count) selections for \(truth.count) rows")
    var total = 0.0, rows = 0
    for (s, t) in zip(selected, truth) where !t.isEmpty {
      let set = Set(s)
      total += Double(t.filter { set.contains($0) }.count) / Double(t.count)
      rows += 1
    }
    return rows > 0 ? total / Double(rows) : nil
  }

  /// Cosine similarity of row `a` of `x` and row `b` of `y` (both `[B, H, N, X]`, flat row indices).
  public static func cosine(_ x: Tensor, row a: Int, _ y: Tensor, row b: Int) -> Double {
    let X = x.shape[x.rank - 1]
    precondition(y.shape[y.rank - 1] == X, "cosine: widths \(X) and \(y.shape[y.rank - 1])")
    return x.withUnsafeBufferPointer { xp in
      y.withUnsafeBufferPointer { yp in
        var dot = 0.0, nx = 0.0, ny = 0.0
        for c in 0..<X {
          let u = Double(xp[a * X + c]), v = Double(yp[b * X + c])
          dot += u * v
          nx += u * u
          ny += v * v
        }
        let d = (nx * ny).squareRoot()
        return d > 0 && dot.isFinite ? dot / d : 0
      }
    }
  }

  /// Whether `output` (`[B, Hq, Nq, Dv]`) retrieves `needle` from `values` (`[B, Hkv, Nk, Dv]`):
  /// the needle query's output row has cosine ≥ ``needleCosine`` with the needle key's value row.
  ///
  /// Exact attention gives a planted needle about 99% of the row's weight, so its output row is
  /// the value row up to a small diffuse remainder (cosine ≈ 0.99+). A method that misses the
  /// needle outputs an average of other value rows, whose cosine with an independent random value
  /// row is near 0 (standard deviation 1/√Dv). A method that finds the needle but weighs it
  /// wrongly still points the same way: the magnitude error shows in the output errors instead.
  public static func needleFound(output: Tensor, values: Tensor, needle: ProblemData.Needle, groupSize: Int) -> Bool {
    let (Hq, Nq) = (output.shape[1], output.shape[2])
    let (Hkv, Nk) = (values.shape[1], values.shape[2])
    let orow = (needle.batch * Hq + needle.head) * Nq + needle.query
    let vrow = (needle.batch * Hkv + needle.head / groupSize) * Nk + needle.key
    return cosine(output, row: orow, values, row: vrow) >= needleCosine
  }

  /// `count` distinct query rows spread over heads and batch entries, positions uniform at random
  /// (all rows when there are no more than `count`), in a fixed order for a seed.
  public static func sampleRows(count: Int, batch: Int, heads: Int, length: Int, seed: UInt64) -> [QueryRow] {
    let total = batch * heads * length
    if total <= count {
      return (0..<total).map { QueryRow(batch: $0 / (heads * length), head: ($0 / length) % heads, row: $0 % length) }
    }
    var g = SeededGenerator(seed: seed)
    var seen = Set<QueryRow>()
    var rows: [QueryRow] = []
    var s = 0
    while rows.count < count {
      let head = s % heads, b = (s / heads) % batch
      s += 1
      let r = QueryRow(batch: b, head: head, row: Int(g.nextUnit() * Double(length)))
      if seen.insert(r).inserted { rows.append(r) }
    }
    return rows
  }
}

/// Exact attention for a few query rows, computed in Float64 straight from q·k: the true top-k keys
/// by score, the output row, and how concentrated the row's softmax weight is.
///
/// O(Nk·(D + Dv) + Nk·log Nk) time per row and no N×N matrix, so it scales to any length.
public struct ExactRows: Sendable {
  /// The rows, in the order given.
  public let rows: [QueryRow]
  /// k of ``topKeys``.
  public let k: Int
  /// Per row, the min(k, visible) visible keys with the largest scores (ties: lower position
  /// first), best first.
  public let topKeys: [[Int]]
  /// Per row, the output row (Dv values).
  public let outputs: [[Double]]
  /// Per row, the number of visible keys.
  public let visibleCounts: [Int]
  /// Per row, the fewest keys whose softmax weights sum to at least 90% of the row's.
  public let mass90Keys: [Int]

  /// Computes the rows of `problem` (which must be a bhsd, non-varlen problem of `q`, `k`, `v`);
  /// scores include the scale, and the problem's window and causal mask, but no softcap or ALiBi.
  public init(problem p: AttentionProblem, queries q: Tensor, keys kt: Tensor, values v: Tensor, rows: [QueryRow], k: Int) {
    precondition(p.layout == .bhsd && !p.isVarlen && p.softcap == nil && p.alibi == nil,
                 "ExactRows supports plain bhsd problems")
    self.rows = rows
    self.k = k
    let n = rows.count, D = p.headDim, Dv = p.valueDim, Nk = p.keyLength
    var top = [Int](repeating: -1, count: n * k)
    var out = [Double](repeating: 0, count: n * Dv)
    var visible = [Int](repeating: 0, count: n)
    var mass = [Int](repeating: 0, count: n)
    let qr = p.queryRows, kr = p.keyRows, vr = p.valueRows
    let tau = Double(p.scale)
    top.withUnsafeMutableBufferPointer { tb in
      out.withUnsafeMutableBufferPointer { ob in
        visible.withUnsafeMutableBufferPointer { vb in
          mass.withUnsafeMutableBufferPointer { mb in
            let tp = SendablePointer(tb.baseAddress!), op = SendablePointer(ob.baseAddress!)
            let vp = SendablePointer(vb.baseAddress!), mp = SendablePointer(mb.baseAddress!)
            q.withUnsafeBufferPointer { qb in
              kt.withUnsafeBufferPointer { kb in
                v.withUnsafeBufferPointer { vvb in
                  let Q = SendablePointer(qb.baseAddress!), K = SendablePointer(kb.baseAddress!), V = SendablePointer(vvb.baseAddress!)
                  Parallel.forEach(n, threads: p.threads) { item, _ in
                    let row = rows[item]
                    let seq = p.sequences[row.batch]
                    let g = p.kvHead(row.head)
                    let range = p.visibleKeys(seq, query: row.row)
                    vp.pointer[item] = range.count
                    guard !range.isEmpty else { return }
                    let qi = Q.pointer + qr.offset(batch: row.batch, head: row.head, row: row.row)
                    var scored: [(score: Double, key: Int)] = []
                    scored.reserveCapacity(range.count)
                    var m = -Double.infinity
                    for j in range {
                      let kj = K.pointer + kr.offset(batch: row.batch, head: g, row: j)
                      var s = 0.0
                      for d in 0..<D { s += Double(qi[d]) * Double(kj[d]) }
                      s *= tau
                      m = Swift.max(m, s)
                      scored.append((s, j))
                    }
                    var l = 0.0
                    let o = op.pointer + item * Dv
                    for (s, j) in scored {
                      let w = Foundation.exp(s - m)
                      l += w
                      let vj = V.pointer + vr.offset(batch: row.batch, head: g, row: j)
                      for c in 0..<Dv { o[c] += w * Double(vj[c]) }
                    }
                    for c in 0..<Dv { o[c] /= l }
                    scored.sort { $0.score != $1.score ? $0.score > $1.score : $0.key < $1.key }
                    for t in 0..<Swift.min(k, scored.count) { tp.pointer[item * k + t] = scored[t].key }
                    var acc = 0.0, count = 0
                    for (s, _) in scored {
                      acc += Foundation.exp(s - m)
                      count += 1
                      if acc >= 0.9 * l { break }
                    }
                    mp.pointer[item] = count
                  }
                }
              }
            }
          }
        }
      }
    }
    topKeys = (0..<n).map { i in Array(top[(i * k)..<((i + 1) * k)].filter { $0 >= 0 }) }
    outputs = (0..<n).map { i in Array(out[(i * Dv)..<((i + 1) * Dv)]) }
    visibleCounts = visible
    mass90Keys = mass
    _ = Nk
  }

  /// Relative Frobenius error of the given rows of `output` (`[B, Hq, Nq, Dv]`, bhsd) against
  /// these Float64 rows.
  public func relativeError(of output: Tensor) -> Double {
    let (Hq, Nq, Dv) = (output.shape[1], output.shape[2], output.shape[3])
    var num = 0.0, den = 0.0
    output.withUnsafeBufferPointer { p in
      for (i, r) in rows.enumerated() {
        let base = ((r.batch * Hq + r.head) * Nq + r.row) * Dv
        for c in 0..<Dv {
          let d = Double(p[base + c]) - outputs[i][c]
          num += d * d
          den += outputs[i][c] * outputs[i][c]
        }
      }
    }
    return den > 0 ? (num / den).squareRoot() : num.squareRoot()
  }
}

/// Median of values (nan when empty).
func median(_ xs: [Double]) -> Double {
  let s = xs.sorted()
  guard !s.isEmpty else { return .nan }
  return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// Least-squares slope of ln y against ln x.
func logLogSlope(_ points: [(x: Double, y: Double)]) -> Double? {
  let p = points.filter { $0.x > 0 && $0.y > 0 }
  guard Set(p.map(\.x)).count >= 2 else { return nil }
  let lx = p.map { Foundation.log($0.x) }, ly = p.map { Foundation.log($0.y) }
  let mx = lx.reduce(0, +) / Double(p.count), my = ly.reduce(0, +) / Double(p.count)
  var sxy = 0.0, sxx = 0.0
  for i in 0..<p.count {
    sxy += (lx[i] - mx) * (ly[i] - my)
    sxx += (lx[i] - mx) * (lx[i] - mx)
  }
  return sxx > 0 ? sxy / sxx : nil
}
