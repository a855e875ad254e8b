import SubqKernels

/// In-register transposition of a `laneWidth × laneWidth` block, for moving data between
/// row-per-token layouts and the lane-per-token layouts of the neighborhood kernel.
///
/// Each of log₂(laneWidth) stages pairs the rows that differ in one index bit and replaces them by
/// the even and odd elements of their concatenation (two-source permutes, e.g. `vpermt2ps`). After
/// all stages element (r, c) sits at (rev(c), rev(r)) with rev the bit reversal of the index, so
/// callers load row r from source rev(r) and read column c from row rev(c): then every column
/// comes out in natural order.
enum LaneTranspose {
  #if SUBQ_AVX512
  typealias Pair = SIMD32<Float>
  static let bits = 4
  #else
  typealias Pair = SIMD16<Float>
  static let bits = 3
  #endif

  /// Bit-reversed lane indices.
  static let reversed: [Int] = (0..<laneWidth).map { i in
    var r = 0
    for b in 0..<bits where (i >> b) & 1 == 1 { r |= 1 << (bits - 1 - b) }
    return r
  }

  /// Transposes `m[0..<laneWidth]` in place as described above.
  @inline(__always)
  static func transpose(_ m: UnsafeMutablePointer<Lane>) {
    var b = bits - 1
    while b >= 0 {
      let step = 1 << b
      for i in 0..<laneWidth where i & step == 0 {
        let c = Pair(lowHalf: m[i], highHalf: m[i + step])
        m[i] = c.evenHalf
        m[i + step] = c.oddHalf
      }
      b -= 1
    }
  }
}
