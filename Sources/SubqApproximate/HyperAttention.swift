import Foundation
import SubqAttention
import SubqCore
import SubqKernels

/// HyperAttention: near-linear approximate attention by sortLSH and uniform sampling.
///
/// **Non-causal part** (queries Q, keys K, all visible; Han et al. 2024, Alg. 2–3 as the authors'
/// code implements them):
///
/// 1. Hash queries and keys with an angular LSH of `projections` hyperplanes (``SortLSH``) and sort
///    each stably by bucket.
/// 2. Cut the sorted keys into `nb = ⌈Nk/block⌉` blocks of `block` keys (the last one shorter) and
///    the sorted queries into `nb` nearly equal groups; query group t attends *exactly* to key
///    block t.
/// 3. Draw `samples` = m key positions uniformly with replacement from all Nk keys (one draw per
///    part and head). Query group t also attends to the samples that fall outside key block t,
///    each counted Nk/m times, so the residual `Σ_{j∉block} e^{s_j}v_j` is estimated without bias
///    and no key is counted twice. This equals the paper's merge of the two partial results,
///    `c = 1/(1 + e^{lse_res + log(Nk/m) − lse_blk})`, in one online softmax.
/// 4. Parts with fewer than `min-length` queries, or at most `block` keys, are computed exactly.
///
/// **Causal** attention uses the paper's recursion: the square causal region of length n > `min-length`
/// splits into two causal halves (recursing) and the off-diagonal rectangle (second-half queries ×
/// first-half keys, fully visible), computed with the non-causal algorithm; diagonal blocks of
/// length ≤ `min-length` run exact ``FlashAttention``. The parts of each query row are merged by
/// their log-sum-exp (``LSEMerge``). When Nq ≠ Nk the keys every query sees (bottom-right
/// alignment: the first Nk − Nq) form one more non-causal part, and queries that see every key
/// (top-left alignment, Nq > Nk) another. Every part of query i reads only keys it may see, so
/// changing keys after position i never changes row i.
///
/// The result is exact when `block` ≥ Nk (every part is one block; the samples all fall inside it
/// and are dropped), and when `min-length` ≥ N with causal masking.
///
/// Differences from the authors' code, on purpose:
/// - The last key block is short instead of zero-padded: the code pads sorted K/V with zero rows,
///   which still receive probability mass `e^{0 − max}`.
/// - Buckets are ordered by the inverse Gray code (see ``SortLSH``).
/// - Sampled keys inside a query's own block are always excluded (the code's CUDA path does not).
/// - A query group whose samples all fall in its own block gets only the block part (the code's
///   merge weight c = 1 case), never NaN.
/// - Odd lengths split into unequal halves instead of padding a zero row.
/// - The hash planes and samples come from `seed`, so runs are reproducible; the code draws
///   samples with `torch.randint` on every call.
///
/// Log-sum-exp: the estimate `log(Σ_block e^s + (Nk/m)·Σ_samples e^s)` summed over the parts.
///
/// - Complexity: non-causal O(N·(block + samples)·D + N·r·D) time; causal
///   O(N·(block + samples)·D·log₂(N/min-length) + N·min-length·D). Extra memory O(B·H·N) indices
///   plus O(threads·(block + samples)·D) scratch.
public struct HyperAttention: KeySelectingMethod {
  public static let info = MethodInfo(
    name: "hyper",
    summary: "HyperAttention: sortLSH block-diagonal attention plus uniformly sampled residual keys; causal by recursive halving",
    paper: "Han, Jayaram, Karbasi, Mirrokni, Woodruff, Zandieh, HyperAttention: Long-context Attention in Near-Linear Time (ICLR 2024)",
    complexity: "O(N·(block+samples)·D·log(N/min-length) + N·min-length·D) causal, O(N·(block+samples)·D) non-causal; O(N) extra memory",
    isExact: false,
    parameters: [
      MethodParameter("projections", default: "7", "LSH hyperplanes r (2^r buckets), 1...16"),
      MethodParameter("block", default: "256", "keys per block of the block-diagonal part (in hash order)"),
      MethodParameter("samples", default: "256", "uniformly sampled residual keys per part and head (0: none)"),
      MethodParameter("min-length", default: "4096", "exact below this many queries; causal diagonal blocks up to this length run flash"),
      MethodParameter("seed", default: "0", "seed of the hash hyperplanes and the samples"),
    ],
    supportedFeatures: ["causal", "key-lengths", "varlen"])

  /// LSH hyperplanes r.
  public let projections: Int
  /// Keys per diagonal block.
  public let blockSize: Int
  /// Sampled residual keys per part and head.
  public let sampleSize: Int
  /// Length below which parts are exact (and up to which causal diagonal blocks are exact).
  public let minLength: Int
  /// Seed of the hyperplanes and samples.
  public let seed: UInt64

  /// Query rows per kernel block.
  static let queryBlock = 64

  /// - Throws: ``SubqError/argument(op:name:value:reason:)`` for a parameter out of range.
  public init(projections: Int = 7, blockSize: Int = 256, sampleSize: Int = 256, minLength: Int = 4096, seed: UInt64 = 0) throws(SubqError) {
    let op = "attention.hyper"
    guard (1...16).contains(projections) else {
      throw .argument(op: op, name: "projections", value: "\(projections)", reason: "must be in 1...16")
    }
    guard (1...(1 << 24)).contains(blockSize) else {
      throw .argument(op: op, name: "block", value: "\(blockSize)", reason: "must be in 1...\(1 << 24)")
    }
    guard (0...(1 << 24)).contains(sampleSize) else {
      throw .argument(op: op, name: "samples", value: "\(sampleSize)", reason: "must be in 0...\(1 << 24)")
    }
    guard (1...(1 << 30)).contains(minLength) else {
      throw .argument(op: op, name: "min-length", value: "\(minLength)", reason: "must be in 1...\(1 << 30)")
    }
    self.projections = projections
    self.blockSize = blockSize
    self.sampleSize = sampleSize
    self.minLength = minLength
    self.seed = seed
  }

  public init(parameters: MethodParameters) throws(SubqError) {
    let i = Self.info
    try parameters.validate(for: i)
    try self.init(
      projections: parameters.int("projections", i), blockSize: parameters.int("block", i),
      sampleSize: parameters.int("samples", i), minLength: parameters.int("min-length", i),
      seed: parameters.seed("seed", i))
  }

  public var parameterValues: [String: String] {
    ["projections": "\(projections)", "block": "\(blockSize)", "samples": "\(sampleSize)",
     "min-length": "\(minLength)", "seed": "\(seed)"]
  }

  public func attention(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions) throws(SubqError) -> AttentionResult {
    let p = try AttentionProblem.validate(op: "attention.hyper", queries: queries, keys: keys, values: values, options: options)
    try Self.info.check(options)
    let plan = HyperPlan(p, self)
    return RawAttention.run(p, queries: queries, keys: keys, values: values) { raw in plan.run(raw) }
  }

  /// The keys each row attends to: its exact diagonal block (causal), and in every approximate
  /// part its hash block plus the samples outside it; all keys of exact parts.
  public func selectedKeys(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions, rows: [QueryRow]) throws(SubqError) -> [[Int]] {
    let p = try AttentionProblem.validate(op: "attention.hyper", queries: queries, keys: keys, values: values, options: options)
    try Self.info.check(options)
    let plan = HyperPlan(p, self)
    return try RawAttention.selection(p, queries: queries, keys: keys, values: values, rows: rows) { raw in
      let cache = HyperSelectionCache()
      return { si, h, i in plan.selectedKeys(raw, cache, sequence: si, head: h, row: i) }
    }
  }
}

/// A rectangle computed with the non-causal algorithm: query rows `q0..<q0+nq` of sequence `seq`
/// against keys `k0..<k0+nk` (sequence-local), every key visible to every query.
struct HyperPart: Sendable {
  var seq: Int
  var q0: Int, nq: Int
  var k0: Int, nk: Int
}

/// The decomposition of one call into exact diagonal blocks and non-causal parts.
struct HyperPlan: Sendable {
  let p: AttentionProblem
  let m: HyperAttention
  let lsh: SortLSH
  /// Exact causal diagonal blocks (absolute rows), run by flash first.
  var leaves: [AttentionSequence] = []
  /// Non-causal parts; parts in one group cover disjoint query rows, so a group runs in parallel.
  var groups: [[HyperPart]] = []

  init(_ p: AttentionProblem, _ m: HyperAttention) {
    self.p = p
    self.m = m
    lsh = SortLSH(projections: m.projections, dim: p.headDim, seed: m.seed)
    for (si, seq) in p.sequences.enumerated() {
      let nq = seq.queryCount, nk = seq.keyCount
      if nq == 0 || nk == 0 { continue }
      if !p.causal {
        add(HyperPart(seq: si, q0: 0, nq: nq, k0: 0, nk: nk), group: 0)
        continue
      }
      // Query i sees keys j ≤ i + off. The square [qa, qa+L) × [ka, ka+L) is causal; keys before
      // ka are seen by all of its queries; queries after it see every key; queries before qa none.
      let off = seq.offset
      let qa = max(0, -off), ka = max(0, off)
      let L = min(nq - qa, nk - ka)
      if L <= 0 { continue }
      if ka > 0 { add(HyperPart(seq: si, q0: qa, nq: L, k0: 0, nk: ka), group: 0) }
      if qa + L < nq { add(HyperPart(seq: si, q0: qa + L, nq: nq - qa - L, k0: 0, nk: nk), group: 0) }
      recurse(seq, si, q0: qa, k0: ka, n: L, depth: 1)
    }
  }

  private mutating func add(_ part: HyperPart, group: Int) {
    while groups.count <= group { groups.append([]) }
    groups[group].append(part)
  }

  private mutating func recurse(_ seq: AttentionSequence, _ si: Int, q0: Int, k0: Int, n: Int, depth: Int) {
    if n <= m.minLength {
      leaves.append(AttentionSequence(batch: seq.batch, queries: (seq.queryStart + q0)..<(seq.queryStart + q0 + n),
                                      keys: (seq.keyStart + k0)..<(seq.keyStart + k0 + n), offset: 0))
      return
    }
    let h1 = n / 2
    recurse(seq, si, q0: q0, k0: k0, n: h1, depth: depth + 1)
    recurse(seq, si, q0: q0 + h1, k0: k0 + h1, n: n - h1, depth: depth + 1)
    add(HyperPart(seq: si, q0: q0 + h1, nq: n - h1, k0: k0, nk: h1), group: depth)
  }

  /// Key blocks per work item: they share one gather of the part's samples.
  static let blocksPerItem = 8

  /// Whether a part uses hashing and sampling (otherwise it is exact).
  func isApproximate(_ part: HyperPart) -> Bool { part.nq >= m.minLength && part.nk > m.blockSize }
  func blockCount(_ part: HyperPart) -> Int { (part.nk + m.blockSize - 1) / m.blockSize }
  /// Query rows of group t in hash order: `[t·nq/nb, (t+1)·nq/nb)`.
  func queryRange(_ part: HyperPart, _ t: Int) -> Range<Int> {
    let nb = blockCount(part)
    return (t * part.nq / nb)..<((t + 1) * part.nq / nb)
  }
  func keyRange(_ part: HyperPart, _ t: Int) -> Range<Int> {
    (t * m.blockSize)..<min((t + 1) * m.blockSize, part.nk)
  }

  /// Sorts a part's queries and keys by hash and draws its samples (sorted) for head `h`.
  func prepare(
    _ raw: RawAttention, _ part: HyperPart, group: Int, index: Int, head h: Int,
    queryCode: (Int) -> UInt16, keyCode: (Int) -> UInt16,
    permQ: UnsafeMutablePointer<Int32>, permK: UnsafeMutablePointer<Int32>, samples: UnsafeMutablePointer<Int32>
  ) {
    sortByCode(part.nq, buckets: lsh.buckets, into: permQ, queryCode)
    sortByCode(part.nk, buckets: lsh.buckets, into: permK, keyCode)
    let s = m.sampleSize
    if s > 0 {
      var g = SeededGenerator(seed: mixSeed(m.seed, group, index, h))
      for i in 0..<s { samples[i] = Int32(uniformIndex(part.nk, &g)) }
      var buffer = UnsafeMutableBufferPointer(start: samples, count: s)
      buffer.sort()
    }
  }

  func run(_ raw: RawAttention) {
    let threads = p.threads
    let Hq = p.queryHeads, Hkv = p.keyValueHeads
    let D = p.headDim, Dv = p.valueDim

    // 1. Exact diagonal blocks (they write their rows; every later part merges into them).
    if !leaves.isEmpty {
      let flash = try! FlashAttention()
      flash.forward(p.restricted(to: leaves, returnLSE: true), q: raw.q, k: raw.k, v: raw.v, out: raw.out,
                    lse: raw.lse, emptyRowLSE: -.infinity)
    }
    let anyApproximate = groups.contains { $0.contains(where: isApproximate) }

    // 2. Hash codes of every query and key row (one set of hyperplanes for all heads and parts).
    let qCodes = AlignedBuffer<UInt16>(count: anyApproximate ? p.batch * Hq * p.queryLength : 0)
    let kCodes = AlignedBuffer<UInt16>(count: anyApproximate ? p.batch * Hkv * p.keyLength : 0)
    let qc = SendablePointer(qCodes.pointer), kc = SendablePointer(kCodes.pointer)
    if anyApproximate {
      let chunk = 2048
      var tasks: [(seq: Int, head: Int, isKey: Bool, start: Int)] = []
      for (si, seq) in p.sequences.enumerated() {
        for h in 0..<Hq { for s in stride(from: 0, to: seq.queryCount, by: chunk) { tasks.append((si, h, false, s)) } }
        for g in 0..<Hkv { for s in stride(from: 0, to: seq.keyCount, by: chunk) { tasks.append((si, g, true, s)) } }
      }
      let lsh = self.lsh
      let taskList = tasks
      Parallel.forEach(taskList.count, threads: threads) { ti, _ in
        let t = taskList[ti]
        let seq = p.sequences[t.seq]
        if t.isKey {
          let base = (seq.batch * Hkv + t.head) * p.keyLength + seq.keyStart
          for j in t.start..<min(t.start + chunk, seq.keyCount) { kc.pointer[base + j] = lsh.code(raw.key(seq, t.head, j)) }
        } else {
          let base = (seq.batch * Hq + t.head) * p.queryLength + seq.queryStart
          for i in t.start..<min(t.start + chunk, seq.queryCount) { qc.pointer[base + i] = lsh.code(raw.query(seq, t.head, i)) }
        }
      }
    }

    // 3. The non-causal parts, group by group.
    let maxKeys = p.sequences.map(\.keyCount).max() ?? 0
    let blockRows = min(m.blockSize, maxKeys)
    let kernel = SubsetKernel(headDim: D, valueDim: Dv, rows: HyperAttention.queryBlock)
    let scratchFloats = Parallel.scratchStride(floats: kernel.scratchFloats + (blockRows + m.sampleSize) * (D + Dv) + 64)
    let blocksPerItem = HyperPlan.blocksPerItem
    let workers = threads
    let scratch = AlignedBuffer<Float>(count: workers * scratchFloats)
    let sp = SendablePointer(scratch.pointer)
    let exactChunk = 4 * HyperAttention.queryBlock
    let S = m.sampleSize

    for (gi, parts) in groups.enumerated() where !parts.isEmpty {
      // Offsets of each (part, head) in the permutation and sample buffers.
      var qOff = [Int](repeating: 0, count: parts.count * Hq)
      var kOff = qOff, sOff = qOff
      var tq = 0, tk = 0, ts = 0
      var sortTasks: [(part: Int, head: Int)] = []
      var items: [(part: Int32, head: Int32, block: Int32)] = []
      for (pi, part) in parts.enumerated() {
        let approx = isApproximate(part)
        for h in 0..<Hq {
          if approx {
            qOff[pi * Hq + h] = tq; tq += part.nq
            kOff[pi * Hq + h] = tk; tk += part.nk
            sOff[pi * Hq + h] = ts; ts += S
            sortTasks.append((pi, h))
          }
          // Approximate: runs of key blocks sharing one gather of the samples.
          let n = approx ? (blockCount(part) + blocksPerItem - 1) / blocksPerItem : (part.nq + exactChunk - 1) / exactChunk
          for t in 0..<n { items.append((Int32(pi), Int32(h), Int32(t))) }
        }
      }
      let permQ = AlignedBuffer<Int32>(count: tq), permK = AlignedBuffer<Int32>(count: tk), samp = AlignedBuffer<Int32>(count: ts)
      let pq = SendablePointer(permQ.pointer), pk = SendablePointer(permK.pointer), ps = SendablePointer(samp.pointer)
      let (qOffs, kOffs, sOffs) = (qOff, kOff, sOff)
      let sorts = sortTasks, work = items

      Parallel.forEach(sorts.count, threads: threads) { ti, _ in
        let (pi, h) = sorts[ti]
        let part = parts[pi]
        let seq = p.sequences[part.seq]
        let g = p.kvHead(h)
        let qBase = (seq.batch * Hq + h) * p.queryLength + seq.queryStart + part.q0
        let kBase = (seq.batch * Hkv + g) * p.keyLength + seq.keyStart + part.k0
        let slot = pi * Hq + h
        prepare(raw, part, group: gi, index: pi, head: h,
                queryCode: { qc.pointer[qBase + $0] }, keyCode: { kc.pointer[kBase + $0] },
                permQ: pq.pointer + qOffs[slot], permK: pk.pointer + kOffs[slot], samples: ps.pointer + sOffs[slot])
      }

      Parallel.forEach(work.count, threads: workers) { ii, worker in
        let item = work[ii]
        let pi = Int(item.part), h = Int(item.head), t = Int(item.block)
        let part = parts[pi]
        let seq = p.sequences[part.seq]
        let g = p.kvHead(h)
        let s = sp.pointer + worker * scratchFloats
        let QB = HyperAttention.queryBlock
        if !isApproximate(part) {
          // Exact: contiguous queries against every key of the part.
          let qs = t * exactChunk, qe = min(qs + exactChunk, part.nq)
          for sb in stride(from: qs, to: qe, by: QB) {
            let rows = min(QB, qe - sb)
            _ = kernel.begin(s, rows: rows, scale: p.scale, query: { raw.query(seq, h, part.q0 + sb + $0) }, limit: { _ in 0 })
            kernel.attend(s, k: raw.key(seq, g, part.k0), ldk: raw.ldk, v: raw.value(seq, g, part.k0), ldv: raw.ldv,
                          count: part.nk, positions: nil, minLimit: 0)
            kernel.finish(s, rows: rows, merge: true) { i in
              (raw.output(seq, h, part.q0 + sb + i), raw.lseSlot(seq, h, part.q0 + sb + i))
            }
          }
          return
        }
        let slot = pi * Hq + h
        let permq = pq.pointer + qOffs[slot], permk = pk.pointer + kOffs[slot], smp = ps.pointer + sOffs[slot]
        // Scratch: the block's keys and values, then the part's samples (in sample order, so the
        // samples of key block t are one contiguous range).
        let kg = s + kernel.scratchFloats
        let vg = kg + blockRows * D
        let ks = vg + blockRows * Dv
        let vs = ks + S * D
        for x in 0..<S {
          let key = part.k0 + Int(permk[Int(smp[x])])
          copyRow(ks + x * D, raw.key(seq, g, key), D)
          copyRow(vs + x * Dv, raw.value(seq, g, key), Dv)
        }
        let weight = Float(Double(part.nk) / Double(max(S, 1)))
        for t in (t * blocksPerItem)..<min((t + 1) * blocksPerItem, blockCount(part)) {
          let qr = queryRange(part, t)
          if qr.isEmpty { continue }
          let kr = keyRange(part, t)
          let nBlock = kr.count
          for j in 0..<nBlock {
            let key = part.k0 + Int(permk[kr.lowerBound + j])
            copyRow(kg + j * D, raw.key(seq, g, key), D)
            copyRow(vg + j * Dv, raw.value(seq, g, key), Dv)
          }
          // Samples outside the block: [0, lo) and [hi, S).
          let lo = S > 0 ? lowerBound(smp, S, kr.lowerBound) : 0
          let hi = S > 0 ? lowerBound(smp, S, kr.upperBound) : 0
          for sb in stride(from: qr.lowerBound, to: qr.upperBound, by: QB) {
            let rows = min(QB, qr.upperBound - sb)
            _ = kernel.begin(s, rows: rows, scale: p.scale, query: { raw.query(seq, h, part.q0 + Int(permq[sb + $0])) }, limit: { _ in 0 })
            kernel.attend(s, k: kg, ldk: D, v: vg, ldv: Dv, count: nBlock, positions: nil, minLimit: 0)
            if lo > 0 {
              kernel.attend(s, k: ks, ldk: D, v: vs, ldv: Dv, count: lo, positions: nil, minLimit: 0, weight: weight)
            }
            if hi < S {
              kernel.attend(s, k: ks + hi * D, ldk: D, v: vs + hi * Dv, ldv: Dv, count: S - hi, positions: nil,
                            minLimit: 0, weight: weight)
            }
            kernel.finish(s, rows: rows, merge: true) { i in
              let row = part.q0 + Int(permq[sb + i])
              return (raw.output(seq, h, row), raw.lseSlot(seq, h, row))
            }
          }
        }
      }
      withExtendedLifetime(permQ) {}
      withExtendedLifetime(permK) {}
      withExtendedLifetime(samp) {}
    }
    withExtendedLifetime(qCodes) {}
    withExtendedLifetime(kCodes) {}
    withExtendedLifetime(scratch) {}
  }

  /// Sorted absolute key rows attended by sequence-local query row `i` of head `h`.
  func selectedKeys(_ raw: RawAttention, _ cache: HyperSelectionCache, sequence si: Int, head h: Int, row i: Int) -> [Int] {
    let seq = p.sequences[si]
    let g = p.kvHead(h)
    var keys = Set<Int>()
    for leaf in leaves where leaf.batch == seq.batch && seq.queryStart + i >= leaf.queryStart
      && seq.queryStart + i < leaf.queryStart + leaf.queryCount {
      let local = seq.queryStart + i - leaf.queryStart
      for j in 0...local { keys.insert(leaf.keyStart + j) }
    }
    for (gi, parts) in groups.enumerated() {
      for (pi, part) in parts.enumerated() where part.seq == si && i >= part.q0 && i < part.q0 + part.nq {
        if !isApproximate(part) {
          for j in 0..<part.nk { keys.insert(seq.keyStart + part.k0 + j) }
          continue
        }
        let key = [gi, pi, h]
        if cache.parts[key] == nil {
          var permQ = [Int32](repeating: 0, count: part.nq), permK = [Int32](repeating: 0, count: part.nk)
          var samples = [Int32](repeating: 0, count: m.sampleSize)
          let qCodes = (0..<part.nq).map { lsh.code(raw.query(seq, h, part.q0 + $0)) }
          let kCodes = (0..<part.nk).map { lsh.code(raw.key(seq, g, part.k0 + $0)) }
          permQ.withUnsafeMutableBufferPointer { pq in
            permK.withUnsafeMutableBufferPointer { pk in
              samples.withUnsafeMutableBufferPointer { ps in
                prepare(raw, part, group: gi, index: pi, head: h, queryCode: { qCodes[$0] }, keyCode: { kCodes[$0] },
                        permQ: pq.baseAddress!, permK: pk.baseAddress!, samples: ps.baseAddress ?? pq.baseAddress!)
              }
            }
          }
          // The hash-order position of each query.
          var position = [Int32](repeating: 0, count: part.nq)
          for (x, q) in permQ.enumerated() { position[Int(q)] = Int32(x) }
          cache.parts[key] = (position, permK, samples)
        }
        let (position, permK, samples) = cache.parts[key]!
        let nb = blockCount(part)
        let t = min(nb - 1, ((Int(position[i - part.q0]) + 1) * nb - 1) / part.nq)  // group t holds it
        let kr = keyRange(part, t)
        for x in kr { keys.insert(seq.keyStart + part.k0 + Int(permK[x])) }
        for s in samples where !kr.contains(Int(s)) { keys.insert(seq.keyStart + part.k0 + Int(permK[Int(s)])) }
      }
    }
    return keys.sorted()
  }
}

/// Sorted orders and samples of the parts a ``HyperAttention/selectedKeys`` request touched,
/// keyed by (group, part, head): each is computed once per request.
final class HyperSelectionCache {
  var parts: [[Int]: (position: [Int32], permK: [Int32], samples: [Int32])] = [:]
}
