// SIMD helpers for the state-space scans: exponentials tuned for decay factors, softplus, SiLU,
// and the transposed horizontal sum that turns `laneWidth` per-step state vectors into one
// vector of per-step outputs.

import Foundation
import SubqKernels

// 2^f on f ∈ [−½, ½] by a degree-5 polynomial fitted (relative-error weighted least squares on
// Chebyshev nodes) for Float32: maximum relative error 2.3e-7 including rounding.
@usableFromInline let e2c0: Float = 1.0000001
@usableFromInline let e2c1: Float = 0.69314694
@usableFromInline let e2c2: Float = 0.24022122
@usableFromInline let e2c3: Float = 0.055507425
@usableFromInline let e2c4: Float = 0.0096754599
@usableFromInline let e2c5: Float = 0.0013266971

/// 2^x lane-wise for x ≤ 0 (the decay factors exp(Δ·A) of a stable scan), in 11 vector
/// operations: the integer part is added straight into the exponent bits of the polynomial.
///
/// Inputs below −125 return about 2^−125 (≈ 3e−38) instead of a smaller number, so the result
/// stays a normal float (denormals are slow); for a decay factor the difference is nil. Inputs
/// above 0 are not allowed (above 127 the exponent would overflow); use ``exp2Clamped(_:)``.
@inlinable @inline(__always)
func exp2Decay(_ x0: Lane) -> Lane {
  let x = x0.replacing(with: -125, where: x0 .< -125)
  let magic = Lane(repeating: 12_582_912)  // 1.5 · 2^23: adding it rounds to an integer
  let t = x + magic
  let n = t - magic
  let f = x - n
  var p = Lane(repeating: e2c5)
  p = fmadd(Lane(repeating: e2c4), p, f)
  p = fmadd(Lane(repeating: e2c3), p, f)
  p = fmadd(Lane(repeating: e2c2), p, f)
  p = fmadd(Lane(repeating: e2c1), p, f)
  p = fmadd(Lane(repeating: e2c0), p, f)
  // bits(t) = 0x4B40_0000 + n, and 0x4B40_0000 << 23 overflows to 0: the shift leaves n << 23.
  let e = unsafeBitCast(t, to: LaneInt.self) &<< 23
  return unsafeBitCast(unsafeBitCast(p, to: LaneInt.self) &+ e, to: Lane.self)
}

/// 2^x lane-wise for any x: exactly 0 for x ≤ −127, +∞ for x ≥ 128 (as float overflow would
/// give), NaN for NaN.
@inlinable @inline(__always)
func exp2Clamped(_ x0: Lane) -> Lane {
  var x = x0.replacing(with: -127, where: x0 .< -127)
  x = x.replacing(with: 128, where: x .> 128)
  let magic = Lane(repeating: 12_582_912)
  let t = x + magic
  let n = t - magic
  let f = x - n
  var p = Lane(repeating: e2c5)
  p = fmadd(Lane(repeating: e2c4), p, f)
  p = fmadd(Lane(repeating: e2c3), p, f)
  p = fmadd(Lane(repeating: e2c2), p, f)
  p = fmadd(Lane(repeating: e2c1), p, f)
  p = fmadd(Lane(repeating: e2c0), p, f)
  let ni = unsafeBitCast(t, to: LaneInt.self) &- LaneInt(repeating: 0x4B40_0000)
  let scale = unsafeBitCast((ni &+ 127) &<< 23, to: Lane.self)
  return p * scale
}

@usableFromInline let log2e: Float = 1.442_695_040_888_963_4
@usableFromInline let ln2: Float = 0.693_147_180_559_945_3

/// e^x lane-wise for any x (see ``exp2Clamped(_:)``).
@inlinable @inline(__always)
func expClamped(_ x: Lane) -> Lane { exp2Clamped(x * Lane(repeating: log2e)) }

/// Natural logarithm lane-wise for positive normal x (relative error ≈ 2e-7).
///
/// x = m · 2^k with m ∈ [√½, √2); ln m = 2·atanh(s), s = (m − 1)/(m + 1), |s| ≤ 0.172, by its
/// odd series to s⁹.
@inlinable @inline(__always)
func logLane(_ x: Lane) -> Lane {
  let bits = unsafeBitCast(x, to: LaneInt.self)
  var k = (bits &>> 23) &- 127
  var m = unsafeBitCast((bits & 0x007F_FFFF) | 0x3F80_0000, to: Lane.self)  // [1, 2)
  let big = m .> 1.414_213_5
  m = m.replacing(with: m * 0.5, where: big)
  k = k &+ LaneInt(repeating: 1).replacing(with: 0, where: .!big)
  let s = (m - 1) / (m + 1)
  let s2 = s * s
  var p = Lane(repeating: 2.0 / 9)
  p = fmadd(Lane(repeating: 2.0 / 7), p, s2)
  p = fmadd(Lane(repeating: 2.0 / 5), p, s2)
  p = fmadd(Lane(repeating: 2.0 / 3), p, s2)
  p = fmadd(Lane(repeating: 2), p, s2)
  // k ∈ [−127, 128] as a float: 1.5·2²³ + k has k in its low mantissa bits. (`Lane(k)` stays an
  // out-of-line call on AVX-512 builds.)
  let kf = unsafeBitCast(k &+ LaneInt(repeating: 0x4B40_0000), to: Lane.self) - Lane(repeating: 12_582_912)
  return fmadd(s * p, kf, Lane(repeating: ln2))
}

/// softplus(x) = log(1 + eˣ) lane-wise, and x itself above 20 (PyTorch's and mamba's CUDA
/// threshold). log1p(t) is computed as log(1 + t)·t / ((1 + t) − 1), exact to rounding even when
/// 1 + t rounds to 1.
@inlinable @inline(__always)
func softplusLane(_ x: Lane) -> Lane {
  let e = expClamped(x.replacing(with: 20, where: x .> 20))
  let w = Lane(repeating: 1) + e
  let d = w - Lane(repeating: 1)
  let safeD = d.replacing(with: 1, where: d .== 0)
  var r = logLane(w) * e / safeD
  r = r.replacing(with: e, where: d .== 0)
  return r.replacing(with: x, where: x .> 20)
}

/// SiLU(x) = x · σ(x) lane-wise.
@inlinable @inline(__always)
func siluLane(_ x: Lane) -> Lane {
  x / (Lane(repeating: 1) + expClamped(-x))
}

/// Scalar softplus with the same threshold, in Double (for references and small paths).
@inlinable
func softplus(_ x: Double) -> Double { x > 20 ? x : Foundation.log1p(Foundation.exp(x)) }

/// Scalar SiLU in Double.
@inlinable
func silu(_ x: Double) -> Double { x / (1 + Foundation.exp(-x)) }

// MARK: - Per-step output sums

/// The horizontal sums of `laneWidth` vectors stored at `p`, as one vector: lane j = Σ p[j].
///
/// Each sum is a tree of half-vector adds straight from memory (the products are stored first,
/// behind ``compilerBarrier(_:)``). A transposing shuffle tree would need fewer operations, but
/// Swift can only express its shuffles element by element and LLVM turns those into long
/// blend/insert sequences (measured: ~12 shuffles per output), so this is the faster form.
@inlinable @inline(__always)
func transposedSums(_ p: UnsafeMutablePointer<Lane>) -> Lane {
  // The sums go through the scalars after the W vectors (scratch holds W + 1 vectors).
  let ys = UnsafeMutableRawPointer(p + Lane.scalarCount).assumingMemoryBound(to: Float.self)
  for j in 0..<Lane.scalarCount { ys[j] = hsum(p[j]) }
  return loadLane(ys)
}
