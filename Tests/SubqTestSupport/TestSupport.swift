import Foundation
import Subquadratic

/// Relative Frobenius error ‖x − ref‖ / ‖ref‖, computed in Double (absolute error when ref is 0).
public func relativeError(_ x: Tensor, _ ref: [Double]) -> Double {
  precondition(x.count == ref.count, "relativeError: \(x.count) vs \(ref.count) elements")
  var num = 0.0, den = 0.0
  x.withUnsafeBufferPointer { p in
    for i in 0..<ref.count {
      let d = Double(p[i]) - ref[i]
      num += d * d
      den += ref[i] * ref[i]
    }
  }
  return den > 0 ? (num / den).squareRoot() : num.squareRoot()
}

/// Relative Frobenius error of two tensors.
public func relativeError(_ x: Tensor, _ ref: Tensor) -> Double {
  relativeError(x, ref.scalars.map(Double.init))
}

/// The largest |x − ref| / max(|ref|, floor), with its index; entries where both are +∞ (or both
/// −∞) match.
public func worstRelative(_ x: Tensor, _ ref: [Double], floor: Double = 1) -> (error: Double, index: Int) {
  var worst = (0.0, -1)
  x.withUnsafeBufferPointer { p in
    for i in 0..<ref.count {
      let a = Double(p[i]), b = ref[i]
      if a == b { continue }
      let e = (a.isNaN || b.isNaN) ? .infinity : abs(a - b) / max(abs(b), floor)
      if e > worst.0 || e.isNaN { worst = (e.isNaN ? .infinity : e, i) }
    }
  }
  return worst
}

/// A tensor filled with NaN, to show any element a kernel fails to write.
public func poisoned(_ shape: [Int]) -> Tensor { Tensor(shape: shape, repeating: .nan) }

/// Whether any element is NaN.
public func hasNaN(_ t: Tensor) -> Bool { t.withUnsafeBufferPointer { $0.contains { $0.isNaN } } }

/// A fresh seed for each test run, printed so a failure can be reproduced (SUBQ_TEST_SEED pins it).
public func testSeed(_ salt: UInt64 = 0) -> UInt64 {
  if let s = ProcessInfo.processInfo.environment["SUBQ_TEST_SEED"], let v = UInt64(s) { return v &+ salt }
  return UInt64.random(in: 1...UInt64.max / 2) &+ salt
}

/// Overwrites, in a `[B, H, N, X]` (or bshd) tensor, every row at position ≥ `from[b]` with `value`.
public func fillRows(_ t: inout Tensor, layout: AttentionLayout, from: [Int], value: Float) {
  let (B, H, N, X) = layout == .bhsd ? (t.shape[0], t.shape[1], t.shape[2], t.shape[3]) : (t.shape[0], t.shape[2], t.shape[1], t.shape[3])
  let rows = RowAddressing(layout: layout, heads: H, length: N, width: X)
  t.withUnsafeMutableBufferPointer { p in
    for b in 0..<B {
      for h in 0..<H {
        for n in from[b]..<N {
          let o = rows.offset(batch: b, head: h, row: n)
          for x in 0..<X { p[o + x] = value }
        }
      }
    }
  }
}
