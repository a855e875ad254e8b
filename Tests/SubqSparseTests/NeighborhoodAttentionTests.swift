import Foundation
import Subquadratic
import SubqTestSupport
import Testing

/// NATTEN's mask, written directly from its definition (dilation groups, leader clamped to the
/// group, centre clamped so the window shifts at borders; causal windows unshifted), independent of
/// the library's ``NeighborhoodAxis``: query coordinate `i` may see key coordinate `j` on one axis.
func nattenAllows(length L: Int, kernel k: Int, dilation d: Int, causal: Bool, _ i: Int, _ j: Int) -> Bool {
  let g = i % d
  if j % d != g { return false }
  let iq = i / d, jk = j / d
  let Lg = L / d + (g < L % d ? 1 : 0)
  if causal {
    let leader = min(iq, Lg - 1)
    return jk <= iq && leader - jk < k
  }
  let left = k / 2, right = k / 2 + k % 2 - 1
  let leader = min(iq, Lg - 1)
  let centre = min(max(leader, left), Lg - 1 - right)
  return centre - left <= jk && jk <= centre + right
}

/// Neighborhood attention against the Float64 reference with NATTEN's dense mask.
///
/// Tolerance: relative Frobenius error ≤ 1e-5 on the output and ≤ 1e-5 (relative, floor 1) on
/// the log-sum-exp, as for flash: Float32 sums over at most a few hundred keys and the 1e-7 exp2
/// polynomial give ~1e-7–1e-6; a wrong window, shift or bias costs ≥ 1e-3.
struct NeighborhoodAttentionTests {
  struct Case: CustomStringConvertible {
    var grid: [Int]
    var kernel: [Int]
    var dilation: [Int] = [1]
    var causal: [Bool] = [false]
    var b = 1, hq = 2, hkv = 1, d = 32, dv = 32
    var layout = AttentionLayout.bhsd
    var softcap: Float? = nil
    var rpb = false
    var valueStep = NeighborhoodAttention.ValueStep.automatic
    var description: String {
      "grid \(grid) k \(kernel) dil \(dilation) causal \(causal) B\(b) H\(hq):\(hkv) D\(d) Dv\(dv) \(layout)"
        + (softcap.map { " softcap \($0)" } ?? "") + (rpb ? " rpb" : "") + " \(valueStep)"
    }
    func axis(_ a: Int) -> (L: Int, k: Int, d: Int, c: Bool) {
      (grid[a], kernel.count == 1 ? kernel[0] : kernel[a], dilation.count == 1 ? dilation[0] : dilation[a],
       causal.count == 1 ? causal[0] : causal[a])
    }
    /// Grid coordinates of flat position `i`.
    func coords(_ i: Int) -> [Int] {
      var c = [Int](repeating: 0, count: grid.count)
      var r = i
      for a in stride(from: grid.count - 1, through: 0, by: -1) { c[a] = r % grid[a]; r /= grid[a] }
      return c
    }
    func allows(_ i: Int, _ j: Int) -> Bool {
      let ci = coords(i), cj = coords(j)
      for a in 0..<grid.count {
        let x = axis(a)
        if !nattenAllows(length: x.L, kernel: x.k, dilation: x.d, causal: x.c, ci[a], cj[a]) { return false }
      }
      return true
    }
  }

  func shape(_ c: Case, _ h: Int, _ n: Int, _ x: Int) -> [Int] { c.layout == .bhsd ? [c.b, h, n, x] : [c.b, n, h, x] }

  func check(_ c: Case, seed: UInt64 = testSeed()) throws {
    let n = c.grid.reduce(1, *)
    let q = Tensor.randomNormal(shape: shape(c, c.hq, n, c.d), seed: seed)
    let k = Tensor.randomNormal(shape: shape(c, c.hkv, n, c.d), seed: seed + 1)
    let v = Tensor.randomNormal(shape: shape(c, c.hkv, n, c.dv), seed: seed + 2)
    var rpb: Tensor? = nil
    if c.rpb {
      rpb = Tensor.randomNormal(shape: [c.hq] + (0..<c.grid.count).map { 2 * c.axis($0).k - 1 }, seed: seed + 3)
    }
    var method = try NeighborhoodAttention(grid: c.grid, kernel: c.kernel, dilation: c.dilation, causalAxes: c.causal,
                                           relativePositionBias: rpb)
    method.valueStep = c.valueStep
    let opts = AttentionOptions(softcap: c.softcap, layout: c.layout, returnLSE: true)
    let r = try method.attention(queries: q, keys: k, values: v, options: opts)
    var bias: ((Int, Int, Int, Int) -> Double)? = nil
    if let rpb {
      bias = { _, h, i, j in
        let ci = c.coords(i), cj = c.coords(j)
        var idx = [h]
        for a in 0..<c.grid.count {
          let x = c.axis(a)
          idx.append(cj[a] / x.d - ci[a] / x.d + x.k - 1)
        }
        return Double(rpb[flat: rpb.flatIndex(idx)])
      }
    }
    let ref = try maskedReference(queries: q, keys: k, values: v, options: opts, visible: { _, _, i, j in c.allows(i, j) }, bias: bias)
    #expect(!hasNaN(r.output), "NaN in output: \(c) seed \(seed)")
    let err = relativeError(r.output, ref.output)
    #expect(err <= 1e-5, "output error \(err): \(c) seed \(seed)")
    let (lerr, li) = worstRelative(try #require(r.lse), ref.lse)
    #expect(lerr <= 1e-5, "lse error \(lerr) at \(li): \(c) seed \(seed)")
  }

  @Test func oneDimensional() throws {
    try check(Case(grid: [100], kernel: [7]))
    try check(Case(grid: [37], kernel: [6]))                                    // even kernel
    try check(Case(grid: [50], kernel: [5], dilation: [3]))                     // 50 % 3 ≠ 0
    try check(Case(grid: [70], kernel: [9], causal: [true]))
    try check(Case(grid: [41], kernel: [4], dilation: [5], causal: [true]))
    try check(Case(grid: [300], kernel: [65], hq: 1))                            // kernel > lane width
    try check(Case(grid: [23], kernel: [23]))                                   // kernel = length
  }

  @Test func twoDimensional() throws {
    try check(Case(grid: [20, 23], kernel: [7]))
    try check(Case(grid: [13, 17], kernel: [5, 3], dilation: [2, 1]))
    try check(Case(grid: [11, 19], kernel: [4, 5], dilation: [1, 3], causal: [true, false]))
    try check(Case(grid: [9, 40], kernel: [3, 8], dilation: [3, 2], causal: [false, true]))
    try check(Case(grid: [16, 16], kernel: [7], causal: [true]))
    try check(Case(grid: [7, 33], kernel: [1, 6]))                              // kernel 1 on an axis
    try check(Case(grid: [1, 50], kernel: [1, 5]))
  }

  /// Every kernel size 1…13 (odd and even) on rows that are not a multiple of the lane width, so
  /// each row has interior vectors, border lanes with shifted windows and a partial last vector;
  /// the packed rows' left padding (rounded up to whole vectors) and the row cache wrap-around are
  /// exercised for each size. Dilation 2 on 37 columns leaves groups of 19 and 18.
  @Test func kernelSizesOneToThirteen() throws {
    for k in 1...13 {
      try check(Case(grid: [15, 37], kernel: [min(k, 15), k], hq: 1, d: 16, dv: 16))
      try check(Case(grid: [13, 37], kernel: [min(k, 6), min(k, 18)], dilation: [2, 2], hq: 1, d: 16, dv: 16))
    }
  }

  @Test func threeDimensional() throws {
    try check(Case(grid: [5, 6, 7], kernel: [3, 3, 5], dilation: [1, 2, 1], causal: [false, true, false]))
    try check(Case(grid: [4, 9, 18], kernel: [2, 3, 4], dilation: [2, 3, 4], causal: [true, false, false]))
  }

  @Test func headsLayoutsDims() throws {
    try check(Case(grid: [12, 21], kernel: [5], b: 2, hq: 6, hkv: 2, d: 17, dv: 9))
    try check(Case(grid: [10, 18], kernel: [3, 7], b: 2, hq: 4, hkv: 4, d: 64, dv: 80, layout: .bshd))
    try check(Case(grid: [33], kernel: [5], hq: 3, hkv: 1, d: 1, dv: 1))
  }

  /// The value step has two layouts: V read as stored with O accumulated per query (Dv a whole
  /// number of lane vectors: 16, 48 and 80 channels here, in blocks of up to four vectors), and V
  /// packed transposed like K (any other Dv). Both on the same awkward problems: partial last
  /// vectors and odd lane pairs (21 and 37 columns), dilation, causal axes, grouped heads, bshd,
  /// a 3-D grid (one softmax chunk per plane, so the per-query accumulators are rescaled between
  /// chunks), and a 1-D window of 251 keys (several chunks of offsets, where a lane pair's windows
  /// within a chunk can start and end apart).
  @Test func valueStepLayouts() throws {
    for dv in [16, 48, 80, 7, 33] {
      try check(Case(grid: [9, 37], kernel: [5, 7], dilation: [1, 2], causal: [false, true], b: 2, hq: 4, hkv: 2, d: 19, dv: dv,
                     layout: .bshd))
      try check(Case(grid: [3, 5, 21], kernel: [2, 3, 6], dilation: [1, 1, 2], causal: [true, false, false], hq: 2, d: 16, dv: dv,
                     softcap: 4, rpb: true))
      try check(Case(grid: [600], kernel: [251], causal: [dv == 48], hq: 1, d: 8, dv: dv))
    }
  }

  /// When one softmax chunk holds a tile's whole windows (2-D grids with windows up to ~100 keys
  /// wide on the lane axis, Dv a whole number of lane vectors), the value step writes O straight
  /// to the output rows, scaled by 1/l, instead of through the Oᵀ scratch. Covered on awkward
  /// shapes: partial last lane vectors (45, 33, 29 columns), Dv of 128 (two blocks of four channel
  /// vectors) and 48, grouped heads, bshd (another output row step), dilation on the lane axis
  /// (every other output row), causal axes, softcap and bias; and 2-D windows too wide for one
  /// chunk (a 40-wide window: several chunks per tile, the path through the scratch).
  @Test func singleChunkWritesOutputDirectly() throws {
    try check(Case(grid: [19, 45], kernel: [7], hq: 2, hkv: 2, d: 64, dv: 128))
    try check(Case(grid: [11, 33], kernel: [5, 3], b: 2, hq: 3, hkv: 1, d: 24, dv: 48, layout: .bshd))
    try check(Case(grid: [14, 29], kernel: [3, 5], dilation: [2, 2], causal: [true, false], hq: 2, d: 16, dv: 16, softcap: 3, rpb: true))
    try check(Case(grid: [12, 90], kernel: [5, 40], causal: [false, true], hq: 1, d: 16, dv: 32))
  }

  /// In single-chunk bands, the queries whose windows on the lane axis are neither shifted nor cut
  /// by the grid's edges take the sliding value step (one pass per grid row along the strip, k
  /// queries' sums in flight) when `valueStep` says so; the border queries keep the group tile.
  /// Both steps on: every window width with a sliding tile (2 to 13; 14 falls back), non-causal
  /// and causal lane axes, runs of even-window queries that start and end inside a lane vector, two
  /// strips (150 and 260 columns), dilation on the lane axis (groups of 75 and 74), Dv of one,
  /// three and five lane vectors (passes of 2 + 1, 2 + 2 + 1 and 4 + 1 vectors on AVX-512),
  /// grouped heads, bshd, softcap and bias.
  @Test(arguments: [NeighborhoodAttention.ValueStep.sliding, .grouped])
  func slidingValueStep(_ step: NeighborhoodAttention.ValueStep) throws {
    for k in 2...14 {
      try check(Case(grid: [4, 41], kernel: [3, k], causal: [false, k % 3 == 0], hq: 1, d: 16, dv: 16, valueStep: step))
    }
    try check(Case(grid: [5, 150], kernel: [3, 7], b: 2, hq: 4, hkv: 2, d: 32, dv: 48, valueStep: step))
    try check(Case(grid: [6, 260], kernel: [5, 9], causal: [false, true], hq: 2, d: 16, dv: 80, layout: .bshd, valueStep: step))
    try check(Case(grid: [6, 149], kernel: [3, 5], dilation: [1, 2], hq: 2, hkv: 1, d: 24, dv: 80, softcap: 5, rpb: true,
                   valueStep: step))
  }

  @Test func softcapAndRelativePositionBias() throws {
    try check(Case(grid: [14, 15], kernel: [5], softcap: 3))
    try check(Case(grid: [14, 15], kernel: [5, 4], rpb: true))
    try check(Case(grid: [9, 20], kernel: [3, 6], dilation: [2, 2], causal: [true, false], hq: 2, softcap: 5, rpb: true))
    try check(Case(grid: [4, 5, 11], kernel: [3, 2, 5], causal: [false, false, true], rpb: true))
  }

  /// Keys outside every window of a chosen set of queries are huge (K 3e4, V 1e30): if any leaked
  /// into those queries' outputs the error would be enormous.
  @Test func neverReadsOutsideTheWindow() throws {
    let seed = testSeed()
    let c = Case(grid: [24, 40], kernel: [5, 7], dilation: [2, 1], hq: 2, hkv: 1, d: 32, dv: 32)
    let n = 24 * 40
    let q = Tensor.randomNormal(shape: [1, 2, n, 32], seed: seed)
    var k = Tensor.randomNormal(shape: [1, 1, n, 32], seed: seed + 1)
    var v = Tensor.randomNormal(shape: [1, 1, n, 32], seed: seed + 2)
    let method = try NeighborhoodAttention(grid: c.grid, kernel: c.kernel, dilation: c.dilation)
    let clean = try method.attention(queries: q, keys: k, values: v, options: AttentionOptions())
    // Queries on the top and bottom borders, in the middle and at the right border of the rows.
    var chosen: [Int] = []
    for x in [0, 1, 22, 23] { for y in Array(12..<18) + Array(35..<40) { chosen.append(x * 40 + y) } }
    var needed = Set<Int>()
    for i in chosen { for j in 0..<n where c.allows(i, j) { needed.insert(j) } }
    #expect(needed.count < n / 2)
    k.withUnsafeMutableBufferPointer { p in for j in 0..<n where !needed.contains(j) { for d in 0..<32 { p[j * 32 + d] = 3e4 } } }
    v.withUnsafeMutableBufferPointer { p in for j in 0..<n where !needed.contains(j) { for d in 0..<32 { p[j * 32 + d] = 1e30 } } }
    let poisoned = try method.attention(queries: q, keys: k, values: v, options: AttentionOptions())
    for h in 0..<2 {
      for i in chosen {
        for d in 0..<32 {
          #expect(poisoned.output[0, h, i, d] == clean.output[0, h, i, d], "query \(i) head \(h) changed: seed \(seed)")
        }
      }
    }
  }

  /// Grids wider than one strip of the last axis (``NeighborhoodAttention/stripWidth(lastAxis:)``):
  /// widths not a multiple of the strip or the lane width, shifted windows at both borders, even
  /// kernels, dilation groups split into strips (widths not divisible by the dilation), a causal
  /// last axis, 1-D, 3-D, GQA/bshd, softcap and bias, each against the dense reference.
  @Test func stripsOfTheLastAxis() throws {
    func strips(_ c: Case) -> Int {
      let x = c.axis(c.grid.count - 1)
      let axis = NeighborhoodAxis(length: x.L, kernel: x.k, dilation: x.d, causal: x.c)
      let w = NeighborhoodAttention.stripWidth(lastAxis: axis)
      return (axis.groupLength(axis.dilation - 1) + w - 1) / w   // strips of the shortest group
    }
    let t = NeighborhoodAttention.stripTarget
    let cases = [
      Case(grid: [8, t + 37], kernel: [7], hq: 1, d: 16, dv: 16),
      Case(grid: [4, 2 * t + 45], kernel: [3, 8], causal: [false, true], hq: 1, d: 16, dv: 16),
      Case(grid: [3, 3 * t + 50], kernel: [3, 6], dilation: [1, 3], hq: 1, d: 16, dv: 16),
      Case(grid: [6 * t + 13], kernel: [13], dilation: [2], hq: 1, d: 8, dv: 8),
      Case(grid: [9 * t + 7], kernel: [65], hq: 1, d: 8, dv: 8),                   // strips wider than the target
      Case(grid: [3, 2, t + 22], kernel: [2, 1, 5], causal: [false, false, true], hq: 1, d: 8, dv: 8),
      Case(grid: [3, t + 70], kernel: [3, 5], b: 2, hq: 4, hkv: 2, d: 17, dv: 9, layout: .bshd),
      Case(grid: [4, 2 * t + 12], kernel: [3, 4], dilation: [1, 2], hq: 2, softcap: 4, rpb: true),
    ]
    for c in cases {
      #expect(strips(c) >= 2, "\(c) fits one strip: the test would not split")
      try check(c)
    }
  }

  /// Every strip reads its halo and nothing else, and a reused cache slot keeps nothing of the
  /// strip packed before it: keys and values outside the windows of the queries of one strip (the
  /// first, an interior one with shifted-free windows and the last, partial one) are NaN, and
  /// with `allowNonFinite` those queries' outputs and LSE stay exactly what they were. A lane whose
  /// border window excludes an offset reads that offset too (masked), so a halo packed too wide,
  /// a stale slot or a key read past the grid turns these outputs NaN.
  @Test func stripsReadOnlyTheirHalo() throws {
    let t = NeighborhoodAttention.stripTarget
    for c in [Case(grid: [4, 2 * t + 9], kernel: [3, 7], hq: 2, hkv: 1, d: 16, dv: 16),
              Case(grid: [3, 2 * t + 21], kernel: [3, 6], dilation: [1, 2], causal: [false, true], hq: 1, d: 16, dv: 16),
              Case(grid: [3, 3 * t + 10], kernel: [3, 5], dilation: [1, 3], hq: 1, d: 16, dv: 16)] {
      let seed = testSeed()
      let n = c.grid.reduce(1, *), cols = c.grid[1]
      let x = c.axis(1)
      let axis = NeighborhoodAxis(length: x.L, kernel: x.k, dilation: x.d, causal: x.c)
      let w = NeighborhoodAttention.stripWidth(lastAxis: axis)
      let q = Tensor.randomNormal(shape: [1, c.hq, n, c.d], seed: seed)
      let k0 = Tensor.randomNormal(shape: [1, c.hkv, n, c.d], seed: seed + 1)
      let v0 = Tensor.randomNormal(shape: [1, c.hkv, n, c.dv], seed: seed + 2)
      let method = try NeighborhoodAttention(grid: c.grid, kernel: c.kernel, dilation: c.dilation, causalAxes: c.causal)
      let opts = AttentionOptions(returnLSE: true, allowNonFinite: true)
      let clean = try method.attention(queries: q, keys: k0, values: v0, options: opts)
      for group in [0, x.d - 1] {
        let strips = (axis.groupLength(group) + w - 1) / w
        #expect(strips >= 2, "\(c) group \(group) fits one strip")
        for strip in Set([0, strips / 2, strips - 1]) {
          // Queries of this strip: columns of the group whose group coordinate is in the strip.
          let chosen = (0..<n).filter { i in
            let col = i % cols
            return col % x.d == group && (strip * w..<(strip + 1) * w).contains(col / x.d)
          }
          var needed = Set<Int>()
          for i in chosen { for j in 0..<n where c.allows(i, j) { needed.insert(j) } }
          #expect(needed.count < n / 2)
          var k = k0, v = v0
          k.withUnsafeMutableBufferPointer { p in for j in 0..<n where !needed.contains(j) { for d in 0..<c.d { for g in 0..<c.hkv { p[(g * n + j) * c.d + d] = .nan } } } }
          v.withUnsafeMutableBufferPointer { p in for j in 0..<n where !needed.contains(j) { for d in 0..<c.dv { for g in 0..<c.hkv { p[(g * n + j) * c.dv + d] = .nan } } } }
          let poisoned = try method.attention(queries: q, keys: k, values: v, options: opts)
          let lse = try #require(poisoned.lse), lse0 = try #require(clean.lse)
          var bad = 0
          for h in 0..<c.hq {
            for i in chosen {
              for d in 0..<c.dv where !(poisoned.output[0, h, i, d] == clean.output[0, h, i, d]) { bad += 1 }
              if !(lse[0, h, i] == lse0[0, h, i]) { bad += 1 }
            }
          }
          #expect(bad == 0, "\(bad) values changed: \(c) group \(group) strip \(strip) of \(strips), seed \(seed)")
        }
      }
    }
  }

  @Test func selectedKeysAndPairsMatchTheMask() throws {
    let c = Case(grid: [9, 13], kernel: [4, 5], dilation: [2, 1], causal: [false, true])
    let n = 9 * 13
    let q = Tensor.randomNormal(shape: [1, 2, n, 8], seed: 1)
    let k = Tensor.randomNormal(shape: [1, 1, n, 8], seed: 2)
    let m = try NeighborhoodAttention(grid: c.grid, kernel: c.kernel, dilation: c.dilation, causalAxes: c.causal)
    let rows = (0..<n).map { QueryRow(batch: 0, head: 1, row: $0) }
    let sel = try m.selectedKeys(queries: q, keys: k, values: k, options: AttentionOptions(), rows: rows)
    var pairs = 0
    for i in 0..<n {
      let expect = (0..<n).filter { c.allows(i, $0) }
      #expect(sel[i] == expect, "query \(i)")
      pairs += expect.count
    }
    #expect(try m.attendedPairs(queries: q, keys: k, values: k, options: AttentionOptions()) == Double(2 * pairs))
  }

  /// The finiteness check is fused into the kernel: it must still raise the up-front check's error.
  @Test func nonFiniteInputsRaiseTheUsualError() throws {
    let m = try NeighborhoodAttention(grid: [9, 20], kernel: [3, 5])
    // Columns 16–19 (and 17) are the packing's partial last vector, columns 0–5 a whole one (the
    // check sums the values, so ±∞ must be caught as well as NaN).
    let cases: [(String, Int, Float)] = [("Q", 37, .nan), ("K", 179, .infinity), ("V", 0, .nan), ("Q", 22, .infinity),
                                         ("K", 43, -.infinity), ("V", 64, .infinity), ("K", 5, .nan)]
    for (tensor, index, value) in cases {
      var t = [Tensor.randomNormal(shape: [1, 2, 180, 16], seed: 1), Tensor.randomNormal(shape: [1, 2, 180, 16], seed: 2),
               Tensor.randomNormal(shape: [1, 2, 180, 16], seed: 3)]
      let which = ["Q", "K", "V"].firstIndex(of: tensor)!
      t[which][flat: 180 * 16 + index * 16 + 5] = value
      let expected: SubqError
      do {
        _ = try AttentionProblem.validate(op: "attention.neighborhood", queries: t[0], keys: t[1], values: t[2], options: AttentionOptions())
        Issue.record("validate accepted a non-finite \(tensor)")
        continue
      } catch { expected = error }
      #expect(throws: expected) { try m.attention(queries: t[0], keys: t[1], values: t[2], options: AttentionOptions()) }
      let r = try m.attention(queries: t[0], keys: t[1], values: t[2], options: AttentionOptions(allowNonFinite: true))
      #expect(r.output.shape == [1, 2, 180, 16])
    }
  }

  /// On a grid split into strips, a non-finite key or value in any strip (or its halo column at
  /// a strip boundary) still raises the error.
  @Test func nonFiniteInputsInEveryStrip() throws {
    let cols = 2 * NeighborhoodAttention.stripTarget + 9, n = 3 * cols
    let m = try NeighborhoodAttention(grid: [3, cols], kernel: [3, 5])
    let w = NeighborhoodAttention.stripWidth(lastAxis: NeighborhoodAxis(length: cols, kernel: 5))
    for (which, col) in [(1, w - 1), (2, w), (1, 2 * w + 3), (2, cols - 1), (0, w + 1)] {
      var t = [Tensor.randomNormal(shape: [1, 1, n, 16], seed: 1), Tensor.randomNormal(shape: [1, 1, n, 16], seed: 2),
               Tensor.randomNormal(shape: [1, 1, n, 16], seed: 3)]
      t[which][flat: (cols + col) * 16 + 3] = .nan
      #expect(throws: SubqError.self, "tensor \(which) column \(col)") {
        try m.attention(queries: t[0], keys: t[1], values: t[2], options: AttentionOptions())
      }
    }
  }

  @Test func rejectsBadConfigurations() throws {
    let q = Tensor.randomNormal(shape: [1, 2, 100, 8], seed: 1)
    func fails(_ m: () throws -> NeighborhoodAttention, opts: AttentionOptions = AttentionOptions(), _ text: String) {
      do {
        _ = try m().attention(queries: q, keys: q, values: q, options: opts)
        Issue.record("expected an error mentioning \(text)")
      } catch let e as SubqError {
        #expect(e.description.contains(text), "\(e)")
      } catch { Issue.record("\(error)") }
    }
    fails({ try NeighborhoodAttention(grid: [10, 11], kernel: [3]) }, "holds 110 tokens")
    fails({ try NeighborhoodAttention(grid: [10, 10], kernel: [11, 3]) }, "exceeds the axis length")
    fails({ try NeighborhoodAttention(grid: [10, 10], kernel: [3], dilation: [4]) }, "exceeds the axis length")
    fails({ try NeighborhoodAttention(grid: [10, 10], kernel: [3, 3, 3]) }, "1 or 2 values")
    fails({ try NeighborhoodAttention(grid: [10, 10], kernel: [0]) }, "at least 1")
    fails({ try NeighborhoodAttention(grid: [10, 10], kernel: [3]) }, opts: AttentionOptions(causal: true), "causal is not supported")
    fails({ try NeighborhoodAttention(grid: [10, 10], kernel: [3], relativePositionBias: Tensor(shape: [2, 5, 4])) }, "rpb")
    #expect(throws: SubqError.self) { try NeighborhoodAttention(parameters: MethodParameters(["kernel": "7y7"])) }
    #expect(throws: SubqError.self) { try NeighborhoodAttention(parameters: MethodParameters(["causal-axes": "2"])) }
    #expect(throws: SubqError.self) { try NeighborhoodAttention(parameters: MethodParameters(["rpb": "/nonexistent.npy"])) }
  }
}
