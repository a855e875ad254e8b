import SubqCShims

// Float16 storage converted to Float inside kernels.
//
// Half-precision keys and values halve the bytes a memory-bound kernel reads; arithmetic stays in
// Float. The conversion goes through a C helper (`subq_load_half8/16`), which compiles to one
// `vcvtph2ps` with F16C (x86-64-v3 and later) or AVX-512, and to `fcvtl` on arm64: Swift's generic
// `SIMD16<Float>(SIMD16<Float16>)` stays out of line inside large kernels, and a lane-by-lane loop
// becomes one scalar conversion per element.

#if SUBQ_AVX512
/// Half-precision vector with as many lanes as `Lane`.
public typealias HalfLane = SIMD16<Float16>
#else
public typealias HalfLane = SIMD8<Float16>
#endif

/// Loads `laneWidth` Float16 values (any alignment) as a `Lane` of Float.
@inlinable @inline(__always)
package func loadLane(_ p: UnsafePointer<Float16>) -> Lane {
  #if SUBQ_AVX512
  return subq_load_half16(p)
  #else
  return subq_load_half8(p)
  #endif
}
