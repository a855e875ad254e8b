import Foundation
import Subquadratic
import SubqTestSupport
import Testing

/// The sequence-parallel algorithms on in-process ranks (threads): the result must equal
/// single-process flash for every variant, rank count 1…4, causal and not, lengths not divisible
/// by the rank count (and shorter than the zig-zag chunk count), grouped-query heads.
///
/// Tolerance: relative Frobenius error ≤ 1e-5 against single-process flash and against the
/// Float64 reference. Each rank runs the same flash kernel on sub-blocks, so the only differences
/// are the order of the online-softmax updates and the log-sum-exp merges (a few ulps in Float32,
/// ~1e-7 relative); a missing block, a wrong mask offset or a mis-merged row gives errors of
/// order 1e-2 or more, and an unwritten row gives NaN (buffers start as NaN).
@Suite struct SequenceParallelTests {
  struct Case: CustomStringConvertible {
    var batch = 1, heads = 4, kvHeads = 2, length = 37, dim = 24, valueDim = 20
    var description: String { "B=\(batch) Hq=\(heads) Hkv=\(kvHeads) N=\(length) D=\(dim) Dv=\(valueDim)" }
  }

  static let cases: [Case] = [
    Case(),                                                              // GQA, N not divisible by 2, 3, 4, 6, 8
    Case(batch: 2, heads: 3, kvHeads: 1, length: 29, dim: 16, valueDim: 16),  // MQA, 3 heads on 4 ranks
    Case(batch: 1, heads: 6, kvHeads: 2, length: 7, dim: 8, valueDim: 5),     // N < 2P: empty zig-zag chunks
    Case(batch: 1, heads: 2, kvHeads: 2, length: 130, dim: 33, valueDim: 17), // several flash blocks per chunk
  ]

  func inputs(_ c: Case, seed: UInt64) -> (Tensor, Tensor, Tensor) {
    (Tensor.randomNormal(shape: [c.batch, c.heads, c.length, c.dim], seed: seed),
     Tensor.randomNormal(shape: [c.batch, c.kvHeads, c.length, c.dim], seed: seed &+ 1),
     Tensor.randomNormal(shape: [c.batch, c.kvHeads, c.length, c.valueDim], seed: seed &+ 2))
  }

  @Test(arguments: SequenceParallelAttention.Variant.allCases)
  func matchesSingleProcessFlash(_ variant: SequenceParallelAttention.Variant) throws {
    let seed = testSeed()
    let method = try SequenceParallelAttention(variant: variant)
    for (ci, c) in Self.cases.enumerated() {
      let (q, k, v) = inputs(c, seed: seed &+ UInt64(ci) * 10)
      for causal in [false, true] {
        let options = AttentionOptions(causal: causal, returnLSE: true, threads: 1)
        let single = try FlashAttention().attention(queries: q, keys: k, values: v, options: options)
        let ref = try NaiveAttention.reference(queries: q, keys: k, values: v, options: options)
        for P in 1...4 {
          let world = InProcessWorld(size: P)
          let results = try world.run { comm in
            try method.attention(queries: comm.rank == 0 ? q : nil, keys: comm.rank == 0 ? k : nil,
                                 values: comm.rank == 0 ? v : nil, options: options, communicator: comm)
          }
          let label = "\(variant) P=\(P) causal=\(causal) \(c) seed \(seed)"
          let r = try #require(results[0].result, "\(label): root has no result")
          #expect(results.dropFirst().allSatisfy { $0.result == nil }, "\(label)")
          #expect(r.output.shape == [c.batch, c.heads, c.length, c.valueDim], "\(label)")
          #expect(!hasNaN(r.output), "\(label): NaN in output")
          let e = relativeError(r.output, single.output)
          #expect(e <= 1e-5, "\(label): error vs flash \(e)")
          #expect(relativeError(r.output, ref.output) <= 1e-5, "\(label): error vs Float64 reference")
          let lse = try #require(r.lse)
          #expect(worstRelative(lse, single.lse!.scalars.map(Double.init)).error <= 1e-5, "\(label): LSE")
          #expect(world.undelivered == 0, "\(label): \(world.undelivered) messages never received")
          for s in results.map(\.stats) {
            #expect(s.steps == (variant == .heads ? 1 : P), "\(label): rank \(s.rank) steps \(s.steps)")
            if P == 1 { #expect(s.bytesSent == 0, "\(label): one rank sends nothing") }
          }
          // All ranks together compute exactly the visible pairs once.
          let flops = results.map(\.stats.flops).reduce(0, +)
          let expected = ref.problem.flops
          #expect(abs(flops - expected) <= 1e-9 * expected, "\(label): FLOPs \(flops) vs \(expected)")
        }
      }
    }
  }

  /// Ring Attention's traffic is exactly (P − 1) key/value chunk transfers per rank.
  @Test func ringSendsEachKeyValueChunkPMinusOneTimes() throws {
    let c = Case(batch: 1, heads: 4, kvHeads: 2, length: 50, dim: 8, valueDim: 6)
    let (q, k, v) = inputs(c, seed: testSeed())
    let method = try SequenceParallelAttention(variant: .ring)
    for causal in [false, true] {
      let P = 3
      let results = try InProcessWorld(size: P).run { comm in
        try method.attention(queries: comm.rank == 0 ? q : nil, keys: comm.rank == 0 ? k : nil, values: comm.rank == 0 ? v : nil,
                             options: AttentionOptions(causal: causal, threads: 1), communicator: comm)
      }
      let part = method.partition(length: c.length, ranks: P, causal: causal)
      for s in results.map(\.stats) {
        // Rank i sends the chunks of ranks i, i−1, …, i−P+2.
        let chunks = (0..<(P - 1)).map { part.localLength((s.rank - $0 + P) % P) }.reduce(0, +)
        #expect(s.bytesSent == chunks * c.kvHeads * (c.dim + c.valueDim) * 4, "causal=\(causal) rank \(s.rank)")
        #expect(s.messagesSent == P - 1)
      }
    }
  }

  /// Causal TokenRing sends only the query rows that can see the next rank's keys.
  @Test func causalTokenRingSendsLess() throws {
    let c = Case(batch: 1, heads: 2, kvHeads: 2, length: 64, dim: 8, valueDim: 8)
    let (q, k, v) = inputs(c, seed: testSeed())
    let method = try SequenceParallelAttention(variant: .tokenring)
    func bytes(_ causal: Bool) throws -> Int {
      try InProcessWorld(size: 4).run { comm in
        try method.attention(queries: comm.rank == 0 ? q : nil, keys: comm.rank == 0 ? k : nil, values: comm.rank == 0 ? v : nil,
                             options: AttentionOptions(causal: causal, threads: 1), communicator: comm).stats.bytesSent
      }.reduce(0, +)
    }
    let full = try bytes(false), causal = try bytes(true)
    // Non-causal: every step moves all queries and all partials of every rank.
    #expect(full == 4 * 3 * 16 * c.heads * (c.dim + c.valueDim + 1) * 4)
    // Causal (zig-zag, equal chunks): a query block travels full until it wraps past rank 0 and
    // half (its late chunk) after; partials likewise. Over all owners half the hops are full and
    // half are half-size: 3/4 of the non-causal traffic.
    #expect(causal * 4 == full * 3, "causal \(causal) vs non-causal \(full)")
  }

  /// Shards already on their ranks give the same rows as the root-based call.
  @Test(arguments: SequenceParallelAttention.Variant.allCases)
  func shardAPI(_ variant: SequenceParallelAttention.Variant) throws {
    let c = Case(batch: 2, heads: 4, kvHeads: 2, length: 23, dim: 12, valueDim: 10)
    let (q, k, v) = inputs(c, seed: testSeed())
    let method = try SequenceParallelAttention(variant: variant)
    for causal in [false, true] {
      let options = AttentionOptions(causal: causal, returnLSE: true, threads: 1)
      let single = try FlashAttention().attention(queries: q, keys: k, values: v, options: options)
      let P = 3
      let part = method.partition(length: c.length, ranks: P, causal: causal)
      @Sendable func rows(_ t: Tensor, _ r: Int) -> Tensor {
        let (G, N, X) = (t.shape[0] * t.shape[1], t.shape[2], t.shape[3])
        let ranges = part.rows(ofRank: r)
        let n = ranges.reduce(0) { $0 + $1.count }
        var out: [Float] = []
        let s = t.scalars
        for g in 0..<G { for range in ranges { for i in range { out += s[(g * N + i) * X..<(g * N + i + 1) * X] } } }
        return try! Tensor(shape: [t.shape[0], t.shape[1], n, X], scalars: out)
      }
      let results = try InProcessWorld(size: P).run { comm in
        try method.attention(shardQueries: rows(q, comm.rank), keys: rows(k, comm.rank), values: rows(v, comm.rank),
                             length: c.length, options: options, communicator: comm)
      }
      for (r, res) in results.enumerated() {
        let expect = rows(single.output, r)
        #expect(relativeError(res.result.output, expect) <= 1e-5, "\(variant) causal=\(causal) rank \(r)")
        #expect(res.result.lse!.shape == [c.batch, c.heads, part.localLength(r)])
      }
    }
  }

  @Test func partitionCoversTheSequence() {
    for n in [1, 5, 7, 37, 64] {
      for P in 1...5 {
        for zigzag in [false, true] {
          let part = SequencePartition(length: n, ranks: P, zigzag: zigzag)
          let all = (0..<P).flatMap { part.rows(ofRank: $0).flatMap { Array($0) } }.sorted()
          #expect(all == Array(0..<n), "n=\(n) P=\(P) zigzag=\(zigzag)")
          let sizes = (0..<part.chunkCount).map { part.chunk($0).count }
          #expect(sizes.max()! - sizes.min()! <= 1)
        }
      }
    }
    // Zig-zag: rank r holds chunks r and 2P − 1 − r.
    #expect(SequencePartition(length: 16, ranks: 4, zigzag: true).rows(ofRank: 1) == [2..<4, 12..<14])
  }

  /// Bad inputs: the root throws the real error, the other ranks say the root rejected the call.
  @Test func errors() throws {
    let method = try SequenceParallelAttention(variant: .ring)
    let q = Tensor.randomNormal(shape: [1, 4, 10, 8], seed: 1)
    let k = Tensor.randomNormal(shape: [1, 3, 10, 8], seed: 2)
    let k12 = Tensor.randomNormal(shape: [1, 2, 12, 8], seed: 2)
    let v12 = Tensor.randomNormal(shape: [1, 2, 12, 8], seed: 3)
    // Data errors are found by the root only; option errors by every rank (each has the options).
    let cases: [(Tensor, Tensor, Tensor, AttentionOptions, String, Bool)] = [
      (q, k, k, AttentionOptions(), "multiple of key/value heads", false),
      (q, k12, v12, AttentionOptions(), "self-attention", false),
      (q, k12, v12, AttentionOptions(window: AttentionWindow(left: 2, right: 0)), "window is not supported", true),
      (q, k12, v12, AttentionOptions(layout: .bshd), "layout bshd", true),
      (q, k12, v12, AttentionOptions(threads: 0), "threads", true),
    ]
    for (q, k, v, o, message, everyRank) in cases {
      let errors = try InProcessWorld(size: 2).run { comm -> String in
        do throws(SubqError) {
          _ = try method.attention(queries: comm.rank == 0 ? q : nil, keys: comm.rank == 0 ? k : nil,
                                   values: comm.rank == 0 ? v : nil, options: o, communicator: comm)
          return "no error"
        } catch {
          return error.description
        }
      }
      #expect(errors[0].contains(message), "\(errors[0])")
      #expect(errors[0].hasPrefix("attention.ring"), "\(errors[0])")
      #expect(errors[1].contains(everyRank ? message : "rank 0 rejected"), "\(errors[1])")
    }
  }
}
