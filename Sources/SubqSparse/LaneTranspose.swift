import SubqCShims
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
  static let bits = 4
  #else
  static let bits = 3
  #endif

  /// Bit-reversed lane indices.
  static let reversed: [Int] = (0..<laneWidth).map { i in
    var r = 0
    for b in 0..<bits where (i >> b) & 1 == 1 { r |= 1 << (bits - 1 - b) }
    return r
  }

  /// Exchanges `a`, `b` for the even and odd elements of their concatenation (two two-source
  /// permutes, through SubqCShims: the standard library's `evenHalf`/`oddHalf` are calls).
  @inline(__always)
  static func evenOdd(_ a: inout Lane, _ b: inout Lane) {
    #if SUBQ_AVX512
    let e = subq_even16(a, b), o = subq_odd16(a, b)
    #else
    let e = subq_even8(a, b), o = subq_odd8(a, b)
    #endif
    a = e
    b = o
  }

  /// Bit reversal of a lane index (folds to a constant for a constant index, unlike a lookup in
  /// ``reversed``).
  @inline(__always)
  static func rev(_ i: Int) -> Int {
    var r = 0
    for b in 0..<bits where (i >> b) & 1 == 1 { r |= 1 << (bits - 1 - b) }
    return r
  }

  /// Transposes a block straight from its source rows to its destination columns: `load(i)`
  /// returns source row rev(i), and `store(i, v)` receives column rev(i). On AVX-512 the block
  /// stays in registers (no round trip through memory).
  @inline(__always)
  static func transpose(load: (Int) -> Lane, store: (Int, Lane) -> Void) {
    #if SUBQ_AVX512
    var r0 = load(0); var r1 = load(1); var r2 = load(2); var r3 = load(3); var r4 = load(4); var r5 = load(5); var r6 = load(6); var r7 = load(7); var r8 = load(8); var r9 = load(9); var r10 = load(10); var r11 = load(11); var r12 = load(12); var r13 = load(13); var r14 = load(14); var r15 = load(15)
    evenOdd(&r0, &r8); evenOdd(&r1, &r9); evenOdd(&r2, &r10); evenOdd(&r3, &r11); evenOdd(&r4, &r12); evenOdd(&r5, &r13); evenOdd(&r6, &r14); evenOdd(&r7, &r15)
    evenOdd(&r0, &r4); evenOdd(&r1, &r5); evenOdd(&r2, &r6); evenOdd(&r3, &r7); evenOdd(&r8, &r12); evenOdd(&r9, &r13); evenOdd(&r10, &r14); evenOdd(&r11, &r15)
    evenOdd(&r0, &r2); evenOdd(&r1, &r3); evenOdd(&r4, &r6); evenOdd(&r5, &r7); evenOdd(&r8, &r10); evenOdd(&r9, &r11); evenOdd(&r12, &r14); evenOdd(&r13, &r15)
    evenOdd(&r0, &r1); evenOdd(&r2, &r3); evenOdd(&r4, &r5); evenOdd(&r6, &r7); evenOdd(&r8, &r9); evenOdd(&r10, &r11); evenOdd(&r12, &r13); evenOdd(&r14, &r15)
    store(0, r0); store(1, r1); store(2, r2); store(3, r3); store(4, r4); store(5, r5); store(6, r6); store(7, r7); store(8, r8); store(9, r9); store(10, r10); store(11, r11); store(12, r12); store(13, r13); store(14, r14); store(15, r15)
    #else
    withUnsafeTemporaryAllocation(of: Lane.self, capacity: laneWidth) { buf in
      let m = buf.baseAddress!
      for i in 0..<laneWidth { m[i] = load(i) }
      transpose(m)
      for i in 0..<laneWidth { store(i, m[i]) }
    }
    #endif
  }

  /// Transposes the `laneWidth` rows `base + rev(i)·step` (i < laneWidth), columns `0..<count`
  /// (a multiple of `laneWidth`), one block at a time in registers: `store(c, v)` receives column
  /// c as a lane vector (element l from row l). Returns the sum of every element read, in two
  /// partial sums (a check that is NaN or ±∞ when an input is; see `copyVectors`).
  @inline(__always)
  static func transposeColumns(from base: UnsafePointer<Float>, step: Int, count: Int, store: (Int, Lane) -> Void) -> Lane {
    var s0 = Lane(), s1 = Lane()
    var d0 = 0
    while d0 < count {
      transpose(
        load: { i in
          let e = loadLane(base + rev(i) * step + d0)
          if i & 1 == 0 { s0 += e } else { s1 += e }
          return e
        },
        store: { i, e in store(d0 + rev(i), e) })
      d0 += laneWidth
    }
    return s0 + s1
  }

  /// Transposes `m[0..<laneWidth]` in place as described above.
  @inline(__always)
  static func transpose(_ m: UnsafeMutablePointer<Lane>) {
    #if SUBQ_AVX512
    // The register network above, reading and writing the block in place.
    transpose(load: { m[$0] }, store: { m[$0] = $1 })
    #else
    var b = bits - 1
    while b >= 0 {
      let step = 1 << b
      for i in 0..<laneWidth where i & step == 0 {
        var a = m[i], b = m[i + step]
        evenOdd(&a, &b)
        m[i] = a
        m[i + step] = b
      }
      b -= 1
    }
    #endif
  }
}
