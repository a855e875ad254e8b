import Foundation

/// Merging partial softmax-attention results by their log-sum-exp (§0 of the specification).
///
/// A partial result over a key set S is the normalized output `O = Σ_S e^{s_j} v_j / Σ_S e^{s_j}`
/// and `lse = log Σ_S e^{s_j}` (natural log); an empty part has `lse = −∞` and `O = 0`. Two parts
/// over disjoint key sets merge exactly:
///
///     lse = logaddexp(lse₁, lse₂),   O = e^{lse₁ − lse}·O₁ + e^{lse₂ − lse}·O₂
///
/// Merging with an empty part leaves the other unchanged, and merging two empty parts gives an
/// empty part (never NaN). A final result that is still empty becomes `O = 0`, `lse = +∞`.
///
/// This is the approximate-attention module's own copy of the merge; it is internal so that a
/// shared `PartialAttention` helper in `SubqAttention` can replace it without an API change.
enum LSEMerge {
  /// The weights of the accumulated and the new part, and the merged log-sum-exp.
  @inline(__always)
  static func weights(_ accumulated: Float, _ part: Float) -> (accumulated: Float, part: Float, lse: Float) {
    if part == -.infinity { return (1, 0, accumulated) }
    if accumulated == -.infinity { return (0, 1, part) }
    let a = Double(accumulated), b = Double(part)
    let m = Swift.max(a, b)
    let ea = Foundation.exp(a - m), eb = Foundation.exp(b - m)
    let s = ea + eb
    return (Float(ea / s), Float(eb / s), Float(m + Foundation.log(s)))
  }

  /// Merges the part `(o, lse)` into the accumulated row `(acc, accLSE)` in place; `o(c)` is the
  /// part's normalized output at column `c`.
  @inline(__always)
  static func merge(
    into acc: UnsafeMutablePointer<Float>, lse accLSE: UnsafeMutablePointer<Float>, count: Int,
    partLSE: Float, _ o: (Int) -> Float
  ) {
    let (wa, wp, l) = weights(accLSE.pointee, partLSE)
    if wp == 0 { return }
    if wa == 0 {
      for c in 0..<count { acc[c] = o(c) }
    } else {
      for c in 0..<count { acc[c] = wa * acc[c] + wp * o(c) }
    }
    accLSE.pointee = l
  }

  /// Turns accumulated log-sum-exps into final ones: a row that saw no key (−∞) gets +∞, the
  /// convention of ``AttentionResult/lse`` (its output row is already 0).
  static func finalize(_ lse: UnsafeMutablePointer<Float>, count: Int) {
    for i in 0..<count where lse[i] == -.infinity { lse[i] = .infinity }
  }
}
