import Foundation
import SubqAttention
import SubqCore
import SubqDecoding
import SubqKVSelection
import SubqTestSupport
import Testing

/// Float64 attention of every query row over its own subset of key positions (bhsd tensors):
/// the reference for "the method attends exactly to the keys it says".
///
/// - Parameters:
///   - keysOf: for row (b, h, i), the positions it attends (any order, duplicates counted twice —
///     so a method that double-counts a key fails the comparison).
/// - Returns: output `[B, Hq, Nq, Dv]` and log-sum-exp `[B, Hq, Nq]` (+∞ for an empty subset).
func subsetReference(q: Tensor, k: Tensor, v: Tensor, scale: Double, keysOf: (Int, Int, Int) -> [Int]) -> (out: [Double], lse: [Double]) {
  let (B, Hq, Nq, D) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
  let (Hkv, Nk, Dv) = (k.shape[1], k.shape[2], v.shape[3])
  let G = Hq / Hkv
  var out = [Double](repeating: 0, count: B * Hq * Nq * Dv)
  var lse = [Double](repeating: .infinity, count: B * Hq * Nq)
  let qs = q.scalars, ks = k.scalars, vs = v.scalars
  for b in 0..<B {
    for h in 0..<Hq {
      let g = h / G
      for i in 0..<Nq {
        let keys = keysOf(b, h, i)
        if keys.isEmpty { continue }
        var s = [Double](repeating: 0, count: keys.count)
        for (x, j) in keys.enumerated() {
          var a = 0.0
          for d in 0..<D { a += Double(qs[((b * Hq + h) * Nq + i) * D + d]) * Double(ks[((b * Hkv + g) * Nk + j) * D + d]) }
          s[x] = a * scale
        }
        let m = s.max()!
        var z = 0.0
        for x in s.indices { s[x] = Foundation.exp(s[x] - m); z += s[x] }
        let o = ((b * Hq + h) * Nq + i) * Dv
        for (x, j) in keys.enumerated() {
          for c in 0..<Dv { out[o + c] += s[x] / z * Double(vs[((b * Hkv + g) * Nk + j) * Dv + c]) }
        }
        lse[(b * Hq + h) * Nq + i] = m + Foundation.log(z)
      }
    }
  }
  return (out, lse)
}

/// A paged cache holding the given per-sequence keys and values (`[1, Hkv, n_b, D]` each), written
/// in uneven pieces so pages are reached in several appends.
func makeCache(keys: [Tensor], values: [Tensor], pageSize: Int = 16, storage: KVStorageType = .float32, spare: Int = 64) throws -> (PagedKVCache, [PagedKVCache.SequenceID]) {
  let Hkv = keys[0].shape[1], D = keys[0].shape[3], Dv = values[0].shape[3]
  let pages = keys.reduce(0) { $0 + ($1.shape[2] + spare) / pageSize + 2 }
  let cache = try PagedKVCache(PagedKVCache.Configuration(kvHeads: Hkv, headDim: D, valueDim: Dv, pageSize: pageSize, pageCount: pages, storage: storage))
  var ids: [PagedKVCache.SequenceID] = []
  for (kt, vt) in zip(keys, values) {
    let s = cache.createSequence()
    let n = kt.shape[2]
    var done = 0
    var piece = 7
    while done < n {
      let m = min(piece, n - done)
      try cache.append(s, keys: slice(kt, from: done, count: m), values: slice(vt, from: done, count: m))
      done += m
      piece = piece * 3 + 1
    }
    ids.append(s)
  }
  return (cache, ids)
}

/// Rows `from..<from+count` of a `[1, H, N, X]` tensor as `[H, count, X]`.
func slice(_ t: Tensor, from: Int, count: Int) -> Tensor {
  let (H, N, X) = (t.shape[1], t.shape[2], t.shape[3])
  let s = t.scalars
  return Tensor(shape: [H, count, X]) { p in
    for h in 0..<H { for i in 0..<count { for x in 0..<X { p[(h * count + i) * X + x] = s[(h * N + from + i) * X + x] } } }
  }
}

/// Concatenates `[1, H, N, X]` tensors of equal shape along the batch axis.
func stack(_ parts: [Tensor]) -> Tensor {
  let s = parts[0].shape
  return Tensor(shape: [parts.count] + s.dropFirst()) { p in
    var o = 0
    for t in parts { for x in t.scalars { p[o] = x; o += 1 } }
  }
}

/// `[1, H, N, X]` padded (with `fill`) to `N` rows, then stacked.
func padded(_ parts: [Tensor], to n: Int, fill: Float) -> Tensor {
  let (H, X) = (parts[0].shape[1], parts[0].shape[3])
  return Tensor(shape: [parts.count, H, n, X]) { p in
    for (b, t) in parts.enumerated() {
      let m = t.shape[2], s = t.scalars
      for h in 0..<H { for i in 0..<n { for x in 0..<X { p[((b * H + h) * n + i) * X + x] = i < m ? s[(h * m + i) * X + x] : fill } } }
    }
  }
}

/// Rounds every element to Float16 and back.
func roundedToHalf(_ t: Tensor) -> Tensor { Tensor(shape: t.shape) { p in let s = t.scalars; for i in p.indices { p[i] = Float(Float16(s[i])) } } }

/// Clustered keys `[1, Hkv, n, D]` (centres of norm 2·D^¼ plus N(0, 0.5²)) and queries near the
/// same centres `[1, Hq, m, D]`: attention is peaked, as in trained models.
func clustered(hq: Int, hkv: Int, n: Int, m: Int, d: Int, clusters: Int = 16, seed: UInt64) -> (k: Tensor, q: Tensor) {
  var g = SeededGenerator(seed: seed)
  let r = 2 * pow(Double(d), 0.25)
  var centres = [Float](repeating: 0, count: hkv * clusters * d)
  for c in 0..<(hkv * clusters) {
    let v = (0..<d).map { _ in g.nextNormal() }
    let norm = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
    for x in 0..<d { centres[c * d + x] = Float(v[x] / norm * r) }
  }
  let k = Tensor(shape: [1, hkv, n, d]) { p in
    for h in 0..<hkv { for j in 0..<n {
      let c = (h * clusters + Int(g.next() % UInt64(clusters))) * d
      for x in 0..<d { p[(h * n + j) * d + x] = centres[c + x] + Float(0.5 * g.nextNormal()) }
    } }
  }
  let q = Tensor(shape: [1, hq, m, d]) { p in
    for h in 0..<hq { for i in 0..<m {
      let c = ((h / (hq / hkv)) * clusters + Int(g.next() % UInt64(clusters))) * d
      for x in 0..<d { p[(h * m + i) * d + x] = centres[c + x] + Float(0.5 * g.nextNormal()) }
    } }
  }
  return (k, q)
}

/// One sequence of `n` clustered keys (N(0, 1) values) in a cache of 64-token pages, 200 prefill
/// queries per head to build an index from, one decode query per head from the same clusters, and
/// each query's true top 30 retrievable keys (the first 4 and the last 16 positions left out, as
/// a decoder with 4 sinks and a window of 16 does).
func clusteredSearchProblem(hq: Int, hkv: Int, n: Int, d: Int, seed: UInt64) throws
  -> (cache: PagedKVCache, sequences: [PagedKVCache.SequenceID], prefill: Tensor, query: Tensor, truth: [[Int]]) {
  let (k, pq) = clustered(hq: hq, hkv: hkv, n: n, m: 200, d: d, seed: seed)
  let v = Tensor.randomNormal(shape: [1, hkv, n, d], seed: seed + 1)
  let (cache, seqs) = try makeCache(keys: [k], values: [v], pageSize: 64)
  let (_, q) = clustered(hq: hq, hkv: hkv, n: 1, m: 1, d: d, seed: seed + 2)
  let truth = try SelectionMetrics.exactTopKeys(queries: q, cache: cache, layer: 0, sequences: seqs, k: 30, excludingFirst: 4, excludingLast: 16)
  return (cache, seqs, pq, q, truth)
}
