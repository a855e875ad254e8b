import Foundation
import SubqAttention
import SubqCore
import SubqDecoding
import SubqKVSelection
import SubqTestSupport
import Testing

/// RetrievalAttention decoding and its inner-product graph index.
///
/// Tolerances as in ``TokenSelectTests``: 1e-5 relative Frobenius error for exact attention over
/// the keys the method reports (static and retrieved parts merged by log-sum-exp in Float32).
struct RetrievalTests {
  func config(topK: Int, sink: Int = 4, window: Int = 16, width: Int = 64, exact: Bool = false, buildQueries: Int = 512) -> RetrievalDecoder.Configuration {
    var c = RetrievalDecoder.Configuration()
    c.topK = topK
    c.sinkTokens = sink
    c.windowTokens = window
    c.searchWidth = width
    c.exactSearch = exact
    c.buildQueries = buildQueries
    c.degree = 16
    c.queryNeighbors = 32
    c.buildWidth = 32
    c.entryPoints = 8
    return c
  }

  @Test("top-k covering the context equals exact decoding", arguments: [KVStorageType.float32, .float16])
  func coversAllIsExact(storage: KVStorageType) throws {
    let seed = testSeed(10)
    let (hq, hkv, d) = (6, 2, 40)
    let lengths = [400, 90, 1000]
    let keys = lengths.enumerated().map { Tensor.randomNormal(shape: [1, hkv, $1, d], seed: seed + UInt64($0)) }
    let values = lengths.enumerated().map { Tensor.randomNormal(shape: [1, hkv, $1, d], seed: seed + 10 + UInt64($0)) }
    let (cache, seqs) = try makeCache(keys: keys, values: values, storage: storage)
    let dec = try RetrievalDecoder(configuration: config(topK: 1000))
    for s in seqs { try dec.buildIndex(cache: cache, layer: 0, sequence: s, prefillQueries: Tensor.randomNormal(shape: [hq, 30, d], seed: seed + 50)) }
    for nq in [1, 3] {
      let q = Tensor.randomNormal(shape: [3, hq, nq, d], seed: seed + 20 + UInt64(nq))
      let opts = AttentionOptions(causal: true, returnLSE: true)
      let r = try dec.step(queries: q, cache: cache, layer: 0, sequences: seqs, options: opts)
      let ref = try SplitKVAttention().attention(queries: q, cache: cache, layer: 0, sequences: seqs, options: opts)
      let err = relativeError(r.result.output, ref.output)
      #expect(err <= 1e-5, "error \(err) Nq \(nq) \(storage) seed \(seed)")
      #expect(worstRelative(r.result.lse!, ref.lse!.scalars.map(Double.init)).error <= 1e-5)
      #expect(r.statistics.searches == 0 && r.statistics.exhaustive == 3 * hq * nq)
    }
  }

  @Test("static and retrieved parts are disjoint and merged exactly", arguments: [false, true])
  func mergesExactly(exact: Bool) throws {
    let seed = testSeed(11)
    let (hq, hkv, d, dv) = (4, 2, 32, 24)
    let lengths = [1200, 800]
    var keys: [Tensor] = [], values: [Tensor] = []
    for (i, n) in lengths.enumerated() {
      let (k, _) = clustered(hq: hq, hkv: hkv, n: n, m: 1, d: d, seed: seed + UInt64(i))
      keys.append(k)
      values.append(Tensor.randomNormal(shape: [1, hkv, n, dv], seed: seed + 5 + UInt64(i)))
    }
    let (cache, seqs) = try makeCache(keys: keys, values: values, pageSize: 32)
    let dec = try RetrievalDecoder(configuration: config(topK: 40, exact: exact))
    for (i, s) in seqs.enumerated() {
      let (_, pq) = clustered(hq: hq, hkv: hkv, n: 1, m: 64, d: d, seed: seed + UInt64(i))
      try dec.buildIndex(cache: cache, layer: 0, sequence: s, prefillQueries: pq)
    }
    let q = stack((0..<2).map { clustered(hq: hq, hkv: hkv, n: 1, m: 2, d: d, seed: seed + UInt64($0)).q })
    let r = try dec.step(queries: q, cache: cache, layer: 0, sequences: seqs, options: AttentionOptions(causal: true, returnLSE: true), recordKeys: true)
    for (row, ret) in r.retrievedKeys!.enumerated() {
      let b = row / (hq * 2), n = lengths[b]
      #expect(ret.count == 40 && ret.allSatisfy { $0 >= 4 && $0 < n - 16 }, "row \(row): retrieved must avoid the static set")
      #expect(r.attendedKeys![row].count == 40 + 4 + 16 - (row % 2 == 0 ? 1 : 0))
    }
    let kk = padded(keys, to: 1200, fill: 1e4), vv = padded(values, to: 1200, fill: 1e4)
    // Row i of a 2-query step sits at position n − 2 + i and does not see the last key when i = 0.
    let ref = subsetReference(q: q, k: kk, v: vv, scale: 1 / Double(d).squareRoot()) { b, h, i in r.attendedKeys![(b * hq + h) * 2 + i] }
    let err = relativeError(r.result.output, ref.out)
    #expect(err <= 1e-5, "error \(err) exact \(exact) seed \(seed)")
    #expect(worstRelative(r.result.lse!, ref.lse).error <= 1e-5)
    if exact {
      // Exact search returns the true top-k of the retrievable keys.
      let truth = try SelectionMetrics.exactTopKeys(queries: q, cache: cache, layer: 0, sequences: seqs, k: 40, excludingFirst: 4, excludingLast: 16)
      for (row, t) in truth.enumerated() where row % 2 == 1 { #expect(r.retrievedKeys![row] == t) }
    }
  }

  @Test("grouped search (one traversal per kv head) finds per query head what per-head search finds",
        arguments: [false, true])
  func groupedMatchesPerHead(halfSearch: Bool) throws {
    let seed = testSeed(14)
    let (hq, hkv, n, d) = (8, 2, 3000, 32)
    let (cache, seqs, pq, q, truth) = try clusteredSearchProblem(hq: hq, hkv: hkv, n: n, d: d, seed: seed)
    func run(grouped: Bool, width: Int) throws -> RetrievalDecoder.Step {
      var c = config(topK: 30, width: width, buildQueries: 400)
      c.groupedSearch = grouped
      c.halfPrecisionSearch = halfSearch
      let dec = try RetrievalDecoder(configuration: c)
      try dec.buildIndex(cache: cache, layer: 0, sequence: seqs[0], prefillQueries: pq)
      return try dec.step(queries: q, cache: cache, layer: 0, sequences: seqs, options: AttentionOptions(causal: true, returnLSE: true), recordKeys: true)
    }
    // A pool as large as the context visits every key the graph reaches from its entry points,
    // grouped or not: both return the same keys for every query head. Against the exact top 30
    // they miss only keys the graph does not reach (and, rarely, a near-tie at the 30th place:
    // Float32 search scores against the Float64 truth): 0 is typical, but one seed in about 50
    // missed 5 of one head's 30 and 3 of another's (seed 227143022712382 − 14), so the bound is
    // on the recall over all heads.
    let fullG = try run(grouped: true, width: n), fullH = try run(grouped: false, width: n)
    var missed = 0
    for h in 0..<hq {
      #expect(fullG.retrievedKeys![h].count == 30 && Set(fullG.retrievedKeys![h]) == Set(fullH.retrievedKeys![h]),
              "head \(h), half \(halfSearch), seed \(seed)")
      missed += Set(truth[h]).subtracting(fullG.retrievedKeys![h]).count
    }
    #expect(missed <= hq * 30 / 10, "missed \(missed) of \(hq * 30), half \(halfSearch), seed \(seed)")
    #expect(fullG.statistics.searches == hkv && fullG.statistics.rowsSearched == hq)
    #expect(fullH.statistics.searches == hq && fullH.statistics.rowsSearched == hq)
    // A narrower pool (on this small, hard set — ~190 near-identical keys per cluster — recall
    // is 0.6–0.85): the mean recall of the grouped search stays within 0.1 of the per-head
    // searches'. Single heads are not bounded: a head's pool fills in another order, and one head
    // was seen at 0.23 against its own search's 0.63 — why grouped search is opt-in.
    let g = try run(grouped: true, width: 100), p = try run(grouped: false, width: 100)
    var recallG = 0.0, recallP = 0.0
    for h in 0..<hq {
      recallG += Double(Set(g.retrievedKeys![h]).intersection(truth[h]).count) / 30 / Double(hq)
      recallP += Double(Set(p.retrievedKeys![h]).intersection(truth[h]).count) / 30 / Double(hq)
    }
    #expect(recallG >= 0.5 && recallG >= recallP - 0.1, "grouped recall \(recallG) vs per-head \(recallP), seed \(seed)")
    // Early termination (patience) scans no more than the full search.
    var cp = config(topK: 30, width: 100, buildQueries: 400)
    cp.halfPrecisionSearch = halfSearch
    cp.groupedSearch = true
    cp.patience = 8
    let decP = try RetrievalDecoder(configuration: cp)
    try decP.buildIndex(cache: cache, layer: 0, sequence: seqs[0], prefillQueries: pq)
    let gp = try decP.step(queries: q, cache: cache, layer: 0, sequences: seqs, options: AttentionOptions(causal: true), recordKeys: true)
    #expect(gp.statistics.keysScanned <= g.statistics.keysScanned && gp.retrievedKeys!.allSatisfy { $0.count == 30 })
    // One traversal per kv head reads each visited key once for the whole group.
    #expect(g.statistics.searches == hkv && g.statistics.keysScanned < p.statistics.keysScanned, "\(g.statistics) vs \(p.statistics)")
  }

  @Test("a planted needle is always found, before and after inserts")
  func needles() throws {
    let seed = testSeed(12)
    var g = SeededGenerator(seed: seed)
    let (hq, hkv, n, d) = (4, 2, 4000, 64)
    let (k0, _) = clustered(hq: hq, hkv: hkv, n: n, m: 1, d: d, clusters: 32, seed: g.next())
    var k = k0
    let v = Tensor.randomNormal(shape: [1, hkv, n, d], seed: g.next())
    // Needle queries: random directions; each gets one key far back that dominates its attention.
    let q = Tensor.randomNormal(shape: [1, hq, 1, d], seed: g.next())
    var planted: [Int] = []
    for h in 0..<hq {
      let j = 100 + Int(g.next() % 3000)
      planted.append(j)
      var n2: Float = 0
      for x in 0..<d { n2 += q[0, h, 0, x] * q[0, h, 0, x] }
      for x in 0..<d { k[0, h / 2, j, x] = q[0, h, 0, x] * 12 * Float(Double(d).squareRoot()) / n2 }
    }
    let (cache, seqs) = try makeCache(keys: [k], values: [v], pageSize: 64, spare: 200)
    let dec = try RetrievalDecoder(configuration: config(topK: 20, width: 48))
    // The index is built from ordinary (clustered) queries, none of them the needle queries.
    let (_, pq) = clustered(hq: hq, hkv: hkv, n: 1, m: 128, d: d, clusters: 32, seed: g.next())
    try dec.buildIndex(cache: cache, layer: 0, sequence: seqs[0], prefillQueries: pq)
    let r = try dec.step(queries: q, cache: cache, layer: 0, sequences: seqs, options: AttentionOptions(causal: true), recordKeys: true)
    for h in 0..<hq { #expect(r.retrievedKeys![h].contains(planted[h]), "head \(h): needle \(planted[h]) missed, seed \(seed)") }
    // Needles appended after the build are linked in and found once they leave the window.
    let q2 = Tensor.randomNormal(shape: [1, hq, 1, d], seed: g.next())
    var late: [Int] = []
    for h in 0..<hq where h % 2 == 0 {
      var n2: Float = 0
      for x in 0..<d { n2 += q2[0, h, 0, x] * q2[0, h, 0, x] }
      let key = Tensor(shape: [hkv, 1, d]) { p in
        for kv in 0..<hkv { for x in 0..<d { p[kv * d + x] = kv == h / 2 ? q2[0, h, 0, x] * 12 * Float(Double(d).squareRoot()) / n2 : Float(g.nextNormal()) } }
      }
      late.append(try cache.append(seqs[0], keys: key, values: Tensor.randomNormal(shape: [hkv, 1, d], seed: g.next())).lowerBound)
    }
    for _ in 0..<20 {
      try cache.append(seqs[0], keys: slice(k0, from: Int(g.next() % 3000), count: 1), values: Tensor.randomNormal(shape: [hkv, 1, d], seed: g.next()))
    }
    let r2 = try dec.step(queries: q2, cache: cache, layer: 0, sequences: seqs, options: AttentionOptions(causal: true), recordKeys: true)
    #expect(r2.statistics.keysInserted == (2 + 20) * hkv)
    for (x, h) in [0, 2].enumerated() { #expect(r2.retrievedKeys![h].contains(late[x]), "late needle \(late[x]) of head \(h) missed, seed \(seed)") }
  }

  @Test("warm start: a step seeded with the previous step's results finds at least what it found; off, steps are independent",
        arguments: [false, true])
  func warmStart(grouped: Bool) throws {
    let seed = testSeed(31)
    let (hq, hkv, n, d) = (4, 2, 3000, 32)
    let (cache, seqs, pq, q, truth) = try clusteredSearchProblem(hq: hq, hkv: hkv, n: n, d: d, seed: seed)
    func hits(_ s: RetrievalDecoder.Step) -> [Int] { (0..<hq).map { Set(s.retrievedKeys![$0]).intersection(truth[$0]).count } }
    let options = AttentionOptions(causal: true, returnLSE: true)
    for warm in [false, true] {
      // The narrowest pool (width = top-k: recall well below 1 on this set) and Float32 search
      // rows (scores exact, so a seed that made the top 30 keeps its place unless 30 better keys
      // are found).
      var c = config(topK: 30, width: 30, buildQueries: 400)
      c.groupedSearch = grouped
      c.halfPrecisionSearch = false
      c.warmStart = warm
      c.carry = 30
      let dec = try RetrievalDecoder(configuration: c)
      try dec.buildIndex(cache: cache, layer: 0, sequence: seqs[0], prefillQueries: pq)
      var steps: [RetrievalDecoder.Step] = []
      for _ in 0..<4 { steps.append(try dec.step(queries: q, cache: cache, layer: 0, sequences: seqs, options: options, recordKeys: true)) }
      if warm {
        // Same query, same keys: each step starts from the last one's 30 best candidates (its
        // answer), and a key of the true top 30 in the pool is never pushed out (fewer than 30
        // keys beat it), so no head loses a hit from step to step.
        for s in 1..<4 {
          for h in 0..<hq { #expect(hits(steps[s])[h] >= hits(steps[s - 1])[h], "step \(s), head \(h), grouped \(grouped), seed \(seed)") }
          #expect(steps[s].statistics.seedKeys == 30 * hq, "\(steps[s].statistics)")
        }
        #expect(steps[0].statistics.seedKeys == 0)
      } else {
        for s in 1..<4 {
          #expect(steps[s].retrievedKeys! == steps[0].retrievedKeys! && steps[s].result.output == steps[0].result.output)
          #expect(steps[s].statistics.keysScanned == steps[0].statistics.keysScanned && steps[s].statistics.seedKeys == 0)
        }
      }
    }
    // A fork carries the seeds: its next step equals the parent's.
    var c = config(topK: 30, width: 40, buildQueries: 400)
    c.groupedSearch = grouped
    let dec = try RetrievalDecoder(configuration: c)
    try dec.buildIndex(cache: cache, layer: 0, sequence: seqs[0], prefillQueries: pq)
    _ = try dec.step(queries: q, cache: cache, layer: 0, sequences: seqs, options: options)
    let child = try cache.fork(seqs[0])
    dec.fork(seqs[0], as: child)
    let a = try dec.step(queries: q, cache: cache, layer: 0, sequences: seqs, options: options, recordKeys: true)
    let b = try dec.step(queries: q, cache: cache, layer: 0, sequences: [child], options: options, recordKeys: true)
    #expect(a.retrievedKeys! == b.retrievedKeys!)
  }

  @Test("early termination (patience) in the per-head search scans less and still returns top-k results")
  func patiencePerHead() throws {
    let seed = testSeed(32)
    let (hq, hkv, n, d) = (4, 2, 3000, 32)
    let (cache, seqs, pq, q, truth) = try clusteredSearchProblem(hq: hq, hkv: hkv, n: n, d: d, seed: seed)
    func run(_ patience: Int) throws -> RetrievalDecoder.Step {
      var c = config(topK: 30, width: 300, buildQueries: 400)
      c.patience = patience
      let dec = try RetrievalDecoder(configuration: c)
      try dec.buildIndex(cache: cache, layer: 0, sequence: seqs[0], prefillQueries: pq)
      return try dec.step(queries: q, cache: cache, layer: 0, sequences: seqs, options: AttentionOptions(causal: true), recordKeys: true)
    }
    let full = try run(0), early = try run(4), mild = try run(1000)
    #expect(early.statistics.keysScanned < full.statistics.keysScanned, "\(early.statistics) vs \(full.statistics)")
    #expect(early.retrievedKeys!.allSatisfy { $0.count == 30 })
    // A patience longer than the search changes nothing.
    #expect(mild.retrievedKeys! == full.retrievedKeys! && mild.statistics.keysScanned == full.statistics.keysScanned)
    var recall = 0.0
    for h in 0..<hq { recall += Double(Set(early.retrievedKeys![h]).intersection(truth[h]).count) / 30 / Double(hq) }
    #expect(recall >= 0.3, "recall \(recall) with patience 4, seed \(seed)")
  }

  @Test func decodingIsDeterministicForASeed() throws {
    let seed = testSeed(13)
    let (hq, hkv, n, d) = (4, 2, 3000, 32)
    let (k, pq) = clustered(hq: hq, hkv: hkv, n: n, m: 100, d: d, seed: seed)
    let v = Tensor.randomNormal(shape: [1, hkv, n, d], seed: seed + 1)
    var outputs: [Tensor] = []
    var retrieved: [[[Int]]] = []
    for threads in [1, 2, 2] {
      let (cache, seqs) = try makeCache(keys: [k], values: [v], pageSize: 64)
      var c = config(topK: 30, buildQueries: 200)
      c.seed = 42
      let dec = try RetrievalDecoder(configuration: c)
      try dec.buildIndex(cache: cache, layer: 0, sequence: seqs[0], prefillQueries: pq, threads: threads)
      try cache.append(seqs[0], keys: slice(k, from: 5, count: 3), values: slice(v, from: 9, count: 3))
      let (_, q) = clustered(hq: hq, hkv: hkv, n: 1, m: 1, d: d, seed: seed + 2)
      _ = try dec.step(queries: q, cache: cache, layer: 0, sequences: seqs, options: AttentionOptions(threads: threads))
      // A second step (seeded by the first) after another insert.
      try cache.append(seqs[0], keys: slice(k, from: 50, count: 1), values: slice(v, from: 60, count: 1))
      let r = try dec.step(queries: q, cache: cache, layer: 0, sequences: seqs, options: AttentionOptions(threads: threads), recordKeys: true)
      outputs.append(r.result.output)
      retrieved.append(r.retrievedKeys!)
    }
    #expect(outputs[0] == outputs[1] && outputs[1] == outputs[2], "seed \(seed)")
    #expect(retrieved[0] == retrieved[1] && retrieved[1] == retrieved[2])
  }

  @Test func errors() throws {
    let d = 16
    let (cache, seqs) = try makeCache(keys: [Tensor.randomNormal(shape: [1, 2, 300, d], seed: 1)], values: [Tensor.randomNormal(shape: [1, 2, 300, d], seed: 2)])
    let dec = try RetrievalDecoder(configuration: config(topK: 10))
    let q = Tensor.randomNormal(shape: [1, 4, 1, d], seed: 3)
    // No index yet.
    #expect(throws: SubqError.self) { try dec.step(queries: q, cache: cache, layer: 0, sequences: seqs, options: AttentionOptions()) }
    #expect(throws: SubqError.self) { try dec.buildIndex(cache: cache, layer: 0, sequence: seqs[0], prefillQueries: Tensor.randomNormal(shape: [3, 5, d], seed: 4)) }
    #expect(throws: SubqError.self) { try dec.buildIndex(cache: cache, layer: 0, sequence: seqs[0], prefillQueries: Tensor.randomNormal(shape: [4, 5, d + 1], seed: 4)) }
    try dec.buildIndex(cache: cache, layer: 0, sequence: seqs[0], prefillQueries: Tensor.randomNormal(shape: [4, 20, d], seed: 4))
    #expect(dec.hasIndex(seqs[0], layer: 0) && dec.memoryBytes > 0)
    _ = try dec.step(queries: q, cache: cache, layer: 0, sequences: seqs, options: AttentionOptions())
    #expect(throws: SubqError.self) { try dec.step(queries: q, cache: cache, layer: 0, sequences: seqs, options: AttentionOptions(alibiSlopes: Tensor(shape: [4], repeating: 0.1))) }
    // Truncated below the index: must rebuild.
    try cache.truncate(seqs[0], to: 200)
    #expect(throws: SubqError.self) { try dec.step(queries: q, cache: cache, layer: 0, sequences: seqs, options: AttentionOptions()) }
    #expect(throws: SubqError.self) { try RetrievalDecoder.configuration(MethodParameters(["top_k": "5"])) }
    #expect(throws: SubqError.self) { try RetrievalDecoder.configuration(MethodParameters(["degree": "1"])) }
    #expect(try RetrievalDecoder.configuration(MethodParameters(["width": "77", "exact": "true"])).searchWidth == 77)
  }
}

/// The standalone index.
struct InnerProductIndexTests {
  @Test("exact mode returns the true top-k (Float64 check)")
  func exactSearch() throws {
    let seed = testSeed(20)
    let (n, d) = (700, 19)
    let keys = Tensor.randomNormal(shape: [n, d], seed: seed)
    let index = try InnerProductIndex(keys: keys, queries: Tensor.randomNormal(shape: [50, d], seed: seed + 1),
                                      configuration: .init(queryNeighbors: 10, degree: 8, buildWidth: 16, entryPoints: 4))
    let ks = keys.scalars
    for t in 0..<10 {
      let q = Tensor.randomNormal(shape: [d], seed: seed + 10 + UInt64(t))
      let qs = q.scalars
      let scores = (0..<n).map { j in (0..<d).reduce(0.0) { $0 + Double(qs[$1]) * Double(ks[j * d + $1]) } }
      let truth = (0..<n).sorted { scores[$0] > scores[$1] || (scores[$0] == scores[$1] && $0 < $1) }.prefix(25)
      // The same keys in the same order, up to Float32 rounding of near-ties: the Float64 scores of
      // the returned keys, in order, match the true top-25 scores within 1e-5 of the largest.
      func matches(_ ids: [Int]) -> Bool {
        ids.count == 25 && Set(ids).count == 25
          && zip(ids, truth).allSatisfy { abs(scores[$0] - scores[$1]) <= 1e-5 * abs(scores[truth.first!]) }
      }
      let r = try index.exactSearch(q, k: 25)
      #expect(matches(r.ids) && r.scanned == n, "exact \(r.ids) truth \(Array(truth)), seed \(seed)")
      // The graph search with a pool as large as the set visits every reachable key: same answer.
      let g = try index.search(q, k: 25, width: n)
      #expect(matches(g.ids), "graph search with full width missed keys, seed \(seed)")
    }
  }

  @Test("graph search finds most of the true top-k while scanning a small fraction")
  func recallOnStructuredData() throws {
    let seed = testSeed(21)
    let (k, q) = clustered(hq: 1, hkv: 1, n: 20000, m: 600, d: 32, clusters: 32, seed: seed)
    let keys = try k.reshaped([20000, 32])
    let sample = try q.reshaped([600, 32])
    let index = try InnerProductIndex(keys: keys, queries: Tensor(shape: [500, 32], scalars: sample.scalars.prefix(500 * 32)))
    var recall = 0.0, scanned = 0
    for t in 500..<600 {
      let query = try Tensor(shape: [32], scalars: sample.scalars[(t * 32)..<(t * 32 + 32)])
      let exact = try index.exactSearch(query, k: 50).ids
      let found = try index.search(query, k: 50, width: 100)
      recall += Double(Set(exact).intersection(found.ids).count) / 50
      scanned += found.scanned
    }
    recall /= 100
    let fraction = Double(scanned) / 100 / 20000
    #expect(recall >= 0.9 && fraction <= 0.2, "recall \(recall), scanned \(fraction), seed \(seed)")
  }

  @Test("a search seeded with the answer returns it; seeds add to the entry points; patience cuts the scan")
  func seededSearch() throws {
    let seed = testSeed(33)
    let (k, q) = clustered(hq: 1, hkv: 1, n: 6000, m: 140, d: 32, clusters: 32, seed: seed)
    let keys = try k.reshaped([6000, 32])
    let sample = try q.reshaped([140, 32])
    // A deliberately weak graph (few edges, one entry point), so the narrow cold search misses
    // keys and the seeded checks below test something.
    let index = try InnerProductIndex(keys: keys, queries: Tensor(shape: [100, 32], scalars: sample.scalars.prefix(100 * 32)),
                                      configuration: .init(queryNeighbors: 16, degree: 6, buildWidth: 8, entryPoints: 1))
    var coldHits = 0, warmHits = 0, total = 0  // warm: half-seeded (not bounded by the cold search: another path)
    for t in 100..<140 {
      let query = try Tensor(shape: [32], scalars: sample.scalars[(t * 32)..<(t * 32 + 32)])
      let truth = try index.exactSearch(query, k: 30).ids
      // The narrowest pool: alone it misses part of the top 30 on this set.
      let cold = try index.search(query, k: 30, width: 30)
      // Seeded with the true top 30 (in any order) it returns exactly them, best first (by its
      // own Float32 scores: a near-tie may be ordered differently from the exact search's).
      let warm = try index.search(query, k: 30, width: 30, seeds: truth.reversed())
      #expect(Set(warm.ids) == Set(truth) && zip(warm.scores, warm.scores.dropFirst()).allSatisfy { $0 >= $1 },
              "query \(t), seed \(seed)")
      // Seeded with half of them, it keeps that half.
      let half = Array(truth.prefix(15))
      let part = try index.search(query, k: 30, width: 30, seeds: half)
      #expect(Set(half).isSubset(of: part.ids), "query \(t), seed \(seed)")
      coldHits += Set(cold.ids).intersection(truth).count
      warmHits += Set(part.ids).intersection(truth).count
      total += 30
      // Patience: never more keys scanned than the full search, still k results.
      let early = try index.search(query, k: 30, width: 120, patience: 2), full = try index.search(query, k: 30, width: 120)
      #expect(early.scanned <= full.scanned && early.ids.count == 30, "query \(t), seed \(seed)")
      #expect(try index.search(query, k: 30, width: 120, patience: 100_000) == full)
    }
    // The narrow cold search does miss keys here (else the seeded checks above prove nothing).
    #expect(coldHits < total, "cold \(coldHits), half-seeded \(warmHits) of \(total), seed \(seed)")
    #expect(throws: SubqError.self) { try index.search(Tensor(shape: [32]), k: 3, width: 8, seeds: [6000]) }
    #expect(throws: SubqError.self) { try index.search(Tensor(shape: [32]), k: 3, width: 8, patience: -1) }
  }

  @Test("keys inserted after the build are searchable")
  func inserts() throws {
    let seed = testSeed(22)
    let d = 24
    var index = try InnerProductIndex(keys: Tensor.randomNormal(shape: [2000, d], seed: seed), queries: Tensor.randomNormal(shape: [100, d], seed: seed + 1))
    let extra = Tensor.randomNormal(shape: [60, d], seed: seed + 2, std: 3)
    try index.insert(extra)
    #expect(index.count == 2060)
    let es = extra.scalars
    var found = 0
    for i in 0..<60 {
      // Query: the inserted key itself; its true top key (usually itself) must be reachable — a
      // search whose pool holds every key finds it — and a modest search finds it nearly always.
      let q = try Tensor(shape: [d], scalars: es[(i * d)..<(i * d + d)])
      let top = try index.exactSearch(q, k: 1).ids[0]
      #expect(try index.search(q, k: 1, width: index.count).ids == [top], "key \(top) unreachable after insert, seed \(seed)")
      if try index.search(q, k: 5, width: 64).ids.contains(top) { found += 1 }
    }
    #expect(found >= 57, "found \(found) of 60 inserted keys, seed \(seed)")
  }

  @Test func deterministicBuild() throws {
    let k = Tensor.randomNormal(shape: [3000, 16], seed: 5), q = Tensor.randomNormal(shape: [300, 16], seed: 6)
    let a = try InnerProductIndex(keys: k, queries: q, configuration: .init(seed: 9, threads: 1))
    let b = try InnerProductIndex(keys: k, queries: q, configuration: .init(seed: 9, threads: 2))
    let qq = Tensor.randomNormal(shape: [16], seed: 7)
    #expect(a.edgeCount == b.edgeCount)
    #expect(try a.search(qq, k: 10, width: 40) == b.search(qq, k: 10, width: 40))
  }

  @Test func rejectsBadInput() throws {
    #expect(throws: SubqError.self) { try InnerProductIndex(keys: Tensor(shape: [0, 4]), queries: Tensor(shape: [1, 4])) }
    #expect(throws: SubqError.self) { try InnerProductIndex(keys: Tensor(shape: [5, 4]), queries: Tensor(shape: [1, 3])) }
    #expect(throws: SubqError.self) { try InnerProductIndex(keys: Tensor(shape: [5, 4], repeating: .nan), queries: Tensor(shape: [1, 4])) }
    #expect(throws: SubqError.self) { try InnerProductIndex(keys: Tensor(shape: [5, 4]), queries: Tensor(shape: [1, 4]), configuration: .init(degree: 1)) }
    var i = try InnerProductIndex(keys: Tensor.randomNormal(shape: [5, 4], seed: 1), queries: Tensor.randomNormal(shape: [2, 4], seed: 2))
    #expect(throws: SubqError.self) { try i.insert(Tensor(shape: [2, 5])) }
    #expect(throws: SubqError.self) { try i.search(Tensor(shape: [3]), k: 1, width: 4) }
    // Early termination applies to both searches; a negative patience is an error.
    var c = RetrievalDecoder.Configuration()
    c.patience = 8
    c.groupedSearch = false
    #expect(throws: Never.self) { try RetrievalDecoder(configuration: c) }
    c.groupedSearch = true
    #expect(throws: Never.self) { try RetrievalDecoder(configuration: c) }
    c.patience = -1
    #expect(throws: SubqError.self) { try RetrievalDecoder(configuration: c) }
  }
}
