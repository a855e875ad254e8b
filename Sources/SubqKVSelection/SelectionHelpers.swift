import SubqCore
import SubqKernels

/// The k best (score, id) pairs seen so far: a binary min-heap whose root is the worst kept pair.
///
/// "Better" means a higher score, and for equal scores the lower id, so a selection is a pure
/// function of the scores (no dependence on the order pairs arrive in).
struct TopKHeap {
  let capacity: Int
  private(set) var scores: [Float] = []
  private(set) var ids: [Int32] = []

  init(capacity: Int) {
    self.capacity = capacity
    scores.reserveCapacity(capacity)
    ids.reserveCapacity(capacity)
  }

  var count: Int { scores.count }
  var isFull: Bool { scores.count >= capacity }
  /// Score of the worst kept pair (−∞ while not full).
  var threshold: Float { isFull && capacity > 0 ? scores[0] : -.infinity }

  @inline(__always) static func worse(_ s1: Float, _ i1: Int32, than s2: Float, _ i2: Int32) -> Bool {
    s1 < s2 || (s1 == s2 && i1 > i2)
  }

  /// Offers a pair; keeps it if it beats the worst kept one (or there is room).
  @inline(__always) mutating func offer(_ s: Float, _ id: Int32) {
    if capacity == 0 { return }
    if scores.count < capacity {
      scores.append(s)
      ids.append(id)
      var c = scores.count - 1
      while c > 0 {
        let p = (c - 1) / 2
        guard TopKHeap.worse(scores[c], ids[c], than: scores[p], ids[p]) else { break }
        scores.swapAt(c, p)
        ids.swapAt(c, p)
        c = p
      }
      return
    }
    guard TopKHeap.worse(scores[0], ids[0], than: s, id) else { return }
    scores[0] = s
    ids[0] = id
    var p = 0
    let n = scores.count
    while true {
      let l = 2 * p + 1, r = l + 1
      var m = p
      if l < n && TopKHeap.worse(scores[l], ids[l], than: scores[m], ids[m]) { m = l }
      if r < n && TopKHeap.worse(scores[r], ids[r], than: scores[m], ids[m]) { m = r }
      if m == p { break }
      scores.swapAt(p, m)
      ids.swapAt(p, m)
      p = m
    }
  }

  /// The kept ids, best first.
  func sortedByScore() -> [(score: Float, id: Int32)] {
    zip(scores, ids).map { ($0, $1) }.sorted { TopKHeap.worse($1.0, $1.1, than: $0.0, $0.1) }
  }
}

/// The `k` highest of `scores[0..<n]` (ties: lower index first), as ids `base + index` sorted
/// ascending.
///
/// Scores arrive in index order, so once the heap is full a later score only enters when it is
/// strictly above the worst kept one; a vector compare skips whole lanes below the threshold.
/// - Complexity: O(n + k·log k·log(n/k)) for scores in random order.
func topKPositions(_ scores: UnsafePointer<Float>, count n: Int, base: Int, k: Int) -> [Int32] {
  if k <= 0 || n <= 0 { return [] }
  if k >= n { return (0..<n).map { Int32(base + $0) } }
  var heap = TopKHeap(capacity: k)
  let L = laneWidth
  var i = 0
  while i < n && !heap.isFull {
    heap.offer(scores[i], Int32(base + i))
    i += 1
  }
  while i + L <= n {
    let v = loadLane(scores + i)
    if any(v .> Lane(repeating: heap.threshold)) {
      for x in 0..<L where scores[i + x] > heap.threshold { heap.offer(scores[i + x], Int32(base + i + x)) }
    }
    i += L
  }
  while i < n {
    if scores[i] > heap.threshold { heap.offer(scores[i], Int32(base + i)) }
    i += 1
  }
  return heap.ids.sorted()
}

/// Cosine similarity of two equally long vectors, in Double (0 when either is zero).
func cosine(_ a: [Float], _ b: [Float]) -> Double {
  var ab = 0.0, aa = 0.0, bb = 0.0
  for i in 0..<min(a.count, b.count) {
    let x = Double(a[i]), y = Double(b[i])
    ab += x * y
    aa += x * x
    bb += y * y
  }
  return aa > 0 && bb > 0 ? ab / (aa * bb).squareRoot() : 0
}

/// Sorted union of sorted, disjoint-or-not position lists.
func sortedUnion(_ lists: [[Int32]]) -> [Int32] {
  var all = lists.flatMap { $0 }
  all.sort()
  var out: [Int32] = []
  out.reserveCapacity(all.count)
  for x in all where out.last != x { out.append(x) }
  return out
}
