import Foundation
import SubqAttention
import SubqCore
import SubqDecoding
import SubqTestSupport
import Testing

/// A host-side mirror of what a sequence should hold: keys [Hkv][n][D] and values [Hkv][n][Dv].
struct Mirror {
  var hkv: Int, d: Int, dv: Int
  var keys: [[Float]]   // per head, flattened rows
  var values: [[Float]]
  var length: Int { keys[0].count / d }

  init(hkv: Int, d: Int, dv: Int) {
    self.hkv = hkv
    self.d = d
    self.dv = dv
    keys = Array(repeating: [], count: hkv)
    values = Array(repeating: [], count: hkv)
  }

  mutating func append(_ k: Tensor, _ v: Tensor) {
    let n = k.shape[1]
    for h in 0..<hkv {
      for i in 0..<n {
        for x in 0..<d { keys[h].append(k[h, i, x]) }
        for x in 0..<dv { values[h].append(v[h, i, x]) }
      }
    }
  }

  mutating func truncate(_ n: Int) {
    for h in 0..<hkv {
      keys[h].removeLast(keys[h].count - n * d)
      values[h].removeLast(values[h].count - n * dv)
    }
  }

  /// `[1, Hkv, n, D]` and `[1, Hkv, n, Dv]` padded to `total` rows with `fill`.
  func tensors(paddedTo total: Int? = nil, fill: Float = 0, roundToHalf: Bool = false) -> (Tensor, Tensor) {
    let n = length, N = total ?? length
    func f(_ x: Float) -> Float { roundToHalf ? Float(Float16(x)) : x }
    let k = Tensor(shape: [1, hkv, N, d]) { p in
      for h in 0..<hkv { for i in 0..<N { for x in 0..<d { p[(h * N + i) * d + x] = i < n ? f(keys[h][i * d + x]) : fill } } }
    }
    let v = Tensor(shape: [1, hkv, N, dv]) { p in
      for h in 0..<hkv { for i in 0..<N { for x in 0..<dv { p[(h * N + i) * dv + x] = i < n ? f(values[h][i * dv + x]) : fill } } }
    }
    return (k, v)
  }
}

/// Concatenates `[1, …]` tensors along the batch axis.
func batched(_ parts: [Tensor]) -> Tensor {
  let s = parts[0].shape
  return Tensor(shape: [parts.count] + s.dropFirst()) { p in
    var o = 0
    for t in parts { t.withUnsafeBufferPointer { b in for x in b { p[o] = x; o += 1 } } }
  }
}

/// The paged cache and decoding over it.
///
/// Tolerance: a decode step over f32 pages equals FlashAttention over the contiguous prefix with
/// relative Frobenius error ≤ 1e-5 (both are Float32 kernels with different summation orders);
/// over f16 pages it equals FlashAttention over the f16-rounded prefix within the same 1e-5.
struct PagedKVCacheTests {
  let hq = 8, hkv = 2, d = 48, dv = 40

  func randomKV(_ n: Int, seed: UInt64, scale: Float = 1) -> (Tensor, Tensor) {
    (Tensor.randomNormal(shape: [hkv, n, d], seed: seed, std: scale), Tensor.randomNormal(shape: [hkv, n, dv], seed: seed + 1, std: scale))
  }

  /// Decode step over `seqs` equals flash over each mirror's whole prefix.
  func expectDecodeMatches(_ cache: PagedKVCache, _ seqs: [PagedKVCache.SequenceID], _ mirrors: [Mirror], nq: Int = 1,
                           causal: Bool = true, options: AttentionOptions? = nil, layer: Int = 0, half: Bool = false,
                           splits: [Int] = [0, 1, 5], seed: UInt64, _ label: String) throws {
    var step = options ?? AttentionOptions(causal: causal)
    step.returnLSE = true
    let q0 = Tensor.randomNormal(shape: [seqs.count, hq, nq, d], seed: seed &+ 99)
    // The queries in the step's layout (bshd: [B, Nq, Hq, D]); the reference runs in bhsd.
    let q = step.layout == .bhsd ? q0 : Tensor(shape: [seqs.count, nq, hq, d]) { p in
      for b in 0..<seqs.count { for i in 0..<nq { for h in 0..<hq { for x in 0..<d { p[((b * nq + i) * hq + h) * d + x] = q0[b, h, i, x] } } } }
    }
    let lengths = mirrors.map(\.length)
    let maxLen = max(1, lengths.max()!)
    let kv = mirrors.map { $0.tensors(paddedTo: maxLen, roundToHalf: half) }
    var opts = step
    opts.layout = .bhsd
    opts.keyLengths = lengths
    var ref = try FlashAttention().attention(queries: q0, keys: batched(kv.map(\.0)), values: batched(kv.map(\.1)), options: opts)
    if step.layout == .bshd {
      let o = ref.output
      ref.output = Tensor(shape: [seqs.count, nq, hq, dv]) { p in
        for b in 0..<seqs.count { for i in 0..<nq { for h in 0..<hq { for x in 0..<dv { p[((b * nq + i) * hq + h) * dv + x] = o[b, h, i, x] } } } }
      }
    }
    for s in splits {
      let r = try SplitKVAttention(splits: s).attention(queries: q, cache: cache, layer: layer, sequences: seqs, options: step)
      let err = relativeError(r.output, ref.output)
      #expect(err <= 1e-5, "\(label): output error \(err) splits \(s) lengths \(lengths) seed \(seed)")
      #expect(worstRelative(r.lse!, ref.lse!.scalars.map(Double.init)).error <= 1e-5, "\(label): lse, splits \(s)")
    }
  }

  @Test("decode equals flash across page boundaries", arguments: [KVStorageType.float32, .float16])
  func acrossPageBoundaries(storage: KVStorageType) throws {
    let seed = testSeed()
    let cache = try PagedKVCache(.init(kvHeads: hkv, headDim: d, valueDim: dv, pageSize: 16, pageCount: 64, storage: storage))
    let s = cache.createSequence()
    var m = Mirror(hkv: hkv, d: d, dv: dv)
    var n = 0
    for (step, count) in [1, 14, 1, 1, 16, 17, 100, 3].enumerated() {
      let (k, v) = randomKV(count, seed: seed + UInt64(10 * step))
      try cache.append(s, keys: k, values: v)
      m.append(k, v)
      n += count
      #expect(try cache.length(of: s) == n)
      #expect(try cache.pageTable(of: s).count == (n + 15) / 16)
      try expectDecodeMatches(cache, [s], [m], half: storage == .float16, seed: seed, "length \(n)")
    }
    // Speculative step: 4 queries at the end of the sequence, causal.
    try expectDecodeMatches(cache, [s], [m], nq: 4, half: storage == .float16, seed: seed, "4 queries")
  }

  @Test func mixedLengthsInOneBatch() throws {
    let seed = testSeed()
    let cache = try PagedKVCache(.init(kvHeads: hkv, headDim: d, valueDim: dv, pageSize: 32, pageCount: 200))
    var seqs: [PagedKVCache.SequenceID] = []
    var mirrors: [Mirror] = []
    for (i, n) in [1, 31, 32, 33, 700, 0, 250].enumerated() {
      let s = cache.createSequence()
      var m = Mirror(hkv: hkv, d: d, dv: dv)
      if n > 0 {
        let (k, v) = randomKV(n, seed: seed + UInt64(i * 7))
        try cache.append(s, keys: k, values: v)
        m.append(k, v)
      }
      seqs.append(s)
      mirrors.append(m)
    }
    try expectDecodeMatches(cache, seqs, mirrors, causal: false, seed: seed, "mixed")
    try expectDecodeMatches(cache, seqs, mirrors, nq: 3, seed: seed, "mixed, 3 queries")
    // The empty sequence outputs zeros with lse = +∞.
    let q = Tensor.randomNormal(shape: [1, hq, 1, d], seed: 1)
    let r = try SplitKVAttention().attention(queries: q, cache: cache, layer: 0, sequences: [seqs[5]], options: AttentionOptions(returnLSE: true))
    #expect(r.output.scalars.allSatisfy { $0 == 0 } && r.lse!.scalars.allSatisfy { $0 == .infinity })
  }

  @Test func maskingOptionsOverPages() throws {
    let seed = testSeed()
    let cache = try PagedKVCache(.init(kvHeads: hkv, headDim: d, valueDim: dv, pageSize: 16, pageCount: 128, storage: .float16))
    var seqs: [PagedKVCache.SequenceID] = []
    var mirrors: [Mirror] = []
    for (i, n) in [300, 57, 1000].enumerated() {
      let s = cache.createSequence()
      var m = Mirror(hkv: hkv, d: d, dv: dv)
      let (k, v) = randomKV(n, seed: seed + UInt64(i * 3))
      try cache.append(s, keys: k, values: v)
      m.append(k, v)
      seqs.append(s)
      mirrors.append(m)
    }
    let slopes = Tensor(shape: [3, hq]) { p in for i in p.indices { p[i] = Float(i % 5 + 1) * 0.01 } }
    let cases: [(String, AttentionOptions)] = [
      ("window", AttentionOptions(causal: true, window: AttentionWindow(left: 40, right: nil))),
      ("softcap + alibi [B, Hq]", AttentionOptions(causal: true, softcap: 3, alibiSlopes: slopes)),
      ("top-left", AttentionOptions(causal: true, alignment: .topLeft)),
      ("bshd, scale, two-sided window", AttentionOptions(scale: 0.05, window: AttentionWindow(left: 100, right: 7), layout: .bshd)),
    ]
    for (label, o) in cases {
      try expectDecodeMatches(cache, seqs, mirrors, nq: 4, options: o, half: true, seed: seed, label)
    }
  }

  @Test func forksShareThenCopyOnWrite() throws {
    let seed = testSeed()
    let cache = try PagedKVCache(.init(kvHeads: hkv, headDim: d, valueDim: dv, pageSize: 16, pageCount: 64))
    let parent = cache.createSequence()
    var mp = Mirror(hkv: hkv, d: d, dv: dv)
    let (k0, v0) = randomKV(40, seed: seed)   // 2.5 pages
    try cache.append(parent, keys: k0, values: v0)
    mp.append(k0, v0)
    let used = cache.usedPageCount
    let child = try cache.fork(parent)
    #expect(cache.usedPageCount == used, "a fork copies nothing")
    #expect(try cache.pageTable(of: child) == cache.pageTable(of: parent))
    for page in try cache.pageTable(of: parent) { #expect(cache.referenceCount(ofPage: page) == 2) }
    var mc = mp
    // Diverge: each appends its own tokens into the shared, partly filled last page.
    let (k1, v1) = randomKV(5, seed: seed + 1)
    let (k2, v2) = randomKV(30, seed: seed + 2)
    try cache.append(child, keys: k1, values: v1)
    mc.append(k1, v1)
    try cache.append(parent, keys: k2, values: v2)
    mp.append(k2, v2)
    let tp = try cache.pageTable(of: parent), tc = try cache.pageTable(of: child)
    #expect(tp[0] == tc[0] && tp[1] == tc[1], "full prefix pages stay shared")
    #expect(tp[2] != tc[2], "the written page was copied")
    try expectDecodeMatches(cache, [parent, child], [mp, mc], seed: seed, "after fork")
    // Overwriting a position inside a shared full page copies that page too.
    let (k3, v3) = randomKV(1, seed: seed + 3)
    try cache.write(child, layer: 0, at: 3, keys: k3, values: v3)
    #expect(try cache.pageTable(of: child)[0] != cache.pageTable(of: parent)[0])
    for h in 0..<hkv { for x in 0..<d { mc.keys[h][3 * d + x] = k3[h, 0, x] }; for x in 0..<dv { mc.values[h][3 * dv + x] = v3[h, 0, x] } }
    try expectDecodeMatches(cache, [parent, child], [mp, mc], seed: seed, "after overwrite")
    // Freeing the parent keeps the child's pages.
    try cache.free(parent)
    try expectDecodeMatches(cache, [child], [mc], seed: seed, "after freeing the parent")
    #expect(throws: SubqError.self) { try cache.length(of: parent) }
  }

  /// Pages freed by one sequence and reused by another never show the first one's data: the old
  /// sequence holds huge values, so any leak would dominate the output.
  @Test func freedPagesNeverLeak() throws {
    let seed = testSeed()
    let cache = try PagedKVCache(.init(kvHeads: hkv, headDim: d, valueDim: dv, pageSize: 16, pageCount: 8))
    let old = cache.createSequence()
    let loud = Tensor(shape: [hkv, 128, d], repeating: 3e4), loudV = Tensor(shape: [hkv, 128, dv], repeating: 1e30)
    try cache.append(old, keys: loud, values: loudV)
    #expect(cache.freePageCount == 0)
    try cache.free(old)
    #expect(cache.freePageCount == 8)
    let s = cache.createSequence()
    var m = Mirror(hkv: hkv, d: d, dv: dv)
    let (k, v) = randomKV(21, seed: seed)
    try cache.append(s, keys: k, values: v)
    m.append(k, v)
    try expectDecodeMatches(cache, [s], [m], seed: seed, "reused pages")
    // Reserved but unwritten positions read as zeros.
    try cache.extend(s, by: 30)
    let zk = try cache.keys(s, layer: 0, positions: Array(21..<51)), zv = try cache.values(s, layer: 0, positions: Array(21..<51))
    #expect(zk.scalars.allSatisfy { $0 == 0 } && zv.scalars.allSatisfy { $0 == 0 })
    // Truncation then re-extension does not resurrect old tokens.
    try cache.truncate(s, to: 10)
    m.truncate(10)
    try cache.extend(s, by: 5)
    #expect(try cache.keys(s, layer: 0, positions: Array(10..<15)).scalars.allSatisfy { $0 == 0 })
    try cache.truncate(s, to: 10)
    try expectDecodeMatches(cache, [s], [m], seed: seed, "after truncate")
  }

  @Test func layersAreSeparate() throws {
    let seed = testSeed()
    let cache = try PagedKVCache(.init(layers: 3, kvHeads: hkv, headDim: d, valueDim: dv, pageSize: 16, pageCount: 32, storage: .float16))
    let s = cache.createSequence()
    #expect(try cache.extend(s, by: 37) == 0..<37)
    var mirrors: [Mirror] = []
    for layer in 0..<3 {
      let (k, v) = randomKV(37, seed: seed + UInt64(layer * 5))
      try cache.write(s, layer: layer, at: 0, keys: k, values: v)
      var m = Mirror(hkv: hkv, d: d, dv: dv)
      m.append(k, v)
      mirrors.append(m)
    }
    for layer in 0..<3 {
      try expectDecodeMatches(cache, [s], [mirrors[layer]], layer: layer, half: true, seed: seed, "layer \(layer)")
    }
    #expect(throws: SubqError.self) { try cache.append(s, keys: Tensor(shape: [hkv, 1, d]), values: Tensor(shape: [hkv, 1, dv])) }
  }

  @Test func gatherReadsBack() throws {
    let cache = try PagedKVCache(.init(kvHeads: hkv, headDim: d, valueDim: dv, pageSize: 8, pageCount: 16))
    let s = cache.createSequence()
    let (k, v) = randomKV(50, seed: 5)
    try cache.append(s, keys: k, values: v)
    let picks = [49, 0, 8, 7, 23]
    let gk = try cache.keys(s, layer: 0, positions: picks), gv = try cache.values(s, layer: 0, positions: picks)
    for h in 0..<hkv {
      for (i, t) in picks.enumerated() {
        for x in 0..<d { #expect(gk[h, i, x] == k[h, t, x]) }
        for x in 0..<dv { #expect(gv[h, i, x] == v[h, t, x]) }
      }
    }
    let view = try cache.view(s, layer: 0)
    #expect(view.length == 50 && view.pages.count == 7)
  }

  @Test func errors() throws {
    let cache = try PagedKVCache(.init(kvHeads: hkv, headDim: d, valueDim: dv, pageSize: 16, pageCount: 4, storage: .float16))
    let s = cache.createSequence()
    func expectError(_ fragment: String, _ body: () throws -> Void) {
      do {
        try body()
        Issue.record("expected an error mentioning \(fragment)")
      } catch let e as SubqError {
        #expect(e.description.contains(fragment), "\(e)")
      } catch { Issue.record("\(error)") }
    }
    expectError("full") { try cache.extend(s, by: 65) }
    #expect(try cache.length(of: s) == 0 && cache.freePageCount == 4, "a failed extend changes nothing")
    expectError("extend it first") { try cache.write(s, layer: 0, at: 0, keys: Tensor(shape: [hkv, 1, d]), values: Tensor(shape: [hkv, 1, dv])) }
    expectError("expected [2, n, 48]") { try cache.append(s, keys: Tensor(shape: [hkv, 1, d + 1]), values: Tensor(shape: [hkv, 1, dv])) }
    #expect(try cache.length(of: s) == 0 && cache.freePageCount == 4, "a failed append changes nothing")
    expectError("float16 range") { try cache.append(s, keys: Tensor(shape: [hkv, 1, d], repeating: 1e5), values: Tensor(shape: [hkv, 1, dv])) }
    var nan = Tensor(shape: [hkv, 1, dv])
    nan[flat: 3] = .nan
    expectError("NaN") { try cache.append(s, keys: Tensor(shape: [hkv, 1, d]), values: nan) }
    expectError("layer") { try cache.write(s, layer: 1, at: 0, keys: Tensor(shape: [hkv, 0, d]), values: Tensor(shape: [hkv, 0, dv])) }
    expectError("no such sequence") { try cache.free(PagedKVCache.SequenceID(rawValue: 99)) }
    expectError("page count") { _ = try PagedKVCache(.init(kvHeads: 1, headDim: 8, pageCount: 0)) }
    let q = Tensor.randomNormal(shape: [2, hq, 1, d], seed: 1)
    expectError("batch 2") { _ = try SplitKVAttention().attention(queries: q, cache: cache, layer: 0, sequences: [s], options: AttentionOptions()) }
    expectError("key lengths") {
      _ = try SplitKVAttention().attention(queries: q, cache: cache, layer: 0, sequences: [s, s], options: AttentionOptions(keyLengths: [1, 1]))
    }
    let q5 = Tensor.randomNormal(shape: [1, 5, 1, d], seed: 1)
    expectError("multiple of key/value heads") { _ = try SplitKVAttention().attention(queries: q5, cache: cache, layer: 0, sequences: [s], options: AttentionOptions()) }
  }
}
