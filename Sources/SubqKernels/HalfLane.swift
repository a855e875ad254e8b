// Float16 storage converted to Float inside kernels.
//
// Half-precision keys and values halve the bytes a memory-bound kernel reads; arithmetic stays in
// Float. The conversion is written lane by lane in an always-inlined helper: with F16C/AVX-512 the
// compiler turns it into one `vcvtph2ps`, while the generic `SIMD16<Float>(SIMD16<Float16>)`
// initializer can stay out of line inside large kernels and spill every register.

#if SUBQ_AVX512
/// Half-precision vector with as many lanes as `Lane`.
public typealias HalfLane = SIMD16<Float16>
#else
public typealias HalfLane = SIMD8<Float16>
#endif

/// Loads `laneWidth` Float16 values (any alignment) as a `Lane` of Float.
@inlinable @inline(__always)
package func loadLane(_ p: UnsafePointer<Float16>) -> Lane {
  let h = UnsafeRawPointer(p).loadUnaligned(as: HalfLane.self)
  var r = Lane()
  for i in 0..<laneWidth { r[i] = Float(h[i]) }
  return r
}

/// Rounds a `Lane` to Float16 and stores it (any alignment).
@inlinable @inline(__always)
package func storeLane(_ v: Lane, _ p: UnsafeMutablePointer<Float16>) {
  var h = HalfLane()
  for i in 0..<laneWidth { h[i] = Float16(v[i]) }
  UnsafeMutableRawPointer(p).storeBytes(of: h, as: HalfLane.self)
}
