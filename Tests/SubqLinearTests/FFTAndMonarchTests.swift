import Foundation
import SubqKernels
import SubqLinear
import Subquadratic
import SubqTestSupport
import Testing

/// The FFT against the O(n²) DFT, the FFT convolution against the direct convolution, and Monarch
/// products against dense matrices built from the factors.
///
/// Tolerances: FFT relative L2 error ≤ 2e-6 — a Float32 transform of length n has error about
/// `ε·log₂n` (≤ 1e-6 here); a wrong twiddle or ordering gives O(1). Convolutions and Monarch
/// products: relative Frobenius error ≤ 1e-5 (Float32 sums over ≤ 700 terms).
@Suite struct FFTAndMonarchTests {
  static func relL2(_ a: [Double], _ b: [Double]) -> Double {
    var num = 0.0, den = 0.0
    for i in a.indices { num += (a[i] - b[i]) * (a[i] - b[i]); den += b[i] * b[i] }
    return (num / max(den, 1e-300)).squareRoot()
  }

  @Test("complex lane FFT == DFT for mixed-radix and Bluestein lengths",
        arguments: [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 16, 17, 25, 30, 49, 60, 97, 120, 243, 256, 330, 1000, 1024, 1031, 2310])
  func complexFFT(n: Int) throws {
    let seed = testSeed()
    var g = SeededGenerator(seed: seed)
    let fft = LaneFFT(length: n)
    let L = laneWidth
    let re = AlignedBuffer<Lane>(count: n), im = AlignedBuffer<Lane>(count: n), work = AlignedBuffer<Lane>(count: fft.workCount)
    var inputs: [([Double], [Double])] = []
    for _ in 0..<L { inputs.append(((0..<n).map { _ in g.nextNormal() }, (0..<n).map { _ in g.nextNormal() })) }
    for j in 0..<n {
      var a = Lane(), b = Lane()
      for l in 0..<L { a[l] = Float(inputs[l].0[j]); b[l] = Float(inputs[l].1[j]) }
      re.pointer[j] = a
      im.pointer[j] = b
    }
    fft.forward(re: re.pointer, im: im.pointer, work: work.pointer)
    for l in [0, L / 2, L - 1] {
      let ref = dftReference(inputs[l].0, inputs[l].1)
      let got = (0..<n).map { Double(re.pointer[$0][l]) } + (0..<n).map { Double(im.pointer[$0][l]) }
      let err = Self.relL2(got, ref.re + ref.im)
      #expect(err <= 2e-6, "n \(n) lane \(l) error \(err) seed \(seed)")
    }
  }

  @Test("real FFT half spectrum == DFT, and inverse round trip", arguments: [1, 2, 5, 18, 64, 101, 384, 1000])
  func realFFT(n: Int) throws {
    var g = SeededGenerator(seed: testSeed())
    let x = (0..<n).map { _ in Float(g.nextNormal()) }
    let f = try RealFFT(length: n)
    let spec = try f.forward([x])[0]
    let ref = dftReference(x.map(Double.init), [Double](repeating: 0, count: n))
    let h = n / 2 + 1
    let err = Self.relL2(spec.re.map(Double.init) + spec.im.map(Double.init), Array(ref.re[0..<h]) + Array(ref.im[0..<h]))
    #expect(err <= 2e-6, "n \(n) error \(err)")
    let back = try f.inverse(re: spec.re, im: spec.im)
    #expect(Self.relL2(back.map(Double.init), x.map(Double.init)) <= 2e-6)
    #expect(throws: SubqError.self) { try f.inverse(re: [1], im: []) }
  }

  @Test func fftSizes() {
    for n in [1, 2, 3, 100, 1000, 4097, 65536] {
      let m = LongConvolution.fftSize(n)
      #expect(m >= 2 * n - 1)
      var r = m
      for p in [2, 3, 5] { while r % p == 0 { r /= p } }
      #expect(r == 1, "fft size \(m) for \(n)")
    }
    #expect(LongConvolution.fftSize(4096) == 8192)
  }

  @Test("FFT long convolution == direct convolution (bidirectional, causal, skip, accumulate)")
  func longConvolution() throws {
    let seed = testSeed()
    var g = SeededGenerator(seed: seed)
    for (B, N, C) in [(1, 1, 1), (2, 7, 5), (1, 64, 16), (2, 100, 33), (1, 333, 40), (1, 200, 2 * laneWidth)] {
      for bidirectional in [true, false] {
        let ldk = N + 3
        let x = (0..<(B * N * C)).map { _ in Float(g.nextNormal()) }
        let kf = (0..<(C * ldk)).map { _ in Float(g.nextNormal()) }
        let kr = (0..<(C * ldk)).map { _ in Float(g.nextNormal()) }
        let skip = (0..<C).map { _ in Float(g.nextNormal()) }
        let prior = (0..<(B * N * C)).map { _ in Float(g.nextNormal()) }
        var y = [Float](repeating: .nan, count: B * N * C)
        var acc = prior
        x.withUnsafeBufferPointer { xb in kf.withUnsafeBufferPointer { kb in kr.withUnsafeBufferPointer { rb in skip.withUnsafeBufferPointer { sb in
          y.withUnsafeMutableBufferPointer { yb in
            LongConvolution.apply(batch: B, length: N, channels: C, x: xb.baseAddress!, ldx: C, y: yb.baseAddress!, ldy: C, accumulate: false,
                                  kFwd: kb.baseAddress!, kRev: bidirectional ? rb.baseAddress! : nil, ldk: ldk, skip: sb.baseAddress!, threads: 2)
          }
          acc.withUnsafeMutableBufferPointer { yb in
            LongConvolution.apply(batch: B, length: N, channels: C, x: xb.baseAddress!, ldx: C, y: yb.baseAddress!, ldy: C, accumulate: true,
                                  kFwd: kb.baseAddress!, kRev: bidirectional ? rb.baseAddress! : nil, ldk: ldk, skip: nil, threads: 2)
          }
        } } } }
        let xd = x.map(Double.init), kfd = kf.map(Double.init), krd = kr.map(Double.init)
        let ref = longConvReference(xd, B: B, N: N, C: C, kFwd: kfd, kRev: bidirectional ? krd : nil, ldk: ldk, skip: skip.map(Double.init))
        let err = Self.relL2(y.map(Double.init), ref)
        #expect(err <= 1e-5, "B\(B) N\(N) C\(C) bidirectional \(bidirectional): error \(err) seed \(seed)")
        var ref2 = longConvReference(xd, B: B, N: N, C: C, kFwd: kfd, kRev: bidirectional ? krd : nil, ldk: ldk, skip: nil)
        for i in ref2.indices { ref2[i] += Double(prior[i]) }
        #expect(Self.relL2(acc.map(Double.init), ref2) <= 1e-5, "accumulate: B\(B) N\(N) C\(C) seed \(seed)")
      }
    }
  }

  /// Dense matrix of the factors built independently: block_diag(W1), the (r, l) → (l, r)
  /// permutation, block_diag(W2), then the (l, s) → (s, l) output permutation (the reference's
  /// implementation 3).
  static func denseFromFactors(_ w1: Tensor, _ w2: Tensor) -> [[Double]] {
    let (k, q, p) = (w1.shape[0], w1.shape[1], w1.shape[2])
    let (l, s, r) = (w2.shape[0], w2.shape[1], w2.shape[2])
    let n = k * p, mid = k * q, m = l * s
    func matmul(_ a: [[Double]], _ b: [[Double]]) -> [[Double]] {
      (0..<a.count).map { i in (0..<b[0].count).map { j in (0..<b.count).reduce(0.0) { $0 + a[i][$1] * b[$1][j] } } }
    }
    var d1 = [[Double]](repeating: [Double](repeating: 0, count: n), count: mid)
    for kk in 0..<k { for qq in 0..<q { for pp in 0..<p { d1[kk * q + qq][kk * p + pp] = Double(w1[kk, qq, pp]) } } }
    var p1 = [[Double]](repeating: [Double](repeating: 0, count: mid), count: mid)
    for rr in 0..<r { for ll in 0..<l { p1[ll * r + rr][rr * l + ll] = 1 } }
    var d2 = [[Double]](repeating: [Double](repeating: 0, count: mid), count: m)
    for ll in 0..<l { for ss in 0..<s { for rr in 0..<r { d2[ll * s + ss][ll * r + rr] = Double(w2[ll, ss, rr]) } } }
    var p2 = [[Double]](repeating: [Double](repeating: 0, count: m), count: m)
    for ll in 0..<l { for ss in 0..<s { p2[ss * l + ll][ll * s + ss] = 1 } }
    return matmul(p2, matmul(d2, matmul(p1, d1)))
  }

  @Test("Monarch multiply == dense matrix from the factors, along sequence and channels")
  func monarch() throws {
    let seed = testSeed()
    // (k, q, p) and (l, s, r) with l·r = k·q: square, rectangular, and 1-blocks.
    for (k, q, p, l, s, r) in [(4, 4, 4, 4, 4, 4), (3, 4, 5, 2, 7, 6), (6, 2, 3, 4, 5, 3), (1, 3, 2, 3, 2, 1), (5, 5, 5, 5, 5, 5)] {
      let w1 = Tensor.randomNormal(shape: [k, q, p], seed: seed)
      let w2 = Tensor.randomNormal(shape: [l, s, r], seed: seed + 1)
      let mm = try MonarchMatrix(blocks1: w1, blocks2: w2)
      let dense = Self.denseFromFactors(w1, w2)
      let (n, m) = (k * p, l * s)
      #expect(mm.inputSize == n && mm.outputSize == m)
      #expect(relativeError(mm.dense(), dense.flatMap { $0 }) <= 1e-6, "dense \(k),\(q),\(p) \(l),\(s),\(r)")
      // Along channels: X [B, N, n] → [B, N, m].
      let xc = Tensor.randomNormal(shape: [2, 9, n], seed: seed + 2)
      let yc = try mm.apply(to: xc, along: .channels, threads: 2)
      var refC = [Double](repeating: 0, count: 2 * 9 * m)
      for t in 0..<18 { for i in 0..<m { refC[t * m + i] = (0..<n).reduce(0.0) { $0 + dense[i][$1] * Double(xc[flat: t * n + $1]) } } }
      #expect(yc.shape == [2, 9, m])
      #expect(relativeError(yc, refC) <= 1e-5, "channels \(k),\(q),\(p) \(l),\(s),\(r) seed \(seed)")
      // Along the sequence: X [B, n, C] → [B, m, C].
      let C = 21
      let xs = Tensor.randomNormal(shape: [2, n, C], seed: seed + 3)
      let ys = try mm.apply(to: xs, along: .sequence, threads: 2)
      var refS = [Double](repeating: 0, count: 2 * m * C)
      for b in 0..<2 { for i in 0..<m { for c in 0..<C {
        refS[(b * m + i) * C + c] = (0..<n).reduce(0.0) { $0 + dense[i][$1] * Double(xs[flat: (b * n + $1) * C + c]) }
      } } }
      #expect(ys.shape == [2, m, C])
      #expect(relativeError(ys, refS) <= 1e-5, "sequence \(k),\(q),\(p) \(l),\(s),\(r) seed \(seed)")
    }
    #expect(throws: SubqError.self) { try MonarchMatrix(blocks1: Tensor(shape: [2, 3, 4]), blocks2: Tensor(shape: [2, 2, 2])) }
    let ok = try MonarchMatrix(blocks1: Tensor(shape: [2, 2, 2]), blocks2: Tensor(shape: [2, 2, 2]))
    #expect(throws: SubqError.self) { try ok.apply(to: Tensor(shape: [1, 5, 4]), along: .sequence) }
  }
}
