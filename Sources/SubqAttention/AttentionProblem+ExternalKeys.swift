import SubqCore

extension AttentionProblem {
  /// Validates an attention call whose keys and values are held outside tensors — a paged KV
  /// cache, for example — and are described by their head count, per-sequence lengths and widths.
  ///
  /// The result is the problem ``validate(op:queries:keys:values:options:)`` would build for
  /// keys and values of shape `[B, Hkv, max(keyCounts), D]` / `[…, Dv]` with
  /// `options.keyLengths = keyCounts`: batch entry b sees keys `0..<keyCounts[b]`, and causal
  /// masks and windows align to each sequence's own length. Only Q (and the ALiBi slopes) are
  /// checked for non-finite values; the caller vouches for the keys and values.
  ///
  /// - Throws: ``SubqError`` for the errors `validate` reports on Q and the options, a
  ///   `keyCounts` that does not have one non-negative entry per batch entry, bad head counts or
  ///   widths, and for `keyLengths` or `cuSeqlensQ/K` in `options` (the key counts replace them).
  public static func validate(
    op: String, queries q: Tensor, keyValueHeads Hkv: Int, keyCounts: [Int], headDim: Int, valueDim: Int,
    options o: AttentionOptions
  ) throws(SubqError) -> AttentionProblem {
    if o.keyLengths != nil {
      throw .unsupported(op: op, feature: "key lengths", reason: "the key counts come from where the keys are stored")
    }
    if o.cuSeqlensQ != nil || o.cuSeqlensK != nil {
      throw .unsupported(op: op, feature: "varlen (cu_seqlens)", reason: "each batch entry is one sequence here")
    }
    if q.rank != 4 {
      throw .shape(op: op, tensor: "Q", shape: q.shape, reason: "expected rank 4 \(o.layout == .bhsd ? "[B, H, N, D]" : "[B, N, H, D]") (\(o.layout.rawValue) layout)")
    }
    let (B, Hq, Nq, D) = o.layout == .bhsd ? (q.shape[0], q.shape[1], q.shape[2], q.shape[3]) : (q.shape[0], q.shape[2], q.shape[1], q.shape[3])
    if B < 1 { throw .shape(op: op, tensor: "Q", shape: q.shape, reason: "empty batch") }
    if Hq < 1 { throw .shape(op: op, tensor: "Q", shape: q.shape, reason: "no query heads") }
    if Nq < 1 { throw .shape(op: op, tensor: "Q", shape: q.shape, reason: "empty sequence (no queries)") }
    if D != headDim {
      throw .shape(op: op, tensor: "Q", shape: q.shape, reason: "head dim \(D) differs from the keys' head dim \(headDim)")
    }
    if D < 1 { throw .shape(op: op, tensor: "Q", shape: q.shape, reason: "head dim must be at least 1") }
    if valueDim < 1 { throw .argument(op: op, name: "value dim", value: "\(valueDim)", reason: "must be at least 1") }
    if Hkv < 1 { throw .argument(op: op, name: "key/value heads", value: "\(Hkv)", reason: "must be at least 1") }
    if Hq % Hkv != 0 {
      throw .shape(op: op, tensor: "Q", shape: q.shape, reason: "query heads (\(Hq)) must be a multiple of key/value heads (\(Hkv))")
    }
    if keyCounts.count != B {
      throw .argument(op: op, name: "key counts", value: "\(keyCounts.count) entries", reason: "need one per batch entry (\(B))")
    }
    for (b, n) in keyCounts.enumerated() where n < 0 {
      throw .argument(op: op, name: "key counts[\(b)]", value: "\(n)", reason: "must be ≥ 0")
    }
    let Nk = keyCounts.max() ?? 0

    let scale = o.scale ?? Float(1 / Double(D).squareRoot())
    if !scale.isFinite || scale == 0 {
      throw .argument(op: op, name: "scale", value: "\(scale)", reason: "must be finite and non-zero")
    }
    if let c = o.softcap, !(c > 0 && c.isFinite) {
      throw .argument(op: op, name: "softcap", value: "\(c)", reason: "must be a finite value > 0")
    }
    for (side, w) in [("left", o.window.left), ("right", o.window.right)] {
      if let w, w < 0 { throw .argument(op: op, name: "window.\(side)", value: "\(w)", reason: "must be ≥ 0 (or unbounded)") }
    }
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
    let threads = o.threads ?? Parallel.defaultThreads
    if threads < 1 { throw .argument(op: op, name: "threads", value: "\(threads)", reason: "must be at least 1") }
    if !o.allowNonFinite, let bad = q.firstNonFinite() {
      throw .nonFinite(op: op, tensor: "Q", index: q.index(ofFlat: bad), value: SubqError.describe(q[flat: bad]))
    }
    let sequences = keyCounts.enumerated().map { b, nk in
      AttentionSequence(batch: b, queryStart: 0, queryCount: Nq, keyStart: 0, keyCount: nk,
                        offset: o.alignment == .bottomRight ? nk - Nq : 0)
    }
    return AttentionProblem(
      op: op, batch: B, queryHeads: Hq, keyValueHeads: Hkv, queryLength: Nq, keyLength: Nk, headDim: D, valueDim: valueDim,
      layout: o.layout, scale: scale, windowLeft: wl, windowRight: wr, causal: o.causal, alignment: o.alignment,
      softcap: o.softcap, alibi: alibi, keyLengths: keyCounts, isVarlen: false, sequences: sequences,
      returnLSE: o.returnLSE, threads: threads)
  }
}
