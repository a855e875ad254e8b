/// Which rows of a sequence each rank holds.
///
/// The sequence of `length` rows is cut into chunks whose sizes differ by at most one (the first
/// `length % chunks` chunks are one longer), so lengths not divisible by the rank count are fine;
/// a chunk may be empty when the sequence is shorter than the chunk count.
///
/// - Contiguous (`zigzag == false`): `ranks` chunks, rank r holds chunk r.
/// - Zig-zag (`zigzag == true`, for causal attention): `2·ranks` chunks, rank r holds chunks r and
///   `2·ranks − 1 − r`, so every rank gets one early and one late chunk and the causal triangle's
///   work is balanced (Ring Attention's load balancing, also used by TokenRing).
///
/// A rank stores its rows in chunk order: its local row `t` is the `t`-th row of its chunks.
public struct SequencePartition: Sendable, Equatable {
  public let length: Int
  public let ranks: Int
  public let zigzag: Bool
  /// Chunk boundaries: chunk c is `bounds[c]..<bounds[c + 1]`.
  let bounds: [Int]

  public init(length: Int, ranks: Int, zigzag: Bool) {
    precondition(length >= 0 && ranks >= 1, "SequencePartition: length \(length), ranks \(ranks)")
    self.length = length
    self.ranks = ranks
    self.zigzag = zigzag
    let c = zigzag ? 2 * ranks : ranks
    var b = [0]
    for i in 0..<c { b.append(b[i] + length / c + (i < length % c ? 1 : 0)) }
    bounds = b
  }

  /// Number of chunks: `ranks`, or `2·ranks` for zig-zag.
  public var chunkCount: Int { bounds.count - 1 }

  /// Global rows of chunk `c`.
  public func chunk(_ c: Int) -> Range<Int> { bounds[c]..<bounds[c + 1] }

  /// The chunks rank `r` holds, in local order.
  public func chunks(ofRank r: Int) -> [Int] { zigzag ? [r, 2 * ranks - 1 - r] : [r] }

  /// Global row ranges rank `r` holds, in local order.
  public func rows(ofRank r: Int) -> [Range<Int>] { chunks(ofRank: r).map(chunk) }

  /// Number of rows rank `r` holds.
  public func localLength(_ r: Int) -> Int { rows(ofRank: r).reduce(0) { $0 + $1.count } }

  /// Rank `r`'s chunks as (local rows, global first row) pairs.
  func pieces(ofRank r: Int) -> [Piece] {
    var local = 0
    var out: [Piece] = []
    for g in rows(ofRank: r) {
      out.append(Piece(local: local..<(local + g.count), globalStart: g.lowerBound))
      local += g.count
    }
    return out
  }
}

/// A chunk as a rank holds it: its local rows and the global position of its first row.
struct Piece: Sendable, Equatable {
  var local: Range<Int>
  var globalStart: Int
  var globalEnd: Int { globalStart + local.count }
}
