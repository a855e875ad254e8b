import SubqAttention
import SubqCore

/// What one rank did in one sequence-parallel attention call.
public struct SequenceParallelStats: Sendable, Codable, Equatable {
  /// This rank and the number of ranks.
  public var rank: Int
  public var ranks: Int
  /// Wall time of the attention phase (after the inputs are distributed, before the outputs are
  /// gathered).
  public var attentionSeconds = 0.0
  /// Time spent computing in the attention phase: flash, merges and packing.
  public var computeSeconds = 0.0
  /// Time spent blocked waiting for transfers in the attention phase (communication not hidden
  /// behind compute).
  public var waitSeconds = 0.0
  /// Bytes and messages this rank sent in the attention phase.
  public var bytesSent = 0
  public var messagesSent = 0
  /// Attention FLOPs this rank computed (visible pairs × (2·D + 2·Dv)).
  public var flops = 0.0
  /// Communication steps of the variant (P for ring and tokenring, 1 for heads).
  public var steps = 0
  /// Time and bytes sent to distribute the inputs and collect the outputs (root-based calls only).
  public var distributionSeconds = 0.0
  public var distributionBytesSent = 0

  public init(rank: Int, ranks: Int) {
    self.rank = rank
    self.ranks = ranks
  }
}

/// Exact attention of one long sequence split across processes (ranks): Ring Attention,
/// TokenRing, or head-parallel attention, over any ``Communicator`` (MPI in `subq ring`).
///
/// Self-attention only (Nq = Nk = N): the sequence is cut into chunks that the ranks hold
/// (``SequencePartition``; zig-zag for causal ring and tokenring, so the causal triangle's work
/// is balanced). Each rank runs ``FlashAttention`` on the blocks it holds and merges partial
/// results with the exact log-sum-exp rule, so the result equals single-process flash up to
/// rounding (only the order of the additions differs: relative error about 1e-7 at short lengths,
/// 1e-6 at N = 4096). Lengths need not be divisible by the rank count; key/value
/// heads may be fewer than query heads (grouped-query attention).
///
/// - ``Variant/ring``: key/value chunks travel around the ring; each transfer overlaps the flash
///   of the chunk the rank holds (Liu, Zaharia, Abbeel, "Ring Attention with Blockwise
///   Transformers for Near-Infinite Context", 2023).
/// - ``Variant/tokenring``: keys/values stay; queries travel one way and partial outputs return
///   to their owners the other way, using both directions of each link (Wang et al., "TokenRing:
///   An Efficient Parallelism Framework for Infinite-Context LLMs via Bidirectional
///   Communication", arXiv 2412.20501).
/// - ``Variant/heads``: an all-to-all switches from a sequence split to a head split and back
///   (the distributed multi-head attention of He and Kabic, "A Unified View of Long-Sequence
///   Models towards Modeling Million-Scale Dependencies", arXiv 2302.06218; DeepSpeed-Ulysses
///   has the same pattern).
///
/// Options: `causal`, `scale`, `softcap`, `threads` (per rank), `returnLSE`, `allowNonFinite`;
/// layout bhsd. Windows, ALiBi, key lengths and packed sequences are rejected.
///
/// - Complexity per rank: O(B·Hq·N²·(D + Dv)/P) time (about half when causal); memory O(N/P·(D + Dv))
///   per head for ring and tokenring (its shard plus two chunks in flight), O(N·(D + Dv)) per head of
///   its own for heads. Bytes sent per rank: ring (P − 1)·B·Hkv·(N/P)·(D + Dv)·4; tokenring up to
///   (P − 1)·B·Hq·(N/P)·(D + Dv + 1)·4 split over both directions (about half when causal); heads
///   2·(P − 1)/P of its shard.
public struct SequenceParallelAttention: Sendable {
  /// The algorithm that moves data between ranks.
  public enum Variant: String, Sendable, CaseIterable, Codable {
    case ring, tokenring, heads
  }

  public static let supportedFeatures: Set<String> = ["causal", "softcap"]

  public var variant: Variant
  /// The kernel each rank runs on its blocks.
  public var flash: FlashAttention

  public init(variant: Variant = .ring, flash: FlashAttention? = nil) throws(SubqError) {
    self.variant = variant
    if let flash { self.flash = flash } else { self.flash = try FlashAttention() }
  }

  var op: String { "attention.\(variant.rawValue)" }

  /// The rows each rank holds for a sequence of `length` over `ranks`: zig-zag for causal ring
  /// and tokenring, contiguous otherwise.
  public func partition(length: Int, ranks: Int, causal: Bool) -> SequencePartition {
    SequencePartition(length: length, ranks: ranks, zigzag: causal && variant != .heads)
  }

  // MARK: - Shards already on their ranks

  /// Attention of a sequence whose rows are already spread over the ranks: every rank calls this
  /// with its own shard.
  ///
  /// - Parameters:
  ///   - queries: this rank's rows of Q, `[B, Hq, n, D]` with n = `partition(…).localLength(rank)`
  ///     and the rows in the partition's local order.
  ///   - keys: `[B, Hkv, n, D]`; `values`: `[B, Hkv, n, Dv]`, the same rows.
  ///   - length: N, the whole sequence's length.
  ///   - options: the same on every rank.
  /// - Returns: this rank's rows of the output `[B, Hq, n, Dv]` and (when `returnLSE`) of the
  ///   log-sum-exp `[B, Hq, n]`, with what this rank did.
  /// - Throws: ``SubqError`` naming the problem on the rank that found it; the other ranks throw
  ///   an error naming that rank. Collective: every rank must call it.
  public func attention<C: Communicator>(
    shardQueries queries: Tensor, keys: Tensor, values: Tensor, length: Int, options: AttentionOptions,
    communicator comm: C
  ) throws(SubqError) -> (result: AttentionResult, stats: SequenceParallelStats) {
    var geometry: ShardGeometry? = nil
    var failure: SubqError? = nil
    do throws(SubqError) {
      let check = try checkOptions(options)
      let p = try AttentionProblem.validate(op: op, queries: queries, keys: keys, values: values, options: check)
      let part = partition(length: length, ranks: comm.size, causal: options.causal)
      let n = part.localLength(comm.rank)
      if length < 1 { throw .argument(op: op, name: "length", value: "\(length)", reason: "must be at least 1") }
      if p.queryLength != n || p.keyLength != n {
        throw .shape(op: op, tensor: p.queryLength != n ? "Q" : "K", shape: p.queryLength != n ? queries.shape : keys.shape,
                     reason: "rank \(comm.rank) of \(comm.size) holds \(n) of the \(length) rows (\(variant.rawValue) partition)")
      }
      geometry = ShardGeometry(batch: p.batch, queryHeads: p.queryHeads, keyValueHeads: p.keyValueHeads, length: length,
                               headDim: p.headDim, valueDim: p.valueDim, causal: options.causal, scale: p.scale,
                               softcap: p.softcap, threads: p.threads)
    } catch {
      failure = error
    }
    // Every rank must agree on the global shape and options: compare with rank 0's.
    var header = encode(geometry)
    header.withUnsafeMutableBytes { comm.broadcast($0, root: 0) }
    if failure == nil, let mine = geometry, decode(header).map({ $0.sameCall(as: mine) }) != true {
      failure = .argument(op: op, name: "shard", value: "rank \(comm.rank)",
                          reason: "shapes or options differ from rank 0's (every rank must describe the same call)")
    }
    let status = comm.agree(failure == nil ? 0 : Int32(comm.rank + 1))
    if let failure { throw failure }
    if status != 0 {
      throw .argument(op: op, name: "shard", value: "rank \(status - 1)", reason: "rank \(status - 1) rejected its inputs")
    }
    let g = geometry!
    let part = partition(length: length, ranks: comm.size, causal: g.causal)
    let n = part.localLength(comm.rank)
    let run = ShardRun(comm: comm, geometry: g, partition: part, flash: flash, op: op)
    let outBuf = FloatBuffer(count: PartialRows.floats(groups: g.queryGroups, rows: n, width: g.valueDim))
    let out = PartialRows(outBuf.pointer, groups: g.queryGroups, rows: n, width: g.valueDim)
    queries.withUnsafeBufferPointer { q in
      keys.withUnsafeBufferPointer { k in
        values.withUnsafeBufferPointer { v in
          run.run(variant, q: q.baseAddress!, k: k.baseAddress!, v: v.baseAddress!, out: out)
        }
      }
    }
    let o = Tensor(shape: [g.batch, g.queryHeads, n, g.valueDim]) { $0.baseAddress!.update(from: out.o.base, count: out.o.count) }
    let lse = options.returnLSE ? Tensor(shape: [g.batch, g.queryHeads, n]) { $0.baseAddress!.update(from: out.lse, count: g.queryGroups * n) } : nil
    return (AttentionResult(output: o, lse: lse), run.stats)
  }

  // MARK: - Whole tensors on one rank

  /// Attention of whole tensors held by rank `root`: the root scatters every rank's rows, the
  /// ranks compute together, and the root gathers the output.
  ///
  /// - Parameters:
  ///   - queries, keys, values: on `root`, the whole `[B, Hq, N, D]`, `[B, Hkv, N, D]`,
  ///     `[B, Hkv, N, Dv]` (bhsd); ignored (pass nil) on the other ranks.
  ///   - options: the same on every rank (checked).
  /// - Returns: on `root` the output `[B, Hq, N, Dv]` (and log-sum-exp `[B, Hq, N]` when
  ///   `returnLSE`); nil on the other ranks. Every rank gets its statistics.
  /// - Throws: on `root`, the ``SubqError`` that rejected the inputs; on the other ranks an error
  ///   saying the root rejected them. Collective: every rank must call it.
  public func attention<C: Communicator>(
    queries: Tensor?, keys: Tensor?, values: Tensor?, options: AttentionOptions, root: Int = 0, communicator comm: C
  ) throws(SubqError) -> (result: AttentionResult?, stats: SequenceParallelStats) {
    precondition(root >= 0 && root < comm.size, "\(op): root \(root) outside 0..<\(comm.size)")
    let isRoot = comm.rank == root
    var geometry: ShardGeometry? = nil
    var failure: SubqError? = nil
    do throws(SubqError) {
      let check = try checkOptions(options)
      if isRoot {
        guard let queries, let keys, let values else {
          throw .argument(op: op, name: "inputs", value: "nil", reason: "the root rank must pass Q, K and V")
        }
        let p = try AttentionProblem.validate(op: op, queries: queries, keys: keys, values: values, options: check)
        if p.keyLength != p.queryLength {
          throw .shape(op: op, tensor: "K", shape: keys.shape,
                       reason: "sequence-parallel attention is self-attention: K's length \(p.keyLength) must equal Q's \(p.queryLength)")
        }
        geometry = ShardGeometry(batch: p.batch, queryHeads: p.queryHeads, keyValueHeads: p.keyValueHeads, length: p.queryLength,
                                 headDim: p.headDim, valueDim: p.valueDim, causal: options.causal, scale: p.scale,
                                 softcap: p.softcap, threads: p.threads)
      }
    } catch {
      failure = error
    }
    var header = encode(isRoot ? geometry : nil)
    header.withUnsafeMutableBytes { comm.broadcast($0, root: root) }
    let rootGeometry = decode(header)
    if failure == nil, !isRoot {
      // The root's shapes with this rank's own scale default, softcap and threads.
      if let r = rootGeometry {
        let scale = options.scale ?? Float(1 / Double(r.headDim).squareRoot())
        let mine = ShardGeometry(batch: r.batch, queryHeads: r.queryHeads, keyValueHeads: r.keyValueHeads, length: r.length,
                                 headDim: r.headDim, valueDim: r.valueDim, causal: options.causal, scale: scale,
                                 softcap: options.softcap, threads: options.threads ?? Parallel.defaultThreads)
        if !mine.sameCall(as: r) {
          failure = .argument(op: op, name: "options", value: "rank \(comm.rank)", reason: "causal, scale or softcap differ from the root's")
        }
        geometry = mine
      }
    }
    let status = comm.agree(failure == nil && rootGeometry != nil ? 0 : Int32(comm.rank + 1))
    if let failure { throw failure }
    if status != 0 {
      throw .argument(op: op, name: "inputs", value: "rank \(status - 1)", reason: "rank \(status - 1) rejected the call")
    }
    let g = geometry!
    let part = partition(length: g.length, ranks: comm.size, causal: g.causal)
    let run = ShardRun(comm: comm, geometry: g, partition: part, flash: flash, op: op)
    let n = part.localLength(comm.rank)
    let D = g.headDim, Dv = g.valueDim

    // Scatter: one message per rank with its rows of Q, then K, then V.
    let t0 = monotonicSeconds()
    func shardFloats(_ r: Int) -> Int { part.localLength(r) * (g.queryGroups * D + g.keyGroups * (D + Dv)) }
    let shard = FloatBuffer(count: shardFloats(comm.rank))
    func pack(_ r: Int, into dst: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>) {
      let nr = part.localLength(r)
      var t = 0
      for rows in part.rows(ofRank: r) {
        copyRows(RowArray(base: .init(mutating: q), groups: g.queryGroups, rows: g.length, width: D), from: rows.lowerBound,
                 RowArray(base: dst, groups: g.queryGroups, rows: nr, width: D), to: t, count: rows.count)
        copyRows(RowArray(base: .init(mutating: k), groups: g.keyGroups, rows: g.length, width: D), from: rows.lowerBound,
                 RowArray(base: dst + g.queryGroups * nr * D, groups: g.keyGroups, rows: nr, width: D), to: t, count: rows.count)
        copyRows(RowArray(base: .init(mutating: v), groups: g.keyGroups, rows: g.length, width: Dv), from: rows.lowerBound,
                 RowArray(base: dst + nr * (g.queryGroups * D + g.keyGroups * D), groups: g.keyGroups, rows: nr, width: Dv),
                 to: t, count: rows.count)
        t += rows.count
      }
    }
    if isRoot {
      queries!.withUnsafeBufferPointer { q in
        keys!.withUnsafeBufferPointer { k in
          values!.withUnsafeBufferPointer { v in
            var sends: [FloatBuffer] = []
            var transfers: [Transfer] = []
            for r in 0..<comm.size {
              if r == root {
                pack(r, into: shard.pointer, q: q.baseAddress!, k: k.baseAddress!, v: v.baseAddress!)
                continue
              }
              let buf = FloatBuffer(count: shardFloats(r))
              pack(r, into: buf.pointer, q: q.baseAddress!, k: k.baseAddress!, v: v.baseAddress!)
              sends.append(buf)
              transfers.append(.send(UnsafeRawBufferPointer(buf.bytes(0..<buf.count)), to: r, tag: RingTag.scatter))
              run.stats.distributionBytesSent += buf.count * 4
            }
            if !transfers.isEmpty { comm.wait(comm.start(transfers)) }
            withExtendedLifetime(sends) {}
          }
        }
      }
    } else {
      comm.wait(comm.start([.receive(into: shard.bytes(0..<shard.count), from: root, tag: RingTag.scatter)]))
    }
    run.stats.distributionSeconds += monotonicSeconds() - t0

    let outFloats = PartialRows.floats(groups: g.queryGroups, rows: n, width: Dv)
    let outBuf = FloatBuffer(count: outFloats)
    let out = PartialRows(outBuf.pointer, groups: g.queryGroups, rows: n, width: Dv)
    let qs = shard.pointer, ks = qs + g.queryGroups * n * D, vs = ks + g.keyGroups * n * D
    run.run(variant, q: qs, k: ks, v: vs, out: out)

    // Gather: every rank sends its output rows and log-sum-exp to the root.
    let t1 = monotonicSeconds()
    var result: AttentionResult? = nil
    if isRoot {
      var o = Tensor(shape: [g.batch, g.queryHeads, g.length, Dv], repeating: 0)
      var lse = Tensor(shape: [g.batch, g.queryHeads, g.length], repeating: 0)
      var parts: [Int: FloatBuffer] = [:]
      var transfers: [Transfer] = []
      for r in 0..<comm.size where r != root {
        let buf = FloatBuffer(count: PartialRows.floats(groups: g.queryGroups, rows: part.localLength(r), width: Dv))
        parts[r] = buf
        transfers.append(.receive(into: buf.bytes(0..<buf.count), from: r, tag: RingTag.gather))
      }
      if !transfers.isEmpty { comm.wait(comm.start(transfers)) }
      withExtendedLifetime(parts) {}
      o.withUnsafeMutableBufferPointer { ob in
        lse.withUnsafeMutableBufferPointer { lb in
          let full = PartialRows(ob.baseAddress!, groups: g.queryGroups, rows: g.length, width: Dv)
          for r in 0..<comm.size {
            let nr = part.localLength(r)
            let src = r == root ? out : PartialRows(parts[r]!.pointer, groups: g.queryGroups, rows: nr, width: Dv)
            var t = 0
            for rows in part.rows(ofRank: r) {
              copyRows(src.o, from: t, full.o, to: rows.lowerBound, count: rows.count)
              for gr in 0..<g.queryGroups {
                (lb.baseAddress! + gr * g.length + rows.lowerBound).update(from: src.lse + gr * nr + t, count: rows.count)
              }
              t += rows.count
            }
          }
        }
      }
      result = AttentionResult(output: o, lse: options.returnLSE ? lse : nil)
    } else {
      comm.wait(comm.start([.send(UnsafeRawBufferPointer(outBuf.bytes(0..<outFloats)), to: root, tag: RingTag.gather)]))
      run.stats.distributionBytesSent += outFloats * 4
    }
    // Transfers borrow these buffers: keep them alive to the end (Swift may end a lifetime early).
    withExtendedLifetime((shard, outBuf)) {}
    run.stats.distributionSeconds += monotonicSeconds() - t1
    return (result, run.stats)
  }

  // MARK: - Helpers

  /// Rejects options this call does not implement; returns the options used to validate shapes.
  func checkOptions(_ o: AttentionOptions) throws(SubqError) -> AttentionOptions {
    for f in o.activeFeatures where !Self.supportedFeatures.contains(f) {
      throw .unsupported(op: op, feature: f, reason: "sequence-parallel attention implements causal and softcap")
    }
    if let t = o.threads, t < 1 {
      throw .argument(op: op, name: "threads", value: "\(t)", reason: "must be at least 1")
    }
    if o.layout != .bhsd {
      throw .unsupported(op: op, feature: "layout \(o.layout.rawValue)", reason: "sequence-parallel attention takes bhsd ([B, H, N, D]) tensors")
    }
    // Shapes, scale, softcap, threads and finiteness are checked as for one process; causal
    // masking is applied per block.
    return AttentionOptions(scale: o.scale, softcap: o.softcap, allowNonFinite: o.allowNonFinite, threads: o.threads)
  }

  func encode(_ g: ShardGeometry?) -> [Int64] {
    guard let g else { return [Int64](repeating: 0, count: 10) }
    return [1, Int64(g.batch), Int64(g.queryHeads), Int64(g.keyValueHeads), Int64(g.length), Int64(g.headDim),
            Int64(g.valueDim), g.causal ? 1 : 0, Int64(g.scale.bitPattern), g.softcap.map { Int64($0.bitPattern) } ?? -1]
  }

  func decode(_ h: [Int64]) -> ShardGeometry? {
    guard h[0] == 1 else { return nil }
    return ShardGeometry(batch: Int(h[1]), queryHeads: Int(h[2]), keyValueHeads: Int(h[3]), length: Int(h[4]),
                         headDim: Int(h[5]), valueDim: Int(h[6]), causal: h[7] == 1, scale: Float(bitPattern: UInt32(h[8])),
                         softcap: h[9] < 0 ? nil : Float(bitPattern: UInt32(h[9])), threads: 1)
  }
}

extension ShardGeometry {
  /// Same shapes and scoring (threads may differ per rank).
  func sameCall(as o: ShardGeometry) -> Bool {
    batch == o.batch && queryHeads == o.queryHeads && keyValueHeads == o.keyValueHeads && length == o.length
      && headDim == o.headDim && valueDim == o.valueDim && causal == o.causal && scale == o.scale && softcap == o.softcap
  }
}
