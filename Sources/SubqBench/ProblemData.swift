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

    public init(batch: Int, head: Int, query: Int, key: Int) {
      self.batch = batch
      self.head = head
      self.query = query
      self.key = key
    }
  }

  /// Generates inputs of `kind`.
  ///
  /// - `gaussian`: N(0, 1) entries.
  /// - `structured`: attention shaped like a trained model's: concentrated on few keys, different
  ///   for each query, with a local part and an attention sink. Per key/value head, keys are
  ///   `(A·√D·c + ε)·a + G·h(j)`: a cluster centre c (unit vector; max(`clusters`, Nk/64) of them,
  ///   sizes Zipf-distributed), N(0, 1) noise ε, a log-normal norm a = exp(0.3·z), and a context
  ///   vector h(j) that drifts with position (AR(1), correlation length 32), so nearby positions
  ///   score higher. Queries are `A·√D·c + ε + G·h(i) + √D·u` for their own Zipf-chosen centre.
  ///   Key 0 is an attention sink: u·(ln Nk + 2), scoring about ln(Nk) + 2 for every query. Heads
  ///   range from local (A = 0.35, G = 1) to retrieval (A = 0.6, G = 0.55). Values are N(0, 1).
  ///   At D = 64, about 1–5% of the visible keys hold 90% of a row's weight at 1K–16K (Gaussian
  ///   data: about 60%), the top 1% of keys about 90% of it, and the sink 5–30% of it.
  /// - `needles`: Gaussian, then for `needleCount` distinct query rows per head (in the second half
  ///   of the sequence; at most D/2 needles per key/value head, so fewer per head when heads are
  ///   grouped) a distinct key in the first half of the keys the row sees (with `causal`, only
  ///   earlier keys, so the data serves causal and non-causal runs alike) is overwritten with the
  ///   query, made orthogonal to the other needle queries of its key/value head and scaled so
  ///   that its score after the 1/√D scale is ln(Nk) + |q|²/(2D) + 5: exact attention then gives
  ///   the needle about 99% of the row's weight at every length, so the row's output is
  ///   essentially the needle's value row.
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
      // Per key/value head g, with t = (g + ½)/Hkv running from local to retrieval heads:
      // content strength A = 0.35 + 0.25·t and locality strength G = 1 − 0.45·t.
      let C = max(clusters, nk / 64)
      let rootD = Double(dim).squareRoot()
      var gq = SeededGenerator(seed: g.next())
      var gk = SeededGenerator(seed: g.next())
      var queries = Tensor(shape: [batch, heads, nq, dim], repeating: 0)
      var keys = Tensor(shape: [batch, kvHeads, nk, dim], repeating: 0)
      let group = heads / kvHeads
      // Zipf cluster choice: P(c) ∝ 1/(c+1).
      var cdf: [Double] = []
      var acc = 0.0
      let total = (0..<C).reduce(0.0) { $0 + 1 / Double($1 + 1) }
      for c in 0..<C { acc += 1 / Double(c + 1) / total; cdf.append(acc) }
      func pick(_ g: inout SeededGenerator) -> Int {
        let u = g.nextUnit()
        var lo = 0, hi = C - 1
        while lo < hi { let mid = (lo + hi) / 2; if cdf[mid] < u { lo = mid + 1 } else { hi = mid } }
        return lo
      }
      func unit(_ g: inout SeededGenerator) -> [Double] {
        let v = (0..<dim).map { _ in g.nextNormal() }
        let n = max(v.reduce(0) { $0 + $1 * $1 }.squareRoot(), 1e-12)
        return v.map { $0 / n }
      }
      let rho = 1 - 1 / 32.0  // context correlation length: 32 positions
      let off = nk - nq
      keys.withUnsafeMutableBufferPointer { kp in
        queries.withUnsafeMutableBufferPointer { qp in
          for b in 0..<batch {
            for kvh in 0..<kvHeads {
              let t = (Double(kvh) + 0.5) / Double(kvHeads)
              let A = 0.35 + 0.25 * t, G = 1 - 0.45 * t
              let centres = (0..<C).map { _ in unit(&gk) }
              let sink = unit(&gk)
              // The context vector h(p): AR(1) over key positions, N(0, 1) per entry.
              var h = [Double](repeating: 0, count: nk * dim)
              for d in 0..<dim { h[d] = gk.nextNormal() }
              let innovation = (1 - rho * rho).squareRoot()
              for p in 1..<max(nk, 1) {
                for d in 0..<dim { h[p * dim + d] = rho * h[(p - 1) * dim + d] + innovation * gk.nextNormal() }
              }
              for j in 0..<nk {
                let o = ((b * kvHeads + kvh) * nk + j) * dim
                if j == 0 {
                  // The sink: every query scores about ln(Nk) + 2 on it.
                  let score = Foundation.log(Double(nk)) + 2
                  for d in 0..<dim { kp[o + d] = Float(sink[d] * score) }
                  continue
                }
                let c = centres[pick(&gk)]
                let a = Foundation.exp(0.3 * gk.nextNormal())
                for d in 0..<dim {
                  kp[o + d] = Float((A * rootD * c[d] + gk.nextNormal()) * a + G * h[j * dim + d])
                }
              }
              for hq in (kvh * group)..<((kvh + 1) * group) {
                for i in 0..<nq {
                  let pos = min(max(i + off, 0), nk - 1)
                  let c = centres[pick(&gq)]
                  let o = ((b * heads + hq) * nq + i) * dim
                  for d in 0..<dim {
                    qp[o + d] = Float(A * rootD * c[d] + gq.nextNormal() + G * h[pos * dim + d] + rootD * sink[d])
                  }
                }
              }
            }
          }
        }
      }
      return ProblemData(queries: queries, keys: keys, values: values, needles: [])
    case .needles:
      let q = Tensor.randomNormal(shape: [batch, heads, nq, dim], seed: g.next())
      var k = Tensor.randomNormal(shape: [batch, kvHeads, nk, dim], seed: g.next())
      var needles: [Needle] = []
      let group = heads / kvHeads
      let off = nk - nq  // bottom-right alignment
      var usedKeys = Set<[Int]>()
      let firstRow = nq / 2
      // At most D/2 needles per key/value head, so each needle key can be made orthogonal to the
      // other needle queries of its head (below) and keep a good part of its own query.
      let perHead = min(needleCount, nq - firstRow, max(0, dim / 2 / group))
      for b in 0..<batch {
        for h in 0..<heads {
          var usedRows = Set<Int>()
          var attempts = 0
          while usedRows.count < perHead && attempts < 50 * max(1, perHead) {
            attempts += 1
            // A query row in the second half; its key in the first half of the keys it sees
            // (only earlier keys when causal), so the pair is at least a quarter of the
            // sequence apart and a local window cannot cover it.
            let i = min(nq - 1, firstRow + Int(g.nextUnit() * Double(nq - firstRow)))
            let visibleEnd = causal ? min(nk, i + off + 1) : nk
            let j = Int(g.nextUnit() * Double(visibleEnd / 2))
            guard visibleEnd >= 2, !usedRows.contains(i), !usedKeys.contains([b, h / group, j]) else { continue }
            usedRows.insert(i)
            usedKeys.insert([b, h / group, j])
            needles.append(Needle(batch: b, head: h, query: i, key: j))
          }
        }
      }
      // Plant the keys. Key j becomes r·s, where r is query i with the directions of the other
      // needle queries of the same key/value head projected out: so no needle key scores against
      // another needle's query (a large-norm key would otherwise be a strong distractor for it).
      // s sets the needle's score after the 1/√D scale to m = ln(Nk) + |q|²/(2D) + 5: against
      // N(0, 1) keys each other score is N(0, |q|²/D), whose exp has mean exp(|q|²/(2D)), so the
      // needle's softmax weight is about 1/(1 + Nk·exp(|q|²/(2D))·e^−m) = 1/(1 + e^−5) ≈ 0.993
      // at every length.
      func row(_ n: Needle) -> [Double] { (0..<dim).map { Double(q[n.batch, n.head, n.query, $0]) } }
      for b in 0..<batch {
        for kvh in 0..<kvHeads {
          let mine = needles.filter { $0.batch == b && $0.head / group == kvh }
          let vectors = mine.map(row)
          for (a, n) in mine.enumerated() {
            // Orthonormal basis of the other needle queries (modified Gram–Schmidt).
            var basis: [[Double]] = []
            for (c, v) in vectors.enumerated() where c != a {
              var u = v
              for e in basis {
                let p = zip(u, e).reduce(0) { $0 + $1.0 * $1.1 }
                for d in 0..<dim { u[d] -= p * e[d] }
              }
              let norm = u.reduce(0) { $0 + $1 * $1 }.squareRoot()
              if norm > 1e-9 { basis.append(u.map { $0 / norm }) }
            }
            var r = vectors[a]
            for e in basis {
              let p = zip(r, e).reduce(0) { $0 + $1.0 * $1.1 }
              for d in 0..<dim { r[d] -= p * e[d] }
            }
            let q2 = max(vectors[a].reduce(0) { $0 + $1 * $1 }, 1e-12)
            let r2 = max(r.reduce(0) { $0 + $1 * $1 }, 1e-12)
            let margin = Foundation.log(Double(nk)) + q2 / (2 * Double(dim)) + 5
            let s = margin * Double(dim).squareRoot() / r2
            for d in 0..<dim { k[b, kvh, n.key, d] = Float(r[d] * s) }
          }
        }
      }
      return ProblemData(queries: q, keys: k, values: values, needles: needles)
    }
  }
}
