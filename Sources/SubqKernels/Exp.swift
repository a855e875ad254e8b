// Vectorized exponentials for the softmax.
//
// exp2 multiplies a polynomial for 2^f, f the fractional part of x, by 2^n, n its integer part.
// On AVX-512 builds this is `subq_exp2_16` (SubqCShims): vreduceps for f = x − ⌊x⌋, a degree-5
// polynomial and vscalefps, 7 instructions (8 micro-ops). Elsewhere it is written in Swift:
// n = round(x) by the 1.5·2²³ "magic number" addition, f ∈ [−½, ½], a degree-6 polynomial fitted
// to Chebyshev nodes (max relative error 1.1e-7 in Float32), and 2^n built directly in the
// exponent bits, about 14 instructions; inputs are clamped at -127 so that -∞ (a masked score)
// gives exactly 0 (n = -127 makes the 2^n factor the bit pattern 0). Both give exactly 0 for -∞
// and NaN for NaN.

import SubqCShims

@usableFromInline let exp2C0: Float = 1.0
@usableFromInline let exp2C1: Float = 6.9314718e-01
@usableFromInline let exp2C2: Float = 2.4022651e-01
@usableFromInline let exp2C3: Float = 5.5503272e-02
@usableFromInline let exp2C4: Float = 9.6180253e-03
@usableFromInline let exp2C5: Float = 1.3400433e-03
@usableFromInline let exp2C6: Float = 1.5469732e-04

/// 2^x lane-wise for x < 127.5, with a relative error below 2e-7 where the result is a normal
/// Float; exactly 0 for -∞ and for x ≤ -127 (other builds) or x ≤ -150 (AVX-512, where
/// -150 < x < -126 gives subnormals); NaN stays NaN. Softmax arguments are ≤ 0 (plus a small
/// headroom), far from the upper limit.
@inlinable @inline(__always)
package func exp2Lane(_ x0: Lane) -> Lane {
  #if SUBQ_AVX512
  return subq_exp2_16(x0)
  #else
  let x = x0.replacing(with: -127, where: x0 .< -127)
  let magic = Lane(repeating: 12_582_912)  // 1.5 · 2^23
  let t = x + magic
  let n = t - magic
  let f = x - n
  var p = Lane(repeating: exp2C6)
  p = fmadd(Lane(repeating: exp2C5), p, f)
  p = fmadd(Lane(repeating: exp2C4), p, f)
  p = fmadd(Lane(repeating: exp2C3), p, f)
  p = fmadd(Lane(repeating: exp2C2), p, f)
  p = fmadd(Lane(repeating: exp2C1), p, f)
  p = fmadd(Lane(repeating: exp2C0), p, f)
  let ni = unsafeBitCast(t, to: LaneInt.self) &- LaneInt(repeating: 0x4B40_0000)
  let scale = unsafeBitCast((ni &+ 127) &<< 23, to: Lane.self)
  return p * scale
  #endif
}

/// e^x lane-wise for x < 88.3; exactly 0 for -∞ and far below (see `exp2Lane`).
@inlinable @inline(__always)
package func expLane(_ x: Lane) -> Lane {
  exp2Lane(x * Lane(repeating: 1.442_695_040_888_963_4))
}

/// Scalar 2^x with the same polynomial as `exp2Lane`.
@inlinable @inline(__always)
package func exp2Scalar(_ x0: Float) -> Float {
  let x = x0 < -127 ? -127 : x0
  let n = x.rounded(.toNearestOrEven)
  let f = x - n
  var p = exp2C6
  p = fmadd(exp2C5, p, f)
  p = fmadd(exp2C4, p, f)
  p = fmadd(exp2C3, p, f)
  p = fmadd(exp2C2, p, f)
  p = fmadd(exp2C1, p, f)
  p = fmadd(exp2C0, p, f)
  return p * Float(bitPattern: UInt32(Int32(n) + 127) << 23)
}

// tanh, for the attention softcap. For |x| < 0.625, an odd polynomial x·P(x²) (fitted to Chebyshev
// nodes, relative error 9e-8 in Float32); above, tanh|x| = (1 - t)/(1 + t) with t = e^{-2|x|}, where
// there is no cancellation. The sign is restored at the end.
@usableFromInline let tanhP1: Float = -0.33333331
@usableFromInline let tanhP2: Float = 0.13332883
@usableFromInline let tanhP3: Float = -0.053863183
@usableFromInline let tanhP4: Float = 0.021043111
@usableFromInline let tanhP5: Float = -0.0061522126

/// tanh(x) lane-wise.
@inlinable @inline(__always)
package func tanhLane(_ x: Lane) -> Lane {
  let ax = x.replacing(with: -x, where: x .< 0)
  // Large branch.
  let t = exp2Lane(ax * Lane(repeating: -2.885_390_081_777_926_8))  // e^{-2|x|}
  let big = (Lane(repeating: 1) - t) / (Lane(repeating: 1) + t)
  // Small branch.
  let z = ax * ax
  var p = Lane(repeating: tanhP5)
  p = fmadd(Lane(repeating: tanhP4), p, z)
  p = fmadd(Lane(repeating: tanhP3), p, z)
  p = fmadd(Lane(repeating: tanhP2), p, z)
  p = fmadd(Lane(repeating: tanhP1), p, z)
  let small = fmadd(ax, ax * z, p)
  let r = big.replacing(with: small, where: ax .< 0.625)
  return r.replacing(with: -r, where: x .< 0)
}

/// The online-softmax step after a block's row maxima `blockMax` (lane vectors `0..<lanes`) are
/// known: the running maximum `running` moves to them, `alpha` gets the rescale factor
/// 2^(old − new) for what was accumulated so far, and `safe` the shift to subtract from the block's
/// scores (the new maximum, or 0 where it is still −∞, so no NaN); `blockMax` is then zeroed to
/// collect the block's row sums. All in log2 units.
@inlinable @inline(__always)
package func advanceRunningMax(
  lanes: Int, blockMax: UnsafeMutablePointer<Lane>, running: UnsafeMutablePointer<Lane>,
  safe: UnsafeMutablePointer<Lane>, alpha: UnsafeMutablePointer<Lane>
) {
  for x in 0..<lanes {
    let m = blockMax[x]
    let s = m.replacing(with: 0, where: m .== -Lane.Scalar.infinity)
    alpha[x] = exp2Lane(running[x] - s)
    safe[x] = s
    running[x] = m
  }
  for x in 0..<lanes { blockMax[x] = Lane() }
}
