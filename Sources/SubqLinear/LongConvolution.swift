import SubqCore
import SubqKernels

/// Per-channel long convolution of `[B, N, C]` sequences through the FFT, as Monarch Mixer's
/// sequence mixer (`fftconv_ref`) uses it:
///
///     y[b, t, c] = Σ_{s ≤ t} h_fwd[c, t − s] · x[b, s, c]
///                + Σ_{s > t} h_rev[c, s − t − 1] · x[b, s, c]      (bidirectional only)
///                + skip[c] · x[b, t, c]                              (when a skip is given)
///
/// With `h_rev` absent the convolution is causal. The reference computes it as a circular
/// convolution of length 2N (the kernel `pad(h_fwd, (0, N)) + pad(flip(h_rev), (N, 0))`, zero-padded
/// signal); this is the same linear convolution, so any transform length `M ≥ 2N − 1` gives the
/// same result: the smallest `2^a·3^b·5^c` is used.
///
/// Channels are transformed `2·laneWidth` at a time: two groups of `laneWidth` channels are packed
/// as the real and imaginary parts of one complex signal (one `LaneFFT` for both), separated in
/// the frequency domain by the conjugate symmetry of real signals' spectra, multiplied by their
/// kernels' spectra, recombined and transformed back with one more FFT. The kernels' spectra are
/// computed once per call for every batch entry. Parallel over channel groups.
///
/// - Complexity: O(C·(B + 1)·M log M) time with M ≈ 2N; extra memory O(threads·M·laneWidth).
package enum LongConvolution {
  /// The smallest `2^a·3^b·5^c ≥ 2n − 1`.
  package static func fftSize(_ n: Int) -> Int {
    let target = max(1, 2 * n - 1)
    var best = Int.max
    var p2 = 1
    while p2 < 2 * target {
      var p3 = p2
      while p3 < 2 * target {
        var p5 = p3
        while p5 < target { p5 *= 5 }
        best = min(best, p5)
        p3 *= 3
      }
      p2 *= 2
    }
    return best
  }

  /// `y = conv(x) (+ skip·x)`, written (or added to y when `accumulate`).
  ///
  /// - Parameters:
  ///   - x: `[B, N, ldx]` rows, channels `0..<C` read.
  ///   - y: `[B, N, ldy]` rows, channels `0..<C` written or accumulated.
  ///   - kFwd: `[C, ldk]`, taps `0..<N` used; `kRev` the same (bidirectional) or nil (causal).
  ///   - skip: `[C]` or nil.
  package static func apply(
    batch B: Int, length N: Int, channels C: Int,
    x: UnsafePointer<Float>, ldx: Int, y: UnsafeMutablePointer<Float>, ldy: Int, accumulate: Bool,
    kFwd: UnsafePointer<Float>, kRev: UnsafePointer<Float>?, ldk: Int, skip: UnsafePointer<Float>?, threads: Int
  ) {
    let M = fftSize(N)
    let fft = LaneFFT(length: M)
    let L = laneWidth
    let groups = (C + 2 * L - 1) / (2 * L)
    let workers = Parallel.workers(for: groups, threads: threads)
    let per = 4 * M + fft.workCount
    let buf = AlignedBuffer<Lane>(count: workers * per)
    let bp = SendablePointer(buf.pointer)
    let xp = SendablePointer(x), yp = SendablePointer(y), kf = SendablePointer(kFwd)
    let kr = kRev.map { SendablePointer($0) }, sk = skip.map { SendablePointer($0) }
    let invM = Lane(repeating: 1 / Float(M))
    let half = Lane(repeating: 0.5)
    Parallel.forEach(groups, threads: workers) { gi, worker in
      let base = bp.pointer + worker * per
      let hr = base, hi = base + M, vr = base + 2 * M, vi = base + 3 * M, work = base + 4 * M
      let c0 = gi * 2 * L
      // Kernel spectra: group A in the real part, group B in the imaginary part.
      for m in 0..<M { hr[m] = Lane(); hi[m] = Lane() }
      for l in 0..<(2 * L) {
        let c = c0 + l
        if c >= C { break }
        let dst = l < L ? hr : hi
        let lane = l % L
        let f = kf.pointer + c * ldk
        for t in 0..<N { dst[t][lane] = f[t] }
        if let kr {
          let r = kr.pointer + c * ldk
          for s in 1..<max(1, N) { dst[M - s][lane] = r[s - 1] }
        }
      }
      fft.forward(re: hr, im: hi, work: work)
      for b in 0..<B {
        let xb = xp.pointer + b * N * ldx
        for t in 0..<N {
          let row = xb + t * ldx
          if c0 + 2 * L <= C {
            vr[t] = loadLane(row + c0)
            vi[t] = loadLane(row + c0 + L)
          } else {
            var a = Lane(), bb = Lane()
            for l in 0..<L where c0 + l < C { a[l] = row[c0 + l] }
            for l in 0..<L where c0 + L + l < C { bb[l] = row[c0 + L + l] }
            vr[t] = a
            vi[t] = bb
          }
        }
        for t in N..<M { vr[t] = Lane(); vi[t] = Lane() }
        fft.forward(re: vr, im: vi, work: work)
        // Separate, multiply, recombine, conjugate (for the inverse through the forward FFT).
        var k = 0
        while k <= M / 2 {
          let k2 = (M - k) % M
          let zr = vr[k], zi = vi[k], wr = vr[k2], wi = vi[k2]
          let vaR = (zr + wr) * half, vaI = (zi - wi) * half
          let vbR = (zi + wi) * half, vbI = (wr - zr) * half
          let gr = hr[k], gi2 = hi[k], ur = hr[k2], ui = hi[k2]
          let kaR = (gr + ur) * half, kaI = (gi2 - ui) * half
          let kbR = (gi2 + ui) * half, kbI = (ur - gr) * half
          let paR = vaR * kaR - vaI * kaI, paI = fmadd(vaR * kaI, vaI, kaR)
          let pbR = vbR * kbR - vbI * kbI, pbI = fmadd(vbR * kbI, vbI, kbR)
          vr[k] = paR - pbI
          vi[k] = Lane() - (paI + pbR)
          if k2 != k {
            vr[k2] = paR + pbI
            vi[k2] = paI - pbR
          }
          k += 1
        }
        fft.forward(re: vr, im: vi, work: work)
        let yb = yp.pointer + b * N * ldy
        for t in 0..<N {
          var a = vr[t] * invM, bb = Lane() - vi[t] * invM
          let row = xb + t * ldx
          let out = yb + t * ldy
          if c0 + 2 * L <= C {
            if let sk {
              a = fmadd(a, loadLane(sk.pointer + c0), loadLane(row + c0))
              bb = fmadd(bb, loadLane(sk.pointer + c0 + L), loadLane(row + c0 + L))
            }
            if accumulate {
              a += loadLane(out + c0)
              bb += loadLane(out + c0 + L)
            }
            storeLane(a, out + c0)
            storeLane(bb, out + c0 + L)
          } else {
            for l in 0..<(2 * L) {
              let c = c0 + l
              if c >= C { break }
              var v = l < L ? a[l] : bb[l - L]
              if let sk { v += sk.pointer[c] * row[c] }
              out[c] = accumulate ? out[c] + v : v
            }
          }
        }
      }
    }
    withExtendedLifetime(buf) {}
  }
}
