import Foundation
import SubqAttention
import SubqCore
import SubqKernels

/// Combiner: full attention coverage at sub-quadratic cost through a structured factorization of
/// the attention distribution (Ren et al., NeurIPS 2021).
///
/// Every query attends to a set of keys directly and to every other region of the sequence through
/// one *abstraction* per region, and the direct logits and the abstraction logits share one
/// softmax:
///
///     O_i = Σ_{j ∈ Ω⁰_i} p_ij · v_j + Σ_r p_ir · v_Ωr,    p ∝ exp(τ·q_i·k_j), exp(τ·q_i·k_Ωr)
///     k_Ω = max-pool_{j∈Ω} k_j        v_Ω = Σ_{j∈Ω} softmax_j(τ·q_Ω·k_j) · v_j
///
/// with the span query q_Ω the max-pool of the span's queries (except in Axial, below). Variants,
/// with the sequence cut into blocks of `block` tokens (the last one may be shorter; nothing is
/// padded into the pools or the sums):
///
/// - `fixed` (Combiner-Fixed): Ω⁰_i is i's own block (causal: the keys j ≤ i of it); the regions
///   are the other blocks (causal: the earlier blocks). O(N·(L + N/L)·D); `block` = √N balances
///   the two terms.
/// - `axial` (Combiner-Axial, parameter-free): the blocks are the rows of an N/L × L grid. Ω⁰_i is
///   i's own row (causal: its prefix); the regions are the other rows (causal: the earlier rows),
///   and the abstraction of row t seen from column u has the max-pooled key of row t and the value
///   `attn(q_{t,u}, K_t, V_t)` — full row attention from the query in the same column (the paper's
///   "specific query"). The reference code derives the abstraction key with learned projections of
///   that row output; this library has no weights, so the key is the max-pool of the row's keys.
///   Where row t has no column u (the shorter last row), the max-pooled query of row t is used.
///   Kernel: the abstraction part runs per column (queries of one column on the lanes, the pooled
///   row keys and that column's row outputs as keys and values) and is merged into the direct part
///   by the log-sum-exp rule, so both are register-tiled flash loops.
/// - `logsparse` (Combiner-Logsparse, causal only): Ω⁰_i = {i}; for every bit l set in i, the
///   dyadic span `[(⌊i/2^l⌋ − 1)·2^l, ⌊i/2^l⌋·2^l)` is a region. These spans tile `[0, i)` exactly
///   (a Fenwick decomposition). O(N·log N·D); `block` does not apply.
///
/// Every variant covers all keys (all earlier keys when causal), so attention is never truncated,
/// but it is an approximation of softmax attention, not equal to it. Requires Nq = Nk.
///
/// - Complexity: fixed/axial O(B·Hq·N·(L + N/L)·(D + Dv)), logsparse O(B·Hq·N·log N·(D + Dv))
///   time; O(B·Hq·N/L·Dv) (fixed), O(B·Hq·N·Dv) (axial) or O(B·(Hq + Hkv)·N·(D + Dv)) (logsparse)
///   extra memory for the abstractions.
public struct CombinerAttention: AttentionMethod {
  public static let info = MethodInfo(
    name: "combiner",
    summary: "Combiner: direct attention in a region + max-pooled abstractions of all other regions, one softmax (fixed, axial, logsparse)",
    paper: "Ren et al., Combiner: Full Attention Transformer with Sparse Computation Cost (NeurIPS 2021)",
    complexity: "O(N·√N·D) (fixed, axial) or O(N·log N·D) (logsparse) time, O(N·D) extra memory",
    isExact: false,
    parameters: [
      MethodParameter("variant", default: "fixed", "factorization: fixed, axial or logsparse"),
      MethodParameter("block", default: "auto", "block (row) length L for fixed and axial; auto = √N rounded up to a multiple of 64"),
    ],
    supportedFeatures: ["causal"])

  /// The factorization.
  public enum Variant: String, Sendable, CaseIterable {
    case fixed, axial, logsparse
  }

  public let variant: Variant
  /// Block length, or nil for automatic (√N rounded up to a multiple of the query block).
  public let block: Int?

  static let op = "attention.combiner"
  static let blockQ = max(64, AttentionTiles.width)
  static let blockK = 96

  /// - Throws: ``SubqError/argument(op:name:value:reason:)`` for `block < 1`, or a block with
  ///   `logsparse` (which has no blocks).
  public init(variant: Variant = .fixed, block: Int? = nil) throws(SubqError) {
    if let block, block < 1 { throw .argument(op: Self.op, name: "block", value: "\(block)", reason: "must be at least 1") }
    if variant == .logsparse, let block {
      throw .argument(op: Self.op, name: "block", value: "\(block)", reason: "logsparse uses dyadic spans and takes no block length")
    }
    self.variant = variant
    self.block = block
  }

  public init(parameters: MethodParameters) throws(SubqError) {
    let info = Self.info
    try parameters.validate(for: info)
    let v = Variant(rawValue: try parameters.choice("variant", info, Variant.allCases.map(\.rawValue)))!
    let text = parameters.values["block"] ?? "auto"
    var block: Int? = nil
    if text != "auto" { block = try parameters.int("block", info, in: 1...Int(Int32.max)) }
    try self.init(variant: v, block: block)
  }

  public var parameterValues: [String: String] {
    variant == .logsparse ? ["variant": variant.rawValue] : ["variant": variant.rawValue, "block": block.map(String.init) ?? "auto"]
  }

  /// The block length used for a sequence of `n` tokens.
  public func blockLength(for n: Int) -> Int {
    if let block { return block }
    let r = Int(Double(n).squareRoot().rounded(.up))
    return max(Self.blockQ, (r + Self.blockQ - 1) / Self.blockQ * Self.blockQ)
  }

  func prepare(_ queries: Tensor, _ keys: Tensor, _ values: Tensor, _ options: AttentionOptions) throws(SubqError) -> AttentionProblem {
    let p = try AttentionProblem.validate(op: Self.op, queries: queries, keys: keys, values: values, options: options)
    try Self.info.check(options)
    guard p.queryLength == p.keyLength else {
      throw .shape(op: Self.op, tensor: "K", shape: keys.shape,
                   reason: "Combiner is self-attention: key length \(p.keyLength) must equal query length \(p.queryLength)")
    }
    if variant == .logsparse && !p.causal {
      throw .unsupported(op: Self.op, feature: "non-causal logsparse", reason: "Combiner-Logsparse is defined for causal attention; use --causal")
    }
    return p
  }

  public func attention(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions) throws(SubqError) -> AttentionResult {
    let p = try prepare(queries, keys, values, options)
    var out = Tensor(shape: p.outputShape) { _ in }
    var lse: Tensor? = p.returnLSE ? Tensor(shape: p.lseShape) { _ in } : nil
    queries.withUnsafeBufferPointer { q in
      keys.withUnsafeBufferPointer { k in
        values.withUnsafeBufferPointer { v in
          out.withUnsafeMutableBufferPointer { o in
            let io = CombinerIO(q: SendablePointer(q.baseAddress!), k: SendablePointer(k.baseAddress!), v: SendablePointer(v.baseAddress!),
                                out: SendablePointer(o.baseAddress!), lse: nil)
            if lse != nil {
              lse!.withUnsafeMutableBufferPointer { l in
                var io2 = io
                io2.lse = SendablePointer(l.baseAddress!)
                run(p, io2)
              }
            } else {
              run(p, io)
            }
          }
        }
      }
    }
    return AttentionResult(output: out, lse: lse)
  }

  func run(_ p: AttentionProblem, _ io: CombinerIO) {
    switch variant {
    case .fixed, .axial: CombinerBlocked(p: p, L: blockLength(for: p.queryLength), axial: variant == .axial).run(io)
    case .logsparse: CombinerLogsparse(p: p).run(io)
    }
  }
}

struct CombinerIO: Sendable {
  var q: SendablePointer<Float>, k: SendablePointer<Float>, v: SendablePointer<Float>
  var out: SendablePointer<Float>
  var lse: SendablePointer<Float>?
}

/// Span summaries shared by the variants, in Float32 with SIMD dot products.
enum CombinerSpan {
  /// `dst[d] = max over rows j in range of src[j·ld + d]`.
  static func maxPool(_ src: UnsafePointer<Float>, ld: Int, range: Range<Int>, width: Int, into dst: UnsafeMutablePointer<Float>) {
    for d in 0..<width { dst[d] = -.infinity }
    for j in range {
      let r = src + j * ld
      for d in 0..<width { dst[d] = max(dst[d], r[d]) }
    }
  }

  /// `dst = Σ_{j∈range} softmax_j(τ·q·k_j) · v_j`, using `scores` (range.count floats) as scratch.
  static func attend(q: UnsafePointer<Float>, k: UnsafePointer<Float>, ldk: Int, v: UnsafePointer<Float>, ldv: Int,
                     range: Range<Int>, D: Int, Dv: Int, scale: Float, scores: UnsafeMutablePointer<Float>,
                     into dst: UnsafeMutablePointer<Float>) {
    let n = range.count
    for (x, j) in range.enumerated() { scores[x] = dot(q, k + j * ldk, D) * scale }
    let m = maxElement(scores, n)
    let l = expShiftSum(scores, shift: m, n)
    for c in 0..<Dv { dst[c] = 0 }
    for (x, j) in range.enumerated() { axpy(scores[x] / l, v + j * ldv, dst, Dv) }
  }
}

/// Combiner-Fixed and Combiner-Axial: blocks of L tokens.
struct CombinerBlocked: Sendable {
  let p: AttentionProblem
  let L: Int
  let axial: Bool
  let T: Int

  init(p: AttentionProblem, L: Int, axial: Bool) {
    self.p = p
    self.L = L
    self.axial = axial
    T = (p.queryLength + L - 1) / L
  }

  func segment(_ t: Int) -> Range<Int> { (t * L)..<min((t + 1) * L, p.queryLength) }

  func run(_ io: CombinerIO) {
    let B = p.batch, Hq = p.queryHeads, Hkv = p.keyValueHeads, D = p.headDim, Dv = p.valueDim
    let bq = CombinerAttention.blockQ, bk = CombinerAttention.blockK
    let qr = p.queryRows, kr = p.keyRows, vr = p.valueRows, orows = p.outputRows
    // 1. Pooled keys K̂ [B][Hkv][T][D].
    let kHat = AlignedBuffer<Float>(count: B * Hkv * T * D)
    let kh = SendablePointer(kHat.pointer)
    Parallel.forEach(B * Hkv * T, threads: p.threads) { item, _ in
      let t = item % T, g = (item / T) % Hkv, b = item / (T * Hkv)
      CombinerSpan.maxPool(io.k.pointer + kr.offset(batch: b, head: g, row: 0), ld: kr.rowStride, range: segment(t),
                           width: D, into: kh.pointer + item * D)
    }
    // 2. Abstraction values: fixed [B][Hq][T][Dv]; axial by column, [B][Hq][L][T][Dv] (the value of
    //    row t seen from column u at [u][t]).
    let perHead = axial ? L * T * Dv : T * Dv
    let vHat = AlignedBuffer<Float>(count: B * Hq * perHead)
    let vh = SendablePointer(vHat.pointer)
    let spanScratch = L + D + 16
    let workers1 = Parallel.workers(for: B * Hq * T, threads: p.threads)
    let scratch1 = AlignedBuffer<Float>(count: workers1 * spanScratch)
    let s1 = SendablePointer(scratch1.pointer)
    // Fixed: v̂_t from the max-pooled query. Axial: the same, for the columns row t lacks.
    Parallel.forEach(B * Hq * T, threads: workers1) { item, worker in
      let t = item % T, h = (item / T) % Hq, b = item / (T * Hq)
      let seg = segment(t)
      if axial && seg.count == L { return }
      let g = p.kvHead(h)
      let w = s1.pointer + worker * spanScratch
      let qHat = w + L
      CombinerSpan.maxPool(io.q.pointer + qr.offset(batch: b, head: h, row: 0), ld: qr.rowStride, range: seg, width: D, into: qHat)
      if axial {
        let head = vh.pointer + (b * Hq + h) * perHead
        withUnsafeTemporaryAllocation(of: Float.self, capacity: Dv) { vals in
          CombinerSpan.attend(q: qHat, k: io.k.pointer + kr.offset(batch: b, head: g, row: 0), ldk: kr.rowStride,
                              v: io.v.pointer + vr.offset(batch: b, head: g, row: 0), ldv: vr.rowStride, range: seg,
                              D: D, Dv: Dv, scale: p.scale, scores: w, into: vals.baseAddress!)
          for u in seg.count..<L { for c in 0..<Dv { head[(u * T + t) * Dv + c] = vals[c] } }
        }
      } else {
        CombinerSpan.attend(q: qHat, k: io.k.pointer + kr.offset(batch: b, head: g, row: 0), ldk: kr.rowStride,
                            v: io.v.pointer + vr.offset(batch: b, head: g, row: 0), ldv: vr.rowStride, range: seg,
                            D: D, Dv: Dv, scale: p.scale, scores: w, into: vh.pointer + (b * Hq + h) * perHead + t * Dv)
      }
    }
    let blockFloats = BlockSoftmax.scratchFloats(D: D, Dv: Dv, blockQ: bq, blockK: bk)
    let blocksPerRow = (L + bq - 1) / bq
    let items = B * Hq * T * blocksPerRow
    let workers = Parallel.workers(for: items, threads: p.threads)
    let scratch = AlignedBuffer<Float>(count: workers * blockFloats)
    let sp = SendablePointer(scratch.pointer)
    @Sendable func decode(_ item: Int) -> (b: Int, h: Int, t: Int, u0: Int) {
      let x = item % blocksPerRow, t = (item / blocksPerRow) % T, h = (item / (blocksPerRow * T)) % Hq
      return (item / (blocksPerRow * T * Hq), h, t, x * bq)
    }
    if axial {
      // Axial row outputs attn(q_{t,u}, K_t, V_t), written transposed into v̂ (the columns the
      // short last row lacks were filled above).
      Parallel.forEach(items, threads: workers) { item, worker in
        let (b, h, t, u0) = decode(item)
        let seg = segment(t)
        guard u0 < seg.count else { return }
        let g = p.kvHead(h)
        let rows = min(bq, seg.count - u0)
        let blk = BlockSoftmax(scratch: sp.pointer + worker * blockFloats, D: D, Dv: Dv, blockQ: bq, blockK: bk, softcap: nil)
        blk.load(q: io.q.pointer + qr.offset(batch: b, head: h, row: seg.lowerBound + u0), ldq: qr.rowStride, rows: rows, scale: p.scale)
        blk.attend(k: io.k.pointer + kr.offset(batch: b, head: g, row: 0), ldk: kr.rowStride,
                   v: io.v.pointer + vr.offset(batch: b, head: g, row: 0), ldv: vr.rowStride, range: seg)
        blk.store(out: vh.pointer + (b * Hq + h) * perHead + (u0 * T + t) * Dv, ldo: T * Dv, rows: rows, lse: nil)
      }
    }
    // Axial: the abstraction part of every query, computed per column u — queries (s, u) on the
    // lanes, keys the pooled row keys, values the column's row outputs — as a partial softmax result
    // (output and log-sum-exp) merged into the direct part below.
    let N = p.queryLength
    let spanOut = AlignedBuffer<Float>(count: axial ? B * Hq * N * Dv : 0)
    let spanLSE = AlignedBuffer<Float>(count: axial ? B * Hq * N : 0)
    let so = SendablePointer(spanOut.pointer), sl = SendablePointer(spanLSE.pointer)
    let causal = p.causal
    if axial {
      let colBlocks = (T + bq - 1) / bq
      Parallel.forEach(B * Hq * L * colBlocks, threads: workers) { item, worker in
        let sb = item % colBlocks, u = (item / colBlocks) % L, h = (item / (colBlocks * L)) % Hq, b = item / (colBlocks * L * Hq)
        let rowsInColumn = u < N - (T - 1) * L ? T : T - 1   // the short last row may lack column u
        let s0 = sb * bq
        guard s0 < rowsInColumn else { return }
        let rows = min(bq, rowsInColumn - s0)
        let g = p.kvHead(h)
        let blk = BlockSoftmax(scratch: sp.pointer + worker * blockFloats, D: D, Dv: Dv, blockQ: bq, blockK: bk, softcap: nil)
        blk.load(q: io.q.pointer + qr.offset(batch: b, head: h, row: s0 * L + u), ldq: L * qr.rowStride, rows: rows, scale: p.scale)
        let kh0 = kh.pointer + (b * Hkv + g) * T * D
        let col = vh.pointer + (b * Hq + h) * perHead + u * T * Dv
        // Rows t < s (and t > s when not causal); lane i is row s0 + i.
        let before = min(T, s0 + rows - 1)
        if before > 0 { blk.attend(k: kh0, ldk: D, v: col, ldv: Dv, range: 0..<before, diagonal: s0 - 1, left: nil, right: 0) }
        if !causal && s0 + 1 < T {
          blk.attend(k: kh0, ldk: D, v: col, ldv: Dv, range: (s0 + 1)..<T, diagonal: s0 + 1, left: 0, right: nil)
        }
        let first = (b * Hq + h) * N + s0 * L + u
        blk.store(out: so.pointer + first * Dv, ldo: L * Dv, rows: rows, lse: sl.pointer + first, ldl: L, emptyLSE: -.infinity)
      }
    }
    // 3. Main pass: direct keys of the own block plus one abstraction per other block (axial: merged
    //    with the column pass's partial results).
    Parallel.forEach(items, threads: workers) { item, worker in
      let (b, h, s, u0) = decode(item)
      let seg = segment(s)
      guard u0 < seg.count else { return }
      let g = p.kvHead(h)
      let rows = min(bq, seg.count - u0)
      let first = seg.lowerBound + u0
      let blk = BlockSoftmax(scratch: sp.pointer + worker * blockFloats, D: D, Dv: Dv, blockQ: bq, blockK: bk, softcap: nil)
      blk.load(q: io.q.pointer + qr.offset(batch: b, head: h, row: first), ldq: qr.rowStride, rows: rows, scale: p.scale)
      let kBase = io.k.pointer + kr.offset(batch: b, head: g, row: 0)
      let vBase = io.v.pointer + vr.offset(batch: b, head: g, row: 0)
      if causal {
        blk.attend(k: kBase, ldk: kr.rowStride, v: vBase, ldv: vr.rowStride, range: seg.lowerBound..<min(seg.upperBound, first + rows),
                   diagonal: first, left: nil, right: 0)
      } else {
        blk.attend(k: kBase, ldk: kr.rowStride, v: vBase, ldv: vr.rowStride, range: seg)
      }
      let lsePtr = io.lse.map { $0.pointer + (b * Hq + h) * p.queryLength + first }
      if axial {
        let at = (b * Hq + h) * N + first
        blk.mergeStore(out: io.out.pointer + orows.offset(batch: b, head: h, row: first), ldo: orows.rowStride, rows: rows,
                       lse: lsePtr, partial: so.pointer + at * Dv, ldp: Dv, partialLSE: sl.pointer + at, ldpl: 1)
        return
      }
      let kh0 = kh.pointer + (b * Hkv + g) * T * D
      let vh0 = vh.pointer + (b * Hq + h) * perHead
      let spans: [Range<Int>] = causal ? [0..<s] : [0..<s, (s + 1)..<T]
      for r in spans where !r.isEmpty { blk.attend(k: kh0, ldk: D, v: vh0, ldv: Dv, range: r) }
      blk.store(out: io.out.pointer + orows.offset(batch: b, head: h, row: first), ldo: orows.rowStride, rows: rows, lse: lsePtr)
    }
    withExtendedLifetime(kHat) {}
    withExtendedLifetime(vHat) {}
    withExtendedLifetime(scratch1) {}
    withExtendedLifetime(scratch) {}
    withExtendedLifetime(spanOut) {}
    withExtendedLifetime(spanLSE) {}
  }
}

/// Combiner-Logsparse: the query itself plus the dyadic spans of the Fenwick decomposition of [0, i).
struct CombinerLogsparse: Sendable {
  let p: AttentionProblem
  /// Levels l with 2^l ≤ N; spans of level l are [(m−1)·2^l, m·2^l) for odd m, m·2^l ≤ N.
  let levels: Int
  let spanOffset: [Int]
  let spanCount: Int

  init(p: AttentionProblem) {
    self.p = p
    let n = p.queryLength
    var lv = 0
    while (1 << lv) <= n { lv += 1 }
    levels = lv
    var off: [Int] = []
    var total = 0
    for l in 0..<lv {
      off.append(total)
      total += ((n >> l) + 1) / 2
    }
    spanOffset = off
    spanCount = total
  }

  /// Index of the span of level l with odd multiplier m.
  @inline(__always) func spanIndex(_ l: Int, _ m: Int) -> Int { spanOffset[l] + (m - 1) / 2 }

  func run(_ io: CombinerIO) {
    let B = p.batch, Hq = p.queryHeads, Hkv = p.keyValueHeads, D = p.headDim, Dv = p.valueDim, n = p.queryLength
    let qr = p.queryRows, kr = p.keyRows, vr = p.valueRows, orows = p.outputRows
    // Every span as (level, m).
    var all: [(Int, Int)] = []
    for l in 0..<levels { var m = 1; while m * (1 << l) <= n { all.append((l, m)); m += 2 } }
    let list = all
    let kHat = AlignedBuffer<Float>(count: B * Hkv * spanCount * D)
    let vHat = AlignedBuffer<Float>(count: B * Hq * spanCount * Dv)
    let kh = SendablePointer(kHat.pointer), vh = SendablePointer(vHat.pointer)
    Parallel.forEach(B * Hkv * list.count, threads: p.threads) { item, _ in
      let (l, m) = list[item % list.count]
      let g = (item / list.count) % Hkv, b = item / (list.count * Hkv)
      let range = ((m - 1) << l)..<(m << l)
      CombinerSpan.maxPool(io.k.pointer + kr.offset(batch: b, head: g, row: 0), ld: kr.rowStride, range: range, width: D,
                           into: kh.pointer + ((b * Hkv + g) * spanCount + spanIndex(l, m)) * D)
    }
    let scratchPer = n + D + 16
    let workers = Parallel.workers(for: B * Hq * list.count, threads: p.threads)
    let scratch = AlignedBuffer<Float>(count: workers * scratchPer)
    let sp = SendablePointer(scratch.pointer)
    Parallel.forEach(B * Hq * list.count, threads: workers) { item, worker in
      let (l, m) = list[item % list.count]
      let h = (item / list.count) % Hq, b = item / (list.count * Hq)
      let g = p.kvHead(h)
      let range = ((m - 1) << l)..<(m << l)
      let w = sp.pointer + worker * scratchPer
      let qHat = w + n
      CombinerSpan.maxPool(io.q.pointer + qr.offset(batch: b, head: h, row: 0), ld: qr.rowStride, range: range, width: D, into: qHat)
      CombinerSpan.attend(q: qHat, k: io.k.pointer + kr.offset(batch: b, head: g, row: 0), ldk: kr.rowStride,
                          v: io.v.pointer + vr.offset(batch: b, head: g, row: 0), ldv: vr.rowStride, range: range,
                          D: D, Dv: Dv, scale: p.scale, scores: w,
                          into: vh.pointer + ((b * Hq + h) * spanCount + spanIndex(l, m)) * Dv)
    }
    // Per query: one joint softmax over itself and its ≤ log₂N spans.
    let chunk = 256
    let chunks = (n + chunk - 1) / chunk
    Parallel.forEach(B * Hq * chunks, threads: p.threads) { item, _ in
      let c = item % chunks, h = (item / chunks) % Hq, b = item / (chunks * Hq)
      let g = p.kvHead(h)
      withUnsafeTemporaryAllocation(of: Float.self, capacity: levels + 1 + Dv) { buf in
        let s = buf.baseAddress!, acc = s + levels + 1
        for i in (c * chunk)..<min((c + 1) * chunk, n) {
          let qi = io.q.pointer + qr.offset(batch: b, head: h, row: i)
          let ki = io.k.pointer + kr.offset(batch: b, head: g, row: i)
          var count = 0
          s[count] = dot(qi, ki, D) * p.scale; count += 1
          for l in 0..<levels where (i >> l) & 1 == 1 {
            let idx = spanIndex(l, i >> l)
            s[count] = dot(qi, kh.pointer + ((b * Hkv + g) * spanCount + idx) * D, D) * p.scale
            count += 1
          }
          let m = maxElement(s, count)
          let sum = expShiftSum(s, shift: m, count)
          for x in 0..<Dv { acc[x] = 0 }
          axpy(s[0] / sum, io.v.pointer + vr.offset(batch: b, head: g, row: i), acc, Dv)
          var x = 1
          for l in 0..<levels where (i >> l) & 1 == 1 {
            let idx = spanIndex(l, i >> l)
            axpy(s[x] / sum, vh.pointer + ((b * Hq + h) * spanCount + idx) * Dv, acc, Dv)
            x += 1
          }
          let o = io.out.pointer + orows.offset(batch: b, head: h, row: i)
          for y in 0..<Dv { o[y] = acc[y] }
          if let lse = io.lse { lse.pointer[(b * Hq + h) * n + i] = m + Float(Foundation.log(Double(sum))) }
        }
      }
    }
    withExtendedLifetime(kHat) {}
    withExtendedLifetime(vHat) {}
    withExtendedLifetime(scratch) {}
  }
}
