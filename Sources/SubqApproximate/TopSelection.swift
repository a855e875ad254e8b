/// A candidate of a hierarchical key search: a run of key blocks and its score.
struct ScoredNode: Sendable {
  /// First block index and number of blocks.
  var lo: Int32
  var size: Int32
  var score: Float

  /// The search order: higher score first, then lower block index (a strict total order, since
  /// nodes are disjoint, so the top set is unique whatever the algorithm).
  @inline(__always)
  static func precedes(_ a: ScoredNode, _ b: ScoredNode) -> Bool {
    a.score > b.score || (a.score == b.score && a.lo < b.lo)
  }
}

/// Rearranges `a[0..<count]` so that `a[0..<n]` holds the `n` first elements in
/// ``ScoredNode/precedes(_:_:)`` order (in no particular order among themselves): quickselect,
/// O(count) on average.
func selectTop(_ a: UnsafeMutablePointer<ScoredNode>, count: Int, _ n: Int) {
  if n <= 0 || n >= count { return }
  var lo = 0, hi = count - 1
  let target = n - 1
  while lo < hi {
    // Median of three as pivot, moved to hi.
    let mid = lo + (hi - lo) / 2
    if ScoredNode.precedes(a[mid], a[lo]) { a.swapAt(mid, lo) }
    if ScoredNode.precedes(a[hi], a[lo]) { a.swapAt(hi, lo) }
    if ScoredNode.precedes(a[mid], a[hi]) { a.swapAt(mid, hi) }
    let pivot = a[hi]
    var store = lo
    for i in lo..<hi where ScoredNode.precedes(a[i], pivot) {
      a.swapAt(i, store)
      store += 1
    }
    a.swapAt(store, hi)
    if store == target { return }
    if store < target { lo = store + 1 } else { hi = store - 1 }
  }
}

extension UnsafeMutablePointer where Pointee == ScoredNode {
  @inline(__always) func swapAt(_ i: Int, _ j: Int) {
    let t = self[i]
    self[i] = self[j]
    self[j] = t
  }
}
