import SubqCore
import SubqKernels

/// Angular locality-sensitive hashing with a sortable bucket order (HyperAttention's sortLSH).
///
/// `r` hyperplanes with i.i.d. N(0, 1) normals, drawn once from the seed, give each vector the bits
/// `b_t = [x·w_t > 0]`. The bucket `Σ b_t·2^t` is mapped to its position in the reflected Gray
/// code, `g⁻¹(bucket)`, and vectors are sorted by that position: consecutive positions then differ
/// in exactly one hyperplane, so neighbouring buckets in sorted order are angular neighbours.
///
/// The paper's code returns `gray[bucket]` (the Gray code *of* the bucket) instead, which does not
/// make consecutive positions Hamming-adjacent once r ≥ 3; this implementation uses the inverse,
/// as the paper intends.
struct SortLSH: Sendable {
  let projections: Int
  let dim: Int
  /// Hyperplane normals, `[r][D]`.
  let normals: [Float]

  init(projections: Int, dim: Int, seed: UInt64) {
    self.projections = projections
    self.dim = dim
    var g = SeededGenerator(seed: mixSeed(seed, 0x5348_4C53))  // "SLSH"
    normals = (0..<(projections * dim)).map { _ in Float(g.nextNormal()) }
  }

  /// Number of buckets, 2^r.
  var buckets: Int { 1 << projections }

  /// The sort position of `x` (D floats): the inverse Gray code of its hyperplane bits.
  @inline(__always)
  func code(_ x: UnsafePointer<Float>) -> UInt16 {
    normals.withUnsafeBufferPointer { w in
      var bits = 0
      for t in 0..<projections where dot(x, w.baseAddress! + t * dim, dim) > 0 { bits |= 1 << t }
      return UInt16(inverseGray(bits))
    }
  }
}

/// The position of `g` in the reflected Gray code sequence: the `n` with `n ^ (n >> 1) == g`.
@inline(__always)
func inverseGray(_ g: Int) -> Int {
  var n = g
  n ^= n >> 1
  n ^= n >> 2
  n ^= n >> 4
  n ^= n >> 8
  n ^= n >> 16
  return n
}

/// Writes into `out[0..<n]` the indices `0..<n` stably sorted by `code(i)` (values < `buckets`):
/// a counting sort when there are fewer buckets than items, a comparison sort otherwise.
func sortByCode(_ n: Int, buckets: Int, into out: UnsafeMutablePointer<Int32>, _ code: (Int) -> UInt16) {
  if n == 0 { return }
  if buckets <= 2 * n {
    var start = [Int](repeating: 0, count: buckets + 1)
    var codes = [UInt16](repeating: 0, count: n)
    for i in 0..<n {
      let c = code(i)
      codes[i] = c
      start[Int(c) + 1] += 1
    }
    for b in 0..<buckets { start[b + 1] += start[b] }
    for i in 0..<n {
      let c = Int(codes[i])
      out[start[c]] = Int32(i)
      start[c] += 1
    }
  } else {
    var keys = (0..<n).map { UInt64(code($0)) << 32 | UInt64($0) }
    keys.sort()
    for i in 0..<n { out[i] = Int32(truncatingIfNeeded: keys[i]) }
  }
}
