import Foundation
import SubqAttention
import SubqCore
import SubqKernels

/// HiP attention: per query block, a hierarchical top-k search over key blocks, then exact
/// attention over the selected keys plus attention sinks and a local window.
///
/// For each query head and each block of `block-q` consecutive queries (Lee et al. 2024, HiP:
/// hierarchically pruned attention; implemented from the paper and the project's specification):
///
/// 1. **Regions.** With causal masking the block's horizon is the key after its last query's
///    diagonal. The first `sink` keys are always attended; so is the local region from `window`
///    keys before the block's first query up to the horizon (the diagonal part inside the block
///    is masked per element). Everything in between is a *candidate*, cut into key blocks of
///    `block-k` keys. Without causal masking the horizon is Nk, the local region extends `window`
///    keys past the block's last diagonal too, and candidates lie on both sides. Candidates are
///    visible to every query of the block, so the selection never looks ahead.
/// 2. **Dense case.** When the candidates hold at most `k` keys, all of them are attended.
/// 3. **Tree search.** Otherwise `n = k / block-k` blocks are chosen: the candidate blocks are
///    split into n contiguous nodes of equal size; each round splits every node into
///    `branching` children, scores each child by its centre key block — the maximum of `q·k` over
///    every `stride-q`-th query of the block and every key of that block — and keeps the n
///    best children, until every node is a single key block (⌈log_branching(candidates/n)⌉ rounds).
/// 4. **Attention.** Exact softmax attention of each query over sinks ∪ selected blocks ∪ local
///    region, restricted to the keys it may see, in one online softmax (``SubsetKernel``).
///
/// The output is exact when `k` covers every candidate (k ≥ Nk suffices). The log-sum-exp is that
/// of the attended keys (a lower bound of the exact one).
///
/// The search relies on what the paper calls attention locality: keys close together have similar
/// scores, so a node's centre block stands for the node. Pretrained LLMs show it; inputs whose
/// important keys are scattered at random (such as `subq bench --data structured`, where cluster
/// members are placed at random positions) do not, and there the selection is little better than
/// the local window.
///
/// Differences from the authors' implementation as described (its code, under the FSL-1.1
/// licence, was not used here):
/// - Defaults `block-q` 128 and `stride-q` 4 instead of 64 and 2: on CPUs the search is bound by
///   scattered key reads, and sharing one search among 128 queries halves it per query (the error
///   on `subq bench --data structured` and `needles` did not change measurably).
/// - Scores are computed from a bfloat16 copy of the keys (``BF16Keys``): half the bytes per
///   scattered row. Ranking only; attention is Float32 over the selected keys.
/// - Scores are raw dot products with no RoPE handling (apply RoPE to Q and K before calling);
///   ties are broken by position; one selection per (query head, query block), no head groups,
///   no mask reuse across decode steps.
///
/// - Complexity: O(N·(k + window + sink)·D) for attention plus
///   O((N/block-q)·branching·k·(block-q/stride-q)·D·log(N/k)) for the search; extra memory a
///   bfloat16 copy of the keys (half their size) and O(threads·(block-q + k)·D) scratch.
public struct HiPAttention: KeySelectingMethod {
  public static let info = MethodInfo(
    name: "hip",
    summary: "HiP: per query block, hierarchical top-k search over key blocks, then exact attention over selected + sink + local keys",
    paper: "Lee, Park, Lee, Suh, Kim et al., A Training-Free Sub-quadratic Cost Transformer Model Serving Framework with Hierarchically Pruned Attention (HiP; arXiv 2406.09827, ICLR 2025)",
    complexity: "O(N·(k+window+sink)·D + (N/block-q)·branching·k·(block-q/stride-q)·D·log(N/k)) time; extra memory a bfloat16 copy of K (half its size)",
    isExact: false,
    parameters: [
      MethodParameter("k", default: "512", "keys selected per query block (a multiple of block-k)"),
      MethodParameter("block-q", default: "128", "queries sharing one selection, 1...1024 (the paper's code: 64)"),
      MethodParameter("block-k", default: "2", "keys per selectable key block, 1...512"),
      MethodParameter("branching", default: "2", "children per node in each round of the search, 2...16"),
      MethodParameter("stride-q", default: "4", "score with every stride-q-th query of the block (the paper's code: 2)"),
      MethodParameter("sink", default: "16", "leading keys always attended (attention sinks)"),
      MethodParameter("window", default: "256", "recent keys before each block always attended"),
    ],
    supportedFeatures: ["causal", "key-lengths", "varlen"])

  /// Keys selected per query block.
  public let k: Int
  /// Queries per block.
  public let blockQ: Int
  /// Keys per key block.
  public let blockK: Int
  /// Children per node.
  public let branching: Int
  /// Query stride of the scoring.
  public let strideQ: Int
  /// Attention-sink keys.
  public let sink: Int
  /// Local window keys.
  public let window: Int

  /// - Throws: ``SubqError/argument(op:name:value:reason:)`` for a parameter out of range.
  public init(k: Int = 512, blockQ: Int = 128, blockK: Int = 2, branching: Int = 2, strideQ: Int = 4, sink: Int = 16, window: Int = 256) throws(SubqError) {
    let op = "attention.hip"
    guard (1...HiPPlan.scoreLanes).contains(blockK) else {
      throw .argument(op: op, name: "block-k", value: "\(blockK)", reason: "must be in 1...\(HiPPlan.scoreLanes)")
    }
    guard (1...(1 << 26)).contains(k), k % blockK == 0 else {
      throw .argument(op: op, name: "k", value: "\(k)", reason: "must be a positive multiple of block-k (\(blockK)), at most \(1 << 26)")
    }
    guard (1...1024).contains(blockQ) else {
      throw .argument(op: op, name: "block-q", value: "\(blockQ)", reason: "must be in 1...1024")
    }
    guard (2...16).contains(branching) else {
      throw .argument(op: op, name: "branching", value: "\(branching)", reason: "must be in 2...16")
    }
    guard (1...blockQ).contains(strideQ) else {
      throw .argument(op: op, name: "stride-q", value: "\(strideQ)", reason: "must be in 1...block-q (\(blockQ))")
    }
    guard (0...(1 << 26)).contains(sink) else {
      throw .argument(op: op, name: "sink", value: "\(sink)", reason: "must be in 0...\(1 << 26)")
    }
    guard (0...(1 << 26)).contains(window) else {
      throw .argument(op: op, name: "window", value: "\(window)", reason: "must be in 0...\(1 << 26)")
    }
    self.k = k
    self.blockQ = blockQ
    self.blockK = blockK
    self.branching = branching
    self.strideQ = strideQ
    self.sink = sink
    self.window = window
  }

  public init(parameters: MethodParameters) throws(SubqError) {
    let i = Self.info
    try parameters.validate(for: i)
    try self.init(
      k: parameters.int("k", i), blockQ: parameters.int("block-q", i), blockK: parameters.int("block-k", i),
      branching: parameters.int("branching", i), strideQ: parameters.int("stride-q", i),
      sink: parameters.int("sink", i), window: parameters.int("window", i))
  }

  public var parameterValues: [String: String] {
    ["k": "\(k)", "block-q": "\(blockQ)", "block-k": "\(blockK)", "branching": "\(branching)",
     "stride-q": "\(strideQ)", "sink": "\(sink)", "window": "\(window)"]
  }

  public func attention(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions) throws(SubqError) -> AttentionResult {
    let p = try AttentionProblem.validate(op: "attention.hip", queries: queries, keys: keys, values: values, options: options)
    try Self.info.check(options)
    let plan = HiPPlan(p, self)
    return RawAttention.run(p, queries: queries, keys: keys, values: values) { raw in plan.run(raw) }
  }

  /// The keys each row attends to: visible sinks, the selected blocks of its query block, and
  /// the visible part of the local region.
  public func selectedKeys(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions, rows: [QueryRow]) throws(SubqError) -> [[Int]] {
    let p = try AttentionProblem.validate(op: "attention.hip", queries: queries, keys: keys, values: values, options: options)
    try Self.info.check(options)
    let plan = HiPPlan(p, self)
    return try RawAttention.selection(p, queries: queries, keys: keys, values: values, rows: rows) { raw in
      let keys16 = BF16Keys(raw), cache = HiPSelectionCache()
      return { si, h, i in plan.selectedKeys(raw, keys16, cache, sequence: si, head: h, row: i) }
    }
  }
}

/// The key regions of one query block (sequence-local positions).
struct HiPRegions {
  /// Local query rows of the block.
  var rows: Range<Int>
  /// Sinks `0..<sinkEnd`, local region `localStart..<localEnd`.
  var sinkEnd: Int
  var localStart: Int
  var localEnd: Int
  /// Candidate key ranges, before and after the local region.
  var before: Range<Int>
  var after: Range<Int>
  var blockK: Int
  /// Candidate key blocks in each range.
  var blocksBefore: Int { (before.count + blockK - 1) / blockK }
  var blocksAfter: Int { (after.count + blockK - 1) / blockK }
  var blockCount: Int { blocksBefore + blocksAfter }
  var candidateKeys: Int { before.count + after.count }

  /// The keys of candidate block `c`.
  @inline(__always) func keys(ofBlock c: Int) -> Range<Int> {
    if c < blocksBefore {
      let s = before.lowerBound + c * blockK
      return s..<min(s + blockK, before.upperBound)
    }
    let s = after.lowerBound + (c - blocksBefore) * blockK
    return s..<min(s + blockK, after.upperBound)
  }
}

struct HiPPlan: Sendable {
  let p: AttentionProblem
  let m: HiPAttention
  let kernel: SubsetKernel
  /// Rep keys scored per pass.
  static let scoreLanes = 512
  let selectFloats: Int
  /// Room for gathered keys (at most k).
  let gatherRows: Int
  /// Room for the search's nodes and children: the search runs only when there are more
  /// candidate blocks than n = k / block-k, so n < Nk.
  let nodeCapacity: Int
  let scratchFloats: Int

  init(_ p: AttentionProblem, _ m: HiPAttention) {
    self.p = p
    self.m = m
    kernel = SubsetKernel(headDim: p.headDim, valueDim: p.valueDim, rows: m.blockQ)
    // Qᵀ of the scoring queries [D][lanes], the score tile [6][lanes], the scored keys' maxima
    // and indices.
    let lanesS = ((m.blockQ + m.strideQ - 1) / m.strideQ + 2 * laneWidth - 1) / (2 * laneWidth) * (2 * laneWidth)
    // Whole lines, so that the gather area after it (and the next worker's scratch) stays aligned.
    selectFloats = Parallel.scratchStride(floats: (p.headDim + 6) * lanesS + HiPPlan.scoreLanes * 2 + 6 * p.headDim)
    let maxKeys = p.sequences.map(\.keyCount).max() ?? 0
    gatherRows = min(m.k, maxKeys)
    nodeCapacity = (m.branching + 1) * min(m.k / m.blockK, maxKeys)
    scratchFloats = Parallel.scratchStride(floats: kernel.scratchFloats + selectFloats + gatherRows * (p.headDim + p.valueDim) + 64)
  }

  func regions(_ seq: AttentionSequence, block b: Int) -> HiPRegions {
    let q0 = b * m.blockQ, q1 = min(q0 + m.blockQ, seq.queryCount)
    let nk = seq.keyCount, off = seq.offset
    let horizon = p.causal ? min(max(q1 - 1 + off + 1, 0), nk) : nk
    let sinkEnd = min(m.sink, horizon)
    let localStart = min(max(q0 + off + 1 - m.window, sinkEnd), horizon)
    let localEnd = p.causal ? horizon : min(max(q1 - 1 + off + m.window, localStart), nk)
    return HiPRegions(rows: q0..<q1, sinkEnd: sinkEnd, localStart: localStart, localEnd: localEnd,
                      before: sinkEnd..<localStart, after: localEnd..<horizon, blockK: m.blockK)
  }

  /// The selected candidate blocks of a query block, sorted by position.
  ///
  /// - Parameters:
  ///   - scratch: `selectFloats` floats.
  ///   - nodes: room for `branching · n` nodes.
  func select(
    _ raw: RawAttention, _ keys16: BF16Keys, _ seq: AttentionSequence, head h: Int, _ r: HiPRegions,
    scratch: UnsafeMutablePointer<Float>, nodes: UnsafeMutablePointer<ScoredNode>, into selected: inout [Int32]
  ) {
    selected.removeAll(keepingCapacity: true)
    let nc = r.blockCount
    if r.candidateKeys <= m.k {
      for c in 0..<nc { selected.append(Int32(c)) }
      return
    }
    let n = m.k / m.blockK
    let D = p.headDim
    let g = p.kvHead(h)
    // Initial nodes: n contiguous runs of (nearly) equal size.
    var count = n
    for i in 0..<n {
      let lo = i * nc / n, hi = (i + 1) * nc / n
      nodes[i] = ScoredNode(lo: Int32(lo), size: Int32(hi - lo), score: .nan)
    }
    // Scoring queries: every stride-q-th row of the block, packed transposed (Qᵀ [D][lanes]),
    // padded with copies of the last one so that the padding never changes a maximum.
    let nS = (r.rows.count + m.strideQ - 1) / m.strideQ
    let lanesS = (nS + 2 * laneWidth - 1) / (2 * laneWidth) * (2 * laneWidth)
    let vecS = lanesS / laneWidth
    let qt = scratch, st = qt + D * lanesS, maxes = st + 6 * lanesS
    let keyIndex = UnsafeMutableRawPointer(maxes + HiPPlan.scoreLanes).assumingMemoryBound(to: Int32.self)
    let kw = maxes + 2 * HiPPlan.scoreLanes  // six widened key rows
    for x in 0..<lanesS {
      let qr = raw.query(seq, h, r.rows.lowerBound + min(x, nS - 1) * m.strideQ)
      for d in 0..<D { qt[d * lanesS + x] = qr[d] }
    }
    let qtL = UnsafeMutableRawPointer(qt).assumingMemoryBound(to: Lane.self)
    let stL = UnsafeMutableRawPointer(st).assumingMemoryBound(to: Lane.self)
    let children = nodes + n  // children are built after the current nodes

    while true {
      // Branch.
      var nChildren = 0
      var split = false
      for i in 0..<count {
        let node = nodes[i]
        let size = Int(node.size)
        if size == 1 {
          children[nChildren] = node
          nChildren += 1
          continue
        }
        split = true
        let parts = min(m.branching, size)
        for c in 0..<parts {
          let lo = Int(node.lo) + c * size / parts, hi = Int(node.lo) + (c + 1) * size / parts
          children[nChildren] = ScoredNode(lo: Int32(lo), size: Int32(hi - lo), score: .nan)
          nChildren += 1
        }
      }
      if !split { break }
      // Score every child without a score by its centre block, in passes of up to `scoreLanes`
      // keys, read in place.
      var c = 0
      while c < nChildren {
        var rows = 0
        var cEnd = c
        while cEnd < nChildren {
          let node = children[cEnd]
          if !node.score.isNaN { cEnd += 1; continue }
          let keys = r.keys(ofBlock: Int(node.lo) + Int(node.size) / 2)
          if rows + keys.count > HiPPlan.scoreLanes { break }
          for j in keys {
            keyIndex[rows] = Int32(j)
            rows += 1
          }
          cEnd += 1
        }
        // maxes[j] = max over the scoring queries of q·k_j, six keys per tile.
        do {
          // Rows are scattered over the whole key range: prefetch two groups ahead so that
          // their cache misses overlap the tiles.
          for j in 0..<min(12, rows) { prefetchRow(keys16.row(seq, g, Int(keyIndex[j])), D) }
          var jt = 0
          while jt < rows {
            for j in stride(from: jt + 12, to: min(jt + 18, rows), by: 1) { prefetchRow(keys16.row(seq, g, Int(keyIndex[j])), D) }
            let last = rows - 1
            // Widen the six rows into a small Float32 tile, then score it.
            for t in 0..<6 { widenRow(kw + t * D, keys16.row(seq, g, Int(keyIndex[min(jt + t, last)])), D) }
            for x in stride(from: 0, to: vecS, by: 2) {
              AttentionTiles.qkTile2(kw, kw + D, kw + 2 * D, kw + 3 * D, kw + 4 * D, kw + 5 * D, depth: D, qt: qtL + x,
                                     qtStride: vecS, st: stL + x, stStride: vecS, rowMax: stL, updateMax: false)
            }
            for t in 0..<min(6, rows - jt) {
              var mx = stL[t * vecS]
              for x in 1..<vecS { mx = vmax(mx, stL[t * vecS + x]) }
              maxes[jt + t] = maxLanes(mx)
            }
            jt += 6
          }
        }
        // Child score: the maximum over its centre block's keys (NaN inputs rank last).
        var lane = 0
        for x in c..<cEnd where children[x].score.isNaN {
          let keys = r.keys(ofBlock: Int(children[x].lo) + Int(children[x].size) / 2)
          var sc = -Float.infinity
          for _ in keys {
            let v = maxes[lane]
            if v > sc { sc = v }
            lane += 1
          }
          children[x].score = sc
        }
        c = cEnd
      }
      // Prune to the n best children.
      selectTop(children, count: nChildren, n)
      count = min(n, nChildren)
      for i in 0..<count { nodes[i] = children[i] }
    }
    for i in 0..<count { selected.append(nodes[i].lo) }
    selected.sort()
  }

  func run(_ raw: RawAttention) {
    let keys16 = BF16Keys(raw)
    let D = p.headDim, Dv = p.valueDim
    let Hq = p.queryHeads
    // Work items: (sequence, head, block), head by head so that a head's keys stay in cache,
    // later (heavier) blocks first within a head.
    var items: [(seq: Int32, head: Int32, block: Int32)] = []
    for (si, seq) in p.sequences.enumerated() where seq.queryCount > 0 && seq.keyCount > 0 {
      let nb = (seq.queryCount + m.blockQ - 1) / m.blockQ
      for h in 0..<Hq {
        for b in stride(from: nb - 1, through: 0, by: -1) { items.append((Int32(si), Int32(h), Int32(b))) }
      }
    }
    let work = items
    let workers = Parallel.workers(for: work.count, threads: p.threads)
    let scratch = AlignedBuffer<Float>(count: workers * scratchFloats)
    let nodeCount = nodeCapacity
    let nodeBuffer = UnsafeMutablePointer<ScoredNode>.allocate(capacity: workers * nodeCount)
    defer { nodeBuffer.deallocate() }
    let sp = SendablePointer(scratch.pointer), np = SendablePointer(nodeBuffer)
    let sf = scratchFloats, kernel = self.kernel, selectFloats = self.selectFloats, gatherRows = self.gatherRows

    Parallel.forEach(work.count, threads: workers) { ii, worker in
      let item = work[ii]
      let seq = p.sequences[Int(item.seq)]
      let h = Int(item.head), g = p.kvHead(h)
      let r = regions(seq, block: Int(item.block))
      if r.rows.isEmpty { return }
      let s = sp.pointer + worker * sf
      var selected: [Int32] = []
      selected.reserveCapacity(nodeCount / (m.branching + 1))
      select(raw, keys16, seq, head: h, r, scratch: s + kernel.scratchFloats, nodes: np.pointer + worker * nodeCount, into: &selected)
      // Gather the selected blocks' keys and values (values after room for k keys).
      let kg = s + kernel.scratchFloats + selectFloats
      let vg = kg + gatherRows * D
      var count = 0
      for c in selected {
        for j in r.keys(ofBlock: Int(c)) {
          copyRow(kg + count * D, raw.key(seq, g, j), D)
          copyRow(vg + count * Dv, raw.value(seq, g, j), Dv)
          count += 1
        }
      }
      let off = seq.offset
      let q0 = r.rows.lowerBound
      let causal = p.causal
      let minLimit = kernel.begin(s, rows: r.rows.count, scale: p.scale, query: { raw.query(seq, h, q0 + $0) },
                                  limit: { causal ? q0 + $0 + off : Int.max })
      if r.sinkEnd > 0 {
        kernel.attend(s, k: raw.key(seq, g, 0), ldk: raw.ldk, v: raw.value(seq, g, 0), ldv: raw.ldv, count: r.sinkEnd,
                      positions: causal ? { $0 } : nil, minLimit: minLimit)
      }
      if count > 0 {
        kernel.attend(s, k: kg, ldk: D, v: vg, ldv: Dv, count: count, positions: nil, minLimit: minLimit)
      }
      let nLocal = r.localEnd - r.localStart
      if nLocal > 0 {
        let ls = r.localStart
        kernel.attend(s, k: raw.key(seq, g, ls), ldk: raw.ldk, v: raw.value(seq, g, ls), ldv: raw.ldv, count: nLocal,
                      positions: causal ? { ls + $0 } : nil, minLimit: minLimit)
      }
      kernel.finish(s, rows: r.rows.count, merge: false) { i in
        (raw.output(seq, h, q0 + i), raw.lseSlot(seq, h, q0 + i))
      }
    }
    withExtendedLifetime(scratch) {}
  }

  /// Sorted absolute key rows attended by sequence-local query row `i` of head `h`.
  func selectedKeys(_ raw: RawAttention, _ keys16: BF16Keys, _ cache: HiPSelectionCache, sequence si: Int, head h: Int, row i: Int) -> [Int] {
    let seq = p.sequences[si]
    if seq.keyCount == 0 { return [] }
    let block = i / m.blockQ
    let r = regions(seq, block: block)
    let key = [si, h, block]
    if cache.selected[key] == nil {
      let scratch = AlignedBuffer<Float>(count: selectFloats)
      let nodes = UnsafeMutablePointer<ScoredNode>.allocate(capacity: nodeCapacity)
      defer { nodes.deallocate() }
      var selected: [Int32] = []
      select(raw, keys16, seq, head: h, r, scratch: scratch.pointer, nodes: nodes, into: &selected)
      cache.selected[key] = selected
    }
    let limit = p.causal ? i + seq.offset : Int.max
    var keys: [Int] = []
    for j in 0..<r.sinkEnd where j <= limit { keys.append(j) }
    for c in cache.selected[key]! { for j in r.keys(ofBlock: Int(c)) { keys.append(j) } }
    for j in r.localStart..<r.localEnd where j <= limit { keys.append(j) }
    return keys.sorted().map { seq.keyStart + $0 }
  }
}

/// Selections a ``HiPAttention/selectedKeys`` request computed, keyed by (sequence, head, block).
final class HiPSelectionCache {
  var selected: [[Int]: [Int32]] = [:]
}
