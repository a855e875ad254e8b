import SubqCore
import SubqKernels

/// A Monarch matrix (Dao et al. 2022; Fu et al., Monarch Mixer, 2023): block-diagonal, permutation,
/// block-diagonal — `M = P₂ · R · P₁ · L` in the rectangular form of M2's
/// `blockdiag_butterfly_multiply_reference` (version 2):
///
///     x (n = k·p)  → view [k, p];   y1[k, :] = W1[k] (q×p) · x[k, :]        (block-diagonal 1)
///     y1 (k·q = r·l) → view [r, l] → transpose to [l, r]                       (permutation)
///     y2[l, :] = W2[l] (s×r) · y1[l, :];   output index s·l + l (view [l, s] transposed)
///
/// with `W1` `[k, q, p]` and `W2` `[l, s, r]`; the output has `m = l·s` entries. With square
/// blocks `b×b` and `n = b²` this is the paper's `M = P L Pᵀ R P`, with O(n^{3/2}) parameters
/// and work instead of O(n²).
///
/// ``apply(to:along:threads:)`` multiplies every vector along one axis of `[B, N, C]` data: along
/// the channels (a structured replacement of a dense projection, as M2's MLPs) or along the
/// sequence (mixing positions, M2's sequence mixing with learned Monarch matrices). Both are
/// batched block products (`GemmTiles`) with the other axis along the SIMD lanes or as rows.
public struct MonarchMatrix: Sendable {
  /// `W1`, `[k, q, p]`.
  public let blocks1: Tensor
  /// `W2`, `[l, s, r]`.
  public let blocks2: Tensor
  public var inputSize: Int { blocks1.shape[0] * blocks1.shape[2] }
  public var outputSize: Int { blocks2.shape[0] * blocks2.shape[1] }

  /// - Throws: ``SubqError/shape(op:tensor:shape:reason:)`` unless the factors are rank 3,
  ///   non-empty, with `l·r == k·q`, and finite.
  public init(blocks1: Tensor, blocks2: Tensor) throws(SubqError) {
    let op = "monarch"
    guard blocks1.rank == 3, blocks1.shape.allSatisfy({ $0 > 0 }) else {
      throw .shape(op: op, tensor: "blocks1", shape: blocks1.shape, reason: "expected [k, q, p] with positive extents")
    }
    guard blocks2.rank == 3, blocks2.shape.allSatisfy({ $0 > 0 }) else {
      throw .shape(op: op, tensor: "blocks2", shape: blocks2.shape, reason: "expected [l, s, r] with positive extents")
    }
    let (k, q) = (blocks1.shape[0], blocks1.shape[1])
    let (l, r) = (blocks2.shape[0], blocks2.shape[2])
    guard l * r == k * q else {
      throw .shape(op: op, tensor: "blocks2", shape: blocks2.shape,
                   reason: "l·r = \(l * r) must equal k·q = \(k * q) (the first factor's output size)")
    }
    for (t, name) in [(blocks1, "blocks1"), (blocks2, "blocks2")] {
      if let bad = t.firstNonFinite() { throw .nonFinite(op: op, tensor: name, index: t.index(ofFlat: bad), value: SubqError.describe(t[flat: bad])) }
    }
    self.blocks1 = blocks1
    self.blocks2 = blocks2
  }

  /// The dense `[m, n]` matrix the factors define (for tests and inspection; O(m·n) memory).
  public func dense() -> Tensor {
    let n = inputSize, m = outputSize
    var out = Tensor(shape: [m, n])
    for j in 0..<n {
      var e = [Float](repeating: 0, count: n)
      e[j] = 1
      let col = multiply(e)
      for i in 0..<m { out[flat: i * n + j] = col[i] }
    }
    return out
  }

  /// `M·x` for one vector (plain loops).
  public func multiply(_ x: [Float]) -> [Float] {
    precondition(x.count == inputSize, "MonarchMatrix.multiply: \(x.count) entries, expected \(inputSize)")
    let (k, q, p) = (blocks1.shape[0], blocks1.shape[1], blocks1.shape[2])
    let (l, s, r) = (blocks2.shape[0], blocks2.shape[1], blocks2.shape[2])
    var y1 = [Float](repeating: 0, count: k * q)
    blocks1.withUnsafeBufferPointer { w in
      for kk in 0..<k { for qq in 0..<q {
        var acc: Float = 0
        for pp in 0..<p { acc += w[(kk * q + qq) * p + pp] * x[kk * p + pp] }
        y1[kk * q + qq] = acc
      } }
    }
    var out = [Float](repeating: 0, count: s * l)
    blocks2.withUnsafeBufferPointer { w in
      for ll in 0..<l { for ss in 0..<s {
        var acc: Float = 0
        for rr in 0..<r { acc += w[(ll * s + ss) * r + rr] * y1[rr * l + ll] }
        out[ss * l + ll] = acc
      } }
    }
    return out
  }

  /// The axis of `[B, N, C]` data a Monarch matrix multiplies.
  public enum Axis: String, Sendable { case sequence, channels }

  /// `M` applied to every vector along `axis` of `x` `[B, N, C]`: along `.channels` (needs
  /// `C == inputSize`) gives `[B, N, outputSize]`; along `.sequence` (needs `N == inputSize`)
  /// gives `[B, outputSize, C]`.
  ///
  /// - Complexity: O(B·(N or C)·(k·q·p + l·s·r)) time; O(B·N·C) extra memory for the middle
  ///   product.
  public func apply(to x: Tensor, along axis: Axis, threads: Int? = nil) throws(SubqError) -> Tensor {
    let op = "monarch"
    guard x.rank == 3 else { throw .shape(op: op, tensor: "X", shape: x.shape, reason: "expected rank 3 [B, N, C]") }
    let (B, N, C) = (x.shape[0], x.shape[1], x.shape[2])
    let along = axis == .sequence ? N : C
    guard along == inputSize else {
      throw .shape(op: op, tensor: "X", shape: x.shape, reason: "the \(axis.rawValue) axis has \(along) entries, the matrix takes \(inputSize)")
    }
    if let t = threads, t < 1 { throw .argument(op: op, name: "threads", value: "\(t)", reason: "must be at least 1") }
    let th = threads ?? Parallel.defaultThreads
    let (k, q, p) = (blocks1.shape[0], blocks1.shape[1], blocks1.shape[2])
    let (l, s, r) = (blocks2.shape[0], blocks2.shape[1], blocks2.shape[2])
    let mid = k * q, m = outputSize
    switch axis {
    case .sequence:
      // Rows are positions, channels along the lanes: y1 rows k·q + q' = W1[k] · x rows k·p + p'.
      var y1 = [Float](repeating: 0, count: B * mid * C)
      var out = Tensor(shape: [B, m, C]) { _ in }
      x.withUnsafeBufferPointer { xb in
        blocks1.withUnsafeBufferPointer { w1 in
          blocks2.withUnsafeBufferPointer { w2 in
            y1.withUnsafeMutableBufferPointer { yb in
              out.withUnsafeMutableBufferPointer { ob in
                let xp = SendablePointer(xb.baseAddress!), w1p = SendablePointer(w1.baseAddress!), w2p = SendablePointer(w2.baseAddress!)
                let yp = SendablePointer(yb.baseAddress!), op2 = SendablePointer(ob.baseAddress!)
                Parallel.forEach(B * k, threads: th) { item, _ in
                  let b = item / k, kk = item % k
                  GemmTiles.gemm(m: q, n: C, k: p, a: w1p.pointer + kk * q * p, lda: p, b: xp.pointer + (b * N + kk * p) * C, ldb: C,
                                 c: yp.pointer + (b * mid + kk * q) * C, ldc: C, accumulate: false)
                }
                // out rows s'·l + l' = W2[l'] · y1 rows r'·l + l'.
                Parallel.forEach(B * l, threads: th) { item, _ in
                  let b = item / l, ll = item % l
                  GemmTiles.gemm(m: s, n: C, k: r, a: w2p.pointer + ll * s * r, lda: r, b: yp.pointer + (b * mid + ll) * C, ldb: l * C,
                                 c: op2.pointer + (b * m + ll) * C, ldc: l * C, accumulate: false)
                }
              }
            }
          }
        }
      }
      return out
    case .channels:
      // Rows are tokens: y1[t, k·q + q'] = Σ_p x[t, k·p + p'] W1[k][q'][p'] with W1ᵀ blocks.
      let rows = B * N
      let w1t: [Float] = blocks1.withUnsafeBufferPointer { w in
        var t = [Float](repeating: 0, count: k * p * q)
        for kk in 0..<k { for qq in 0..<q { for pp in 0..<p { t[(kk * p + pp) * q + qq] = w[(kk * q + qq) * p + pp] } } }
        return t
      }
      let w2t: [Float] = blocks2.withUnsafeBufferPointer { w in
        var t = [Float](repeating: 0, count: l * r * s)
        for ll in 0..<l { for ss in 0..<s { for rr in 0..<r { t[(ll * r + rr) * s + ss] = w[(ll * s + ss) * r + rr] } } }
        return t
      }
      var out = Tensor(shape: [B, N, m]) { _ in }
      let block = 64
      let blocks = (rows + block - 1) / block
      x.withUnsafeBufferPointer { xb in
        out.withUnsafeMutableBufferPointer { ob in
          w1t.withUnsafeBufferPointer { w1 in
            w2t.withUnsafeBufferPointer { w2 in
              let xp = SendablePointer(xb.baseAddress!), op2 = SendablePointer(ob.baseAddress!)
              let w1p = SendablePointer(w1.baseAddress!), w2p = SendablePointer(w2.baseAddress!)
              let scratchCount = block * (mid + mid + s * l)
              let workers = Parallel.workers(for: blocks, threads: th)
              let scratch = AlignedBuffer<Float>(count: workers * scratchCount)
              let sp = SendablePointer(scratch.pointer)
              Parallel.forEach(blocks, threads: workers) { blk, worker in
                let r0 = blk * block, cnt = min(block, rows - r0)
                let y1 = sp.pointer + worker * scratchCount, y1p = y1 + block * mid, y2 = y1p + block * mid
                for kk in 0..<k {
                  GemmTiles.gemm(m: cnt, n: q, k: p, a: xp.pointer + r0 * C + kk * p, lda: C, b: w1p.pointer + kk * p * q, ldb: q,
                                 c: y1 + kk * q, ldc: mid, accumulate: false)
                }
                // Permute each row from [r, l] to [l, r].
                for i in 0..<cnt { for rr in 0..<r { for ll in 0..<l { y1p[i * mid + ll * r + rr] = y1[i * mid + rr * l + ll] } } }
                for ll in 0..<l {
                  GemmTiles.gemm(m: cnt, n: s, k: r, a: y1p + ll * r, lda: mid, b: w2p.pointer + ll * r * s, ldb: s,
                                 c: y2 + ll * s, ldc: s * l, accumulate: false)
                }
                // Output index s'·l + l' from [l, s].
                for i in 0..<cnt {
                  let o = op2.pointer + (r0 + i) * m
                  for ll in 0..<l { for ss in 0..<s { o[ss * l + ll] = y2[i * s * l + ll * s + ss] } }
                }
              }
              withExtendedLifetime(scratch) {}
            }
          }
        }
      }
      return out
    }
  }
}
