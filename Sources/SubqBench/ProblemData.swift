import Foundation
import SubqCore

/// Synthetic attention inputs for benchmarks and comparisons.
public enum DataKind: String, Sendable, CaseIterable, Codable {
  /// Independent standard normal queries, keys and values: attention is diffuse.
  case gaussian
  /// Keys in clusters and queries near cluster centres: attention is peaked and heavy-tailed, as
  /// in trained models.
  case structured
  /// Gaussian background with planted query/key pairs: each needle query's strongest key is a
  /// known position far from it (see ``ProblemData/needles``).
  case needles
}

/// Attention inputs `[B, H, N, D]` with optional planted needles.
public struct ProblemData: Sendable {
  public var queries: Tensor
  public var keys: Tensor
  public var values: Tensor
  /// Planted (batch, query head, query row, key row) pairs, for `.needles`.
  public var needles: [Needle]

  public struct Needle: Sendable, Codable, Equatable {
    public var batch: Int
    public var head: Int
    public var query: Int
    public var key: Int
  }

  /// Generates inputs of `kind`.
  ///
  /// - `gaussian`: N(0, 1) entries.
  /// - `structured`: `clusters` centres per key/value head with norm 2·D^¼ (so a query at a centre
  ///   scores about 4 above unrelated keys after the 1/√D scale); each key is a centre plus
  ///   N(0, 0.5²) noise, chosen with a Zipf-like bias so that cluster sizes are heavy-tailed; each
  ///   query is its own centre plus N(0, 0.5²) noise. Values are N(0, 1).
  /// - `needles`: Gaussian, then for `needleCount` query rows per head a key at a distant position
  ///   (for causal data, an earlier one) is overwritten with a copy of the query scaled to stand
  ///   out by about 12 logits.
  public static func make(
    kind: DataKind, batch: Int, heads: Int, kvHeads: Int, queries nq: Int, keys nk: Int, dim: Int,
    valueDim: Int? = nil, causal: Bool = false, seed: UInt64, clusters: Int = 64, needleCount: Int = 4
  ) -> ProblemData {
    let dv = valueDim ?? dim
    var g = SeededGenerator(seed: seed)
    let values = Tensor.randomNormal(shape: [batch, kvHeads, nk, dv], seed: g.next())
    switch kind {
    case .gaussian:
      return ProblemData(
        queries: Tensor.randomNormal(shape: [batch, heads, nq, dim], seed: g.next()),
        keys: Tensor.randomNormal(shape: [batch, kvHeads, nk, dim], seed: g.next()), values: values, needles: [])
    case .structured:
      let radius = 2 * Foundation.pow(Double(dim), 0.25)
      var centres = [Float](repeating: 0, count: batch * kvHeads * clusters * dim)
      for c in 0..<(batch * kvHeads * clusters) {
        var v = (0..<dim).map { _ in g.nextNormal() }
        let n = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
        v = v.map { $0 / n * radius }
        for d in 0..<dim { centres[c * dim + d] = Float(v[d]) }
      }
      // Zipf-like cluster choice: P(c) ∝ 1/(c+1).
      let weights = (0..<clusters).map { 1.0 / Double($0 + 1) }
      let total = weights.reduce(0, +)
      var cdf: [Double] = []
      var acc = 0.0
      for w in weights { acc += w / total; cdf.append(acc) }
      func pick(_ g: inout SeededGenerator) -> Int {
        let u = g.nextUnit()
        var lo = 0, hi = clusters - 1
        while lo < hi { let mid = (lo + hi) / 2; if cdf[mid] < u { lo = mid + 1 } else { hi = mid } }
        return lo
      }
      var gk = SeededGenerator(seed: g.next())
      let keys = Tensor(shape: [batch, kvHeads, nk, dim]) { p in
        for b in 0..<batch { for h in 0..<kvHeads { for j in 0..<nk {
          let c = ((b * kvHeads + h) * clusters + pick(&gk)) * dim
          let o = ((b * kvHeads + h) * nk + j) * dim
          for d in 0..<dim { p[o + d] = centres[c + d] + Float(0.5 * gk.nextNormal()) }
        } } }
      }
      var gq = SeededGenerator(seed: g.next())
      let group = heads / kvHeads
      let queries = Tensor(shape: [batch, heads, nq, dim]) { p in
        for b in 0..<batch { for h in 0..<heads { for i in 0..<nq {
          let c = ((b * kvHeads + h / group) * clusters + pick(&gq)) * dim
          let o = ((b * heads + h) * nq + i) * dim
          for d in 0..<dim { p[o + d] = centres[c + d] + Float(0.5 * gq.nextNormal()) }
        } } }
      }
      return ProblemData(queries: queries, keys: keys, values: values, needles: [])
    case .needles:
      var q = Tensor.randomNormal(shape: [batch, heads, nq, dim], seed: g.next())
      var k = Tensor.randomNormal(shape: [batch, kvHeads, nk, dim], seed: g.next())
      var needles: [Needle] = []
      let group = heads / kvHeads
      let off = nk - nq  // bottom-right alignment
      var used = Set<[Int]>()
      for b in 0..<batch {
        for h in 0..<heads {
          for t in 0..<min(needleCount, nq) {
            // Query rows spread over the second half; keys far before them (or anywhere when
            // not causal).
            let i = nq / 2 + Int(g.nextUnit() * Double(max(1, nq - nq / 2)))
            let iRow = min(i, nq - 1)
            let visibleEnd = causal ? max(1, iRow + off + 1) : nk
            var j = Int(g.nextUnit() * Double(max(1, visibleEnd / 2)))
            j = min(max(0, j), nk - 1)
            guard !used.contains([b, h / group, j]) else { continue }
            used.insert([b, h / group, j])
            // Key j becomes a scaled copy of query i: score = s·|q|²/√D ≈ 12 above the rest.
            var norm2: Float = 0
            for d in 0..<dim { let x = q[b, h, iRow, d]; norm2 += x * x }
            let s = 12 * Float(Double(dim).squareRoot()) / max(norm2, 1e-6)
            for d in 0..<dim { k[b, h / group, j, d] = q[b, h, iRow, d] * s }
            needles.append(Needle(batch: b, head: h, query: iRow, key: j))
            _ = t
          }
        }
      }
      return ProblemData(queries: q, keys: k, values: values, needles: needles)
    }
  }
}
