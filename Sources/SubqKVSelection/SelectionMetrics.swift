import Foundation
import SubqCore
import SubqDecoding

/// Ground truth for key selection on a paged cache: the true top keys of each query by inner
/// product, and the recall of a selection against them.
public enum SelectionMetrics {
  /// For every query row, the `k` cached positions whose keys have the largest inner product with
  /// it (raw `q · k`, ties: lower position), sorted ascending.
  ///
  /// - Parameters:
  ///   - queries: `[B, Hq, Nq, D]` (bhsd); row `(b·Hq + h)·Nq + i` uses `sequences[b]` and key/value
  ///     head `h / (Hq / Hkv)`.
  ///   - excludingFirst, excludingLast: only positions in `excludingFirst ..< n − excludingLast` count
  ///     (for a method's retrievable range: sinks and window left out).
  /// - Complexity: O(B·Hq·Nq·n·D), every key scanned.
  public static func exactTopKeys(
    queries: Tensor, cache: PagedKVCache, layer: Int, sequences: [PagedKVCache.SequenceID], k: Int,
    excludingFirst: Int = 0, excludingLast: Int = 0, threads: Int = Parallel.defaultThreads
  ) throws(SubqError) -> [[Int]] {
    let op = "selection.exactTopKeys"
    if k < 0 { throw .argument(op: op, name: "k", value: "\(k)", reason: "must be ≥ 0") }
    return try perRow(op: op, queries: queries, cache: cache, layer: layer, sequences: sequences, threads: threads,
                      empty: []) { q, keys, n in
      let lo = Swift.min(excludingFirst, n), hi = Swift.max(lo, n - excludingLast)
      return ProximityGraph.exactSearch(q, keys: keys, k: k, allowed: lo..<hi).ids.map(Int.init).sorted()
    }
  }

  /// How concentrated each query row's exact attention is over every cached key of its sequence:
  /// the smallest fraction of the keys that holds `mass` of the row's softmax weight (scores
  /// `scale · q · k`, the keys taken largest first), and the weight on its `k` largest-scoring
  /// keys. Rows are indexed `(b·Hq + h)·Nq + i` as in ``exactTopKeys(queries:cache:layer:sequences:k:excludingFirst:excludingLast:threads:)``;
  /// every row sees every cached key of its sequence (for a decode step's last query the causal
  /// mask changes nothing).
  ///
  /// - Complexity: O(B·Hq·Nq·n·(D + log n)), every key scored and the scores sorted.
  public static func concentration(
    queries: Tensor, cache: PagedKVCache, layer: Int, sequences: [PagedKVCache.SequenceID], mass: Double, k: Int,
    scale: Double? = nil, threads: Int = Parallel.defaultThreads
  ) throws(SubqError) -> [(keysForMass: Double, topKMass: Double)] {
    let op = "selection.concentration"
    if !(mass > 0 && mass <= 1) { throw .argument(op: op, name: "mass", value: "\(mass)", reason: "must be in (0, 1]") }
    if k < 0 { throw .argument(op: op, name: "k", value: "\(k)", reason: "must be ≥ 0") }
    let sc = scale ?? 1 / Double(cache.configuration.headDim).squareRoot()
    return try perRow(op: op, queries: queries, cache: cache, layer: layer, sequences: sequences, threads: threads,
                      empty: (keysForMass: 0, topKMass: 0)) { q, keys, n in
      if n == 0 { return (0, 1) }
      var s = [Double](repeating: 0, count: n)
      for t in 0..<n { s[t] = sc * Double(rowDot(q, keys, t)) }
      s.sort(by: >)
      let m = s[0]
      var total = 0.0
      for t in 0..<n { s[t] = Foundation.exp(s[t] - m); total += s[t] }
      var acc = 0.0, need = n, top = 0.0
      for t in 0..<n {
        acc += s[t]
        if t + 1 == Swift.min(k, n) { top = acc / total }
        if acc >= mass * total { need = t + 1; break }
      }
      if k > need {
        for t in need..<Swift.min(k, n) { acc += s[t] }
        top = acc / total
      }
      return (Double(need) / Double(n), k == 0 ? 0 : top)
    }
  }

  /// Checks `queries` against the cache and runs `body(q, keys, n)` for every query row in
  /// parallel: `q` is the row, `keys` the cached keys of its sequence's key/value head (h / (Hq/Hkv)),
  /// `n` their count. Results are indexed `(b·Hq + h)·Nq + i`.
  private static func perRow<T>(
    op: String, queries: Tensor, cache: PagedKVCache, layer: Int, sequences: [PagedKVCache.SequenceID], threads: Int,
    empty: T, _ body: @escaping @Sendable (UnsafePointer<Float>, RowSource, Int) -> T
  ) throws(SubqError) -> [T] {
    let c = cache.configuration
    guard queries.rank == 4, queries.shape[0] == sequences.count, queries.shape[1] % c.kvHeads == 0, queries.shape[3] == c.headDim else {
      throw .shape(op: op, tensor: "Q", shape: queries.shape,
                   reason: "expected [\(sequences.count), Hq, Nq, \(c.headDim)] with Hq a multiple of \(c.kvHeads)")
    }
    var views: [PagedSequenceView] = []
    for s in sequences { views.append(try cache.view(s, layer: layer)) }
    let (B, Hq, Nq, D) = (queries.shape[0], queries.shape[1], queries.shape[2], queries.shape[3])
    let G = Hq / c.kvHeads
    var out = [T](repeating: empty, count: B * Hq * Nq)
    let vs = views
    queries.withUnsafeBufferPointer { qb in
      out.withUnsafeMutableBufferPointer { ob in
        let qp = SendablePointer(qb.baseAddress!), op = SendablePointer(ob.baseAddress!)
        Parallel.forEach(B * Hq * Nq, threads: threads) { r, _ in
          let b = r / (Hq * Nq), h = (r / Nq) % Hq
          op.pointer[r] = body(qp.pointer + r * D, RowSource.keys(vs[b], head: h / G), vs[b].length)
        }
      }
    }
    withExtendedLifetime(cache) {}
    return out
  }

  /// |truth ∩ selected| / |truth| (1 when truth is empty); both sorted ascending.
  public static func recall(truth: [Int], selected: [Int]) -> Double {
    if truth.isEmpty { return 1 }
    var i = 0, j = 0, hit = 0
    while i < truth.count && j < selected.count {
      if truth[i] == selected[j] { hit += 1; i += 1; j += 1 } else if truth[i] < selected[j] { i += 1 } else { j += 1 }
    }
    return Double(hit) / Double(truth.count)
  }
}
