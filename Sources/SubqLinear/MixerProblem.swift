import SubqCore

/// A validated call of an attention-like mixer on Q `[B, Hq, Nq, D]`, K `[B, Hkv, Nk, D]` and
/// V `[B, Hkv, Nk, Dv]` (the bhsd layout), with `Hq` a multiple of `Hkv` (grouped heads read
/// key/value head `h / (Hq/Hkv)`).
struct AttentionLikeProblem: Sendable {
  let batch: Int, queryHeads: Int, keyValueHeads: Int
  let queryLength: Int, keyLength: Int, headDim: Int, valueDim: Int
  let causal: Bool
  let threads: Int

  var group: Int { queryHeads / keyValueHeads }
  var outputShape: [Int] { [batch, queryHeads, queryLength, valueDim] }

  /// Checks ranks, shapes, emptiness and finiteness; `causal` requires `Nq == Nk`.
  static func validate(
    op: String, queries q: Tensor, keys k: Tensor, values v: Tensor, options o: MixerOptions
  ) throws(SubqError) -> AttentionLikeProblem {
    for (t, name) in [(q, "Q"), (k, "K"), (v, "V")] where t.rank != 4 {
      throw .shape(op: op, tensor: name, shape: t.shape, reason: "expected rank 4 [B, H, N, D]")
    }
    let (B, Hq, Nq, D) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
    let (Bk, Hkv, Nk, Dk) = (k.shape[0], k.shape[1], k.shape[2], k.shape[3])
    let (Bv, Hv, Nv, Dv) = (v.shape[0], v.shape[1], v.shape[2], v.shape[3])
    if Bk != B { throw .shape(op: op, tensor: "K", shape: k.shape, reason: "batch \(Bk) differs from Q's batch \(B)") }
    if Bv != B { throw .shape(op: op, tensor: "V", shape: v.shape, reason: "batch \(Bv) differs from Q's batch \(B)") }
    if Hv != Hkv { throw .shape(op: op, tensor: "V", shape: v.shape, reason: "\(Hv) heads differ from K's \(Hkv)") }
    if Nv != Nk { throw .shape(op: op, tensor: "V", shape: v.shape, reason: "length \(Nv) differs from K's length \(Nk)") }
    if Dk != D { throw .shape(op: op, tensor: "K", shape: k.shape, reason: "head dim \(Dk) differs from Q's head dim \(D)") }
    if B < 1 { throw .shape(op: op, tensor: "Q", shape: q.shape, reason: "empty batch") }
    if Hq < 1 { throw .shape(op: op, tensor: "Q", shape: q.shape, reason: "no query heads") }
    if Hkv < 1 { throw .shape(op: op, tensor: "K", shape: k.shape, reason: "no key/value heads") }
    if Hq % Hkv != 0 {
      throw .shape(op: op, tensor: "K", shape: k.shape, reason: "query heads (\(Hq)) must be a multiple of key/value heads (\(Hkv))")
    }
    if Nq < 1 { throw .shape(op: op, tensor: "Q", shape: q.shape, reason: "empty sequence (no queries)") }
    if Nk < 1 { throw .shape(op: op, tensor: "K", shape: k.shape, reason: "empty sequence (no keys)") }
    if D < 1 { throw .shape(op: op, tensor: "Q", shape: q.shape, reason: "head dim must be at least 1") }
    if Dv < 1 { throw .shape(op: op, tensor: "V", shape: v.shape, reason: "value dim must be at least 1") }
    if o.causal && Nq != Nk {
      throw .shape(op: op, tensor: "K", shape: k.shape,
                   reason: "causal mixing needs as many keys as queries (\(Nq)); carry earlier keys in a state instead")
    }
    if !o.allowNonFinite {
      for (t, name) in [(q, "Q"), (k, "K"), (v, "V")] {
        if let bad = t.firstNonFinite() {
          throw .nonFinite(op: op, tensor: name, index: t.index(ofFlat: bad), value: SubqError.describe(t[flat: bad]))
        }
      }
    }
    return AttentionLikeProblem(batch: B, queryHeads: Hq, keyValueHeads: Hkv, queryLength: Nq, keyLength: Nk, headDim: D,
                                valueDim: Dv, causal: o.causal, threads: try o.resolvedThreads(op))
  }
}

/// Checks X `[B, N, C]` for sequence mixers.
func validateSequence(op: String, _ x: Tensor, options o: MixerOptions) throws(SubqError) -> (b: Int, n: Int, c: Int) {
  guard x.rank == 3 else { throw .shape(op: op, tensor: "X", shape: x.shape, reason: "expected rank 3 [B, N, C]") }
  let (B, N, C) = (x.shape[0], x.shape[1], x.shape[2])
  if B < 1 { throw .shape(op: op, tensor: "X", shape: x.shape, reason: "empty batch") }
  if N < 1 { throw .shape(op: op, tensor: "X", shape: x.shape, reason: "empty sequence") }
  if C < 1 { throw .shape(op: op, tensor: "X", shape: x.shape, reason: "model width must be at least 1") }
  if !o.allowNonFinite, let bad = x.firstNonFinite() {
    throw .nonFinite(op: op, tensor: "X", index: x.index(ofFlat: bad), value: SubqError.describe(x[flat: bad]))
  }
  return (B, N, C)
}

/// Test hooks.
package enum MixerDebug {
  /// When set, outputs are filled with NaN before the kernels run, so an element a kernel fails
  /// to write shows up in the comparison with the reference (tests set it; it costs a pass over
  /// the output).
  nonisolated(unsafe) package static var poisonOutputs = false
}

/// An uninitialized output tensor (NaN-filled under ``MixerDebug/poisonOutputs``).
func outputTensor(_ shape: [Int]) -> Tensor {
  MixerDebug.poisonOutputs ? Tensor(shape: shape, repeating: .nan) : Tensor(shape: shape) { _ in }
}
