import Foundation
import SubqCore
import SubqKernels

/// A complex fast Fourier transform of any length, computing `laneWidth` independent signals at
/// once (one per SIMD lane), forward (`X_k = Σ_j x_j e^{−2πi jk/n}`, no scaling).
///
/// Lengths whose prime factors are all ≤ 13 use a self-sorting (Stockham) mixed-radix transform:
/// radix-4, 2 and 3 butterflies written out, other small primes through a generic radix-p
/// butterfly; no bit-reversal pass, the data ping-pong between two buffers. Other lengths go
/// through Bluestein's chirp-z algorithm: a circular convolution of length `2^a ≥ 2n − 1` done with
/// the mixed-radix transform. Twiddles are computed in Double and stored as Float.
///
/// Each complex element is a pair of `Lane` vectors (real parts, imaginary parts), so every
/// butterfly is vector arithmetic across the lanes — the natural layout for transforming many
/// channels of `[N, C]` data at once (the long convolution of ``MonarchMixer``).
///
/// - Complexity: O(n log n) per transform of `laneWidth` signals (Bluestein: about 3 transforms
///   of the padded length); plan memory O(n).
public struct LaneFFT: Sendable {
  /// The transform length.
  public let length: Int
  /// Radices in stage order (empty when Bluestein is used).
  let radices: [Int]
  /// Per stage: twiddles `w_{n_cur}^{pp·u}` for pp < m, 1 ≤ u < p, as (re, im) pairs, `[m][p−1]`.
  let twiddles: [[Float]]
  /// Per stage with a generic radix: `ω_p^{r·u}` for r, u < p as (re, im) pairs.
  let roots: [[Float]]
  /// Bluestein: the inner power-of-two transform, the chirp `c_j = e^{−πi j²/n}` and the
  /// transformed conjugate chirp.
  let inner: Box?
  let chirp: [Float]
  let chirpSpectrum: [Float]

  final class Box: Sendable {
    let fft: LaneFFT
    init(_ fft: LaneFFT) { self.fft = fft }
  }

  /// The largest prime handled by the mixed-radix transform directly.
  static let maxDirectPrime = 13

  /// Plans a transform of `length ≥ 1`.
  public init(length n: Int) {
    precondition(n >= 1, "LaneFFT: length \(n) < 1")
    length = n
    var factors: [Int] = []
    var r = n
    while r % 4 == 0 { factors.append(4); r /= 4 }
    while r % 2 == 0 { factors.append(2); r /= 2 }
    var p = 3
    while p * p <= r { while r % p == 0 { factors.append(p); r /= p }; p += 2 }
    if r > 1 { factors.append(r) }
    if factors.allSatisfy({ $0 <= Self.maxDirectPrime }) {
      radices = factors
      var tw: [[Float]] = [], rt: [[Float]] = []
      var nCur = n
      for p in factors {
        let m = nCur / p
        var t = [Float](repeating: 0, count: 2 * m * max(1, p - 1))
        for pp in 0..<m {
          for u in 1..<max(2, p) where u < p {
            let a = -2 * Double.pi * Double(pp * u) / Double(nCur)
            t[2 * (pp * (p - 1) + u - 1)] = Float(Foundation.cos(a))
            t[2 * (pp * (p - 1) + u - 1) + 1] = Float(Foundation.sin(a))
          }
        }
        tw.append(t)
        var w = [Float](repeating: 0, count: 2 * p * p)
        for a in 0..<p {
          for b in 0..<p {
            let ang = -2 * Double.pi * Double((a * b) % p) / Double(p)
            w[2 * (a * p + b)] = Float(Foundation.cos(ang))
            w[2 * (a * p + b) + 1] = Float(Foundation.sin(ang))
          }
        }
        rt.append(w)
        nCur = m
      }
      twiddles = tw
      roots = rt
      inner = nil
      chirp = []
      chirpSpectrum = []
    } else {
      radices = []
      twiddles = []
      roots = []
      var m = 1
      while m < 2 * n - 1 { m *= 2 }
      let f = LaneFFT(length: m)
      inner = Box(f)
      // c_j = e^{−πi j²/n}, with j² taken mod 2n for accuracy.
      var c = [Float](repeating: 0, count: 2 * n)
      for j in 0..<n {
        let a = -Double.pi * Double((j * j) % (2 * n)) / Double(n)
        c[2 * j] = Float(Foundation.cos(a))
        c[2 * j + 1] = Float(Foundation.sin(a))
      }
      chirp = c
      // b_j = conj(c_|j|) on the circle of length m, transformed once (every lane the same).
      let re = AlignedBuffer<Lane>(count: m), im = AlignedBuffer<Lane>(count: m), work = AlignedBuffer<Lane>(count: 2 * m)
      for j in 0..<m { re.pointer[j] = Lane(); im.pointer[j] = Lane() }
      for j in 0..<n {
        re.pointer[j] = Lane(repeating: c[2 * j]); im.pointer[j] = Lane(repeating: -c[2 * j + 1])
        if j > 0 { re.pointer[m - j] = Lane(repeating: c[2 * j]); im.pointer[m - j] = Lane(repeating: -c[2 * j + 1]) }
      }
      f.forward(re: re.pointer, im: im.pointer, work: work.pointer)
      var s = [Float](repeating: 0, count: 2 * m)
      for k in 0..<m { s[2 * k] = re.pointer[k][0]; s[2 * k + 1] = im.pointer[k][0] }
      chirpSpectrum = s
    }
  }

  /// Lane vectors of work memory `forward` needs (pass a buffer at least this long).
  public var workCount: Int { inner.map { 2 * $0.fft.length + $0.fft.workCount } ?? 2 * length }

  /// Transforms `laneWidth` signals in place: `re[j]`, `im[j]` hold element j of every signal.
  /// `work` must hold ``workCount`` lane vectors.
  public func forward(re: UnsafeMutablePointer<Lane>, im: UnsafeMutablePointer<Lane>, work: UnsafeMutablePointer<Lane>) {
    if let inner { bluestein(inner.fft, re: re, im: im, work: work); return }
    if length == 1 { return }
    // Stockham: stage output goes to the other buffer; (re, im) ↔ work halves.
    let n = length
    let wre = work, wim = work + n
    // work must hold 2n lanes for the ping-pong when n > 1.
    var xr = re, xi = im, yr = wre, yi = wim
    var nCur = n, s = 1
    for (stage, p) in radices.enumerated() {
      let m = nCur / p
      twiddles[stage].withUnsafeBufferPointer { tw in
        roots[stage].withUnsafeBufferPointer { rt in
          Self.stage(p: p, m: m, s: s, xr: xr, xi: xi, yr: yr, yi: yi, tw: tw.baseAddress!, roots: rt.baseAddress!)
        }
      }
      swap(&xr, &yr)
      swap(&xi, &yi)
      nCur = m
      s *= p
    }
    if xr != re {
      re.update(from: xr, count: n)
      im.update(from: xi, count: n)
    }
  }

  /// One radix-p Stockham stage: `y[q + s(p·pp + u)] = (Σ_r x[q + s(pp + r·m)] ω_p^{ru}) · w^{pp·u}`.
  @inline(__always)
  static func stage(
    p: Int, m: Int, s: Int, xr: UnsafeMutablePointer<Lane>, xi: UnsafeMutablePointer<Lane>,
    yr: UnsafeMutablePointer<Lane>, yi: UnsafeMutablePointer<Lane>, tw: UnsafePointer<Float>, roots: UnsafePointer<Float>
  ) {
    let sm = s * m
    switch p {
    case 2:
      for pp in 0..<m {
        let w1r = Lane(repeating: tw[2 * pp]), w1i = Lane(repeating: tw[2 * pp + 1])
        let i0 = s * pp, o0 = s * 2 * pp
        for q in 0..<s {
          let ar = xr[i0 + q], ai = xi[i0 + q], br = xr[i0 + sm + q], bi = xi[i0 + sm + q]
          yr[o0 + q] = ar + br; yi[o0 + q] = ai + bi
          let dr = ar - br, di = ai - bi
          yr[o0 + s + q] = dr * w1r - di * w1i
          yi[o0 + s + q] = fmadd(di * w1r, dr, w1i)
        }
      }
    case 4:
      for pp in 0..<m {
        let t = tw + 6 * pp
        let w1r = Lane(repeating: t[0]), w1i = Lane(repeating: t[1])
        let w2r = Lane(repeating: t[2]), w2i = Lane(repeating: t[3])
        let w3r = Lane(repeating: t[4]), w3i = Lane(repeating: t[5])
        let i0 = s * pp, o0 = s * 4 * pp
        for q in 0..<s {
          let a0r = xr[i0 + q], a0i = xi[i0 + q]
          let a1r = xr[i0 + sm + q], a1i = xi[i0 + sm + q]
          let a2r = xr[i0 + 2 * sm + q], a2i = xi[i0 + 2 * sm + q]
          let a3r = xr[i0 + 3 * sm + q], a3i = xi[i0 + 3 * sm + q]
          let t0r = a0r + a2r, t0i = a0i + a2i, t1r = a0r - a2r, t1i = a0i - a2i
          let t2r = a1r + a3r, t2i = a1i + a3i, t3r = a1r - a3r, t3i = a1i - a3i
          yr[o0 + q] = t0r + t2r; yi[o0 + q] = t0i + t2i
          // X1 = t1 − i·t3, X2 = t0 − t2, X3 = t1 + i·t3, each times its twiddle.
          let x1r = t1r + t3i, x1i = t1i - t3r
          let x2r = t0r - t2r, x2i = t0i - t2i
          let x3r = t1r - t3i, x3i = t1i + t3r
          yr[o0 + s + q] = x1r * w1r - x1i * w1i; yi[o0 + s + q] = fmadd(x1i * w1r, x1r, w1i)
          yr[o0 + 2 * s + q] = x2r * w2r - x2i * w2i; yi[o0 + 2 * s + q] = fmadd(x2i * w2r, x2r, w2i)
          yr[o0 + 3 * s + q] = x3r * w3r - x3i * w3i; yi[o0 + 3 * s + q] = fmadd(x3i * w3r, x3r, w3i)
        }
      }
    case 3:
      let c = Lane(repeating: -0.5), sn = Lane(repeating: -0.866_025_403_784_438_6)  // ω₃ = −1/2 − i√3/2
      for pp in 0..<m {
        let t = tw + 4 * pp
        let w1r = Lane(repeating: t[0]), w1i = Lane(repeating: t[1])
        let w2r = Lane(repeating: t[2]), w2i = Lane(repeating: t[3])
        let i0 = s * pp, o0 = s * 3 * pp
        for q in 0..<s {
          let a0r = xr[i0 + q], a0i = xi[i0 + q]
          let a1r = xr[i0 + sm + q], a1i = xi[i0 + sm + q]
          let a2r = xr[i0 + 2 * sm + q], a2i = xi[i0 + 2 * sm + q]
          let tr = a1r + a2r, ti = a1i + a2i, dr = a1r - a2r, di = a1i - a2i
          yr[o0 + q] = a0r + tr; yi[o0 + q] = a0i + ti
          let br = fmadd(a0r, c, tr), bi = fmadd(a0i, c, ti)
          // X1 = b + i·sn·d, X2 = b − i·sn·d (i·sn·d = −sn·di + i·sn·dr).
          let x1r = br - sn * di, x1i = fmadd(bi, sn, dr)
          let x2r = fmadd(br, sn, di), x2i = bi - sn * dr
          yr[o0 + s + q] = x1r * w1r - x1i * w1i; yi[o0 + s + q] = fmadd(x1i * w1r, x1r, w1i)
          yr[o0 + 2 * s + q] = x2r * w2r - x2i * w2i; yi[o0 + 2 * s + q] = fmadd(x2i * w2r, x2r, w2i)
        }
      }
    default:
      // Generic radix-p butterfly, O(p²) per group.
      for pp in 0..<m {
        let t = tw + 2 * (p - 1) * pp
        let i0 = s * pp, o0 = s * p * pp
        for q in 0..<s {
          for u in 0..<p {
            var sr = Lane(), si = Lane()
            for r in 0..<p {
              let ar = xr[i0 + r * sm + q], ai = xi[i0 + r * sm + q]
              let wr = Lane(repeating: roots[2 * (r * p + u)]), wi = Lane(repeating: roots[2 * (r * p + u) + 1])
              sr = fmadd(sr, ar, wr) - ai * wi
              si = fmadd(fmadd(si, ar, wi), ai, wr)
            }
            if u == 0 {
              yr[o0 + q] = sr; yi[o0 + q] = si
            } else {
              let wr = Lane(repeating: t[2 * (u - 1)]), wi = Lane(repeating: t[2 * (u - 1) + 1])
              yr[o0 + u * s + q] = sr * wr - si * wi
              yi[o0 + u * s + q] = fmadd(si * wr, sr, wi)
            }
          }
        }
      }
    }
  }

  /// Bluestein: `X_k = c_k · Σ_j (x_j c_j) · conj(c_{k−j})`, the sum a circular convolution of the
  /// inner length done by transforms.
  func bluestein(_ f: LaneFFT, re: UnsafeMutablePointer<Lane>, im: UnsafeMutablePointer<Lane>, work: UnsafeMutablePointer<Lane>) {
    let n = length, m = f.length
    let ar = work, ai = work + m, w = work + 2 * m
    for j in 0..<m { ar[j] = Lane(); ai[j] = Lane() }
    for j in 0..<n {
      let cr = Lane(repeating: chirp[2 * j]), ci = Lane(repeating: chirp[2 * j + 1])
      ar[j] = re[j] * cr - im[j] * ci
      ai[j] = fmadd(im[j] * cr, re[j], ci)
    }
    f.forward(re: ar, im: ai, work: w)
    // Multiply by the chirp spectrum, then inverse transform as conj(F(conj(·)))/m.
    for k in 0..<m {
      let br = Lane(repeating: chirpSpectrum[2 * k]), bi = Lane(repeating: chirpSpectrum[2 * k + 1])
      let pr = ar[k] * br - ai[k] * bi, pi = fmadd(ai[k] * br, ar[k], bi)
      ar[k] = pr
      ai[k] = -pi
    }
    f.forward(re: ar, im: ai, work: w)
    let inv = 1 / Float(m)
    for k in 0..<n {
      let yr = ar[k] * inv, yi = -ai[k] * inv
      let cr = Lane(repeating: chirp[2 * k]), ci = Lane(repeating: chirp[2 * k + 1])
      re[k] = yr * cr - yi * ci
      im[k] = fmadd(yi * cr, yr, ci)
    }
  }
}

/// The discrete Fourier transform of real signals of any length, through ``LaneFFT``.
///
/// `forward` returns the half spectrum `X_k = Σ_j x_j e^{−2πi jk/n}`, `k = 0 … ⌊n/2⌋` (the rest is
/// its complex conjugate mirror); `inverse` maps a half spectrum back to the length-n real signal
/// (`x_j = (1/n) Σ_k X_k e^{2πi jk/n}`). Up to `laneWidth` signals of the same length are
/// transformed at once.
public struct RealFFT: Sendable {
  public let length: Int
  let fft: LaneFFT

  public init(length: Int) throws(SubqError) {
    guard length >= 1 else { throw .argument(op: "fft", name: "length", value: "\(length)", reason: "must be at least 1") }
    self.length = length
    fft = LaneFFT(length: length)
  }

  /// Half spectra of `signals` (each of `length` reals; at most `laneWidth` of them… any count is
  /// accepted and done `laneWidth` at a time): `(re, im)` of `length/2 + 1` values each.
  public func forward(_ signals: [[Float]]) throws(SubqError) -> [(re: [Float], im: [Float])] {
    let n = length, h = n / 2 + 1
    for (i, s) in signals.enumerated() where s.count != n {
      throw .shape(op: "fft", tensor: "signal \(i)", shape: [s.count], reason: "expected length \(n)")
    }
    var out: [(re: [Float], im: [Float])] = []
    let re = AlignedBuffer<Lane>(count: n), im = AlignedBuffer<Lane>(count: n), work = AlignedBuffer<Lane>(count: max(fft.workCount, 2 * n))
    var start = 0
    while start < signals.count {
      let batch = Array(signals[start..<min(signals.count, start + laneWidth)])
      for j in 0..<n {
        var v = Lane()
        for (l, s) in batch.enumerated() { v[l] = s[j] }
        re.pointer[j] = v
        im.pointer[j] = Lane()
      }
      fft.forward(re: re.pointer, im: im.pointer, work: work.pointer)
      for l in 0..<batch.count {
        out.append(((0..<h).map { re.pointer[$0][l] }, (0..<h).map { im.pointer[$0][l] }))
      }
      start += laneWidth
    }
    return out
  }

  /// The real signal of a half spectrum (`length/2 + 1` values).
  public func inverse(re: [Float], im: [Float]) throws(SubqError) -> [Float] {
    let n = length, h = n / 2 + 1
    guard re.count == h, im.count == h else {
      throw .shape(op: "fft", tensor: "spectrum", shape: [re.count, im.count], reason: "expected \(h) real and imaginary parts")
    }
    let r = AlignedBuffer<Lane>(count: n), i = AlignedBuffer<Lane>(count: n), work = AlignedBuffer<Lane>(count: max(fft.workCount, 2 * n))
    // x = conj(F(conj(X)))/n over the full Hermitian spectrum.
    for k in 0..<n {
      let (a, b) = k < h ? (re[k], im[k]) : (re[n - k], -im[n - k])
      r.pointer[k] = Lane(repeating: a)
      i.pointer[k] = Lane(repeating: -b)
    }
    fft.forward(re: r.pointer, im: i.pointer, work: work.pointer)
    return (0..<n).map { r.pointer[$0][0] / Float(n) }
  }
}
