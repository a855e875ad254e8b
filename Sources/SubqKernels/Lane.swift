// The SIMD vector type every kernel is written in, and the few element-wise helpers that must
// compile to single instructions.
//
// Lane width follows the build (see Package.swift): 16 floats (one zmm register) when the build
// targets AVX-512, 8 floats otherwise (one ymm register on AVX2, two q registers on NEON). The
// register-blocked tiles are sized to the register file of each: 6×4 vectors of 16 on AVX-512,
// 6×2 vectors of 8 elsewhere.

import SubqCShims

#if SUBQ_AVX512
/// The SIMD vector kernels compute in.
public typealias Lane = SIMD16<Float>
/// Integer vector of the same width as `Lane`.
public typealias LaneInt = SIMD16<Int32>
/// Lane vectors per register tile row (tile width = `tileVectors · Lane.scalarCount` = 64).
@inlinable public var tileVectors: Int { 4 }
#else
public typealias Lane = SIMD8<Float>
public typealias LaneInt = SIMD8<Int32>
@inlinable public var tileVectors: Int { 2 }
#endif

/// Floats per `Lane`.
///
/// Computed and inlinable, as every constant here: a global `let` from another module is read
/// through an accessor call (and a lazy-initialization check) in every loop that uses it.
@inlinable public var laneWidth: Int { Lane.scalarCount }

/// `a + b · c`, fused when the build targets a CPU with FMA.
///
/// Without a target CPU, Swift lowers `addingProduct` to one `fmaf` call per lane (about 100×
/// slower), so the unfused form is used there.
@inlinable @inline(__always)
package func fmadd(_ a: Lane, _ b: Lane, _ c: Lane) -> Lane {
  #if SUBQ_FMA
  return a.addingProduct(b, c)
  #else
  return a + b * c
  #endif
}

/// Scalar `a + b · c`, fused when the build has FMA.
@inlinable @inline(__always)
package func fmadd(_ a: Float, _ b: Float, _ c: Float) -> Float {
  #if SUBQ_FMA
  return a.addingProduct(b, c)
  #else
  return a + b * c
  #endif
}

/// Lane-wise maximum (compiles to `vmaxps`; `pointwiseMax` does not).
@inlinable @inline(__always)
package func vmax(_ a: Lane, _ b: Lane) -> Lane { a.replacing(with: b, where: a .< b) }

/// Lane-wise minimum.
@inlinable @inline(__always)
package func vmin(_ a: Lane, _ b: Lane) -> Lane { a.replacing(with: b, where: b .< a) }

/// Whether some lane of `a` is greater than the same lane of `b` (a NaN lane never is): `any(a .> b)`
/// as one compare and a mask test (the standard library's `any` can stay a call on 8-lane vectors).
@inlinable @inline(__always)
package func anyGreater(_ a: Lane, _ b: Lane) -> Bool {
  #if SUBQ_AVX512
  subq_any_greater16(a, b) != 0
  #else
  subq_any_greater8(a, b) != 0
  #endif
}

/// Sum of the lanes, as a balanced tree (`.sum()` is a serial chain).
@inlinable @inline(__always)
package func hsum(_ v: Lane) -> Float {
  #if SUBQ_AVX512
  let a = v.lowHalf + v.highHalf
  let b = a.lowHalf + a.highHalf
  let c = b.lowHalf + b.highHalf
  return c[0] + c[1]
  #else
  let b = v.lowHalf + v.highHalf
  let c = b.lowHalf + b.highHalf
  return c[0] + c[1]
  #endif
}

/// Maximum of the lanes.
@inlinable @inline(__always)
package func hmax(_ v: Lane) -> Float {
  var m = v[0]
  for i in 1..<laneWidth where v[i] > m { m = v[i] }
  return m
}

/// `[0, 1, 2, …]` as floats.
@inlinable @inline(__always)
package var laneIota: Lane {
  var v = Lane()
  for i in 0..<laneWidth { v[i] = Float(i) }
  return v
}

/// Loads a `Lane` from memory that need not be aligned.
@inlinable @inline(__always)
package func loadLane(_ p: UnsafePointer<Float>) -> Lane {
  UnsafeRawPointer(p).loadUnaligned(as: Lane.self)
}

/// Stores a `Lane` to memory that need not be aligned.
@inlinable @inline(__always)
package func storeLane(_ v: Lane, _ p: UnsafeMutablePointer<Float>) {
  UnsafeMutableRawPointer(p).storeBytes(of: v, as: Lane.self)
}

/// Stores a `Lane` to `p`, which must be aligned to `Lane`'s size, bypassing the caches
/// (non-temporal store): for results written whole lines at a time and not read again by the
/// kernel. The writer must call ``streamFence()`` before its results are read by another thread.
@inlinable @inline(__always)
package func streamLane(_ v: Lane, _ p: UnsafeMutablePointer<Float>) {
  #if SUBQ_AVX512
  subq_stream16(p, v)
  #else
  subq_stream8(p, v)
  #endif
}

/// Orders every earlier ``streamLane(_:_:)`` before the stores that follow (`sfence`).
@inlinable @inline(__always)
package func streamFence() { subq_store_fence() }
