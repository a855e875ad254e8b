import SubqAttention
import SubqCore
import SubqKernels

/// Exact attention for decoding: a few new queries against a long key/value cache, split across
/// cores along the keys (Flash-Decoding).
///
/// Prefill kernels such as ``FlashAttention`` parallelize over query blocks, so a decode step —
/// one query per sequence and head — would leave all but a few cores idle while one streams the
/// whole cache. Split-KV decoding instead cuts the keys of each (sequence, key/value head) into
/// equal chunks, computes a partial result (normalized output and log-sum-exp, −∞ for a row
/// that sees no key of the chunk) for every chunk in parallel, and merges the partials with the
/// log-sum-exp rule (``PartialAttention``) — Dao, Haziza, Massa and Sizov, "Flash-Decoding for
/// long-context inference" (2023); Lean Attention (Sanovar et al., arXiv 2405.10480) is the
/// stream-K form of the same split.
///
/// All query heads of a GQA group, and up to 16 queries of a sequence, share one pass over their
/// key/value chunk, so each cached row is read once per step. The step is memory bound: it reads
/// `B · Hkv · Nk · (D + Dv)` stored elements, which ``PagedKVCache`` can hold as Float16 (half the
/// bytes, converted to Float32 in registers).
///
/// Masking and scoring options are those of ``AttentionOptions`` (causal with either alignment,
/// windows, softcap, ALiBi, key lengths, packed variable-length sequences), and the result equals
/// ``FlashAttention``'s up to rounding. Longer query blocks work (16 queries at a time) but prefill
/// is faster with ``FlashAttention``.
///
/// Differences from the reference CUDA code: the split count is chosen from the shape alone
/// (chunks of at least 512 keys, at most 128 chunks per unit and 4096 in all, so a prefill-sized
/// call keeps O(Nq·Dv) partials), not from the number of cores, so results do not depend on the
/// thread count; the dynamic work queue (``Parallel``) balances the chunks; the
/// combine step runs as a second parallel pass, as in Flash-Decoding (not Lean Attention's
/// host-block spin-wait).
///
/// - Complexity: O(B·Hq·Nq·Nk·(D + Dv)) time, O(splits · B · Hq · min(Nq, 16) · Dv) extra memory.
public struct SplitKVAttention: AttentionMethod {
  public static let info = MethodInfo(
    name: "splitkv",
    summary: "Exact attention for decoding (Flash-Decoding): keys split into chunks across cores, partials merged by log-sum-exp",
    paper: "Dao, Haziza, Massa, Sizov, Flash-Decoding for long-context inference (2023); Lean Attention (arXiv 2405.10480)",
    complexity: "O(Nq·Nk·D) time, O(splits·Nq·Dv) extra memory; made for Nq ≤ 16",
    isExact: true,
    parameters: [
      MethodParameter("splits", default: "0", "key chunks per (sequence, kv head); 0 = automatic (≥ 512 keys each, at most 128, at most 4096 in all)"),
    ],
    supportedFeatures: MethodInfo.allFeatures)

  /// Key chunks per (sequence, key/value head, 16 queries); 0 chooses automatically.
  public let splits: Int

  /// - Parameter splits: key chunks per (sequence, key/value head); 0 (the default) picks chunks of
  ///   at least 512 keys, at most 128 chunks per unit and at most 4096 chunks in all.
  public init(splits: Int = 0) throws(SubqError) {
    guard splits >= 0, splits <= 65536 else {
      throw .argument(op: "attention.splitkv", name: "splits", value: "\(splits)", reason: "must be in 0...65536 (0 = automatic)")
    }
    self.splits = splits
  }

  public init(parameters: MethodParameters) throws(SubqError) {
    try parameters.validate(for: Self.info)
    try self.init(splits: parameters.int("splits", Self.info, in: 0...65536))
  }

  public var parameterValues: [String: String] { ["splits": "\(splits)"] }

  /// Attention over contiguous key and value tensors (see ``AttentionMethod``).
  public func attention(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions) throws(SubqError) -> AttentionResult {
    let p = try AttentionProblem.validate(op: "attention.splitkv", queries: queries, keys: keys, values: values, options: options)
    var out = Tensor(shape: p.outputShape) { _ in }
    var lse: Tensor? = p.returnLSE ? Tensor(shape: p.lseShape) { _ in } : nil
    let plan = SplitKVPlan(p, splits: splits)
    queries.withUnsafeBufferPointer { q in
      keys.withUnsafeBufferPointer { k in
        values.withUnsafeBufferPointer { v in
          out.withUnsafeMutableBufferPointer { o in
            let kv = DecodeKV.tensors(k: k.baseAddress!, v: v.baseAddress!)
            if lse != nil {
              lse!.withUnsafeMutableBufferPointer { l in plan.execute(q: q.baseAddress!, kv: kv, out: o.baseAddress!, lse: l.baseAddress!) }
            } else {
              plan.execute(q: q.baseAddress!, kv: kv, out: o.baseAddress!, lse: nil)
            }
          }
        }
      }
    }
    return AttentionResult(output: out, lse: lse)
  }

  /// Attention of `queries` over sequences stored in a paged cache: one decode step of one layer.
  ///
  /// Batch entry b of `queries` (`[B, Hq, Nq, D]`, or `[B, Nq, Hq, D]` with the bshd layout)
  /// belongs to `sequences[b]` and attends to that sequence's positions `0..<length`, reading the
  /// pages in place; sequences may have different lengths. Its query i sits at position
  /// `length − Nq + i` for the causal mask and windows (bottom-right alignment; top-left puts it at
  /// i). The result equals ``FlashAttention`` over the sequences' keys and values as contiguous
  /// tensors (with `keyLengths` for unequal lengths).
  ///
  /// - Parameters:
  ///   - cache: the cache; its key/value heads, D and Dv must fit the queries (Hq a multiple of Hkv).
  ///   - layer: the layer to read.
  ///   - sequences: one sequence per batch entry (the same sequence may appear more than once).
  ///   - options: scale, causal mask and alignment, window, softcap, ALiBi, layout of Q and the
  ///     output, `returnLSE`, threads. `keyLengths` and `cuSeqlensQ/K` are rejected: the lengths
  ///     come from the cache.
  /// - Throws: ``SubqError`` for invalid queries or options, an unknown sequence or layer, or a
  ///   batch size that differs from the number of sequences.
  public func attention(
    queries: Tensor, cache: PagedKVCache, layer: Int, sequences: [PagedKVCache.SequenceID], options: AttentionOptions
  ) throws(SubqError) -> AttentionResult {
    let op = "attention.splitkv.paged"
    var views: [PagedSequenceView] = []
    for s in sequences { views.append(try cache.view(s, layer: layer)) }
    let batch = queries.rank == 4 ? queries.shape[0] : -1
    if queries.rank == 4 && batch != sequences.count {
      throw .shape(op: op, tensor: "Q", shape: queries.shape, reason: "batch \(batch) differs from the \(sequences.count) sequences given")
    }
    let c = cache.configuration
    let p = try AttentionProblem.validate(op: op, queries: queries, keyValueHeads: c.kvHeads, keyCounts: views.map(\.length),
                                          headDim: c.headDim, valueDim: c.valueDim, options: options)
    var out = Tensor(shape: p.outputShape) { _ in }
    var lse: Tensor? = p.returnLSE ? Tensor(shape: p.lseShape) { _ in } : nil
    let plan = SplitKVPlan(p, splits: splits)
    queries.withUnsafeBufferPointer { q in
      out.withUnsafeMutableBufferPointer { o in
        let kv = DecodeKV.paged(views)
        if lse != nil {
          lse!.withUnsafeMutableBufferPointer { l in plan.execute(q: q.baseAddress!, kv: kv, out: o.baseAddress!, lse: l.baseAddress!) }
        } else {
          plan.execute(q: q.baseAddress!, kv: kv, out: o.baseAddress!, lse: nil)
        }
      }
    }
    withExtendedLifetime(cache) {}
    return AttentionResult(output: out, lse: lse)
  }
}
