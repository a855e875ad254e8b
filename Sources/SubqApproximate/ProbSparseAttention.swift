import Foundation
import SubqAttention
import SubqCore
import SubqKernels

/// Informer's ProbSparse self-attention: exact attention for the few queries with the most
/// peaked score distribution, the mean of the values for the rest.
///
/// Per sequence and query head (Zhou et al. 2021, §3.1; implemented from the paper and the
/// project's specification):
///
/// 1. `U = c·⌈ln Nk⌉` and `u = c·⌈ln Nq⌉` (each at least c, at most Nk and Nq), c = `factor`.
/// 2. **Sparsity measure.** For every query, `U` keys drawn uniformly with replacement give
///    `M(q) = max_t q·k_t − (1/U)·Σ_t q·k_t`, the paper's max-minus-mean (Informer's code divides
///    the sampled sum by Nk instead of U). The sample depends on the query positions and the
///    seed only, so all heads share it, as in Informer; unlike Informer, groups of 64
///    consecutive queries share one sample, which turns U scattered key reads per query into one
///    small matrix product per group.
/// 3. **Selection.** Non-causal: the u queries with the largest M. Causal: the queries are cut
///    into u consecutive chunks and each chunk keeps its query with the largest M, where M is
///    measured on keys visible to the chunk's first query (that sees any key). Informer ranks all
///    queries together even when causal, so whether query i is active depends on later keys; this
///    rule keeps the budget u and never looks ahead.
/// 4. **Active queries** get exact softmax attention over the keys they may see.
/// 5. **Lazy queries** get the mean of the values they may see: of all values (non-causal), or
///    the running mean `(1/(i+1))·Σ_{j≤i} v_j` (causal). Informer's code uses the unnormalized
///    running sum `Σ_{j≤i} v_j` there, whose scale grows with position; this implementation
///    divides by the count. Running sums are kept in Float64.
///
/// The output equals exact attention when u = Nq (every query active, e.g. a large `factor`).
/// A log-sum-exp is not defined for lazy queries, so ``AttentionOptions/returnLSE`` is rejected.
///
/// - Complexity: O(Nq·U·D) for the measure, O(u·Nk·D) for active queries, O(N·Dv) for lazy ones:
///   O(N·log N·D) for fixed c. Extra memory O(B·Hq·Nq).
public struct ProbSparseAttention: AttentionMethod {
  public static let info = MethodInfo(
    name: "probsparse",
    summary: "Informer ProbSparse: exact attention for the top c·ln N queries by sampled max-minus-mean score, the mean of the values for the rest",
    paper: "Zhou et al., Informer: Beyond Efficient Transformer for Long Sequence Time-Series Forecasting (AAAI 2021)",
    complexity: "O(N·c·log N·D) time, O(N) extra memory",
    isExact: false,
    parameters: [
      MethodParameter("factor", default: "5", "c: c·⌈ln Nk⌉ sampled keys per query, c·⌈ln Nq⌉ active queries"),
      MethodParameter("seed", default: "0", "seed of the key samples"),
    ],
    supportedFeatures: ["causal", "key-lengths", "varlen"])

  /// The factor c.
  public let factor: Int
  /// Seed of the key samples.
  public let seed: UInt64

  static let queryBlock = 64

  /// - Throws: ``SubqError/argument(op:name:value:reason:)`` for a factor out of range.
  public init(factor: Int = 5, seed: UInt64 = 0) throws(SubqError) {
    guard (1...(1 << 20)).contains(factor) else {
      throw .argument(op: "attention.probsparse", name: "factor", value: "\(factor)", reason: "must be in 1...\(1 << 20)")
    }
    self.factor = factor
    self.seed = seed
  }

  public init(parameters: MethodParameters) throws(SubqError) {
    let i = Self.info
    try parameters.validate(for: i)
    try self.init(factor: parameters.int("factor", i), seed: parameters.seed("seed", i))
  }

  public var parameterValues: [String: String] { ["factor": "\(factor)", "seed": "\(seed)"] }

  /// `c·⌈ln n⌉`, at least c, at most n.
  func budget(_ n: Int) -> Int {
    if n <= 0 { return 0 }
    let l = max(1, Int(Foundation.log(Double(n)).rounded(.up)))
    let (v, overflow) = factor.multipliedReportingOverflow(by: l)
    return overflow ? n : min(v, n)
  }

  public func attention(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions) throws(SubqError) -> AttentionResult {
    let op = "attention.probsparse"
    let p = try AttentionProblem.validate(op: op, queries: queries, keys: keys, values: values, options: options)
    try Self.info.check(options)
    if options.returnLSE {
      throw .unsupported(op: op, feature: "log-sum-exp", reason: "lazy queries output the mean of the values, which has no log-sum-exp")
    }
    let plan = ProbSparsePlan(p, self)
    return RawAttention.run(p, queries: queries, keys: keys, values: values) { raw in plan.run(raw) }
  }

  /// The query rows that get exact attention, per (batch, head) for non-varlen inputs or per
  /// (sequence, head), as tensor rows sorted ascending: `result[s][h]`.
  public func activeQueries(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions) throws(SubqError) -> [[[Int]]] {
    let p = try AttentionProblem.validate(op: "attention.probsparse", queries: queries, keys: keys, values: values, options: options)
    try Self.info.check(options)
    let plan = ProbSparsePlan(p, self)
    return queries.withUnsafeBufferPointer { qb in
      keys.withUnsafeBufferPointer { kb in
        values.withUnsafeBufferPointer { vb in
          let none = AlignedBuffer<Float>(count: 2)
          let raw = RawAttention(p, q: qb.baseAddress!, k: kb.baseAddress!, v: vb.baseAddress!, out: none.pointer, lse: none.pointer + 1)
          let active = plan.selectActive(raw)
          return p.sequences.indices.map { si in
            (0..<p.queryHeads).map { h in active[si * p.queryHeads + h].map { p.sequences[si].queryStart + Int($0) } }
          }
        }
      }
    }
  }
}

struct ProbSparsePlan: Sendable {
  let p: AttentionProblem
  let m: ProbSparseAttention

  init(_ p: AttentionProblem, _ m: ProbSparseAttention) {
    self.p = p
    self.m = m
  }

  /// Keys query `i` of `seq` may see: `0..<visible(i)`.
  @inline(__always) func visible(_ seq: AttentionSequence, _ i: Int) -> Int {
    p.causal ? min(max(i + seq.offset + 1, 0), seq.keyCount) : seq.keyCount
  }

  /// The chunks of causal selection: `u` consecutive query ranges.
  func chunk(_ seq: AttentionSequence, _ c: Int, of u: Int) -> Range<Int> {
    (c * seq.queryCount / u)..<((c + 1) * seq.queryCount / u)
  }

  /// Query groups sharing one key sample, with the number of keys it is drawn from (from
  /// `0..<range`): runs of up to `groupSize` queries, inside one causal chunk when causal, where
  /// `range` is what the chunk's first query that sees a key can see.
  func sampleGroups(_ seq: AttentionSequence) -> [(rows: Range<Int>, range: Int)] {
    let G = ProbSparsePlan.groupSize
    var groups: [(rows: Range<Int>, range: Int)] = []
    if !p.causal {
      for a in stride(from: 0, to: seq.queryCount, by: G) { groups.append((a..<min(a + G, seq.queryCount), seq.keyCount)) }
      return groups
    }
    let u = m.budget(seq.queryCount)
    for c in 0..<u {
      let ch = chunk(seq, c, of: u)
      let first = max(ch.lowerBound, -seq.offset)
      let range = first < ch.upperBound ? visible(seq, first) : 0
      for a in stride(from: ch.lowerBound, to: ch.upperBound, by: G) { groups.append((a..<min(a + G, ch.upperBound), range)) }
    }
    return groups
  }

  /// Queries per shared key sample.
  static let groupSize = 64
  /// Sampled keys gathered at a time.
  static let sampleRows = 384

  /// The sparsity measure of every query row, `[sequence][head][row]` flattened (−∞ for rows
  /// that see no key).
  ///
  /// The queries of a group share one sample of U keys (Informer draws one per query); each
  /// query's M is still the max-minus-mean of its scores over U uniform keys, and sharing turns
  /// U scattered key reads per query into a small matrix product per group.
  func measure(_ raw: RawAttention) -> [Float] {
    let Hq = p.queryHeads
    var offsets: [Int] = []
    var total = 0
    for seq in p.sequences { offsets.append(total); total += seq.queryCount * Hq }
    var result = [Float](repeating: -.infinity, count: total)
    var tasks: [(seq: Int32, head: Int32, rows: Range<Int>, range: Int)] = []
    for (si, seq) in p.sequences.enumerated() where seq.keyCount > 0 {
      let groups = sampleGroups(seq)
      for h in 0..<Hq { for gr in groups where gr.range > 0 { tasks.append((Int32(si), Int32(h), gr.rows, gr.range)) } }
    }
    let work = tasks, offs = offsets
    let D = p.headDim
    let G = ProbSparsePlan.groupSize, R = ProbSparsePlan.sampleRows
    let lanes = G / laneWidth, TV = tileVectors
    let scratchFloats = Parallel.scratchStride(floats: D * G + 6 * G + 2 * G + R * D + 64)
    let workers = Parallel.workers(for: work.count, threads: p.threads)
    let scratch = AlignedBuffer<Float>(count: workers * scratchFloats)
    let sp = SendablePointer(scratch.pointer)
    result.withUnsafeMutableBufferPointer { rb in
      let out = SendablePointer(rb.baseAddress!)
      Parallel.forEach(work.count, threads: workers) { ti, worker in
        let (si, h, rows, range) = (Int(work[ti].seq), Int(work[ti].head), work[ti].rows, work[ti].range)
        let seq = p.sequences[si]
        let g = p.kvHead(h)
        let U = m.budget(seq.keyCount)
        let qt = sp.pointer + worker * scratchFloats, st = qt + D * G, acc = st + 6 * G, kb = acc + 2 * G
        let qtL = UnsafeMutableRawPointer(qt).assumingMemoryBound(to: Lane.self)
        let stL = UnsafeMutableRawPointer(st).assumingMemoryBound(to: Lane.self)
        let mx = UnsafeMutableRawPointer(acc).assumingMemoryBound(to: Lane.self), sm = mx + lanes
        for x in 0..<G {
          if x < rows.count {
            let qr = raw.query(seq, h, rows.lowerBound + x)
            for d in 0..<D { qt[d * G + x] = qr[d] }
          } else {
            for d in 0..<D { qt[d * G + x] = 0 }
          }
        }
        for x in 0..<lanes {
          mx[x] = Lane(repeating: -.infinity)
          sm[x] = Lane()
        }
        var gen = SeededGenerator(seed: mixSeed(m.seed, si, rows.lowerBound))
        var done = 0
        while done < U {
          let n = min(R, U - done)
          for j in 0..<n { copyRow(kb + j * D, raw.key(seq, g, uniformIndex(range, &gen)), D) }
          var jt = 0
          while jt < n {
            let last = n - 1
            let k0 = kb + min(jt, last) * D, k1 = kb + min(jt + 1, last) * D, k2 = kb + min(jt + 2, last) * D
            let k3 = kb + min(jt + 3, last) * D, k4 = kb + min(jt + 4, last) * D, k5 = kb + min(jt + 5, last) * D
            for t in stride(from: 0, to: lanes, by: TV) {
              AttentionTiles.qkTile(k0, k1, k2, k3, k4, k5, depth: D, qt: qtL + t, qtStride: lanes,
                                    st: stL + t, stStride: lanes, rowMax: mx + t, updateMax: false)
            }
            for r in 0..<min(6, n - jt) {
              for x in 0..<lanes {
                let v = stL[r * lanes + x]
                mx[x] = vmax(mx[x], v)
                sm[x] += v
              }
            }
            jt += 6
          }
          done += n
        }
        let base = out.pointer + offs[si] + h * seq.queryCount
        let mxF = UnsafeMutableRawPointer(mx).assumingMemoryBound(to: Float.self)
        let smF = UnsafeMutableRawPointer(sm).assumingMemoryBound(to: Float.self)
        for x in 0..<rows.count {
          let i = rows.lowerBound + x
          let v = mxF[x] - smF[x] / Float(U)
          base[i] = visible(seq, i) == 0 || v.isNaN ? -.infinity : v
        }
      }
    }
    withExtendedLifetime(scratch) {}
    return result
  }

  /// Active query rows (sequence-local, ascending) per `sequence · Hq + head`.
  func selectActive(_ raw: RawAttention) -> [[Int32]] {
    let Hq = p.queryHeads
    let M = measure(raw)
    var active: [[Int32]] = []
    var offset = 0
    for seq in p.sequences {
      let nq = seq.queryCount
      let u = m.budget(nq)
      for h in 0..<Hq {
        let base = offset + h * nq
        var rows: [Int32] = []
        if seq.keyCount > 0 && u > 0 {
          if !p.causal {
            var nodes = (0..<nq).map { ScoredNode(lo: Int32($0), size: 1, score: M[base + $0]) }
            nodes.withUnsafeMutableBufferPointer { selectTop($0.baseAddress!, count: nq, u) }
            rows = nodes.prefix(u).map(\.lo)
          } else {
            for c in 0..<u {
              var best: ScoredNode? = nil
              for i in chunk(seq, c, of: u) where visible(seq, i) > 0 {
                let n = ScoredNode(lo: Int32(i), size: 1, score: M[base + i])
                if best == nil || ScoredNode.precedes(n, best!) { best = n }
              }
              if let best { rows.append(best.lo) }
            }
          }
        }
        rows.sort()
        active.append(rows)
      }
      offset += nq * Hq
    }
    return active
  }

  func run(_ raw: RawAttention) {
    let Hq = p.queryHeads, Hkv = p.keyValueHeads, Dv = p.valueDim
    let active = selectActive(raw)

    // Active queries: exact attention, in blocks of consecutive active rows.
    let QB = ProbSparseAttention.queryBlock
    var items: [(seq: Int32, head: Int32, start: Int32)] = []
    for (si, _) in p.sequences.enumerated() {
      for h in 0..<Hq {
        for s in stride(from: 0, to: active[si * Hq + h].count, by: QB) { items.append((Int32(si), Int32(h), Int32(s))) }
      }
    }
    let work = items
    let kernel = SubsetKernel(headDim: p.headDim, valueDim: Dv, rows: QB)
    let workers = Parallel.workers(for: work.count, threads: p.threads)
    let scratch = AlignedBuffer<Float>(count: workers * kernel.scratchFloats)
    let sp = SendablePointer(scratch.pointer)
    Parallel.forEach(work.count, threads: workers) { ii, worker in
      let (si, h, start) = (Int(work[ii].seq), Int(work[ii].head), Int(work[ii].start))
      let seq = p.sequences[si]
      let g = p.kvHead(h)
      let rows = active[si * Hq + h]
      let n = min(QB, rows.count - start)
      let s = sp.pointer + worker * kernel.scratchFloats
      var keys = 0
      for x in 0..<n { keys = max(keys, visible(seq, Int(rows[start + x]))) }
      if keys == 0 { return }
      let off = seq.offset, causal = p.causal
      let minLimit = kernel.begin(s, rows: n, scale: p.scale, query: { raw.query(seq, h, Int(rows[start + $0])) },
                                  limit: { causal ? Int(rows[start + $0]) + off : Int.max })
      kernel.attend(s, k: raw.key(seq, g, 0), ldk: raw.ldk, v: raw.value(seq, g, 0), ldv: raw.ldv, count: keys,
                    positions: causal ? { $0 } : nil, minLimit: minLimit)
      kernel.finish(s, rows: n, merge: false) { i in
        let r = Int(rows[start + i])
        return (raw.output(seq, h, r), raw.lseSlot(seq, h, r))
      }
    }
    withExtendedLifetime(scratch) {}

    // Lazy queries: the (running) mean of the visible values, per key/value head.
    var lazyTasks: [(seq: Int, head: Int)] = []
    for (si, seq) in p.sequences.enumerated() where seq.keyCount > 0 {
      for g in 0..<Hkv { lazyTasks.append((si, g)) }
    }
    let lazy = lazyTasks
    let group = p.groupSize
    Parallel.forEach(lazy.count, threads: p.threads) { ti, _ in
      let (si, g) = lazy[ti]
      let seq = p.sequences[si]
      var sum = [Double](repeating: 0, count: Dv)
      var seen = 0
      // Per query head of the group: its active rows, to skip them.
      let actives = (0..<group).map { Set(active[si * Hq + g * group + $0]) }
      for i in 0..<seq.queryCount {
        let n = visible(seq, i)
        while seen < n {
          let vr = raw.value(seq, g, seen)
          for c in 0..<Dv { sum[c] += Double(vr[c]) }
          seen += 1
        }
        if n == 0 { continue }
        let inv = 1 / Double(n)
        for x in 0..<group where !actives[x].contains(Int32(i)) {
          let h = g * group + x
          let o = raw.output(seq, h, i)
          for c in 0..<Dv { o[c] = Float(sum[c] * inv) }
        }
      }
    }
  }
}
