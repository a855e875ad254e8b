import Foundation
import SubqKernels
import Testing

/// The vectorized exponentials and tanh every softmax in the package runs on, against Foundation's
/// Float64 functions. Tolerances: the 2^f polynomials are accurate to 1.1e-7 (degree 6, Swift
/// path, f ∈ [−½, ½]) and 1.4e-7 (degree 5, AVX-512 path, f ∈ [0, 1)) relative in Float32; the
/// scaling by 2^n is exact and the final product adds half an ulp (6e-8), so 3e-7 bounds both.
/// `expLane` first forms y = x·log2(e) in Float32: the rounded constant and the rounded product
/// move y by up to |y|·2·2⁻²⁴, so e^x by up to ln 2·|y|·1.2e-7 = |x|·1.2e-7 relative.
@Suite struct ExpTests {
  /// Applies `f` to `xs` one lane vector at a time (the tail padded with zeros).
  func lanes(_ xs: [Float], _ f: (Lane) -> Lane) -> [Float] {
    var out = [Float](repeating: .nan, count: xs.count)
    var i = 0
    while i < xs.count {
      var v = Lane()
      for l in 0..<laneWidth where i + l < xs.count { v[l] = xs[i + l] }
      let r = f(v)
      for l in 0..<laneWidth where i + l < xs.count { out[i + l] = r[l] }
      i += laneWidth
    }
    return out
  }

  /// The largest relative error of `got` against `truth` over `xs`, and where it is (NaN counts
  /// as the worst).
  func maxRelativeError(_ xs: [Float], _ got: [Float], _ truth: (Double) -> Double) -> (Double, Float) {
    var worst = 0.0, at: Float = 0
    for (x, y) in zip(xs, got) {
      let t = truth(Double(x))
      let e = abs(Double(y) - t) / abs(t)
      if !(e <= worst) { worst = e.isNaN ? .infinity : e; at = x }
    }
    return (worst, at)
  }

  /// Every 1/1024 from -126 to 127 (the normal range of the result), plus fresh random points.
  var exp2Inputs: [Float] {
    var xs = stride(from: -126.0, through: 127.0, by: 1.0 / 1024).map { Float($0) }
    var g = SystemRandomNumberGenerator()
    for _ in 0..<100_000 { xs.append(Float.random(in: -126...127, using: &g)) }
    return xs
  }

  @Test func exp2LaneIsAccurateOverTheNormalRange() {
    let xs = exp2Inputs
    let (err, at) = maxRelativeError(xs, lanes(xs, exp2Lane), { Foundation.exp2($0) })
    #expect(err < 3e-7, "max relative error \(err) at x = \(at)")
  }

  @Test func exp2ScalarIsAccurateOverTheNormalRange() {
    let xs = exp2Inputs
    let (err, at) = maxRelativeError(xs, xs.map(exp2Scalar), { Foundation.exp2($0) })
    #expect(err < 3e-7, "max relative error \(err) at x = \(at)")
  }

  @Test func expLaneIsAccurateOverTheSoftmaxRange() {
    // Softmax arguments: x − max ≤ 0, down to where e^x leaves the normal range.
    let xs = stride(from: -87.0, through: 0.0, by: 1.0 / 4096).map { Float($0) } + [1, 10, 88]
    let got = lanes(xs, expLane)
    var worst = 0.0, at: Float = 0
    for (x, y) in zip(xs, got) {
      let t = Foundation.exp(Double(x))
      let excess = (abs(Double(y) - t) / t) / (3e-7 + Double(abs(x)) * 1.2e-7)
      if !(excess <= worst) { worst = excess.isNaN ? .infinity : excess; at = x }
    }
    #expect(worst < 1, "error \(worst)× the bound at x = \(at)")
  }

  /// What the online softmax relies on: a masked score (−∞) weighs exactly 0, the maximum
  /// (x − max = 0) weighs exactly 1, far below the range is 0, NaN is never hidden.
  @Test func exp2LaneSpecialValues() {
    let xs: [Float] = [-.infinity, 0, -0.0, -1000, -200, -150.5, .nan, 1, -1, 0.5, -0.5, 127.375, 3.25, -3.25,
                       -.greatestFiniteMagnitude]
    let y = lanes(xs, exp2Lane)
    #expect(y[0] == 0 && y[0].sign == .plus)
    #expect(y[1] == 1 && y[2] == 1)
    #expect(y[3] == 0 && y[4] == 0 && y[5] == 0)
    #expect(y[6].isNaN)
    #expect(y[7] == 2 && y[8] == 0.5)
    #expect(abs(Double(y[9]) - 2.0.squareRoot()) / 2.0.squareRoot() < 3e-7)
    #expect(abs(Double(y[10]) - 0.5.squareRoot()) / 0.5.squareRoot() < 3e-7)
    #expect(abs(Double(y[11]) - Foundation.exp2(127.375)) / Foundation.exp2(127.375) < 3e-7)
    #expect(abs(Double(y[12]) * Double(y[13]) - 1) < 6e-7)
    #expect(y[14] == 0)
    #expect(exp2Scalar(-.infinity) == 0 && exp2Scalar(0) == 1 && exp2Scalar(-1000) == 0)
    let e = lanes([-.infinity, 0, .nan], expLane)
    #expect(e[0] == 0 && e[1] == 1 && e[2].isNaN)
  }

  /// tanh (the softcap): relative error against Float64 on both branches and across the switch
  /// at |x| = 0.625, exact symmetry, ±∞ → ±1, NaN → NaN. Bound: the small-|x| polynomial is
  /// accurate to 9e-8; on the large branch (1 − t)/(1 + t) adds a division to the error of
  /// t = e^(−2|x|), whose relative error (3e-7 + |x|·1.2e-7) is damped by 2t/(1 − t²) in the
  /// result; 5e-7 bounds both.
  @Test func tanhLaneIsAccurateAndOdd() {
    var xs = stride(from: -12.0, through: 12.0, by: 1.0 / 2048).map { Float($0) }
    xs += [0.625, 0.62499994, 0.62500006, -0.625, 1e-30, -1e-30, 1e-8, 30, -30, 100]
    xs.removeAll { $0 == 0 }
    let y = lanes(xs, tanhLane)
    let (err, at) = maxRelativeError(xs, y, { Foundation.tanh($0) })
    #expect(err < 5e-7, "max relative error \(err) at x = \(at)")
    let neg = lanes(xs.map { -$0 }, tanhLane)
    #expect(zip(y, neg).allSatisfy { $0 == -$1 })
    let s = lanes([.infinity, -.infinity, .nan, 0, -0.0], tanhLane)
    #expect(s[0] == 1 && s[1] == -1 && s[2].isNaN && s[3] == 0 && s[4] == 0)
  }

  /// The online-softmax step: the rescale factor and the shift for every combination of an
  /// empty (−∞) and a finite running or block maximum, never NaN.
  @Test func advanceRunningMaxHandlesEmptyRows() {
    let inf = Float.infinity
    let cases: [(running: Float, block: Float, alpha: Float, safe: Float)] = [
      (-inf, -inf, 0, 0),  // nothing seen yet, nothing in the block
      (-inf, 3, 0, 3),  // first unmasked block: nothing to rescale
      (2, 5, 0.125, 5),
      (4, 4, 1, 4),
    ]
    let n = cases.count
    let blockMax = UnsafeMutablePointer<Lane>.allocate(capacity: n), running = UnsafeMutablePointer<Lane>.allocate(capacity: n)
    let safe = UnsafeMutablePointer<Lane>.allocate(capacity: n), alpha = UnsafeMutablePointer<Lane>.allocate(capacity: n)
    defer { for p in [blockMax, running, safe, alpha] { p.deallocate() } }
    for (i, c) in cases.enumerated() {
      blockMax[i] = Lane(repeating: c.block)
      running[i] = Lane(repeating: c.running)
      safe[i] = Lane(repeating: .nan)
      alpha[i] = Lane(repeating: .nan)
    }
    advanceRunningMax(lanes: n, blockMax: blockMax, running: running, safe: safe, alpha: alpha)
    for (i, c) in cases.enumerated() {
      #expect(alpha[i] == Lane(repeating: c.alpha), "case \(i)")
      #expect(safe[i] == Lane(repeating: c.safe), "case \(i)")
      #expect(running[i] == Lane(repeating: c.block), "case \(i)")
      #expect(blockMax[i] == Lane(), "case \(i)")
    }
  }

  @Test func reductionsAndMinMax() {
    var g = SystemRandomNumberGenerator()
    let a = (0..<laneWidth).map { _ in Float.random(in: -100...100, using: &g) }
    let b = (0..<laneWidth).map { _ in Float.random(in: -100...100, using: &g) }
    var x = Lane(), y = Lane()
    for l in 0..<laneWidth { x[l] = a[l]; y[l] = b[l] }
    #expect(vmax(x, y) == Lane((0..<laneWidth).map { Swift.max(a[$0], b[$0]) }))
    #expect(vmin(x, y) == Lane((0..<laneWidth).map { Swift.min(a[$0], b[$0]) }))
    let exact = a.reduce(0.0) { $0 + Double($1) }
    #expect(abs(Double(hsum(x)) - exact) <= 1e-5 * a.reduce(0.0) { $0 + Double(abs($1)) })
  }
}
