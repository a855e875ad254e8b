import Foundation
import SubqCore
import SubqKernels

/// Partial attention results over disjoint key sets, and the log-sum-exp rule that merges them.
///
/// Attention of one query row over a key set S can be kept as a *partial state*: the normalized
/// output `O_S = Σ_{j∈S} softmax_S(s)_j · v_j` and its log-sum-exp `lse_S = log Σ_{j∈S} e^{s_j}`
/// (natural log). Because softmax normalization is associative, the results over disjoint key
/// sets S₁ … Sₙ combine exactly into the result over their union:
///
///     lse = m + log Σ_p e^{lse_p − m}          (m = max_p lse_p)
///     O   = Σ_p e^{lse_p − lse} · O_p
///
/// This is the combine step of Flash-Decoding (split-KV decoding), Lean Attention and ring
/// attention, and the way sparse methods add a dense part to a retrieved part.
///
/// **Empty parts.** A part in which the row saw no key carries `lse = −∞` (the convention of
/// partial results, FlashAttention's `emptyRowLSE: −∞`) and contributes nothing, whatever its
/// output holds. `lse = +∞` — how a *final* result marks a row with no visible key — is treated the
/// same way, so final results of disjoint key sets can be merged too. A row that is empty in every
/// part gets `O = 0` and `lse = emptyRowLSE` (+∞ for a final result, −∞ to keep it partial for
/// a later merge); never NaN.
///
/// Weights are computed in Float64 and outputs accumulated in Float32: merging n parts adds at
/// most about n ulp of relative error.
public enum PartialAttention {
  /// Merges partial results of the same queries over disjoint key sets.
  ///
  /// - Parameters:
  ///   - parts: at least one result; every output has the same shape (`[B, Hq, Nq, Dv]` in bhsd,
  ///     `[B, Nq, Hq, Dv]` in bshd) and every result carries its log-sum-exp `[B, Hq, Nq]`.
  ///   - layout: the memory order of the outputs.
  ///   - emptyRowLSE: the log-sum-exp written for rows that are empty in every part: `+∞` (the
  ///     default) for a final result, `−∞` for a result that stays partial.
  /// - Returns: the merged output (same shape) and log-sum-exp.
  /// - Throws: ``SubqError`` when `parts` is empty, a log-sum-exp is missing, shapes disagree, or
  ///   a log-sum-exp holds NaN.
  /// - Complexity: O(n · B · Hq · Nq · Dv).
  public static func merge(
    _ parts: [AttentionResult], layout: AttentionLayout = .bhsd, emptyRowLSE: Float = .infinity
  ) throws(SubqError) -> AttentionResult {
    let op = "attention.merge"
    guard let first = parts.first else {
      throw .argument(op: op, name: "parts", value: "[]", reason: "need at least one partial result")
    }
    let shape = first.output.shape
    guard shape.count == 4 else {
      throw .shape(op: op, tensor: "output 0", shape: shape, reason: "expected rank 4 (\(layout == .bhsd ? "[B, Hq, Nq, Dv]" : "[B, Nq, Hq, Dv]"))")
    }
    let (B, H, N, Dv) = layout == .bhsd ? (shape[0], shape[1], shape[2], shape[3]) : (shape[0], shape[2], shape[1], shape[3])
    var lses: [Tensor] = []
    for (i, part) in parts.enumerated() {
      if part.output.shape != shape {
        throw .shape(op: op, tensor: "output \(i)", shape: part.output.shape, reason: "differs from output 0's shape \(shape)")
      }
      guard let l = part.lse else {
        throw .argument(op: op, name: "lse \(i)", value: "missing", reason: "every partial result needs its log-sum-exp")
      }
      if l.shape != [B, H, N] {
        throw .shape(op: op, tensor: "lse \(i)", shape: l.shape, reason: "expected [B, Hq, Nq] = \([B, H, N])")
      }
      if let bad = l.withUnsafeBufferPointer({ $0.firstIndex { $0.isNaN } }) {
        throw .nonFinite(op: op, tensor: "lse \(i)", index: l.index(ofFlat: bad), value: "NaN")
      }
      lses.append(l)
    }
    if emptyRowLSE.isNaN {
      throw .argument(op: op, name: "emptyRowLSE", value: "NaN", reason: "must be +inf, -inf or a number")
    }

    let n = parts.count
    let rows = RowAddressing(layout: layout, heads: H, length: N, width: Dv)
    // Gather the parts as [n] pointers; rows are merged independently.
    var outLSE = Tensor(shape: [B, H, N]) { _ in }
    var out = Tensor(shape: shape) { _ in }
    var outputs: [UnsafePointer<Float>] = []
    var lsePointers: [UnsafePointer<Float>] = []
    // The tensors stay alive (and unmutated) for the whole call.
    for part in parts { outputs.append(part.output.withUnsafeBufferPointer { $0.baseAddress! }) }
    for l in lses { lsePointers.append(l.withUnsafeBufferPointer { $0.baseAddress! }) }
    withExtendedLifetime((parts, lses)) {
      out.withUnsafeMutableBufferPointer { o in
        outLSE.withUnsafeMutableBufferPointer { ol in
          var rowOutputs = [UnsafePointer<Float>](repeating: outputs[0], count: n)
          var rowLSE = [Float](repeating: 0, count: n)
          for b in 0..<B {
            for h in 0..<H {
              for i in 0..<N {
                let off = rows.offset(batch: b, head: h, row: i)
                let li = (b * H + h) * N + i
                for p in 0..<n {
                  rowOutputs[p] = outputs[p] + off
                  rowLSE[p] = lsePointers[p][li]
                }
                ol[li] = mergeRow(outputs: rowOutputs, lse: rowLSE, width: Dv, into: o.baseAddress! + off, emptyRowLSE: emptyRowLSE)
              }
            }
          }
        }
      }
    }
    return AttentionResult(output: out, lse: outLSE)
  }

  /// Merges one query row's partial results: `outputs[p][0..<width]` with log-sum-exp `lse[p]`.
  ///
  /// Writes the merged output to `out[0..<width]` and returns the merged log-sum-exp. Parts with
  /// `lse = ±∞` are empty and never read; a row empty in every part gets zeros and
  /// `emptyRowLSE`. No validation: the caller guarantees `outputs.count == lse.count` and that
  /// every pointer addresses `width` floats.
  public static func mergeRow(
    outputs: [UnsafePointer<Float>], lse: [Float], width: Int, into out: UnsafeMutablePointer<Float>,
    emptyRowLSE: Float = .infinity
  ) -> Float {
    lse.withUnsafeBufferPointer { l in
      outputs.withUnsafeBufferPointer { o in
        mergeRow(count: l.count, width: width, lse: l.baseAddress!, lseStride: 1, output: { o[$0] }, into: out, emptyRowLSE: emptyRowLSE)
      }
    }
  }

  /// The kernel form of ``mergeRow(outputs:lse:width:into:emptyRowLSE:)``: part `p` has its
  /// log-sum-exp at `lse[p · lseStride]` and its output at `output(p)`.
  package static func mergeRow(
    count n: Int, width: Int, lse: UnsafePointer<Float>, lseStride: Int,
    output: (Int) -> UnsafePointer<Float>, into out: UnsafeMutablePointer<Float>, emptyRowLSE: Float
  ) -> Float {
    var m = -Double.infinity
    for p in 0..<n {
      let x = lse[p * lseStride]
      if x.isFinite { m = Swift.max(m, Double(x)) }
    }
    guard m > -.infinity else {
      out.update(repeating: 0, count: width)
      return emptyRowLSE
    }
    var total = 0.0
    for p in 0..<n {
      let x = lse[p * lseStride]
      if x.isFinite { total += Foundation.exp(Double(x) - m) }
    }
    let merged = m + Foundation.log(total)
    var started = false
    for p in 0..<n {
      let x = lse[p * lseStride]
      guard x.isFinite else { continue }
      let w = Float(Foundation.exp(Double(x) - merged))
      let src = output(p)
      if !started {
        for c in 0..<width { out[c] = src[c] * w }
        started = true
      } else {
        axpy(w, src, out, width)
      }
    }
    return Float(merged)
  }
}
