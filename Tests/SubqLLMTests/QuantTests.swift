import Foundation
import Subquadratic
import SubqLLM
import SubqTestSupport
import Testing

/// Dequantization against hand-made blocks and the products against Float64 references.
struct QuantTests {
  /// One block per format with chosen scales and nibbles: the expected weights follow from the
  /// format definition (d, m exactly representable in f16).
  @Test func knownBlocksDequantize() {
    // Q4_1: d = 0.5, m = −1, byte j = (j) | (15 − j) << 4 → w[j] = 0.5·j − 1, w[j+16] = 0.5·(15−j) − 1.
    var q41: [UInt8] = [0x00, 0x38, 0x00, 0xBC]
    for j in 0..<16 { q41.append(UInt8(j) | UInt8(15 - j) << 4) }
    // Q4_0: d = 0.25, byte j = j | j << 4 → w[j] = w[j+16] = 0.25·(j − 8).
    var q40: [UInt8] = [0x00, 0x34]
    for j in 0..<16 { q40.append(UInt8(j) | UInt8(j) << 4) }
    // Q8_0: d = 2, q[j] = j − 16.
    var q80: [UInt8] = [0x00, 0x40]
    for j in 0..<32 { q80.append(UInt8(bitPattern: Int8(j - 16))) }
    let cases: [(GGMLType, [UInt8], [Float])] = [
      (.q4_1, q41, (0..<16).map { 0.5 * Float($0) - 1 } + (0..<16).map { 0.5 * Float(15 - $0) - 1 }),
      (.q4_0, q40, (0..<16).map { 0.25 * Float($0 - 8) } + (0..<16).map { 0.25 * Float($0 - 8) }),
      (.q8_0, q80, (0..<32).map { 2 * Float($0 - 16) }),
      (.f16, f16Bytes([1, -2, 0.5, 65504]), [1, -2, 0.5, 65504]),
      (.bf16, [0x80, 0x3F, 0x00, 0xC0], [1, -2]),
    ]
    for (type, bytes, expected) in cases {
      var out = [Float](repeating: .nan, count: expected.count)
      bytes.withUnsafeBytes { b in out.withUnsafeMutableBufferPointer { Dequantize.row(type, b.baseAddress!, $0.baseAddress!, count: expected.count) } }
      #expect(out == expected, "\(type)")
    }
  }

  /// Random rows of each type dequantize to exactly what the reference decoder reads.
  @Test(arguments: [UInt32(0), 1, 2, 3, 8])
  func dequantizationMatchesTheReference(type: UInt32) {
    let seed = testSeed(UInt64(type))
    var rng = SeededGenerator(seed: seed)
    let n = 32 * 7
    let x = (0..<n).map { _ in Float(rng.nextNormal() * 3) }
    let bytes = encodeTensor(x, type: type)
    let ref = referenceDequantize(type: type, bytes: bytes, count: n)
    var out = [Float](repeating: .nan, count: n)
    bytes.withUnsafeBytes { b in out.withUnsafeMutableBufferPointer { Dequantize.row(GGMLType(rawValue: type), b.baseAddress!, $0.baseAddress!, count: n) } }
    for i in 0..<n { #expect(Double(out[i]) == ref[i], "type \(type) index \(i) seed \(seed)") }
  }

  /// `Y = X Wᵀ` (matrix–vector for n = 1, the panel kernel otherwise) against Float64 products of
  /// the dequantized weights, with row counts that are not multiples of the panel width or the
  /// item size, a padded output stride whose padding must stay untouched, and NaN-poisoned
  /// outputs. Tolerance: relative error ≤ 2e-6 per output (Float32 accumulation over ≤ 224
  /// products with FMA; a wrong nibble, scale or row costs ≥ 1e-2).
  @Test(arguments: [UInt32(0), 1, 2, 3, 8])
  func productsMatchFloat64(type: UInt32) {
    let seed = testSeed(100 + UInt64(type))
    var rng = SeededGenerator(seed: seed)
    for (rows, cols) in [(37, 96), (130, 224), (64, 32)] {
      let w = (0..<(rows * cols)).map { _ in Float(rng.nextNormal()) }
      let bytes = encodeTensor(w, type: type)
      let ref = referenceDequantize(type: type, bytes: bytes, count: rows * cols)
      for n in [1, 5, 13, 70] {
        let x = (0..<(n * cols)).map { _ in Float(rng.nextNormal()) }
        let ldy = rows + 3
        var y = [Float](repeating: .nan, count: n * ldy)
        for t in 0..<n { for c in rows..<ldy { y[t * ldy + c] = 1e30 } }
        bytes.withUnsafeBytes { b in
          x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { yp in
              let m = QuantizedMatrix(type: GGMLType(rawValue: type), rows: rows, cols: cols, base: b.baseAddress!, name: "w")
              QuantizedProducts.matmul([MatmulJob(w: m, x: xp.baseAddress!, ldx: cols, y: yp.baseAddress!, ldy: ldy)], n: n, threads: 2)
            }
          }
        }
        var worst = 0.0
        for t in 0..<n {
          for r in 0..<rows {
            var s = 0.0, mag = 0.0
            for c in 0..<cols { s += ref[r * cols + c] * Double(x[t * cols + c]); mag += abs(ref[r * cols + c] * Double(x[t * cols + c])) }
            worst = max(worst, abs(Double(y[t * ldy + r]) - s) / max(mag, 1e-6))
          }
          for c in rows..<ldy { #expect(y[t * ldy + c] == 1e30, "padding overwritten: type \(type) n \(n)") }
        }
        #expect(worst <= 2e-6, "type \(type) rows \(rows) cols \(cols) n \(n): error \(worst) seed \(seed)")
      }
    }
  }
}
