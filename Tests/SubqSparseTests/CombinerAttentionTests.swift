import Foundation
import Subquadratic
import SubqTestSupport
import Testing

/// A direct, unoptimized Float64 implementation of Combiner's formula, query by query: the direct
/// keys and one abstraction per region, one joint softmax. Shapes `[B, H, N, D]` (bhsd).
func combinerReference(_ q: Tensor, _ k: Tensor, _ v: Tensor, variant: CombinerAttention.Variant, block L: Int, causal: Bool)
  -> [Double]
{
  let (B, Hq, N, D) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
  let Hkv = k.shape[1], Dv = v.shape[3]
  let tau = 1 / Double(D).squareRoot()
  func row(_ t: Tensor, _ b: Int, _ h: Int, _ i: Int) -> [Double] { (0..<t.shape[3]).map { Double(t[b, h, i, $0]) } }
  func dotp(_ a: [Double], _ b: [Double]) -> Double { zip(a, b).reduce(0) { $0 + $1.0 * $1.1 } }
  func maxPool(_ t: Tensor, _ b: Int, _ h: Int, _ r: Range<Int>) -> [Double] {
    (0..<t.shape[3]).map { d in r.map { Double(t[b, h, $0, d]) }.max()! }
  }
  /// Σ_j softmax(τ·qs·k_j) v_j over r.
  func spanValue(_ qs: [Double], _ b: Int, _ g: Int, _ r: Range<Int>) -> [Double] {
    let s = r.map { tau * dotp(qs, row(k, b, g, $0)) }
    let m = s.max()!
    let w = s.map { Foundation.exp($0 - m) }
    let z = w.reduce(0, +)
    var o = [Double](repeating: 0, count: Dv)
    for (x, j) in r.enumerated() { let vj = row(v, b, g, j); for c in 0..<Dv { o[c] += w[x] / z * vj[c] } }
    return o
  }
  var out = [Double](repeating: 0, count: B * Hq * N * Dv)
  for b in 0..<B {
    for h in 0..<Hq {
      let g = h / (Hq / Hkv)
      for i in 0..<N {
        let qi = row(q, b, h, i)
        var direct: [Int] = []
        var spans: [(key: [Double], value: [Double])] = []
        switch variant {
        case .fixed, .axial:
          let T = (N + L - 1) / L
          func seg(_ t: Int) -> Range<Int> { (t * L)..<min(N, (t + 1) * L) }
          let s = i / L
          direct = causal ? Array(seg(s).lowerBound...i) : Array(seg(s))
          for t in 0..<T where causal ? t < s : t != s {
            let r = seg(t)
            let key = maxPool(k, b, g, r)
            let u = i - s * L
            let qs = (variant == .axial && t * L + u < r.upperBound) ? row(q, b, h, t * L + u) : maxPool(q, b, h, r)
            spans.append((key, spanValue(qs, b, g, r)))
          }
        case .logsparse:
          direct = [i]
          var l = 0
          while (1 << l) <= i {
            if (i >> l) & 1 == 1 {
              let m = i >> l
              let r = ((m - 1) << l)..<(m << l)
              spans.append((maxPool(k, b, g, r), spanValue(maxPool(q, b, h, r), b, g, r)))
            }
            l += 1
          }
        }
        var logits = direct.map { tau * dotp(qi, row(k, b, g, $0)) }
        logits += spans.map { tau * dotp(qi, $0.key) }
        let m = logits.max()!
        let w = logits.map { Foundation.exp($0 - m) }
        let z = w.reduce(0, +)
        var o = [Double](repeating: 0, count: Dv)
        for (x, j) in direct.enumerated() { let vj = row(v, b, g, j); for c in 0..<Dv { o[c] += w[x] / z * vj[c] } }
        for (x, sp) in spans.enumerated() { for c in 0..<Dv { o[c] += w[direct.count + x] / z * sp.value[c] } }
        for c in 0..<Dv { out[((b * Hq + h) * N + i) * Dv + c] = o[c] }
      }
    }
  }
  return out
}

/// Combiner against its own formula computed directly in Float64.
///
/// Tolerance: relative Frobenius error ≤ 2e-5. The kernel computes the span values in Float32
/// (a softmax over ≤ L keys, dot products over D ≤ 64) before the main pass, so it carries two
/// Float32 softmax roundings instead of one: ~1e-6. A wrong region, pool or normalization costs
/// ≥ 1e-3.
struct CombinerAttentionTests {
  func inputs(_ b: Int, _ hq: Int, _ hkv: Int, _ n: Int, _ d: Int, _ dv: Int, _ seed: UInt64) -> (Tensor, Tensor, Tensor) {
    (Tensor.randomNormal(shape: [b, hq, n, d], seed: seed), Tensor.randomNormal(shape: [b, hkv, n, d], seed: seed + 1),
     Tensor.randomNormal(shape: [b, hkv, n, dv], seed: seed + 2))
  }

  func check(_ variant: CombinerAttention.Variant, block: Int?, causal: Bool, b: Int = 1, hq: Int = 2, hkv: Int = 1, n: Int,
             d: Int = 32, dv: Int = 32) throws {
    let seed = testSeed()
    let (q, k, v) = inputs(b, hq, hkv, n, d, dv, seed)
    let m = try CombinerAttention(variant: variant, block: block)
    let r = try m.attention(queries: q, keys: k, values: v, options: AttentionOptions(causal: causal, returnLSE: true))
    let ref = combinerReference(q, k, v, variant: variant, block: m.blockLength(for: n), causal: causal)
    let err = relativeError(r.output, ref)
    #expect(!hasNaN(r.output), "NaN: \(variant) block \(String(describing: block)) causal \(causal) n \(n) seed \(seed)")
    #expect(err <= 2e-5, "error \(err): \(variant) block \(String(describing: block)) causal \(causal) n \(n) B\(b) H\(hq):\(hkv) D\(d) Dv\(dv) seed \(seed)")
  }

  @Test("fixed and axial, causal and not", arguments: [CombinerAttention.Variant.fixed, .axial], [false, true])
  func blocked(variant: CombinerAttention.Variant, causal: Bool) throws {
    try check(variant, block: 16, causal: causal, n: 100)              // 100 = 6·16 + 4: short last block
    try check(variant, block: 64, causal: causal, n: 200)
    try check(variant, block: 50, causal: causal, n: 173)              // block not a multiple of the tile
    try check(variant, block: 7, causal: causal, b: 2, hq: 4, hkv: 2, n: 60, d: 17, dv: 9)
    try check(variant, block: nil, causal: causal, n: 150)             // auto block
    try check(variant, block: 1, causal: causal, n: 20)
  }

  @Test func logsparse() throws {
    for n in [1, 2, 7, 64, 129, 300] { try check(.logsparse, block: nil, causal: true, n: n) }
    try check(.logsparse, block: nil, causal: true, b: 2, hq: 4, hkv: 1, n: 77, d: 9, dv: 40)
  }

  /// One block holding the whole sequence has no regions: Combiner is then exact attention.
  @Test func exactWhenOneBlockCoversEverything() throws {
    let seed = testSeed()
    let (q, k, v) = inputs(1, 2, 2, 90, 32, 32, seed)
    for causal in [false, true] {
      for variant in [CombinerAttention.Variant.fixed, .axial] {
        let r = try CombinerAttention(variant: variant, block: 90).attention(queries: q, keys: k, values: v, options: AttentionOptions(causal: causal))
        let ref = try NaiveAttention.reference(queries: q, keys: k, values: v, options: AttentionOptions(causal: causal))
        #expect(relativeError(r.output, ref.output) <= 1e-5, "\(variant) causal \(causal) seed \(seed)")
      }
    }
  }

  /// Causal: keys and values after position i are made huge; outputs up to i must not change.
  @Test("no look-ahead", arguments: [CombinerAttention.Variant.fixed, .axial, .logsparse])
  func noLookAhead(variant: CombinerAttention.Variant) throws {
    let seed = testSeed()
    let n = 150, cut = 97
    var (q, k, v) = inputs(1, 2, 1, n, 16, 16, seed)
    let m = try CombinerAttention(variant: variant, block: variant == .logsparse ? nil : 20)
    let opts = AttentionOptions(causal: true)
    let clean = try m.attention(queries: q, keys: k, values: v, options: opts)
    k.withUnsafeMutableBufferPointer { p in for j in cut..<n { for d in 0..<16 { p[j * 16 + d] = 3e4 } } }
    v.withUnsafeMutableBufferPointer { p in for j in cut..<n { for d in 0..<16 { p[j * 16 + d] = 1e30 } } }
    q.withUnsafeMutableBufferPointer { p in for h in 0..<2 { for j in cut..<n { for d in 0..<16 { p[(h * n + j) * 16 + d] = 1e3 } } } }
    let dirty = try m.attention(queries: q, keys: k, values: v, options: opts)
    for h in 0..<2 { for i in 0..<cut { for d in 0..<16 {
      #expect(dirty.output[0, h, i, d] == clean.output[0, h, i, d], "\(variant) row \(i) seed \(seed)")
    } } }
  }

  @Test func errors() throws {
    let q = Tensor.randomNormal(shape: [1, 1, 20, 8], seed: 1)
    let k = Tensor.randomNormal(shape: [1, 1, 21, 8], seed: 2)
    #expect(throws: SubqError.self) { try CombinerAttention(variant: .fixed, block: 0) }
    #expect(throws: SubqError.self) { try CombinerAttention(variant: .logsparse, block: 8) }
    #expect(throws: SubqError.self) { try CombinerAttention(parameters: MethodParameters(["variant": "mixture"])) }
    #expect(throws: SubqError.self) { try CombinerAttention().attention(queries: q, keys: k, values: k, options: AttentionOptions()) }
    #expect(throws: SubqError.self) { try CombinerAttention(variant: .logsparse).attention(queries: q, keys: q, values: q, options: AttentionOptions()) }
    #expect(throws: SubqError.self) { try CombinerAttention().attention(queries: q, keys: q, values: q, options: AttentionOptions(softcap: 3)) }
  }
}
