import SubqCore

/// A growable Float16 copy of one (sequence, key/value head)'s keys, rows contiguous, for graph
/// searches: a search's key reads are scattered and its time goes into fetching them, so scoring
/// on half-width rows halves the bytes fetched. Retrieved keys are re-scored on the cache's rows.
final class HalfRows: @unchecked Sendable {
  private(set) var pointer: UnsafeMutablePointer<Float16>
  private(set) var count = 0
  private var capacity: Int
  let width: Int

  init(width: Int, capacity: Int = 0) {
    self.width = width
    self.capacity = Swift.max(1, capacity)
    pointer = .allocate(capacity: self.capacity * width)
  }
  deinit { pointer.deallocate() }

  /// Bytes held.
  var memoryBytes: Int { capacity * width * 2 }

  /// Appends rows `count..<end` of `keys` (their first `width` elements), rounded to Float16.
  func append(upTo end: Int, from keys: RowSource) {
    if end <= count { return }
    if end > capacity {
      let cap = Swift.max(end, capacity + capacity / 4 + 256)
      let p = UnsafeMutablePointer<Float16>.allocate(capacity: cap * width)
      p.update(from: pointer, count: count * width)
      pointer.deallocate()
      pointer = p
      capacity = cap
    }
    for t in count..<end {
      let dst = pointer + t * width
      switch keys.storage {
      case .float32:
        let s = keys.row(t).assumingMemoryBound(to: Float.self)
        for d in 0..<width { dst[d] = Float16(s[d]) }
      case .float16:
        dst.update(from: keys.row(t).assumingMemoryBound(to: Float16.self), count: width)
      }
    }
    count = end
  }

  /// A copy (for a forked sequence).
  func copy() -> HalfRows {
    let c = HalfRows(width: width, capacity: count)
    c.pointer.update(from: pointer, count: count * width)
    c.count = count
    return c
  }

  /// The rows as a source (valid while this object lives and is not appended to).
  var source: RowSource {
    RowSource(base: UnsafeRawPointer(pointer), pages: [], pageSize: 1, pageBytes: 0, rowBytes: width * 2, storage: .float16,
              width: width, count: count)
  }
}

extension ProximityGraph.Found {
  /// Re-scores the first `candidates` results on `keys` (exact rows) and keeps the best `k`,
  /// best first (ties: lower id).
  mutating func rescore(_ query: UnsafePointer<Float>, keys: RowSource, k: Int) {
    var pairs: [(score: Float, id: Int32)] = []
    pairs.reserveCapacity(ids.count)
    for id in ids { pairs.append((rowDot(query, keys, Int(id)), id)) }
    scanned += pairs.count
    pairs.sort { $0.score > $1.score || ($0.score == $1.score && $0.id < $1.id) }
    if pairs.count > k { pairs.removeLast(pairs.count - k) }
    ids = pairs.map(\.id)
    scores = pairs.map(\.score)
  }
}
