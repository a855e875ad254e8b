import SubqAttention
import SubqCore
import SubqDecoding
import SubqKernels

/// An element type cached keys and values may be stored in; kernels compute in Float either way.
protocol StoredScalar {
  /// `laneWidth` elements at `p` as Float lanes.
  static func lane(_ p: UnsafePointer<Self>) -> Lane
  /// Element `i` of `p` as Float.
  static func float(_ p: UnsafePointer<Self>, _ i: Int) -> Float
}

extension Float: StoredScalar {
  @inline(__always) static func lane(_ p: UnsafePointer<Float>) -> Lane { loadLane(p) }
  @inline(__always) static func float(_ p: UnsafePointer<Float>, _ i: Int) -> Float { p[i] }
}

extension Float16: StoredScalar {
  @inline(__always) static func lane(_ p: UnsafePointer<Float16>) -> Lane { loadLane(p) }
  @inline(__always) static func float(_ p: UnsafePointer<Float16>, _ i: Int) -> Float { Float(p[i]) }
}

/// Where the rows (keys or values) of one (sequence, key/value head) live: contiguous rows of a
/// tensor, or the pages of a ``PagedKVCache`` sequence.
///
/// Row `t` starts at `base + pages[t / pageSize] · pageBytes + (t % pageSize) · rowBytes` for a
/// paged source, and at `base + t · rowBytes` for a contiguous one (`pages` empty). Rows of one
/// page are contiguous. The memory must stay valid and unmodified while the source is used.
struct RowSource: @unchecked Sendable {
  let base: UnsafeRawPointer
  let pages: [Int32]
  let pageSize: Int
  let pageBytes: Int
  let rowBytes: Int
  let storage: KVStorageType
  /// Elements per row.
  let width: Int
  /// Number of rows.
  let count: Int

  var isPaged: Bool { !pages.isEmpty }

  /// Start of row `t`.
  @inline(__always) func row(_ t: Int) -> UnsafeRawPointer {
    if pages.isEmpty { return base + t * rowBytes }
    return base + Int(pages[t / pageSize]) * pageBytes + (t % pageSize) * rowBytes
  }

  /// The longest run of contiguous rows starting at `t` that ends by `end`: its length.
  @inline(__always) func run(from t: Int, to end: Int) -> Int {
    if pages.isEmpty { return end - t }
    return Swift.min(pageSize - t % pageSize, end - t)
  }

  /// Row `t` as Float32 into `dst[0..<width]`.
  func read(_ t: Int, into dst: UnsafeMutablePointer<Float>) {
    let p = row(t)
    switch storage {
    case .float32: dst.update(from: p.assumingMemoryBound(to: Float.self), count: width)
    case .float16:
      let h = p.assumingMemoryBound(to: Float16.self)
      for i in 0..<width { dst[i] = Float(h[i]) }
    }
  }

  /// The keys of `head` of a paged sequence view.
  static func keys(_ v: PagedSequenceView, head: Int) -> RowSource {
    RowSource(base: v.keyBase + head * v.keyHeadBytes, pages: v.pages, pageSize: v.pageSize, pageBytes: v.keyPageBytes,
              rowBytes: v.headDim * v.storage.bytes, storage: v.storage, width: v.headDim, count: v.length)
  }

  /// The values of `head` of a paged sequence view.
  static func values(_ v: PagedSequenceView, head: Int) -> RowSource {
    RowSource(base: v.valueBase + head * v.valueHeadBytes, pages: v.pages, pageSize: v.pageSize, pageBytes: v.valuePageBytes,
              rowBytes: v.valueDim * v.storage.bytes, storage: v.storage, width: v.valueDim, count: v.length)
  }

  /// `count` Float32 rows of `width` elements, `stride` elements apart, from `base`.
  static func contiguous(_ base: UnsafePointer<Float>, count: Int, width: Int, stride: Int) -> RowSource {
    RowSource(base: UnsafeRawPointer(base), pages: [], pageSize: 1, pageBytes: 0, rowBytes: stride * 4, storage: .float32,
              width: width, count: count)
  }
}

/// The keys and values of one (sequence, key/value head).
struct KVSource: Sendable {
  var keys: RowSource
  var values: RowSource
}

/// Inner product of a Float32 query (padded with zeros to a whole number of lanes, `dFull`
/// lanes plus a scalar tail up to `width`) with a stored row.
@inline(__always)
func rowDot<E: StoredScalar>(_ type: E.Type, _ q: UnsafePointer<Float>, _ k: UnsafePointer<E>, width: Int) -> Float {
  let L = laneWidth
  let full = width / L
  var a0 = Lane(), a1 = Lane()
  var x = 0
  while x + 2 <= full {
    a0 = fmadd(a0, loadLane(q + x * L), E.lane(k + x * L))
    a1 = fmadd(a1, loadLane(q + (x + 1) * L), E.lane(k + (x + 1) * L))
    x += 2
  }
  if x < full { a0 = fmadd(a0, loadLane(q + x * L), E.lane(k + x * L)) }
  var s = hsum(a0 + a1)
  for d in (full * L)..<width { s = fmadd(s, q[d], E.float(k, d)) }
  return s
}

/// Inner products of a Float32 query with four stored rows at once: four independent load
/// streams, so the memory system fetches the rows in parallel (a graph search's rows are
/// scattered, and each dot product alone would wait for its row).
@inline(__always)
func rowDot4<E: StoredScalar>(
  _ type: E.Type, _ q: UnsafePointer<Float>, _ k0: UnsafePointer<E>, _ k1: UnsafePointer<E>, _ k2: UnsafePointer<E>,
  _ k3: UnsafePointer<E>, width: Int
) -> (Float, Float, Float, Float) {
  let L = laneWidth
  let full = width / L
  var a0 = Lane(), a1 = Lane(), a2 = Lane(), a3 = Lane()
  for x in 0..<full {
    let o = x * L
    let qv = loadLane(q + o)
    a0 = fmadd(a0, qv, E.lane(k0 + o))
    a1 = fmadd(a1, qv, E.lane(k1 + o))
    a2 = fmadd(a2, qv, E.lane(k2 + o))
    a3 = fmadd(a3, qv, E.lane(k3 + o))
  }
  var s0 = hsum(a0), s1 = hsum(a1), s2 = hsum(a2), s3 = hsum(a3)
  for d in (full * L)..<width {
    s0 = fmadd(s0, q[d], E.float(k0, d)); s1 = fmadd(s1, q[d], E.float(k1, d))
    s2 = fmadd(s2, q[d], E.float(k2, d)); s3 = fmadd(s3, q[d], E.float(k3, d))
  }
  return (s0, s1, s2, s3)
}

/// `out[i] = q · row(ids[i])` for `n` rows, four at a time.
@inline(__always)
func rowDots(_ q: UnsafePointer<Float>, _ src: RowSource, ids: UnsafePointer<Int32>, count n: Int, out: UnsafeMutablePointer<Float>) {
  switch src.storage {
  case .float32: rowDots(Float.self, q, src, ids: ids, count: n, out: out)
  case .float16: rowDots(Float16.self, q, src, ids: ids, count: n, out: out)
  }
}

@inline(__always)
func rowDots<E: StoredScalar>(_ type: E.Type, _ q: UnsafePointer<Float>, _ src: RowSource, ids: UnsafePointer<Int32>, count n: Int, out: UnsafeMutablePointer<Float>) {
  var i = 0
  while i + 4 <= n {
    let r = rowDot4(E.self, q, src.row(Int(ids[i])).assumingMemoryBound(to: E.self), src.row(Int(ids[i + 1])).assumingMemoryBound(to: E.self),
                    src.row(Int(ids[i + 2])).assumingMemoryBound(to: E.self), src.row(Int(ids[i + 3])).assumingMemoryBound(to: E.self),
                    width: src.width)
    out[i] = r.0; out[i + 1] = r.1; out[i + 2] = r.2; out[i + 3] = r.3
    i += 4
  }
  while i < n {
    out[i] = rowDot(E.self, q, src.row(Int(ids[i])).assumingMemoryBound(to: E.self), width: src.width)
    i += 1
  }
}

/// Prefetches rows `ids[0..<n]` of a source (the rows a graph search is about to score are
/// scattered: asking for all of them first lets their cache misses overlap).
@inline(__always)
func prefetchRows(_ src: RowSource, ids: UnsafePointer<Int32>, count n: Int) {
  let bytes = src.width * (src.storage == .float32 ? 4 : 2)
  for i in 0..<n { prefetch(src.row(Int(ids[i])), bytes: bytes) }
}

/// Inner product of a Float32 query with row `t` of a source.
@inline(__always)
func rowDot(_ q: UnsafePointer<Float>, _ src: RowSource, _ t: Int) -> Float {
  switch src.storage {
  case .float32: return rowDot(Float.self, q, src.row(t).assumingMemoryBound(to: Float.self), width: src.width)
  case .float16: return rowDot(Float16.self, q, src.row(t).assumingMemoryBound(to: Float16.self), width: src.width)
  }
}

/// Validates a decode step over a paged cache: the sequences, the query shape and the options a
/// selection method implements (scale, causal masking, layout, log-sum-exp, threads).
func validateDecodeStep(
  op: String, info: MethodInfo, queries: Tensor, cache: PagedKVCache, layer: Int, sequences: [PagedKVCache.SequenceID],
  options: AttentionOptions
) throws(SubqError) -> (problem: AttentionProblem, views: [PagedSequenceView]) {
  try info.check(options)
  if options.alignment == .topLeft && options.causal {
    throw .unsupported(op: op, feature: "top-left causal alignment", reason: "a decode step's queries are the last positions of their sequences (bottom-right)")
  }
  var seen = Set<Int>()
  for s in sequences where !seen.insert(s.rawValue).inserted {
    throw .argument(op: op, name: "sequences", value: "\(s)", reason: "appears more than once in one step (the method keeps per-sequence state)")
  }
  var views: [PagedSequenceView] = []
  for s in sequences { views.append(try cache.view(s, layer: layer)) }
  if queries.rank == 4 && queries.shape[0] != sequences.count {
    throw .shape(op: op, tensor: "Q", shape: queries.shape, reason: "batch \(queries.shape[0]) differs from the \(sequences.count) sequences given")
  }
  let c = cache.configuration
  let p = try AttentionProblem.validate(op: op, queries: queries, keyValueHeads: c.kvHeads, keyCounts: views.map(\.length),
                                        headDim: c.headDim, valueDim: c.valueDim, options: options)
  return (p, views)
}
