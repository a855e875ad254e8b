import Foundation
import SubqAttention
import SubqCore
import SubqDecoding
import SubqKVSelection
import SubqTestSupport
import Testing

/// TokenSelect, as a one-call method over tensors and as a decoder over a paged cache.
///
/// Tolerances: where the method attends to every key it is exact attention computed in Float32
/// (gathered rows, online softmax, a Float64-weighted merge of ≤ 8 partials) and is held to a
/// relative Frobenius error ≤ 1e-5 against the Float64 reference, as FlashAttention is; where it
/// attends to a subset, the output must equal exact attention over the subset it reports, with
/// the same tolerance (a key counted twice or left out costs far more).
struct TokenSelectTests {
  // MARK: - One call over tensors

  @Test("budget covering every key equals exact attention", arguments: [false, true])
  func coversAllIsExact(causal: Bool) throws {
    let seed = testSeed()
    for (b, hq, hkv, nq, nk, d, dv) in [(2, 6, 2, 3, 150, 37, 29), (1, 4, 4, 1, 700, 64, 64), (1, 8, 1, 17, 300, 16, 24)] {
      let q = Tensor.randomNormal(shape: [b, hq, nq, d], seed: seed)
      let k = Tensor.randomNormal(shape: [b, hkv, nk, d], seed: seed + 1)
      let v = Tensor.randomNormal(shape: [b, hkv, nk, dv], seed: seed + 2)
      let opts = AttentionOptions(causal: causal, returnLSE: true)
      let ref = try NaiveAttention.reference(queries: q, keys: k, values: v, options: opts)
      // top-k + init + local ≥ Nk: attends everything.
      let m = try TokenSelect(topK: nk, initTokens: 3, localTokens: 5, chunk: 4)
      let r = try m.attention(queries: q, keys: k, values: v, options: opts)
      let err = relativeError(r.output, ref.output)
      #expect(err <= 1e-5, "output error \(err) B\(b) H\(hq):\(hkv) Nq\(nq) Nk\(nk) causal \(causal) seed \(seed)")
      #expect(worstRelative(r.lse!, ref.lse).error <= 1e-5, "lse seed \(seed)")
    }
  }

  @Test("output is exact attention over the keys it selects", arguments: [false, true])
  func attendsExactlyToSelection(causal: Bool) throws {
    let seed = testSeed(1)
    let (b, hq, hkv, nq, nk, d, dv) = (2, 6, 3, 5, 1300, 40, 24)
    let q = Tensor.randomNormal(shape: [b, hq, nq, d], seed: seed)
    let k = Tensor.randomNormal(shape: [b, hkv, nk, d], seed: seed + 1)
    let v = Tensor.randomNormal(shape: [b, hkv, nk, dv], seed: seed + 2)
    let opts = AttentionOptions(causal: causal, returnLSE: true)
    let m = try TokenSelect(topK: 97, initTokens: 3, localTokens: 11, chunk: 2)
    let r = try m.attention(queries: q, keys: k, values: v, options: opts)
    var rows: [QueryRow] = []
    for bb in 0..<b { for h in 0..<hq { for i in 0..<nq { rows.append(QueryRow(batch: bb, head: h, row: i)) } } }
    let sel = try m.selectedKeys(queries: q, keys: k, values: v, options: opts, rows: rows)
    for s in sel {
      #expect(s.count <= 3 + 97 + 11 + 1 && s == s.sorted() && Set(s).count == s.count)
    }
    let ref = subsetReference(q: q, k: k, v: v, scale: 1 / Double(d).squareRoot()) { bb, h, i in sel[(bb * hq + h) * nq + i] }
    let err = relativeError(r.output, ref.out)
    #expect(err <= 1e-5, "output error \(err) causal \(causal) seed \(seed)")
    #expect(worstRelative(r.lse!, ref.lse).error <= 1e-5)
    // Every head of a chunk shares the selection; heads of other kv groups too (soft voting over all heads).
    #expect(sel[0] == sel[(hq - 1) * nq])
  }

  /// The soft vote against a Float64 transcription of the specification: fingerprint = mean of the
  /// chunk's queries, raw q·k, per-head softmax over the candidates, summed over heads, top-k.
  @Test func softVotingMatchesSpecification() throws {
    let seed = testSeed(2)
    let (hq, hkv, nq, nk, d) = (6, 2, 3, 900, 24)
    let (kc, qc) = clustered(hq: hq, hkv: hkv, n: nk, m: nq, d: d, seed: seed)
    let v = Tensor.randomNormal(shape: [1, hkv, nk, d], seed: seed + 5)
    let (topK, ini, loc) = (40, 4, 16)
    let m = try TokenSelect(topK: topK, initTokens: ini, localTokens: loc, chunk: nq)
    let sel = try m.selectedKeys(queries: qc, keys: kc, values: v, options: AttentionOptions(), rows: [QueryRow(batch: 0, head: 0, row: 0)])[0]
    // Reference votes.
    let qs = qc.scalars, ks = kc.scalars
    var vote = [Double](repeating: 0, count: nk)
    for h in 0..<hq {
      let g = h / (hq / hkv)
      var f = [Double](repeating: 0, count: d)
      for i in 0..<nq { for x in 0..<d { f[x] += Double(qs[(h * nq + i) * d + x]) / Double(nq) } }
      var s = [Double](repeating: -.infinity, count: nk)
      for j in ini..<(nk - loc) { var a = 0.0; for x in 0..<d { a += f[x] * Double(ks[(g * nk + j) * d + x]) }; s[j] = a }
      let mx = s.max()!
      let z = s.reduce(0) { $0 + Foundation.exp($1 - mx) }
      for j in ini..<(nk - loc) { vote[j] += Foundation.exp(s[j] - mx) / z }
    }
    let picked = Set(sel.filter { $0 >= ini && $0 < nk - loc })
    #expect(picked.count == topK)
    #expect(Set(0..<ini).isSubset(of: Set(sel)) && Set((nk - loc)..<nk).isSubset(of: Set(sel)))
    // Every picked candidate's vote is at least every other candidate's (up to Float32 rounding).
    let minPicked = picked.map { vote[$0] }.min()!
    let maxOther = (ini..<(nk - loc)).filter { !picked.contains($0) }.map { vote[$0] }.max()!
    #expect(minPicked >= maxOther - 1e-5 * vote.max()!, "picked \(minPicked) < unpicked \(maxOther), seed \(seed)")
  }

  @Test("a planted needle is always selected")
  func needle() throws {
    let seed = testSeed(3)
    var g = SeededGenerator(seed: seed)
    for trial in 0..<6 {
      let (hq, hkv, nk, d) = (8, 2, 3000, 64)
      let q = Tensor.randomNormal(shape: [1, hq, 1, d], seed: g.next())
      var k = Tensor.randomNormal(shape: [1, hkv, nk, d], seed: g.next())
      let v = Tensor.randomNormal(shape: [1, hkv, nk, d], seed: g.next())
      // Key j of head h's group becomes a scaled copy of q_h: it dominates head h's attention.
      let h = Int(g.next() % UInt64(hq)), j = 200 + Int(g.next() % UInt64(nk - 800))
      var n2: Float = 0
      for x in 0..<d { n2 += q[0, h, 0, x] * q[0, h, 0, x] }
      let s = 12 * Float(Double(d).squareRoot()) / n2
      for x in 0..<d { k[0, h / (hq / hkv), j, x] = q[0, h, 0, x] * s }
      let m = try TokenSelect(topK: 16, initTokens: 4, localTokens: 32)
      let sel = try m.selectedKeys(queries: q, keys: k, values: v, options: AttentionOptions(causal: true), rows: [QueryRow(batch: 0, head: h, row: 0)])[0]
      #expect(sel.contains(j), "needle \(j) of head \(h) missed, trial \(trial) seed \(seed)")
    }
  }

  @Test func errorFallsAsBudgetGrows() throws {
    let seed = testSeed(4)
    let (kc, qc) = clustered(hq: 4, hkv: 2, n: 4000, m: 2, d: 32, seed: seed)
    let v = Tensor.randomNormal(shape: [1, 2, 4000, 32], seed: seed + 9)
    let exact = try NaiveAttention.reference(queries: qc, keys: kc, values: v, options: AttentionOptions(causal: true))
    var errors: [Double] = []
    for k in [16, 128, 1024, 4000] {
      let r = try TokenSelect(topK: k, initTokens: 4, localTokens: 16).attention(queries: qc, keys: kc, values: v, options: AttentionOptions(causal: true))
      errors.append(relativeError(r.output, exact.output))
    }
    #expect(errors[0] > errors[1] && errors[1] > errors[2] && errors[3] <= 1e-5, "errors \(errors), seed \(seed)")
  }

  @Test("no look-ahead: keys after a query's position do not change its output")
  func noLookAhead() throws {
    let seed = testSeed(5)
    let (nq, nk, d) = (24, 600, 32)
    let q = Tensor.randomNormal(shape: [1, 4, nq, d], seed: seed)
    var k = Tensor.randomNormal(shape: [1, 2, nk, d], seed: seed + 1)
    var v = Tensor.randomNormal(shape: [1, 2, nk, d], seed: seed + 2)
    let m = try TokenSelect(topK: 20, initTokens: 2, localTokens: 8, chunk: 8)
    let opts = AttentionOptions(causal: true)
    let before = try m.attention(queries: q, keys: k, values: v, options: opts).output
    // Query i sits at key position i + nk − nq; change everything after query 9's position.
    let cut = 9 + nk - nq
    for h in 0..<2 { for j in (cut + 1)..<nk { for x in 0..<d { k[0, h, j, x] = 50; v[0, h, j, x] = -7 } } }
    let after = try m.attention(queries: q, keys: k, values: v, options: opts).output
    for h in 0..<4 { for i in 0...9 { for x in 0..<d { #expect(before[0, h, i, x] == after[0, h, i, x], "row \(i) changed, seed \(seed)") } } }
  }

  @Test func rejectsBadInput() throws {
    let q = Tensor.randomNormal(shape: [1, 2, 1, 8], seed: 1)
    let k = Tensor.randomNormal(shape: [1, 1, 30, 8], seed: 2)
    #expect(throws: SubqError.self) { try TokenSelect(topK: -1) }
    #expect(throws: SubqError.self) { try TokenSelect(chunk: 0) }
    #expect(throws: SubqError.self) { try TokenSelect(parameters: MethodParameters(["topk": "5"])) }
    #expect(throws: SubqError.self) { try TokenSelect().attention(queries: q, keys: k, values: k, options: AttentionOptions(softcap: 5)) }
    #expect(throws: SubqError.self) { try TokenSelect().attention(queries: q, keys: k, values: k, options: AttentionOptions(window: AttentionWindow(left: 4, right: 0))) }
    #expect(try TokenSelect(parameters: MethodParameters(["top-k": "7", "local": "3"])).parameterValues["top-k"] == "7")
  }

  // MARK: - Decoder over a paged cache

  @Test("decoder: budget covering every key equals exact split-KV decoding", arguments: [KVStorageType.float32, .float16])
  func decoderCoversAll(storage: KVStorageType) throws {
    let seed = testSeed(6)
    let (hq, hkv, d) = (6, 2, 40)
    let lengths = [300, 77, 513]
    let keys = lengths.enumerated().map { Tensor.randomNormal(shape: [1, hkv, $1, d], seed: seed + UInt64($0)) }
    let values = lengths.enumerated().map { Tensor.randomNormal(shape: [1, hkv, $1, d], seed: seed + 10 + UInt64($0)) }
    let (cache, seqs) = try makeCache(keys: keys, values: values, storage: storage)
    let dec = try TokenSelectDecoder(method: TokenSelect(topK: 600, initTokens: 2, localTokens: 4))
    for nq in [1, 3] {
      let q = Tensor.randomNormal(shape: [3, hq, nq, d], seed: seed + 20)
      let opts = AttentionOptions(causal: true, returnLSE: true)
      let r = try dec.step(queries: q, cache: cache, layer: 0, sequences: seqs, options: opts)
      let ref = try SplitKVAttention().attention(queries: q, cache: cache, layer: 0, sequences: seqs, options: opts)
      #expect(relativeError(r.result.output, ref.output) <= 1e-5, "Nq \(nq) \(storage) seed \(seed)")
      #expect(worstRelative(r.result.lse!, ref.lse!.scalars.map(Double.init)).error <= 1e-5)
      #expect(r.statistics.fullAttention == 3)
    }
  }

  @Test("decoder: selection cache reuses while queries stay similar, rescoring otherwise")
  func selectionCache() throws {
    let seed = testSeed(7)
    let (hq, hkv, n, d) = (4, 2, 2000, 32)
    let (kc, qc) = clustered(hq: hq, hkv: hkv, n: n, m: 2, d: d, seed: seed)
    let v = Tensor.randomNormal(shape: [1, hkv, n, d], seed: seed + 3)
    let (cache, seqs) = try makeCache(keys: [kc], values: [v], pageSize: 32)
    let dec = try TokenSelectDecoder(method: TokenSelect(topK: 50, initTokens: 4, localTokens: 16), cacheThreshold: 0.9)
    let q0 = try Tensor(shape: [1, hq, 1, d], scalars: (0..<hq).flatMap { h in (0..<d).map { qc[0, h, 0, $0] } })
    let opts = AttentionOptions(causal: true, returnLSE: true)
    let s0 = try dec.step(queries: q0, cache: cache, layer: 0, sequences: seqs, options: opts, recordKeys: true)
    #expect(s0.statistics.selectionsComputed == 1 && s0.statistics.selectionsReused == 0)
    #expect(s0.statistics.keysScored == n - 4 - 16)
    // A slightly perturbed query (cosine ≈ 0.999) reuses the selection, even after a token is appended.
    try cache.append(seqs[0], keys: Tensor.randomNormal(shape: [hkv, 1, d], seed: seed + 4), values: Tensor.randomNormal(shape: [hkv, 1, d], seed: seed + 5))
    var q1 = q0
    q1.withUnsafeMutableBufferPointer { p in for i in p.indices { p[i] += 0.01 * Float(i % 7 - 3) } }
    let s1 = try dec.step(queries: q1, cache: cache, layer: 0, sequences: seqs, options: opts, recordKeys: true)
    #expect(s1.statistics.selectionsReused == 1 && s1.statistics.keysScored == 0)
    let picked0 = s0.attendedKeys![0].filter { $0 >= 4 && $0 < n - 16 }
    let picked1 = s1.attendedKeys![0].filter { $0 >= 4 && $0 < n + 1 - 16 }
    // Same top-k; the local window moved by one (position n − 16 is no longer attended).
    #expect(picked1.filter { $0 != n - 16 } == picked0)
    // Reused or not, the output is exact attention over the attended keys.
    let ks = kc.scalars
    let kAll = Tensor(shape: [1, hkv, n + 1, d]) { p in
      let extra = try! cache.keys(seqs[0], layer: 0, positions: [n]).scalars
      for h in 0..<hkv { for j in 0...n { for x in 0..<d { p[(h * (n + 1) + j) * d + x] = j < n ? ks[(h * n + j) * d + x] : extra[h * d + x] } } }
    }
    let vAll = try cache.values(seqs[0], layer: 0, positions: Array(0...n)).reshaped([1, hkv, n + 1, d])
    let ref = subsetReference(q: q1, k: kAll, v: vAll, scale: 1 / Double(d).squareRoot()) { _, _, _ in s1.attendedKeys![0] }
    #expect(relativeError(s1.result.output, ref.out) <= 1e-5)
    // A query from another head's cluster (low cosine) forces rescoring.
    let q2 = Tensor.randomNormal(shape: [1, hq, 1, d], seed: seed + 6)
    let s2 = try dec.step(queries: q2, cache: cache, layer: 0, sequences: seqs, options: opts)
    #expect(s2.statistics.selectionsComputed == 1)
    // Cache off: always rescored.
    let off = try TokenSelectDecoder(method: TokenSelect(topK: 50, initTokens: 4, localTokens: 16), cacheThreshold: nil)
    _ = try off.step(queries: q0, cache: cache, layer: 0, sequences: seqs, options: opts)
    #expect(try off.step(queries: q0, cache: cache, layer: 0, sequences: seqs, options: opts).statistics.selectionsComputed == 1)
    // Fork carries the cache; forget drops it.
    let child = try cache.fork(seqs[0])
    dec.fork(seqs[0], as: child)
    #expect(try dec.step(queries: q2, cache: cache, layer: 0, sequences: [child], options: opts).statistics.selectionsReused == 1)
    dec.forget(child)
    #expect(try dec.step(queries: q2, cache: cache, layer: 0, sequences: [child], options: opts).statistics.selectionsComputed == 1)
  }

  @Test("decoder: batch of sequences, GQA, f16 pages, output exact over the selection")
  func decoderBatch() throws {
    let seed = testSeed(8)
    let (hq, hkv, d) = (6, 3, 48)
    let lengths = [1500, 700]
    var keys: [Tensor] = [], values: [Tensor] = []
    for (i, n) in lengths.enumerated() {
      keys.append(Tensor.randomNormal(shape: [1, hkv, n, d], seed: seed + UInt64(i)))
      values.append(Tensor.randomNormal(shape: [1, hkv, n, d], seed: seed + 7 + UInt64(i)))
    }
    for storage in [KVStorageType.float32, .float16] {
      let (cache, seqs) = try makeCache(keys: keys, values: values, pageSize: 64, storage: storage)
      let dec = try TokenSelectDecoder(method: TokenSelect(topK: 100, initTokens: 8, localTokens: 32), cacheThreshold: nil)
      let q = Tensor.randomNormal(shape: [2, hq, 1, d], seed: seed + 30)
      let r = try dec.step(queries: q, cache: cache, layer: 0, sequences: seqs, options: AttentionOptions(causal: true, returnLSE: true), recordKeys: true)
      let kk = padded(storage == .float16 ? keys.map(roundedToHalf) : keys, to: 1500, fill: 1e4)
      let vv = padded(storage == .float16 ? values.map(roundedToHalf) : values, to: 1500, fill: 1e4)
      let ref = subsetReference(q: q, k: kk, v: vv, scale: 1 / Double(d).squareRoot()) { b, _, _ in r.attendedKeys![b] }
      #expect(relativeError(r.result.output, ref.out) <= 1e-5, "\(storage) seed \(seed)")
      #expect(worstRelative(r.result.lse!, ref.lse).error <= 1e-5)
      #expect(r.attendedKeys![0].count == 140 && r.attendedKeys![1].count == 140)
      #expect(r.statistics.selectionsComputed == 2)
    }
  }

  @Test func decoderRejectsBadInput() throws {
    let (cache, seqs) = try makeCache(keys: [Tensor.randomNormal(shape: [1, 2, 50, 8], seed: 1)], values: [Tensor.randomNormal(shape: [1, 2, 50, 8], seed: 2)])
    let dec = try TokenSelectDecoder()
    let q = Tensor.randomNormal(shape: [1, 4, 1, 8], seed: 3)
    #expect(throws: SubqError.self) { try dec.step(queries: q, cache: cache, layer: 1, sequences: seqs, options: AttentionOptions()) }
    #expect(throws: SubqError.self) { try dec.step(queries: stack([q, q]), cache: cache, layer: 0, sequences: [seqs[0], seqs[0]], options: AttentionOptions()) }
    #expect(throws: SubqError.self) { try dec.step(queries: q, cache: cache, layer: 0, sequences: seqs, options: AttentionOptions(softcap: 3)) }
    #expect(throws: SubqError.self) { try dec.step(queries: Tensor.randomNormal(shape: [1, 3, 1, 8], seed: 3), cache: cache, layer: 0, sequences: seqs, options: AttentionOptions()) }
    #expect(throws: SubqError.self) { try TokenSelectDecoder(parameters: MethodParameters(["threshold": "1.5"])) }
    #expect(throws: SubqError.self) { try TokenSelectDecoder(parameters: MethodParameters(["chunk": "4"])) }
  }
}
