import Foundation
import SubqAttention
import SubqCore
import SubqKernels

/// Neighborhood attention (NATTEN's definition): every token of a 1-, 2- or 3-D grid attends to
/// the keys in a window around it.
///
/// The sequence axis of Q, K and V is the grid flattened in row-major order (last axis fastest), so
/// `N = ∏ grid` and Nq = Nk. Each axis has a window size k, a dilation δ and a causal flag; the rule
/// on one axis is ``NeighborhoodAxis`` and a key is visible when it is visible on every axis.
/// Non-causal windows shift at the borders, so every query sees exactly ∏k keys; causal windows do
/// not. Optionally a relative positional bias `B[h, Δ₁ + k₁ − 1, …]` (one table per query head of
/// shape `(2k₁−1) × … ` as in NAT, Δ = key − query in dilation-group coordinates) is added to the
/// scores, after the softcap when there is one:
///
///     s = τ · q_i · k_j  (+ softcap)  + B[h, Δ]      O_i = Σ_{j ∈ window(i)} softmax(s)_j · v_j
///
/// Kernel: the queries of one grid row go on the SIMD lanes; K and V rows are packed as transposed,
/// zero-padded rows (`[d][column]`, the left padding rounded up to whole vectors so packing stores
/// are aligned), so that for a relative key offset o one unaligned vector load gives every lane its
/// own key (column + o). Each (query, key) pair is computed once: there is no halo and no dense
/// mask. Up to three neighboring grid rows share each key load (register tiles from
/// `scripts/gen-neighborhood-tiles.py`). When Dv is a whole number of lane vectors (e.g. 64), V is
/// not packed: the value step reads V rows as stored, four queries (lanes; two on AVX2 and NEON) at
/// a time with their output channels in registers over every key row they see (each probability a
/// broadcast lane of the score vectors), and writes O rows directly as whole cache lines with
/// non-temporal stores (no read of the line first), so V and O need no transposition; otherwise V is
/// packed transposed like K and O is transposed back. When a band's tiles each need one softmax
/// chunk (a single plane of keys on axis 0 and a window of at most 13 columns on the lanes axis,
/// e.g. 2-D 7×7), the value step of the queries whose windows on that axis are neither shifted nor
/// cut by the grid's edges is deferred (by default on AVX-512 builds only, see ``valueStep``):
/// their tiles leave the probabilities in a band buffer, and one pass per grid row slides along
/// the strip with the k in-flight queries' sums in registers (query n enters at its first key
/// column and leaves, scaled and stored, after its last), so each V load serves k queries and no
/// FMA is spent outside a window but at the strip's two ends (a group of four queries sees 10
/// columns for 7 keys each). Border lanes, whose windows are shifted, are handled by widening the
/// offset range of their vector and masking per lane; interior chunks without softcap
/// or bias skip the masking pass. Softmax is online over chunks of at most ~512 keys per query (one
/// chunk for 2-D 7×7); scores are kept in log2 units as in ``FlashAttention``. The last grid axis
/// (the one on the lanes) is split into column strips of at most ``stripTarget`` query columns
/// (``stripWidth(lastAxis:)``), so a packed row holds only its strip's columns plus the halo of up
/// to k − 1 keys on each side that the strip's windows reach (exactly those keys, rounded out to
/// whole vectors with zeros; keys outside the grid are never read): the working set is bounded
/// whatever the grid width. A work item is one band of grid rows of a (batch, head, sub-grid,
/// plane, strip); each worker runs a contiguous run of items in order, stealing the back half of
/// another worker's run when its own is done (`Parallel.forEachContiguous`), and keeps the packed
/// K/V rows of its current band in a small cache (in L2), so it packs each key row (strip plus
/// halo) about once. Memory traffic is hidden by prefetching
/// spread over the computation: every iteration of the register tiles' loops issues one L2
/// prefetch from a per-tile list (the next tile's queries — and output rows when O is transposed
/// back — and a share of the next
/// band's new key rows) and L1 prefetches of the next packed row it will read. Q, K and V are
/// checked for NaN/±∞ as they are packed (raising the same error as the up-front check, without a
/// separate pass).
///
/// Cost per attended pair: D + Dv FMA lanes (no wasted pairs except the widened offset range of
/// border vectors in the score step); per token, one 16×16-block transposition of its query and
/// key rows (and of its value and output rows when Dv is not a whole number of lane vectors;
/// AVX-512, 8×8 on AVX2/NEON) and one 2^x.
///
/// Differences from NATTEN: no stride (GNA) parameter; kernel size 1 is allowed (it attends to the
/// own index on that axis); the layout is Subquadratic's `[B, H, N, D]` (or bshd) with the grid
/// flattened, not NATTEN's heads-last `[B, X, Y, H, D]`; RPB (dropped in NATTEN ≥ 0.20) is
/// supported, also with causal axes, where only the entries Δ ≤ 0 are used.
///
/// - Complexity: O(B·Hq·N·∏k·(D + Dv)) time (the halo repacked per strip adds about
///   2⌈(k₂ − 1)/16⌉·16 / w columns to the packing, w the strip width); O(threads·k₀·(k₁ + 2)·D'·w')
///   extra memory, D' = D when V is read as stored (Dv a whole number of lane vectors) and D + Dv
///   otherwise, w' ≈ w + 2·16 + k₂ the padded packed-row length, independent of the grid width
///   (e.g. 0.4 MB per worker for D = Dv = 64, 7×7 on AVX-512: 9 packed K rows of 64 channels × 176
///   floats), plus the sliding step's band buffer (3·(k₁ + 2)·k₂·160 floats, 0.12 MB for 7×7) and
///   small per-worker scratch.
public struct NeighborhoodAttention: PatternAttentionMethod {
  public static let info = MethodInfo(
    name: "neighborhood",
    summary: "Neighborhood attention on a 1/2/3-D token grid (NATTEN rule): window, dilation, causal per axis, optional RPB",
    paper: "Hassani et al., Neighborhood Attention Transformer (2022); Faster Neighborhood Attention (2024)",
    complexity: "O(N·∏k·D) time, O(N·D) extra memory",
    isExact: false,
    parameters: [
      MethodParameter("grid", default: "", "token grid, row-major, e.g. 128x128 or 8x32x32 (empty: 1-D of the sequence length)"),
      MethodParameter("kernel", default: "7", "window size per axis, e.g. 7x7 (one value: every axis)"),
      MethodParameter("dilation", default: "1", "dilation per axis, e.g. 2x2 (one value: every axis)"),
      MethodParameter("causal-axes", default: "0", "causal flag per axis, e.g. 1,0 (one value: every axis)"),
      MethodParameter("rpb", default: "", "relative positional bias .npy of shape [Hq, 2k₁−1, …] (empty: none)"),
    ],
    supportedFeatures: ["softcap"])

  /// Grid extents, outermost first; `nil` is a 1-D grid of the sequence length.
  public let grid: [Int]?
  /// Window size per axis (one entry: every axis).
  public let kernel: [Int]
  /// Dilation per axis (one entry: every axis).
  public let dilation: [Int]
  /// Causal flag per axis (one entry: every axis).
  public let causalAxes: [Bool]
  /// Relative positional bias `[Hq, 2k₁−1, …]`, one table per query head, or nil.
  public let relativePositionBias: Tensor?
  /// Where the bias came from, for reports.
  let rpbSource: String

  /// How the value step (O = P·V) of the queries whose windows along the last axis are not shifted
  /// or cut by the grid's edges is computed, in bands where one softmax chunk holds every window
  /// (one plane of keys on the first of three axes, at most 13 columns on the last) and Dv is a
  /// whole number of lane vectors. Elsewhere the group tile is used whatever this says. The output
  /// is the same up to Float32 rounding (the sums run in another order).
  public enum ValueStep: Sendable, Equatable {
    /// ``sliding`` on AVX-512 builds, where it is measured faster (2–4% of a 2-D 7×7 call);
    /// ``grouped`` otherwise (on AVX2 its one channel vector per pass made calls 2–3× slower).
    case automatic
    /// One pass per grid row along the strip, the k in-flight queries' sums in registers.
    case sliding
    /// Register tiles of four queries (two on AVX2 and NEON), each over its group's columns.
    case grouped
  }

  /// The value step to use (see ``ValueStep``); ``ValueStep/automatic`` unless set, e.g. to test or
  /// measure the other one.
  public var valueStep = ValueStep.automatic

  static let op = "attention.neighborhood"

  /// - Parameters:
  ///   - grid: grid extents (1 to 3 axes, each ≥ 1), row-major; nil for a 1-D grid of the sequence.
  ///   - kernel: window size per axis (≥ 1), or one value for every axis.
  ///   - dilation: dilation per axis (≥ 1), or one value; `kernel · dilation ≤ length` on every axis.
  ///   - causalAxes: causal flag per axis, or one value.
  ///   - relativePositionBias: `[Hq, 2k₁−1, …]` (checked against the heads at call time).
  /// - Throws: ``SubqError/argument(op:name:value:reason:)`` for a list of the wrong length or an
  ///   out-of-range value.
  public init(
    grid: [Int]? = nil, kernel: [Int], dilation: [Int] = [1], causalAxes: [Bool] = [false],
    relativePositionBias: Tensor? = nil
  ) throws(SubqError) {
    try self.init(grid: grid, kernel: kernel, dilation: dilation, causalAxes: causalAxes,
                  relativePositionBias: relativePositionBias, rpbSource: relativePositionBias == nil ? "" : "tensor")
  }

  init(grid: [Int]?, kernel: [Int], dilation: [Int], causalAxes: [Bool], relativePositionBias: Tensor?, rpbSource: String) throws(SubqError) {
    let op = Self.op
    let rank = grid?.count ?? 1
    func text(_ a: [Int]) -> String { a.map(String.init).joined(separator: "x") }
    if let grid {
      guard (1...3).contains(grid.count) else { throw .argument(op: op, name: "grid", value: text(grid), reason: "expected 1 to 3 axes") }
      for g in grid where g < 1 { throw .argument(op: op, name: "grid", value: text(grid), reason: "extents must be at least 1") }
    }
    for (name, list) in [("kernel", kernel), ("dilation", dilation)] {
      guard list.count == 1 || list.count == rank else {
        throw .argument(op: op, name: name, value: text(list), reason: "expected 1 or \(rank) values (one per grid axis)")
      }
      for v in list where v < 1 { throw .argument(op: op, name: name, value: text(list), reason: "values must be at least 1") }
    }
    guard causalAxes.count == 1 || causalAxes.count == rank else {
      throw .argument(op: op, name: "causal-axes", value: causalAxes.map { $0 ? "1" : "0" }.joined(separator: ","),
                      reason: "expected 1 or \(rank) values (one per grid axis)")
    }
    self.grid = grid
    self.kernel = kernel
    self.dilation = dilation
    self.causalAxes = causalAxes
    self.relativePositionBias = relativePositionBias
    self.rpbSource = rpbSource
    if let grid { _ = try axes(length: grid.reduce(1, *)) }
  }

  public init(parameters: MethodParameters) throws(SubqError) {
    let info = Self.info
    try parameters.validate(for: info)
    func text(_ name: String) -> String {
      parameters.values[name] ?? info.parameters.first { $0.name == name }!.defaultValue
    }
    let gridText = text("grid")
    let grid = gridText.isEmpty ? nil : try GridText.integers(gridText, name: "grid", op: Self.op)
    let kernel = try GridText.integers(text("kernel"), name: "kernel", op: Self.op)
    let dilation = try GridText.integers(text("dilation"), name: "dilation", op: Self.op)
    let causal = try GridText.booleans(text("causal-axes"), name: "causal-axes", op: Self.op)
    let path = parameters.values["rpb"] ?? ""
    let rpb = path.isEmpty ? nil : try NPY.read(path)
    try self.init(grid: grid, kernel: kernel, dilation: dilation, causalAxes: causal, relativePositionBias: rpb, rpbSource: path)
  }

  public var parameterValues: [String: String] {
    func text(_ a: [Int]) -> String { a.map(String.init).joined(separator: "x") }
    return ["grid": grid.map(text) ?? "", "kernel": text(kernel), "dilation": text(dilation),
            "causal-axes": causalAxes.map { $0 ? "1" : "0" }.joined(separator: ","), "rpb": rpbSource]
  }

  /// The axes for a sequence of `length` tokens.
  /// - Throws: when the grid does not hold `length` tokens or a window does not fit its axis.
  public func axes(length: Int) throws(SubqError) -> [NeighborhoodAxis] {
    let g = grid ?? [length]
    func text(_ a: [Int]) -> String { a.map(String.init).joined(separator: "x") }
    guard g.reduce(1, *) == length else {
      throw .argument(op: Self.op, name: "grid", value: text(g), reason: "holds \(g.reduce(1, *)) tokens but the sequence has \(length)")
    }
    var out: [NeighborhoodAxis] = []
    for a in 0..<g.count {
      let k = kernel.count == 1 ? kernel[0] : kernel[a]
      let d = dilation.count == 1 ? dilation[0] : dilation[a]
      let c = causalAxes.count == 1 ? causalAxes[0] : causalAxes[a]
      guard k * d <= g[a] else {
        throw .argument(op: Self.op, name: "kernel", value: text(kernel),
                        reason: "axis \(a): kernel \(k) × dilation \(d) exceeds the axis length \(g[a])")
      }
      out.append(NeighborhoodAxis(length: g[a], kernel: k, dilation: d, causal: c))
    }
    return out
  }

  /// Validates a call and resolves the axes and the bias.
  func prepare(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions) throws(SubqError) -> (AttentionProblem, [NeighborhoodAxis]) {
    let p = try AttentionProblem.validate(op: Self.op, queries: queries, keys: keys, values: values, options: options)
    try Self.info.check(options)
    guard p.queryLength == p.keyLength else {
      throw .shape(op: Self.op, tensor: "K", shape: keys.shape,
                   reason: "neighborhood attention is self-attention on a grid: key length \(p.keyLength) must equal query length \(p.queryLength)")
    }
    let axes = try axes(length: p.queryLength)
    if let t = relativePositionBias {
      let expect = [p.queryHeads] + axes.map { 2 * $0.kernel - 1 }
      guard t.shape == expect else {
        throw .shape(op: Self.op, tensor: "rpb", shape: t.shape, reason: "expected \(expect): [Hq] then 2k−1 per grid axis")
      }
      if let bad = t.firstNonFinite() {
        throw .nonFinite(op: Self.op, tensor: "rpb", index: t.index(ofFlat: bad), value: SubqError.describe(t[flat: bad]))
      }
    }
    return (p, axes)
  }

  public func attention(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions) throws(SubqError) -> AttentionResult {
    // The kernel reads every element of Q, K and V once anyway, so the finiteness check is fused
    // into it (same error, raised before returning) instead of a separate pass over the inputs.
    var relaxed = options
    relaxed.allowNonFinite = true
    let (p, axes) = try prepare(queries: queries, keys: keys, values: values, options: relaxed)
    #if SUBQ_AVX512
    let sliding = valueStep != .grouped
    #else
    let sliding = valueStep == .sliding
    #endif
    let plan = NeighborhoodPlan(p, axes: axes, bias: relativePositionBias, sliding: sliding)
    var nonFinite = false
    var out = Tensor(shape: p.outputShape) { _ in }
    var lse: Tensor? = p.returnLSE ? Tensor(shape: p.lseShape) { _ in } : nil
    queries.withUnsafeBufferPointer { q in
      keys.withUnsafeBufferPointer { k in
        values.withUnsafeBufferPointer { v in
          out.withUnsafeMutableBufferPointer { o in
            if lse != nil {
              lse!.withUnsafeMutableBufferPointer { l in
                nonFinite = plan.forward(q: q.baseAddress!, k: k.baseAddress!, v: v.baseAddress!, out: o.baseAddress!, lse: l.baseAddress!)
              }
            } else {
              nonFinite = plan.forward(q: q.baseAddress!, k: k.baseAddress!, v: v.baseAddress!, out: o.baseAddress!, lse: nil)
            }
          }
        }
      }
    }
    if nonFinite && !options.allowNonFinite {
      // Raises the same error as the up-front check would have.
      _ = try AttentionProblem.validate(op: Self.op, queries: queries, keys: keys, values: values, options: options)
    }
    return AttentionResult(output: out, lse: lse)
  }

  public func attendedPairs(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions) throws(SubqError) -> Double {
    let (p, axes) = try prepare(queries: queries, keys: keys, values: values, options: options)
    return Double(p.batch * p.queryHeads) * axes.reduce(1.0) { $0 * Double($1.totalWindow) }
  }

  public func selectedKeys(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions, rows: [QueryRow]) throws(SubqError) -> [[Int]] {
    let (p, axes) = try prepare(queries: queries, keys: keys, values: values, options: options)
    for r in rows where r.batch < 0 || r.batch >= p.batch || r.head < 0 || r.head >= p.queryHeads || r.row < 0 || r.row >= p.queryLength {
      throw .argument(op: Self.op, name: "rows", value: "(\(r.batch), \(r.head), \(r.row))", reason: "outside [B, Hq, Nq] = [\(p.batch), \(p.queryHeads), \(p.queryLength)]")
    }
    return rows.map { r in Self.window(of: r.row, axes: axes) }
  }

  /// Target query columns per strip of the last grid axis (see ``stripWidth(lastAxis:)``).
  public static let stripTarget = 128

  /// Query columns (dilation-group coordinates) per strip of the last grid axis, the one on the
  /// SIMD lanes. The kernel processes that axis in strips so that its per-worker packed key rows
  /// hold one strip plus the halo of 2(k − 1) columns its windows reach, whatever the grid width.
  /// The widest strip allowed is ``stripTarget`` columns, or four halos (4(k − 1)) when that is
  /// wider (so the halo packed with each strip stays a small share of it); the longest dilation
  /// group is split into the fewest strips of at most that width, all of equal width rounded up to
  /// whole lane vectors, and every group uses that width (its last strip may be shorter).
  public static func stripWidth(lastAxis axis: NeighborhoodAxis) -> Int {
    let Lw = laneWidth
    let widest = max(stripTarget, 4 * (axis.kernel - 1)) / Lw * Lw
    let n = axis.groupLength(0)
    let strips = max(1, (n + widest - 1) / widest)
    return ((n + strips - 1) / strips + Lw - 1) / Lw * Lw
  }

  /// The flat key positions (ascending) that flat query position `i` sees on a grid of `axes`.
  public static func window(of i: Int, axes: [NeighborhoodAxis]) -> [Int] {
    var coords = [Int](repeating: 0, count: axes.count)
    var rest = i
    for a in stride(from: axes.count - 1, through: 0, by: -1) {
      coords[a] = rest % axes[a].length
      rest /= axes[a].length
    }
    var flat = [0]
    for a in 0..<axes.count {
      let w = axes[a].window(of: coords[a])
      flat = flat.flatMap { base in w.map { base * axes[a].length + $0 } }
    }
    return flat
  }
}

/// Namespace of the generated neighborhood register tiles.
enum NeighborhoodTiles {}

/// One dilation group of the grid: a non-dilated sub-grid.
struct NeighborhoodSubgrid: Sendable {
  var g0: Int, g1: Int, g2: Int
  var n0: Int, n1: Int, n2: Int
}

/// A unit of work: grid rows `c1Start ..< c1End` of plane `c0` of one sub-grid, columns
/// `strip · stripWidth ..< min((strip + 1) · stripWidth, n₂)`, for one query head, processed in
/// bands of `rowsPerTile` rows (the plan makes one item per band), each band one lane vector at a
/// time.
struct NeighborhoodItem: Sendable {
  var batch: Int32, head: Int32, subgrid: Int32, c0: Int32, c1Start: Int32, c1End: Int32, strip: Int32
}

/// Geometry, packing and the kernel of one neighborhood-attention call.
///
/// Each worker keeps the K/V rows its current band needs packed in a small cache of slots
/// (`kernel₀ × (kernel₁ + rowsPerTile − 1)` rows, indexed by key coordinates modulo those sizes),
/// so walking the bands of an item in order packs every key row about once and the packed rows stay
/// in the worker's cache.
struct NeighborhoodPlan: Sendable {
  let p: AttentionProblem
  /// Axes normalized to three (leading trivial axes of length 1); axis 2 runs along the lanes and
  /// axis 1 is shared by the rows of a tile.
  let ax0: NeighborhoodAxis, ax1: NeighborhoodAxis, ax2: NeighborhoodAxis
  let subgrids: [NeighborhoodSubgrid]
  let items: [NeighborhoodItem]
  let rowsPerTile: Int
  /// Query columns per strip of the last axis (a whole number of lane vectors), and the most
  /// strips of any sub-grid (for the cache tags).
  let stripWidth: Int, maxStrips: Int
  /// Packed row geometry: columns left of the strip's first query column, floats per packed row
  /// (per channel). A packed row holds the strip's columns plus the halo its windows reach.
  let padL: Int, rowStride: Int
  /// Row cache: slots per worker (`slotsZ × slotsX`), floats per slot (K, then V unless `naturalV`).
  let slotsZ: Int, slotsX: Int, slotFloats: Int
  /// Whether the value step reads V as stored (`[key][Dv]`, Dv a whole number of lane vectors) and
  /// accumulates O per query (`[row][lane][Dv]`), instead of packing V transposed like K and
  /// transposing O back: no V or O transposition, and half the row cache.
  let naturalV: Bool
  /// Elements of V between consecutive key columns, and between consecutive key rows, of a sub-grid.
  let vCol: Int, vRow: Int
  /// Sliding value step (``NeighborhoodTiles/pvs(width:vectors:_:xs:v:vCol:vRow:rows:count:_:oStep:scale:)``):
  /// the window width on the lanes axis (0: not used), the window's offset for the queries whose
  /// windows are not shifted or cut at the grid's edges, and the band's probability buffer
  /// `[R][slotsX][width][slideStride]` (query columns of the strip from `slideMargin`, with
  /// `slideMargin` columns either side that the step reads and drops).
  let slideWidth: Int, slideOffset: Int, slideMargin: Int
  var slideStride: Int { NeighborhoodTiles.slideStride }
  /// Largest rows-per-plane product, for the cache tags.
  let tagRows: Int
  /// Chunk sizes (key rows × offsets) of the online softmax.
  let chunkX: Int, chunkO: Int
  /// Bias in log2 units per query head, `[Hq][(2k₀−1)(2k₁−1)(2k₂−1)]`.
  let bias: [Float]?
  let biasStride: Int
  let scratchFloats: Int
  let qtOff: Int, otOff: Int, sOff: Int, vecOff: Int, tOff: Int, pfOff: Int, slotOff: Int, slideOff: Int, slideSumsOff: Int
  /// Prefetch list: capacity (entries) before the padding, and the padding.
  let pfCapacity: Int, pfPad: Int

  /// Queries per register tile of the natural-layout value step: 4 × up to 4 channel vectors of
  /// accumulators on AVX-512 (32 registers), 2 on AVX2 and NEON (16).
  #if SUBQ_AVX512
  static let pvQueries = 4
  #else
  static let pvQueries = 2
  #endif
  /// Channel vectors for the next pass of the sliding value step over windows of `width` columns,
  /// `left` channel vectors to go: on AVX-512 4 up to width 7 (7 × 4 sums, 4 of V and the
  /// broadcast are 33 registers: one sum lives on the stack, and still one pass of 4 is 2–4%
  /// faster than two of 2), else 2 (13 × 2 + 3 = 29 registers); 1 on AVX2 and NEON (15 of 16).
  /// Always one of the generated counts 1, 2 or 4.
  static func slideVectors(width: Int, left: Int) -> Int {
    #if SUBQ_AVX512
    let most = width <= 7 ? 4 : 2
    #else
    let most = 1
    #endif
    return left >= 4 && most >= 4 ? 4 : left >= 2 && most >= 2 ? 2 : 1
  }

  static let log2e: Float = 1.442_695_040_888_963_4
  static let ln2: Float = 0.693_147_180_559_945_3

  /// `sliding`: whether bands may use the sliding value step (see ``NeighborhoodAttention/ValueStep``).
  init(_ p: AttentionProblem, axes: [NeighborhoodAxis], bias: Tensor?, sliding: Bool) {
    self.p = p
    let trivial = NeighborhoodAxis(length: 1, kernel: 1)
    let a3 = [NeighborhoodAxis](repeating: trivial, count: 3 - axes.count) + axes
    ax0 = a3[0]; ax1 = a3[1]; ax2 = a3[2]
    let Lw = laneWidth
    #if SUBQ_AVX512
    rowsPerTile = 3
    #else
    rowsPerTile = 2
    #endif
    let R = rowsPerTile
    // At least k−1 zero columns on the left, rounded up to whole vectors so that packed rows are
    // stored with aligned (single cache line) vector stores.
    padL = (ax2.kernel - 1 + Lw - 1) / Lw * Lw
    let maxN2 = ax2.groupLength(0)
    // Strips of the last axis bound the packed rows (and so the row cache) independently of the
    // grid width.
    stripWidth = NeighborhoodAttention.stripWidth(lastAxis: ax2)
    maxStrips = (maxN2 + stripWidth - 1) / stripWidth
    // Keys of a strip's windows lie within k − 1 columns of its queries; packing writes whole
    // vectors from ⌊key start⌋ to ⌈key end⌉, at most padL + stripWidth + ⌈k − 1⌉ columns.
    rowStride = (padL + stripWidth + Lw + ax2.kernel + 15) / 16 * 16
    var sgs: [NeighborhoodSubgrid] = []
    for g0 in 0..<ax0.dilation {
      for g1 in 0..<ax1.dilation {
        for g2 in 0..<ax2.dilation {
          sgs.append(NeighborhoodSubgrid(g0: g0, g1: g1, g2: g2, n0: ax0.groupLength(g0), n1: ax1.groupLength(g1), n2: ax2.groupLength(g2)))
        }
      }
    }
    subgrids = sgs
    tagRows = sgs.map { $0.n0 * $0.n1 }.max() ?? 1
    // One item per band of rows, in stream order (batch, head, sub-grid, plane, strip, then
    // bands top to bottom): `Parallel.forEachContiguous` gives each worker a contiguous run of
    // bands, so it mostly computes a band right after the one above it, whose key rows are still
    // in its row cache and which prefetched this band's new rows; work stealing then balances the
    // end to within about a band. (Before: runs of bands handed out from a shared counter, about
    // four per thread — interleaved two-thread runs with 128×128, 7×7, 4 heads were faster with
    // 8 items than with 4 or 32 — left a worker idle for up to a whole run at the end, and each
    // run started with a cold band whose rows nothing had prefetched.)
    var items: [NeighborhoodItem] = []
    for b in 0..<p.batch {
      for h in 0..<p.queryHeads {
        for (si, s) in sgs.enumerated() {
          let strips = (s.n2 + stripWidth - 1) / stripWidth
          for c0 in 0..<s.n0 {
            for strip in 0..<strips {
              for a in stride(from: 0, to: s.n1, by: R) {
                items.append(NeighborhoodItem(batch: Int32(b), head: Int32(h), subgrid: Int32(si), c0: Int32(c0),
                                              c1Start: Int32(a), c1End: Int32(min(s.n1, a + R)), strip: Int32(strip)))
              }
            }
          }
        }
      }
    }
    self.items = items
    slotsZ = ax0.kernel
    // A band's windows span at most k₁ + R − 1 rows, and never more than the axis holds (1-D grids
    // need one packed row, not R).
    slotsX = min(ax1.kernel + R - 1, ax1.groupLength(0))
    naturalV = p.valueDim % Lw == 0
    slotFloats = (p.headDim + (naturalV ? 0 : p.valueDim)) * rowStride
    vCol = ax2.dilation * p.valueRows.rowStride
    vRow = ax1.dilation * ax2.length * p.valueRows.rowStride
    chunkO = min(2 * ax2.kernel - 1, 256)
    chunkX = min(ax1.kernel + R - 1, max(1, 512 / chunkO))
    // The sliding value step needs one softmax chunk per tile (a single plane of keys, see
    // `direct` in `tile`: the key rows are checked per band) and a generated tile for the width.
    slideWidth = sliding && naturalV && ax0.kernel == 1 && NeighborhoodTiles.hasSlidingTile(width: ax2.kernel) ? ax2.kernel : 0
    slideOffset = ax2.causal ? -(ax2.kernel - 1) : -(ax2.kernel / 2)
    slideMargin = slideWidth == 0 ? 0 : (slideWidth - 1 + Lw - 1) / Lw * Lw
    let slideStride = NeighborhoodTiles.slideStride
    precondition(slideWidth == 0 || stripWidth + 2 * slideMargin <= slideStride, "neighborhood: strip too wide for the sliding step")
    let b0 = 2 * ax0.kernel - 1, b1 = 2 * ax1.kernel - 1, b2 = 2 * ax2.kernel - 1
    biasStride = b0 * b1 * b2
    self.bias = bias.map { t in t.scalars.map { $0 * NeighborhoodPlan.log2e } }
    // Scratch (floats): Qᵀ [R][D] lanes, Oᵀ [R][Dv] lanes, scores [R][chunkX][chunkO] lanes,
    // m[R], l[R], lo, hi, 1/l[R] lanes, a transpose block, then the row cache.
    qtOff = 0
    otOff = qtOff + R * p.headDim * Lw + 16
    sOff = otOff + R * p.valueDim * Lw + 16
    vecOff = sOff + R * chunkX * chunkO * Lw + 16
    tOff = vecOff + (3 * R + 2) * Lw + 16
    // The transpose area holds one 16-row block of every 16 channels of K or V (pack) or Q.
    let tFloats = Lw * max(Lw, max(p.headDim, p.valueDim) / Lw * Lw)
    // Prefetch list (pointers, two floats each): one tile's queries and outputs, and a share
    // (≤ laneWidth columns) of up to R new key rows per plane of the window, then padding.
    // A tile's share of a strip's key columns (the strip plus its halo, over its tiles) is at most
    // laneWidth + 2(k₂ − 1) columns.
    let lq = (p.headDim + 15) / 16, lo = (p.valueDim + 15) / 16
    pfCapacity = R * Lw * (lq + lo) + ax0.kernel * R * (Lw + 2 * ax2.kernel) * (lq + lo)
    pfPad = max(p.headDim, p.valueDim) + 16
    pfOff = (tOff + tFloats + 16 + 15) / 16 * 16
    slotOff = (pfOff + 2 * (pfCapacity + pfPad) + 16 + 15) / 16 * 16
    slideOff = (slotOff + slotsZ * slotsX * slotFloats + 16 + 15) / 16 * 16
    slideSumsOff = slideOff + (slideWidth == 0 ? 0 : R * slotsX * slideWidth * slideStride)
    scratchFloats = slideSumsOff + (slideWidth == 0 ? 0 : R * slideStride) + 16
  }

  /// Flat sequence position of sub-grid coordinates.
  @inline(__always) func position(_ s: NeighborhoodSubgrid, _ c0: Int, _ c1: Int, _ c2: Int) -> Int {
    ((s.g0 + ax0.dilation * c0) * ax1.length + (s.g1 + ax1.dilation * c1)) * ax2.length + (s.g2 + ax2.dilation * c2)
  }

  /// Offsets per register tile for `rows` query vectors (register budget: 32 vectors on AVX-512,
  /// 16 on AVX2 and NEON).
  @inline(__always) func maxWidth(_ rows: Int) -> Int {
    #if SUBQ_AVX512
    return rows == 3 ? 7 : 8
    #else
    return rows == 2 ? 4 : 8
    #endif
  }

  /// Copies the first `count` floats of `row` (a multiple of the lane width) as lane vectors to
  /// `dst[0], dst[Lw], dst[2·Lw], …` (one row of a transpose block), adding each to `check`: NaN or
  /// ±∞ there flags a non-finite input.
  @inline(__always) func copyVectors(_ row: UnsafePointer<Float>, to dst: UnsafeMutablePointer<Lane>, count: Int, check: inout Lane) {
    // Two partial sums, added to `check` once per row: a single running sum would make every
    // load wait on the previous add (a latency chain as long as the row).
    var s0 = Lane(), s1 = Lane()
    var d0 = 0
    while d0 + laneWidth < count {
      let e0 = loadLane(row + d0), e1 = loadLane(row + d0 + laneWidth)
      dst[d0] = e0
      dst[d0 + laneWidth] = e1
      s0 += e0
      s1 += e1
      d0 += 2 * laneWidth
    }
    if d0 < count {
      let e = loadLane(row + d0)
      dst[d0] = e
      s0 += e
    }
    check += s0 + s1
  }

  /// Adds the first `count` floats (a multiple of the lane width) of `row` to `check`, as
  /// ``copyVectors(_:to:count:check:)`` does, without copying them.
  @inline(__always) func sumVectors(_ row: UnsafePointer<Float>, count: Int, check: inout Lane) {
    var s0 = Lane(), s1 = Lane()
    var d0 = 0
    while d0 + laneWidth < count {
      s0 += loadLane(row + d0)
      s1 += loadLane(row + d0 + laneWidth)
      d0 += 2 * laneWidth
    }
    if d0 < count { s0 += loadLane(row + d0) }
    check += s0 + s1
  }

  /// Appends to the prefetch list `pf` (from entry `n`) the cache lines of `count` row pairs: rows
  /// `a + i·stepA` (`widthA` floats) and `b + i·stepB` (`widthB` floats), i < count, one entry per 16
  /// floats; as many whole pairs as fit in ``pfCapacity``.
  @inline(__always) func queueLines(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, count: Int, stepA: Int, widthA: Int,
                                    stepB: Int, widthB: Int, pf: UnsafeMutablePointer<UnsafeRawPointer>, n: inout Int) {
    let linesA = (widthA + 15) / 16, per = linesA + (widthB + 15) / 16
    let pairs = max(0, min(count, (pfCapacity - n) / per))
    // A pair of 4 or 8 lines (e.g. a 64-float row alone, or with a 64-float row beside it) is one
    // vector store, every lane's address advanced by its row's step: the scalar loop below made
    // the kernel 4% slower (D = Dv = 64).
    switch per {
    case 4: return queueVectors(SIMD4<Int>.self, a, b, linesA: linesA, stepA: stepA, stepB: stepB, pairs: pairs, pf: pf, n: &n)
    case 8: return queueVectors(SIMD8<Int>.self, a, b, linesA: linesA, stepA: stepA, stepB: stepB, pairs: pairs, pf: pf, n: &n)
    default: break
    }
    var ra = a, rb = b
    for _ in 0..<pairs {
      var d = 0
      while d < widthA { pf[n] = UnsafeRawPointer(ra + d); n += 1; d += 16 }
      d = 0
      while d < widthB { pf[n] = UnsafeRawPointer(rb + d); n += 1; d += 16 }
      ra += stepA
      rb += stepB
    }
  }

  /// ``queueLines`` for `V.scalarCount` lines per row pair (`linesA` of them from row a): one
  /// store of `V` per pair.
  @inline(__always) func queueVectors<V: SIMD>(_: V.Type, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, linesA: Int,
                                             stepA: Int, stepB: Int, pairs: Int, pf: UnsafeMutablePointer<UnsafeRawPointer>,
                                             n: inout Int) where V.Scalar == Int {
    var lines = V(), step = V()
    for e in 0..<V.scalarCount {
      lines[e] = e < linesA ? Int(bitPattern: a) + e * 64 : Int(bitPattern: b) + (e - linesA) * 64
      step[e] = (e < linesA ? stepA : stepB) * MemoryLayout<Float>.stride
    }
    let dst = UnsafeMutableRawPointer(pf + n)
    for i in 0..<pairs {
      dst.storeBytes(of: lines, toByteOffset: i * MemoryLayout<V>.stride, as: V.self)
      lines &+= step
    }
    n += pairs * V.scalarCount
  }

  /// Cache slot of key row (z, x).
  @inline(__always) func slotIndex(_ z: Int, _ x: Int) -> Int { (z % slotsZ) * slotsX + x % slotsX }

  /// Runs the kernel; returns whether any element of Q, K or V read was NaN or ±∞.
  func forward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
               lse: UnsafeMutablePointer<Float>?) -> Bool {
    let workers = Parallel.workers(for: items.count, threads: p.threads)
    // Uninitialized: every part of a worker's scratch is written before it is read (packed rows
    // are written whole, zeros included; scores, sums and the prefetch list per tile).
    let scratchBytes = workers * scratchFloats * MemoryLayout<Float>.stride
    let raw = UnsafeMutableRawPointer.allocate(byteCount: scratchBytes, alignment: 64)
    defer { raw.deallocate() }
    let scratchPointer = raw.bindMemory(to: Float.self, capacity: workers * scratchFloats)
    // Except the sliding step's probability buffer: it also reads (and drops) entries no tile of
    // the band wrote, which must at least be finite numbers.
    for w in 0..<workers {
      (scratchPointer + w * scratchFloats + slideOff).update(repeating: 0, count: slideSumsOff - slideOff)
    }
    let perWorker = slotsZ * slotsX + 1  // cache tags, then the non-finite flag
    let tags = AlignedBuffer<Int>(count: workers * perWorker)
    for w in 0..<workers {
      (tags.pointer + w * perWorker).update(repeating: -1, count: perWorker - 1)
      tags.pointer[w * perWorker + perWorker - 1] = 0
    }
    let qp = SendablePointer(q), kp = SendablePointer(k), vp = SendablePointer(v), op = SendablePointer(out)
    let lp = lse.map { SendablePointer($0) }
    let sp = SendablePointer(scratchPointer), tp = SendablePointer(tags.pointer)
    Parallel.forEachContiguous(items.count, threads: workers) { item, worker in
      self.run(self.items[item], q: qp.pointer, k: kp.pointer, v: vp.pointer, out: op.pointer, lse: lp?.pointer,
               scratch: sp.pointer + worker * self.scratchFloats, tags: tp.pointer + worker * perWorker)
    }
    var nonFinite = false
    for w in 0..<workers where tags.pointer[w * perWorker + perWorker - 1] != 0 { nonFinite = true }
    withExtendedLifetime(tags) {}
    return nonFinite
  }

  /// Packs columns `keys` of key row (z, x) of sub-grid `s` into `slot`, for the strip whose first
  /// query column is `cs`: K as `[d][padL + c − cs]`, then V as `[c][padL + col − cs]` (unless
  /// ``naturalV``: then V's rows are only checked, since the value step reads them as stored). Whole
  /// vectors are written from ⌊keys.lower⌋ to ⌈keys.upper⌉ (columns outside `keys` as zeros, never
  /// read from the input), and the rest of the packed row is zeroed, so a lane whose window
  /// excludes an offset reads a zero or a key of the strip's halo, never a previous strip's data.
  /// `check` accumulates what is read (whole vectors) or `x − x` (single elements): NaN or ±∞
  /// afterwards means a non-finite input, or (rarely) a finite sum that overflowed, which only
  /// costs the caller a separate check.
  func pack(b: Int, g: Int, _ s: NeighborhoodSubgrid, z: Int, x: Int, cs: Int, keys: Range<Int>,
            k: UnsafePointer<Float>, v: UnsafePointer<Float>,
            slot: UnsafeMutablePointer<Float>, block: UnsafeMutablePointer<Lane>, check: inout Lane) {
    let D = p.headDim, Dv = p.valueDim, Lw = laneWidth
    let rev = LaneTranspose.reversed
    // Vector-aligned column range (cs is a multiple of the lane width, padL too).
    let first = keys.lowerBound / Lw * Lw, end = (keys.upperBound + Lw - 1) / Lw * Lw
    let pLo = padL + first - cs, pHi = padL + end - cs
    if naturalV {
      // V is read as stored by the value step: only checked here (which also brings its rows
      // into the cache just before the tiles read them).
      for c2 in keys { sumVectors(v + p.valueRows.offset(batch: b, head: g, row: position(s, z, x, c2)), count: Dv, check: &check) }
    }
    let packed = naturalV ? [(k, p.keyRows, D, slot)] : [(k, p.keyRows, D, slot), (v, p.valueRows, Dv, slot + D * rowStride)]
    for (src, rows, width, dst) in packed {
      let full = width / Lw * Lw
      for d in 0..<width {
        let row = dst + d * rowStride
        // (While loops: `stride` iterators were not inlined here, a call per vector.)
        var c = 0
        while c < pLo { storeLane(Lane(), row + c); c += Lw }
        c = pHi
        while c < rowStride { storeLane(Lane(), row + c); c += Lw }
      }
      let step = ax2.dilation * rows.rowStride
      var c2 = first
      while c2 < end {
        let inside = c2 >= keys.lowerBound && c2 + Lw <= keys.upperBound
        let col = dst + padL + c2 - cs
        if inside && full == width {
          // A whole vector of columns inside the grid: each 16×16 block goes from the source
          // rows to the packed row in registers.
          let base = src + rows.offset(batch: b, head: g, row: position(s, z, x, c2))
          check += LaneTranspose.transposeColumns(from: base, step: step, count: full) { d, e in storeLane(e, col + d * rowStride) }
          c2 += Lw
          continue
        }
        // Each source row is read front to back (sequential lines for the hardware prefetcher)
        // into `block`: row l of the 16 goes to row rev(l) of each 16×16 block, as the
        // transposition wants; a column outside `keys` is a zero row. The check is one add per
        // vector (a sum that is NaN or ±∞ when an input is; a finite overflow only costs a
        // re-check by the caller).
        for l in 0..<Lw {
          let dstRow = block + rev[l]
          if inside || keys.contains(c2 + l) {
            copyVectors(src + rows.offset(batch: b, head: g, row: position(s, z, x, c2 + l)), to: dstRow, count: full, check: &check)
          } else {
            var d0 = 0
            while d0 < full { dstRow[d0] = Lane(); d0 += Lw }
          }
        }
        var d0 = 0
        while d0 < full {
          let m = block + d0
          LaneTranspose.transpose(m)
          for d in 0..<Lw { storeLane(m[rev[d]], col + (d0 + d) * rowStride) }
          d0 += Lw
        }
        if d0 < width {
          for l in 0..<Lw {
            if inside || keys.contains(c2 + l) {
              let row = src + rows.offset(batch: b, head: g, row: position(s, z, x, c2 + l))
              for d in d0..<width { col[d * rowStride + l] = row[d]; check[0] += row[d] - row[d] }
            } else {
              for d in d0..<width { col[d * rowStride + l] = 0 }
            }
          }
        }
        c2 += Lw
      }
    }
  }

  /// Computes one item: its bands of rows, one lane vector at a time.
  func run(_ it: NeighborhoodItem, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
           out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>?, scratch: UnsafeMutablePointer<Float>,
           tags: UnsafeMutablePointer<Int>) {
    let b = Int(it.batch), h = Int(it.head), si = Int(it.subgrid), c0 = Int(it.c0)
    let s = subgrids[si]
    let g = p.kvHead(h)
    let slots = scratch + slotOff
    let block = UnsafeMutableRawPointer(scratch + tOff).assumingMemoryBound(to: Lane.self)
    let pf = UnsafeMutableRawPointer(scratch + pfOff).assumingMemoryBound(to: UnsafeRawPointer.self)
    let zStart = ax0.windowStart(c0, groupLength: s.n0), zCount = ax0.windowCount(c0)
    // The strip's query columns and the key columns their windows reach (windows are monotone).
    let strip = Int(it.strip)
    let cs = strip * stripWidth, ce = min(cs + stripWidth, s.n2)
    let keys = ax2.windowStart(cs, groupLength: s.n2)..<(ax2.windowStart(ce - 1, groupLength: s.n2) + ax2.windowCount(ce - 1))
    func tag(_ z: Int, _ x: Int) -> Int {
      (((b * p.keyValueHeads + g) * subgrids.count + si) * tagRows + z * s.n1 + x) * maxStrips + strip
    }
    let qStep = ax2.dilation * p.queryRows.rowStride, oStep = ax2.dilation * p.outputRows.rowStride
    let kStep = ax2.dilation * p.keyRows.rowStride
    // The strip's queries whose value step slides along the strip after its tiles.
    let even = evenQueries(s, cs..<ce)
    var check = Lane()
    var c1 = Int(it.c1Start)
    while c1 < Int(it.c1End) {
      let R = min(rowsPerTile, Int(it.c1End) - c1)
      // Key rows of the band's windows, packed unless the cache already holds them.
      let xLo = ax1.windowStart(c1, groupLength: s.n1)
      let xHi = ax1.windowStart(c1 + R - 1, groupLength: s.n1) + ax1.windowCount(c1 + R - 1)
      for z in zStart..<(zStart + zCount) {
        for x in xLo..<xHi {
          let slot = slotIndex(z, x)
          let t = tag(z, x)
          if tags[slot] != t {
            pack(b: b, g: g, s, z: z, x: x, cs: cs, keys: keys, k: k, v: v, slot: slots + slot * slotFloats, block: block,
                 check: &check)
            tags[slot] = t
          }
        }
      }
      // Whether the band's even-window queries slide: only when its tiles are direct (see `tile`).
      let slide = !even.isEmpty && oneChunk(planes: zCount, keyRows: xHi - xLo)
      // The next band's new key rows, prefetched a share per tile while this band computes (the
      // next band of the plane: usually the same worker's next item).
      let next = c1 + R
      let nextR = min(rowsPerTile, s.n1 - next)
      let newRows = nextR > 0
        ? max(xHi, ax1.windowStart(next, groupLength: s.n1))..<(ax1.windowStart(next + nextR - 1, groupLength: s.n1) + ax1.windowCount(next + nextR - 1))
        : 0..<0
      let tiles = (ce - cs + laneWidth - 1) / laneWidth
      var t = 0
      for i0 in stride(from: cs, to: ce, by: laneWidth) {
        // Queue the cache lines this band's next tile (or the next band's first) reads and
        // writes, and a share of the next band's new key rows: the tiles issue one prefetch per
        // loop iteration from this list, spread over the computation. (With V as stored, O rows
        // are written whole with non-temporal stores: nothing to fetch for them.)
        let (pc1, pi0, pR) = i0 + laneWidth < ce ? (c1, i0 + laneWidth, R) : (next, cs, nextR)
        // Consecutive columns of a grid row are a fixed number of elements apart in every tensor,
        // so each run of columns is walked with pointer steps (this list is rebuilt per tile).
        var n = 0
        for r in 0..<max(0, pR) {
          let pos = position(s, c0, pc1 + r, pi0)
          queueLines(q + p.queryRows.offset(batch: b, head: h, row: pos), out + p.outputRows.offset(batch: b, head: h, row: pos),
                     count: min(laneWidth, ce - pi0), stepA: qStep, widthA: p.headDim, stepB: oStep, widthB: naturalV ? 0 : p.valueDim,
                     pf: pf, n: &n)
        }
        if !newRows.isEmpty {
          let c2a = keys.lowerBound + keys.count * t / tiles, c2b = keys.lowerBound + keys.count * (t + 1) / tiles
          for z in zStart..<(zStart + zCount) {
            for x in newRows where tags[slotIndex(z, x)] != tag(z, x) && c2a < c2b {
              let pos = position(s, z, x, c2a)
              queueLines(k + p.keyRows.offset(batch: b, head: g, row: pos), v + p.valueRows.offset(batch: b, head: g, row: pos),
                         count: c2b - c2a, stepA: kStep, widthA: p.headDim, stepB: vCol, widthB: p.valueDim, pf: pf, n: &n)
            }
          }
        }
        // (The capacity covers every line above; `queueLines` only keeps a miscount from writing
        // past the list.) The padding after the list: lines of the scratch itself (already cached).
        for i in 0..<pfPad { pf[n + i] = UnsafeRawPointer(scratch) }
        let deferred = slide ? even.clamped(to: i0..<(i0 + laneWidth)) : i0..<i0
        tile(s, b: b, h: h, g: g, c0: c0, c1s: c1, rows: R, i0: i0, cs: cs, q: q, v: v, slots: slots, out: out, lse: lse,
             scratch: scratch, pf: pf, pfCount: n, deferred: (deferred.lowerBound - i0)..<(deferred.upperBound - i0), check: &check)
        t += 1
      }
      if slide {
        slideRows(s, b: b, h: h, g: g, c0: c0, c1: c1, rows: R, z: zStart, xLo: xLo, queries: even, cs: cs, v: v, out: out,
                  scratch: scratch)
      }
      c1 += R
    }
    // The output rows written with non-temporal stores, ordered before the caller reads them.
    if naturalV { streamFence() }
    // `check` sums what was read: NaN or ±∞ (so check − check is NaN) when an input was.
    let c = check - check
    if any(c .!= c) { tags[slotsZ * slotsX] = 1 }
  }

  /// Whether the keys of a band whose windows cover `planes` planes and `keyRows` key rows fit one
  /// softmax chunk on those two axes. A tile is direct when they do and its offsets fit one chunk
  /// too, which the sliding step's windows of at most 13 columns always do.
  @inline(__always) func oneChunk(planes: Int, keyRows: Int) -> Bool { planes == 1 && keyRows <= chunkX }

  /// Band buffer of the sliding step: the probability of query column `column` (sub-grid, in the
  /// strip from `cs`) at offset 0 of the window for key row `x` (relative to the band's first)
  /// of tile row `r`; offset g is `g · slideStride` further.
  @inline(__always) func slideProbabilities(_ scratch: UnsafeMutablePointer<Float>, r: Int, x: Int, column: Int, cs: Int)
    -> UnsafeMutablePointer<Float> {
    scratch + slideOff + ((r * slotsX + x) * slideWidth) * slideStride + slideMargin + column - cs
  }

  /// Band buffer of the sliding step: 1/l of query column `column` of tile row `r`.
  @inline(__always) func slideScales(_ scratch: UnsafeMutablePointer<Float>, r: Int, column: Int, cs: Int) -> UnsafeMutablePointer<Float> {
    scratch + slideSumsOff + r * slideStride + slideMargin + column - cs
  }

  /// The queries of `strip` (sub-grid columns) whose windows on the lanes axis are ``slideWidth``
  /// columns at ``slideOffset``, neither shifted nor cut by the grid's edges: a contiguous run
  /// (windows are monotone), empty without a sliding tile.
  func evenQueries(_ s: NeighborhoodSubgrid, _ strip: Range<Int>) -> Range<Int> {
    if slideWidth == 0 { return strip.upperBound..<strip.upperBound }
    func even(_ c: Int) -> Bool {
      ax2.windowCount(c) == slideWidth && ax2.windowStart(c, groupLength: s.n2) - c == slideOffset
    }
    var a = strip.lowerBound, e = strip.upperBound
    while a < e && !even(a) { a += 1 }
    while e > a && !even(e - 1) { e -= 1 }
    return a..<e
  }

  /// The value step of a band's queries `queries` (whose windows on the lanes axis are all
  /// ``slideWidth`` columns at ``slideOffset``), row by row, from the probabilities and 1/l their
  /// tiles left in the band's buffer (see `tile`): one sliding pass per row and channel vectors.
  /// Not inlined, so that `run` stays small enough for its own helpers to be inlined.
  @inline(never)
  func slideRows(_ s: NeighborhoodSubgrid, b: Int, h: Int, g: Int, c0: Int, c1: Int, rows R: Int, z: Int, xLo: Int,
                 queries: Range<Int>, cs: Int, v: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>,
                 scratch: UnsafeMutablePointer<Float>) {
    let oStep = ax2.dilation * p.outputRows.rowStride
    for r in 0..<R {
      let x0 = ax1.windowStart(c1 + r, groupLength: s.n1)
      let pr = slideProbabilities(scratch, r: r, x: x0 - xLo, column: queries.lowerBound, cs: cs)
      let scale = slideScales(scratch, r: r, column: queries.lowerBound, cs: cs)
      let vr = v + p.valueRows.offset(batch: b, head: g, row: position(s, z, x0, queries.lowerBound + slideOffset))
      let or = out + p.outputRows.offset(batch: b, head: h, row: position(s, c0, c1 + r, queries.lowerBound))
      var cb = 0
      while cb < p.valueDim {
        let nv = NeighborhoodPlan.slideVectors(width: slideWidth, left: (p.valueDim - cb) / laneWidth)
        NeighborhoodTiles.pvs(width: slideWidth, vectors: nv, pr, xs: slideWidth * slideStride, v: vr + cb, vCol: vCol, vRow: vRow,
                              rows: ax1.windowCount(c1 + r), count: queries.count, or + cb, oStep: oStep,
                              scale: scale)
        cb += nv * laneWidth
      }
    }
  }

  /// Computes one tile: `rows` grid rows from `c1s` × one lane vector of queries from `i0`, in the
  /// strip whose first column is `cs` (the packed rows' column origin). The lanes `deferred` (a
  /// single-chunk tile's even-window queries) get no value step here: their probabilities at the
  /// window's offsets and their 1/l go to the band buffer for ``slideRows``.
  func tile(_ s: NeighborhoodSubgrid, b: Int, h: Int, g: Int, c0: Int, c1s: Int, rows R: Int, i0: Int, cs: Int, q: UnsafePointer<Float>,
            v: UnsafePointer<Float>, slots: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>?,
            scratch: UnsafeMutablePointer<Float>, pf: UnsafePointer<UnsafeRawPointer>, pfCount: Int, deferred: Range<Int>,
            check: inout Lane) {
    let Lw = laneWidth
    let real = min(Lw, s.n2 - i0)
    let D = p.headDim, Dv = p.valueDim

    let qtF = scratch + qtOff
    let qt = UnsafeMutableRawPointer(qtF).assumingMemoryBound(to: Lane.self)     // [R][D]
    let otF = scratch + otOff
    let ot = UnsafeMutableRawPointer(otF).assumingMemoryBound(to: Lane.self)     // [R][Dv] lanes, or (naturalV) [R][Lw][Dv] floats
    let st = UnsafeMutableRawPointer(scratch + sOff).assumingMemoryBound(to: Lane.self)
    let vecs = UnsafeMutableRawPointer(scratch + vecOff).assumingMemoryBound(to: Lane.self)
    let mRun = vecs, lRun = vecs + R, loV = vecs + 2 * R, hiV = vecs + 2 * R + 1, invV = vecs + 2 * R + 2
    let loF = UnsafeMutableRawPointer(loV).assumingMemoryBound(to: Float.self)
    let hiF = UnsafeMutableRawPointer(hiV).assumingMemoryBound(to: Float.self)

    // Qᵀ with the score scale folded in (log2 units; τ/c under a softcap c).
    let qScale: Float = p.softcap.map { p.scale / $0 } ?? p.scale * NeighborhoodPlan.log2e
    let qr = p.queryRows
    let rev = LaneTranspose.reversed
    let m16 = UnsafeMutableRawPointer(scratch + tOff).assumingMemoryBound(to: Lane.self)
    let scaleV = Lane(repeating: qScale)
    for r in 0..<R {
      if real == Lw && D % Lw == 0 {
        // Whole lane vector and whole blocks: each 16×16 (8×8) block goes from the query rows to
        // Qᵀ in registers, then Qᵀ is scaled.
        let base = q + qr.offset(batch: b, head: h, row: position(s, c0, c1s + r, i0))
        let step = ax2.dilation * qr.rowStride
        // (Scaled in a second pass: with the multiply inside the store, LLVM merged it into the
        // permute network and lowered each block to ~800 instructions of blends and broadcasts
        // instead of 64 two-source permutes.)
        check += LaneTranspose.transposeColumns(from: base, step: step, count: D) { d, e in qt[r * D + d] = e }
        for d in 0..<D { qt[r * D + d] *= scaleV }
      } else if real == Lw {
        // Whole lane vector: 16×16 (8×8) blocks transposed in registers.
        // Each query row read front to back into the transpose area (see `pack`).
        let full = D / Lw * Lw
        for x in 0..<Lw {
          copyVectors(q + qr.offset(batch: b, head: h, row: position(s, c0, c1s + r, i0 + x)), to: m16 + rev[x],
                      count: full, check: &check)
        }
        var d0 = 0
        while d0 < full {
          let m = m16 + d0
          LaneTranspose.transpose(m)
          for d in 0..<Lw { qt[r * D + d0 + d] = m[rev[d]] * scaleV }
          d0 += Lw
        }
        for l in 0..<Lw where d0 < D {
          let src = q + qr.offset(batch: b, head: h, row: position(s, c0, c1s + r, i0 + l))
          for d in d0..<D { qtF[(r * D + d) * Lw + l] = src[d] * qScale; check[0] += src[d] - src[d] }
        }
      } else {
        for l in 0..<Lw {
          let dst = qtF + r * D * Lw + l
          if l < real {
            let src = q + qr.offset(batch: b, head: h, row: position(s, c0, c1s + r, i0 + l))
            for d in 0..<D { dst[d * Lw] = src[d] * qScale; check[0] += src[d] - src[d] }
          } else {
            for d in 0..<D { dst[d * Lw] = 0 }
          }
        }
      }
      if !naturalV {
        for c in 0..<Dv { ot[r * Dv + c] = Lane() }
      }
      mRun[r] = Lane(repeating: -.infinity)
      lRun[r] = Lane()
    }

    // Per-lane offset bounds on the lane axis: lane l sees relative offsets lo ..< hi.
    var oLo = Int.max, oHi = Int.min, allLo = Int.min, allHi = Int.max
    for l in 0..<Lw {
      if l < real {
        let i = i0 + l
        let st0 = ax2.windowStart(i, groupLength: s.n2)
        let lo = st0 - i, hi = st0 + ax2.windowCount(i) - i
        oLo = min(oLo, lo); oHi = max(oHi, hi); allLo = max(allLo, lo); allHi = min(allHi, hi)
        loF[l] = Float(lo); hiF[l] = Float(hi)
      } else {
        loF[l] = -1e9; hiF[l] = 1e9
      }
    }
    let lo = loV[0], hi = hiV[0]

    // Windows on axes 0 (shared by the tile) and 1 (per row).
    let zStart = ax0.windowStart(c0, groupLength: s.n0), zCount = ax0.windowCount(c0)
    var xs = (0, 0, 0), xn = (0, 0, 0)
    func xStart(_ r: Int) -> Int { r == 0 ? xs.0 : r == 1 ? xs.1 : xs.2 }
    func xEnd(_ r: Int) -> Int { r == 0 ? xs.0 + xn.0 : r == 1 ? xs.1 + xn.1 : xs.2 + xn.2 }
    for r in 0..<R {
      let a = ax1.windowStart(c1s + r, groupLength: s.n1), n = ax1.windowCount(c1s + r)
      if r == 0 { xs.0 = a; xn.0 = n } else if r == 1 { xs.1 = a; xn.1 = n } else { xs.2 = a; xn.2 = n }
    }
    var xLo = Int.max, xHi = Int.min
    for r in 0..<R { xLo = min(xLo, xStart(r)); xHi = max(xHi, xEnd(r)) }
    // Rows of the tile that see key row x (the windows are monotone, so a contiguous range).
    func rowsSeeing(_ x: Int) -> (Int, Int) {
      var a = R, z = -1
      for r in 0..<R where xStart(r) <= x && x < xEnd(r) { a = min(a, r); z = r }
      return (a, z)
    }

    let go = min(oHi - oLo, chunkO), gx = chunkX
    let sRow = gx * go
    // One softmax chunk holds every row's whole window (e.g. 2-D 7×7): the value step starts its
    // sums at zero and writes O = sums / l straight to the output rows, with no Oᵀ scratch.
    let direct = naturalV && oneChunk(planes: zCount, keyRows: xHi - xLo) && oHi - oLo <= go
    // (A band slides only when its tiles are direct: windows of at most 13 columns span at most 25
    // offsets, within one chunk.)
    precondition(direct || deferred.isEmpty, "neighborhood: deferred value step in a multi-chunk tile")
    let oStep = ax2.dilation * p.outputRows.rowStride
    if naturalV && !direct {
      for r in 0..<R { (otF + r * Lw * Dv).update(repeating: 0, count: real * Dv) }
    }
    let kRowFloats = D * rowStride
    let softcapLog2 = p.softcap.map { $0 * NeighborhoodPlan.log2e }
    let b1 = 2 * ax1.kernel - 1, b2 = 2 * ax2.kernel - 1
    let biasHead = bias.map { _ in h * biasStride }
    // Prefetch list position: each tile call takes one entry per loop iteration; past the end of
    // the list it reads the padding (pfPad ≥ any loop count).
    var pfAt = 0
    let plain = softcapLog2 == nil && biasHead == nil
    // Bit r set once row r has had a chunk (before that its Oᵀ is zero: nothing to rescale).
    var started = 0

    (bias ?? []).withUnsafeBufferPointer { biasBuf in
      // Slots of key rows xLo ..< xHi (at most slotsX rows) without a division per row.
      let xLoMod = xLo % slotsX
      for z in zStart..<(zStart + zCount) {
        let zSlot = (z % slotsZ) * slotsX
        for xc in stride(from: xLo, to: xHi, by: gx) {
          let xe = min(xc + gx, xHi)
          for oc in stride(from: oLo, to: oHi, by: go) {
            let oe = min(oc + go, oHi)
            // 1. Scores.
            for x in xc..<xe {
              let (ra, rb) = rowsSeeing(x)
              if rb < ra { continue }
              let xm = xLoMod + (x - xLo), xn = x + 1 < xe ? xm + 1 : xm
              let kRow = slots + (zSlot + (xm >= slotsX ? xm - slotsX : xm)) * slotFloats + padL + i0 - cs
              let kNext = slots + (zSlot + (xn >= slotsX ? xn - slotsX : xn)) * slotFloats + padL + i0 - cs
              var o = oc
              while o < oe {
                let w = min(oe - o, maxWidth(rb - ra + 1))
                // (kRow is a whole vector, so a centred call's middle column is too.)
                NeighborhoodTiles.qk(rows: rb - ra + 1, width: w, q: qt + ra * D, qStride: D, k: kRow + o, ldk: rowStride,
                                     depth: D, s: st + ra * sRow + (x - xc) * go + (o - oc), sStride: sRow, pf: pf + pfAt,
                                     next: kNext + o, centred: o == -(w - 1) / 2)
                pfAt = min(pfAt + D, pfCount)
                o += w
              }
            }
            // 2. Softcap, bias, border masks; online softmax per row.
            for r in 0..<R {
              let xr0 = max(xc, xStart(r)), xr1 = min(xe, xEnd(r))
              if xr0 >= xr1 { continue }
              var mx = mRun[r]
              if plain && allLo <= oc && oe <= allHi {
                // No softcap, no bias, every lane sees every offset of the chunk: only the max.
                // Two running maxima: one would chain every vmax on the previous (latency).
                var m2 = mx
                for x in xr0..<xr1 {
                  let row = st + r * sRow + (x - xc) * go - oc
                  var o = oc
                  while o + 1 < oe { mx = vmax(mx, row[o]); m2 = vmax(m2, row[o + 1]); o += 2 }
                  if o < oe { mx = vmax(mx, row[o]) }
                }
                mx = vmax(mx, m2)
              } else {
              for x in xr0..<xr1 {
                let row = st + r * sRow + (x - xc) * go - oc
                let bRow = biasHead.map { $0 + ((z - c0 + ax0.kernel - 1) * b1 + (x - (c1s + r) + ax1.kernel - 1)) * b2 + ax2.kernel - 1 }
                for o in oc..<oe {
                  var sc = row[o]
                  if let c = softcapLog2 { sc = Lane(repeating: c) * tanhLane(sc) }
                  if let bRow { sc += Lane(repeating: biasBuf[bRow + o]) }
                  if o < allLo || o >= allHi {
                    let ov = Lane(repeating: Float(o))
                    sc = sc.replacing(with: -.infinity, where: (ov .< lo) .| (ov .>= hi))
                  }
                  row[o] = sc
                  mx = vmax(mx, sc)
                }
              }
              }
              let safe = mx.replacing(with: 0, where: mx .== -Float.infinity)
              let alpha = exp2Lane(mRun[r] - safe)
              mRun[r] = mx
              // Two partial sums, for the same reason.
              var sum = Lane(), sum2 = Lane()
              for x in xr0..<xr1 {
                let row = st + r * sRow + (x - xc) * go - oc
                var o = oc
                while o + 1 < oe {
                  let e = exp2Lane(row[o] - safe), e2 = exp2Lane(row[o + 1] - safe)
                  row[o] = e
                  row[o + 1] = e2
                  sum += e
                  sum2 += e2
                  o += 2
                }
                if o < oe {
                  let e = exp2Lane(row[o] - safe)
                  row[o] = e
                  sum += e
                }
              }
              sum += sum2
              lRun[r] = fmadd(sum, lRun[r], alpha)
              if started & (1 << r) != 0 {
                if naturalV {
                  for l in 0..<real {
                    let o = otF + (r * Lw + l) * Dv, a = Lane(repeating: alpha[l])
                    var c = 0
                    while c < Dv { storeLane(loadLane(o + c) * a, o + c); c += Lw }
                  }
                } else {
                  let o = ot + r * Dv
                  for c in 0..<Dv { o[c] *= alpha }
                }
              }
              started |= 1 << r
            }
            // 3. Values.
            if naturalV {
              // V as stored, `pvQueries` queries (lanes) at a time; each query's accumulators stay
              // in registers over all key rows of the chunk it sees. The rows of the tile go inside
              // the loop over lane groups: they read mostly the same V rows (k₁ + R − 1 key rows ×
              // the group's few key columns), which then stay in L1.
              let stF = UnsafeMutableRawPointer(st).assumingMemoryBound(to: Float.self)
              let vz = v + p.valueRows.offset(batch: b, head: g, row: position(s, z, 0, 0))
              if direct {
                for r in 0..<R { invV[r] = reciprocalOfSums(lRun[r]) }
              }
              if !deferred.isEmpty {
                // The deferred lanes' probabilities (offsets slideOffset ..< + slideWidth, which their
                // windows are) and 1/l go to the band's buffer, at the tile's columns; the whole
                // vectors are copied, the other lanes' entries are never used.
                for r in 0..<R {
                  storeLane(invV[r], slideScales(scratch, r: r, column: i0, cs: cs))
                  for x in max(xc, xStart(r))..<min(xe, xEnd(r)) {
                    let src = st + r * sRow + (x - xc) * go + slideOffset - oc
                    let dst = slideProbabilities(scratch, r: r, x: x - xLo, column: i0, cs: cs)
                    for g in 0..<slideWidth { storeLane(src[g], dst + g * slideStride) }
                  }
                }
              }
              let invF = UnsafeMutableRawPointer(invV).assumingMemoryBound(to: Float.self)
              var l = 0
              while l < real {
                if deferred.contains(l) { l = deferred.upperBound; continue }
                let nq = min(NeighborhoodPlan.pvQueries, real - l, l < deferred.lowerBound ? deferred.lowerBound - l : Int.max)
                // Key columns (absolute) of the group's queries within this chunk's offsets; empty
                // (a ≥ e) for a query that sees none. Windows are monotone, so are a and e.
                let i = i0 + l
                func bounds(_ t: Int) -> (Int, Int) {
                  if t >= nq { return (0, 0) }
                  let w = ax2.windowStart(i + t, groupLength: s.n2)
                  return (max(w, i + t + oc), min(w + ax2.windowCount(i + t), i + t + oe))
                }
                let (a0, e0) = bounds(0), (a1, e1) = bounds(1), (a2, e2) = bounds(2), (a3, e3) = bounds(3)
                let keysSeen = max(0, (nq == 1 ? e0 : nq == 2 ? e1 : nq == 3 ? e2 : e3) - a0)
                for r in 0..<R {
                  let xr0 = max(xc, xStart(r)), xr1 = min(xe, xEnd(r))
                  if xr0 >= xr1 { continue }
                  let vx = vz + xr0 * vRow
                  // Lane l's score for key column j of row x sits at float
                  // ((r·sRow + (x − xc)·go + j − i − oc)·Lw + l) of the scores.
                  let pBase = stF + ((r * sRow + (xr0 - xc) * go - i - oc) * Lw + l)
                  let (oBase, oStride) = direct
                    ? (out + p.outputRows.offset(batch: b, head: h, row: position(s, c0, c1s + r, i)), oStep)
                    : (otF + (r * Lw + l) * Dv, Dv)
                  var cb = 0
                  while cb < Dv {
                    let nv = min(4, (Dv - cb) / Lw)
                    NeighborhoodTiles.pvn(queries: nq, vectors: nv, p: pBase, pStep: Lw, pRow: go * Lw,
                                          v: vx + cb, vCol: vCol, vRow: vRow, rows: xr1 - xr0, a0: a0, e0: e0, a1: a1, e1: e1,
                                          a2: a2, e2: e2, a3: a3, e3: e3,
                                          o: oBase + cb, oStride: oStride, direct: direct, scale: invF + r * Lw + l,
                                          pf: pf + pfAt, pfLast: pfCount + pfPad - 1 - pfAt)
                    pfAt = min(pfAt + keysSeen, pfCount)
                    cb += nv * Lw
                  }
                }
                l += nq
              }
            } else {
            for x in xc..<xe {
              let (ra, rb) = rowsSeeing(x)
              if rb < ra { continue }
              let xm = xLoMod + (x - xLo), xn = x + 1 < xe ? xm + 1 : xm
              let vRow = slots + (zSlot + (xm >= slotsX ? xm - slotsX : xm)) * slotFloats + kRowFloats + padL + i0 - cs
              let vNext = slots + (zSlot + (xn >= slotsX ? xn - slotsX : xn)) * slotFloats + kRowFloats + padL + i0 - cs
              var o = oc
              while o < oe {
                let w = min(oe - o, maxWidth(rb - ra + 1))
                NeighborhoodTiles.pv(rows: rb - ra + 1, width: w, p: st + ra * sRow + (x - xc) * go + (o - oc), pStride: sRow,
                                     v: vRow + o, ldv: rowStride, count: Dv, o: ot + ra * Dv, oStride: Dv, pf: pf + pfAt,
                                     next: vNext + o)
                pfAt = min(pfAt + Dv, pfCount)
                o += w
              }
            }
            }
          }
        }
      }
    }

    // Whatever the loops above did not issue from the prefetch list (the natural value step takes
    // one entry per key column, fewer than the transposed one).
    while pfAt < pfCount { prefetchL2(pf[pfAt]); pfAt += 1 }

    // O = Oᵀ / l, scattered back to the grid positions.
    let orows = p.outputRows
    let lF = UnsafeMutableRawPointer(lRun).assumingMemoryBound(to: Float.self)
    let mF = UnsafeMutableRawPointer(mRun).assumingMemoryBound(to: Float.self)
    for r in 0..<R {
      let sums = lRun[r]
      let inv = reciprocalOfSums(sums)
      if naturalV && !direct {
        for l in 0..<real {
          let sum = lF[r * Lw + l]
          let invL = Lane(repeating: sum > 0 ? 1 / sum : 0)
          let src = otF + (r * Lw + l) * Dv
          let dst = out + orows.offset(batch: b, head: h, row: position(s, c0, c1s + r, i0 + l))
          var c = 0
          while c < Dv { streamLane(loadLane(src + c) * invL, dst + c); c += Lw }
        }
      }
      var c0v = naturalV ? Dv : 0
      if real == Lw && !naturalV {
        while c0v + Lw <= Dv {
          for x in 0..<Lw { m16[x] = ot[r * Dv + c0v + rev[x]] * inv }
          LaneTranspose.transpose(m16)
          for l in 0..<Lw { storeLane(m16[rev[l]], out + orows.offset(batch: b, head: h, row: position(s, c0, c1s + r, i0 + l)) + c0v) }
          c0v += Lw
        }
      }
      if c0v < Dv {
        for l in 0..<real {
          let o = out + orows.offset(batch: b, head: h, row: position(s, c0, c1s + r, i0 + l))
          for c in c0v..<Dv { o[c] = otF[(r * Dv + c) * Lw + l] * inv[l] }
        }
      }
      if let lse {
        for l in 0..<real {
          let sum = lF[r * Lw + l]
          lse[(b * p.queryHeads + h) * p.queryLength + position(s, c0, c1s + r, i0 + l)] =
            sum > 0 ? (mF[r * Lw + l] + Float(Foundation.log2(Double(sum)))) * NeighborhoodPlan.ln2 : .infinity
        }
      }
    }
  }
}

/// 1/l per lane, and 0 where l ≤ 0 (a query that saw no key outputs 0).
@inline(__always)
private func reciprocalOfSums(_ l: Lane) -> Lane {
  Lane(repeating: 1).replacing(with: 0, where: l .<= 0) / l.replacing(with: 1, where: l .<= 0)
}
