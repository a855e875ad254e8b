import SubqCore

/// One attention sequence: a batch entry, or one packed sequence of a variable-length batch.
public struct AttentionSequence: Sendable, Equatable {
  /// Batch index of the tensors it lives in.
  public var batch: Int
  /// First query row (along the sequence axis) and number of queries.
  public var queryStart: Int
  public var queryCount: Int
  /// First key row and number of visible keys.
  public var keyStart: Int
  public var keyCount: Int
  /// Causal/window alignment offset: `keyCount − queryCount` (bottom-right) or 0 (top-left).
  public var offset: Int
}

/// Where each row of a `[B, H, N, X]` (bhsd) or `[B, N, H, X]` (bshd) tensor lives.
public struct RowAddressing: Sendable, Equatable {
  public var batchStride: Int
  public var headStride: Int
  public var rowStride: Int

  public init(layout: AttentionLayout, heads: Int, length: Int, width: Int) {
    switch layout {
    case .bhsd:
      rowStride = width
      headStride = length * width
      batchStride = heads * length * width
    case .bshd:
      headStride = width
      rowStride = heads * width
      batchStride = length * heads * width
    }
  }

  /// Element offset of row `row` of head `head` in batch `batch`.
  @inlinable public func offset(batch: Int, head: Int, row: Int) -> Int {
    batch * batchStride + head * headStride + row * rowStride
  }
}

/// A validated attention call: shapes, resolved options and the sequences to process.
///
/// Every attention method starts from ``AttentionProblem/validate(op:queries:keys:values:options:)``,
/// so all of them accept the same inputs and reject bad ones with the same errors. Kernels rely on
/// everything checked here and never check again.
public struct AttentionProblem: Sendable {
  /// The operation name used in errors, e.g. `"attention.flash"`.
  public let op: String
  /// B, Hq, Hkv, Nq, Nk, D, Dv.
  public let batch: Int
  public let queryHeads: Int
  public let keyValueHeads: Int
  public let queryLength: Int
  public let keyLength: Int
  public let headDim: Int
  public let valueDim: Int
  public let layout: AttentionLayout
  /// The softmax scale τ.
  public let scale: Float
  /// Visible keys per query: `i + off − windowLeft ≤ j ≤ i + off + windowRight` (nil = unbounded).
  /// Causal attention has `windowRight = 0` (or less, when the user's window says so).
  public let windowLeft: Int?
  public let windowRight: Int?
  public let causal: Bool
  public let alignment: CausalAlignment
  public let softcap: Float?
  /// ALiBi slope per (batch, query head), `[B · Hq]`.
  public let alibi: [Float]?
  public let keyLengths: [Int]?
  public let isVarlen: Bool
  /// The sequences to process.
  public let sequences: [AttentionSequence]
  public let returnLSE: Bool
  public let threads: Int

  /// Query heads per key/value head.
  public var groupSize: Int { queryHeads / keyValueHeads }
  /// Key/value head read by query head `h` (contiguous groups, by division).
  @inlinable public func kvHead(_ h: Int) -> Int { h / (queryHeads / keyValueHeads) }

  public var queryRows: RowAddressing { RowAddressing(layout: layout, heads: queryHeads, length: queryLength, width: headDim) }
  public var keyRows: RowAddressing { RowAddressing(layout: layout, heads: keyValueHeads, length: keyLength, width: headDim) }
  public var valueRows: RowAddressing { RowAddressing(layout: layout, heads: keyValueHeads, length: keyLength, width: valueDim) }
  public var outputRows: RowAddressing { RowAddressing(layout: layout, heads: queryHeads, length: queryLength, width: valueDim) }

  /// Shape of the output tensor, in the queries' layout.
  public var outputShape: [Int] {
    layout == .bhsd ? [batch, queryHeads, queryLength, valueDim] : [batch, queryLength, queryHeads, valueDim]
  }
  /// Shape of the log-sum-exp tensor, `[B, Hq, Nq]`.
  public var lseShape: [Int] { [batch, queryHeads, queryLength] }

  /// Whether key `j` is visible to query `i` (both local to sequence `seq`).
  @inlinable public func isVisible(_ seq: AttentionSequence, query i: Int, key j: Int) -> Bool {
    if j < 0 || j >= seq.keyCount { return false }
    if let l = windowLeft, j < i + seq.offset - l { return false }
    if let r = windowRight, j > i + seq.offset + r { return false }
    return true
  }

  /// The visible key range `lo..<hi` of query `i` in `seq` (may be empty).
  @inlinable public func visibleKeys(_ seq: AttentionSequence, query i: Int) -> Range<Int> {
    var lo = 0, hi = seq.keyCount
    if let l = windowLeft { lo = Swift.max(lo, i + seq.offset - l) }
    if let r = windowRight { hi = Swift.min(hi, i + seq.offset + r + 1) }
    return lo < hi ? lo..<hi : lo..<lo
  }

  /// The number of (query, key) pairs that are visible, over all sequences and query heads.
  public var visiblePairs: Double {
    var total = 0.0
    for seq in sequences {
      var s = 0
      for i in 0..<seq.queryCount { s += visibleKeys(seq, query: i).count }
      total += Double(s)
    }
    return total * Double(queryHeads)
  }

  /// Floating-point operations of exact attention counting only visible pairs:
  /// 2·D for the score and 2·Dv for the value product per pair (FlashAttention's convention:
  /// 4·N²·D for square non-causal attention with Dv = D).
  public var flops: Double { visiblePairs * Double(2 * headDim + 2 * valueDim) }

  /// Validates an attention call and resolves its options.
  ///
  /// - Throws: ``SubqError`` naming `op` and the first problem found: ranks, shapes, head
  ///   divisibility, empty sequences, bad scale, window, softcap, ALiBi slopes, key lengths,
  ///   cumulative sequence lengths, thread count, or non-finite inputs (unless allowed).
  public static func validate(
    op: String, queries q: Tensor, keys k: Tensor, values v: Tensor, options o: AttentionOptions
  ) throws(SubqError) -> AttentionProblem {
    let names = ["Q", "K", "V"]
    for (t, name) in zip([q, k, v], names) where t.rank != 4 {
      let expect = o.layout == .bhsd ? "[B, H, N, D]" : "[B, N, H, D]"
      throw .shape(op: op, tensor: name, shape: t.shape, reason: "expected rank 4 \(expect) (\(o.layout.rawValue) layout)")
    }
    func dims(_ t: Tensor) -> (b: Int, h: Int, n: Int, d: Int) {
      o.layout == .bhsd ? (t.shape[0], t.shape[1], t.shape[2], t.shape[3]) : (t.shape[0], t.shape[2], t.shape[1], t.shape[3])
    }
    let (B, Hq, Nq, D) = dims(q)
    let (Bk, Hkv, Nk, Dk) = dims(k)
    let (Bv, Hv, Nv, Dv) = dims(v)
    if Bk != B { throw .shape(op: op, tensor: "K", shape: k.shape, reason: "batch \(Bk) differs from Q's batch \(B)") }
    if Bv != B { throw .shape(op: op, tensor: "V", shape: v.shape, reason: "batch \(Bv) differs from Q's batch \(B)") }
    if Hv != Hkv { throw .shape(op: op, tensor: "V", shape: v.shape, reason: "\(Hv) heads differ from K's \(Hkv)") }
    if Nv != Nk { throw .shape(op: op, tensor: "V", shape: v.shape, reason: "length \(Nv) differs from K's length \(Nk)") }
    if Dk != D { throw .shape(op: op, tensor: "K", shape: k.shape, reason: "head dim \(Dk) differs from Q's head dim \(D)") }
    if B < 1 { throw .shape(op: op, tensor: "Q", shape: q.shape, reason: "empty batch") }
    if Hq < 1 { throw .shape(op: op, tensor: "Q", shape: q.shape, reason: "no query heads") }
    if Hkv < 1 { throw .shape(op: op, tensor: "K", shape: k.shape, reason: "no key/value heads") }
    if Hq % Hkv != 0 {
      throw .shape(op: op, tensor: "K", shape: k.shape,
                   reason: "query heads (\(Hq)) must be a multiple of key/value heads (\(Hkv))")
    }
    if Nq < 1 { throw .shape(op: op, tensor: "Q", shape: q.shape, reason: "empty sequence (no queries)") }
    if Nk < 1 { throw .shape(op: op, tensor: "K", shape: k.shape, reason: "empty sequence (no keys)") }
    if D < 1 { throw .shape(op: op, tensor: "Q", shape: q.shape, reason: "head dim must be at least 1") }
    if Dv < 1 { throw .shape(op: op, tensor: "V", shape: v.shape, reason: "value dim must be at least 1") }

    let scale = o.scale ?? Float(1 / Double(D).squareRoot())
    if !scale.isFinite || scale == 0 {
      throw .argument(op: op, name: "scale", value: "\(scale)", reason: "must be finite and non-zero")
    }
    if let c = o.softcap, !(c > 0 && c.isFinite) {
      throw .argument(op: op, name: "softcap", value: "\(c)", reason: "must be a finite value > 0")
    }
    for (side, w) in [("left", o.window.left), ("right", o.window.right)] {
      if let w, w < 0 {
        throw .argument(op: op, name: "window.\(side)", value: "\(w)", reason: "must be ≥ 0 (or unbounded)")
      }
    }
    // flash-attn treats window sizes ≥ Nk as unbounded.
    let wl: Int? = o.window.left.flatMap { $0 >= Nk ? nil : $0 }
    var wr: Int? = o.window.right.flatMap { $0 >= Nk ? nil : $0 }
    if o.causal { wr = Swift.min(wr ?? 0, 0) }

    var alibi: [Float]? = nil
    if let s = o.alibiSlopes {
      let ok = (s.rank == 1 && s.shape[0] == Hq) || (s.rank == 2 && s.shape == [B, Hq])
      if !ok { throw .shape(op: op, tensor: "alibi slopes", shape: s.shape, reason: "expected [\(Hq)] or [\(B), \(Hq)]") }
      if let bad = s.firstNonFinite() {
        throw .nonFinite(op: op, tensor: "alibi slopes", index: s.index(ofFlat: bad), value: SubqError.describe(s[flat: bad]))
      }
      let flat = s.scalars
      alibi = s.rank == 1 ? (0..<B).flatMap { _ in flat } : flat
    }

    var sequences: [AttentionSequence] = []
    func offset(_ nq: Int, _ nk: Int) -> Int { o.alignment == .bottomRight ? nk - nq : 0 }
    let isVarlen = o.cuSeqlensQ != nil || o.cuSeqlensK != nil
    if isVarlen {
      guard let cq = o.cuSeqlensQ, let ck = o.cuSeqlensK else {
        throw .argument(op: op, name: o.cuSeqlensQ == nil ? "cu_seqlens_q" : "cu_seqlens_k", value: "missing",
                        reason: "variable-length attention needs both cu_seqlens_q and cu_seqlens_k")
      }
      if B != 1 { throw .shape(op: op, tensor: "Q", shape: q.shape, reason: "packed variable-length sequences need batch 1") }
      if o.keyLengths != nil {
        throw .unsupported(op: op, feature: "key lengths with cu_seqlens", reason: "give each packed sequence its true key count in cu_seqlens_k instead")
      }
      if cq.count != ck.count {
        throw .argument(op: op, name: "cu_seqlens_k", value: "\(ck.count) entries", reason: "cu_seqlens_q has \(cq.count); both need S + 1")
      }
      for (name, cu, total) in [("cu_seqlens_q", cq, Nq), ("cu_seqlens_k", ck, Nk)] {
        if cu.count < 2 { throw .argument(op: op, name: name, value: "\(cu)", reason: "needs at least 2 entries (S + 1)") }
        if cu.first != 0 { throw .argument(op: op, name: name, value: "\(cu)", reason: "must start at 0") }
        for s in 1..<cu.count where cu[s] < cu[s - 1] {
          throw .argument(op: op, name: name, value: "\(cu)", reason: "must not decrease (entry \(s))")
        }
        if cu.last != total {
          throw .argument(op: op, name: name, value: "\(cu)", reason: "must end at the packed length \(total)")
        }
      }
      for s in 0..<(cq.count - 1) {
        let nq = cq[s + 1] - cq[s], nk = ck[s + 1] - ck[s]
        sequences.append(AttentionSequence(batch: 0, queryStart: cq[s], queryCount: nq, keyStart: ck[s], keyCount: nk, offset: offset(nq, nk)))
      }
    } else {
      if let kl = o.keyLengths {
        if kl.count != B { throw .argument(op: op, name: "key lengths", value: "\(kl.count) entries", reason: "need one per batch entry (\(B))") }
        for (b, n) in kl.enumerated() where n < 0 || n > Nk {
          throw .argument(op: op, name: "key lengths[\(b)]", value: "\(n)", reason: "must be in 0...\(Nk)")
        }
      }
      for b in 0..<B {
        let nk = o.keyLengths?[b] ?? Nk
        sequences.append(AttentionSequence(batch: b, queryStart: 0, queryCount: Nq, keyStart: 0, keyCount: nk, offset: offset(Nq, nk)))
      }
    }

    let threads = o.threads ?? Parallel.defaultThreads
    if threads < 1 { throw .argument(op: op, name: "threads", value: "\(threads)", reason: "must be at least 1") }

    if !o.allowNonFinite {
      // Only the rows an attention call reads must be finite: keys past a sequence's length are
      // never read, so they may hold anything.
      let partialKeys = o.keyLengths?.contains { $0 < Nk } ?? false
      try checkFinite(op: op, q, k, v, partialKeys: partialKeys, sequences: sequences, layout: o.layout, Hkv: Hkv, Nk: Nk, D: D, Dv: Dv)
    }

    return AttentionProblem(
      op: op, batch: B, queryHeads: Hq, keyValueHeads: Hkv, queryLength: Nq, keyLength: Nk, headDim: D, valueDim: Dv,
      layout: o.layout, scale: scale, windowLeft: wl, windowRight: wr, causal: o.causal, alignment: o.alignment,
      softcap: o.softcap, alibi: alibi, keyLengths: o.keyLengths, isVarlen: isVarlen, sequences: sequences,
      returnLSE: o.returnLSE, threads: threads)
  }

  private static func checkFinite(
    op: String, _ q: Tensor, _ k: Tensor, _ v: Tensor, partialKeys: Bool,
    sequences: [AttentionSequence], layout: AttentionLayout, Hkv: Int, Nk: Int, D: Int, Dv: Int
  ) throws(SubqError) {
    if let bad = q.firstNonFinite() { throw .nonFinite(op: op, tensor: "Q", index: q.index(ofFlat: bad), value: SubqError.describe(q[flat: bad])) }
    if !partialKeys {
      if let bad = k.firstNonFinite() { throw .nonFinite(op: op, tensor: "K", index: k.index(ofFlat: bad), value: SubqError.describe(k[flat: bad])) }
      if let bad = v.firstNonFinite() { throw .nonFinite(op: op, tensor: "V", index: v.index(ofFlat: bad), value: SubqError.describe(v[flat: bad])) }
      return
    }
    let kr = RowAddressing(layout: layout, heads: Hkv, length: Nk, width: D)
    let vr = RowAddressing(layout: layout, heads: Hkv, length: Nk, width: Dv)
    for (t, name, rows, width) in [(k, "K", kr, D), (v, "V", vr, Dv)] {
      try t.withUnsafeBufferPointer { (p) throws(SubqError) in
        for seq in sequences {
          for h in 0..<Hkv {
            for j in seq.keyStart..<(seq.keyStart + seq.keyCount) {
              let base = rows.offset(batch: seq.batch, head: h, row: j)
              for x in 0..<width where !p[base + x].isFinite {
                throw .nonFinite(op: op, tensor: name, index: t.index(ofFlat: base + x), value: SubqError.describe(p[base + x]))
              }
            }
          }
        }
      }
    }
  }
}
