import Foundation
import Subquadratic
import SubqTestSupport
import Testing

/// Mamba-2 SSD: the chunked Float32 scan, the Float64 recurrence and the Float64 quadratic dual
/// form must agree.
///
/// Tolerance: relative Frobenius error ≤ 1e-5 for Float32 against Float64 (dot products over
/// ≤ 64 state entries and ≤ 100 chunk steps round at ~1e-7 each, exponentials at 2e-7, so errors
/// sit near 1e-6; a wrong segment sum, decay, group or carry costs ≥ 1e-3), ≤ 1e-9 between the
/// two Float64 forms.
struct SSDTests {
  struct Case: CustomStringConvertible {
    var b = 1, l = 65, h = 2, p = 8, g = 1, n = 16
    var chunk = 16
    var dPerChannel = false, skip = true, gate = true, bias = true, softplus = true, initial = false
    var description: String {
      "B\(b) L\(l) H\(h) P\(p) G\(g) N\(n) chunk \(chunk)" + (skip ? (dPerChannel ? " D[H,P]" : " D[H]") : "")
        + (gate ? " z" : "") + (bias ? " bias" : "") + (softplus ? " softplus" : "") + (initial ? " h0" : "")
    }
  }

  static func inputs(_ c: Case, seed: UInt64) -> SSDInputs {
    var g = SeededGenerator(seed: seed)
    func normal(_ shape: [Int], _ std: Float = 1, _ mean: Float = 0) -> Tensor {
      Tensor.randomNormal(shape: shape, seed: g.next(), mean: mean, std: std)
    }
    return SSDInputs(
      x: normal([c.b, c.l, c.h, c.p]),
      dt: c.softplus ? normal([c.b, c.l, c.h], 0.5, -1.5) : Tensor.randomUniform(shape: [c.b, c.l, c.h], seed: g.next(), in: 0.02...0.5),
      A: Tensor(shape: [c.h]) { p in for i in p.indices { p[i] = -Float(0.5 + 4 * g.nextUnit()) } },
      B: normal([c.b, c.l, c.g, c.n], 0.5), C: normal([c.b, c.l, c.g, c.n], 0.5),
      D: c.skip ? normal(c.dPerChannel ? [c.h, c.p] : [c.h]) : nil,
      z: c.gate ? normal([c.b, c.l, c.h, c.p]) : nil,
      dtBias: c.bias ? Tensor.randomUniform(shape: [c.h], seed: g.next(), in: -0.5...0.5) : nil,
      dtSoftplus: c.softplus,
      initialState: c.initial ? normal([c.b, c.h, c.p, c.n]) : nil)
  }

  func check(_ c: Case, seed: UInt64 = testSeed(), threads: Int? = nil) throws {
    let x = Self.inputs(c, seed: seed)
    let rec = try StateSpaceReference.ssdRecurrence(x)
    let r = try SSD(chunk: c.chunk, threads: threads)(x)
    #expect(!hasNaN(r.output))
    let e = relativeError(r.output, rec.output), ef = relativeError(r.finalState, rec.finalState)
    #expect(e <= 1e-5, "output error \(e): \(c) seed \(seed)")
    #expect(ef <= 1e-5, "final-state error \(ef): \(c) seed \(seed)")
  }

  @Test("lengths not multiples of the chunk", arguments: [1, 7, 16, 17, 64, 65, 200])
  func lengths(l: Int) throws {
    for chunk in [1, 16, 64] { try check(Case(l: l, chunk: chunk, initial: true)) }
  }

  @Test func shapesAndOptions() throws {
    try check(Case(b: 2, l: 50, h: 6, p: 5, g: 3, n: 17, chunk: 13, dPerChannel: true, initial: true))
    try check(Case(b: 1, l: 100, h: 4, p: 64, g: 1, n: 64, chunk: 32))
    try check(Case(l: 40, h: 3, p: 3, g: 3, n: 1, chunk: 8, skip: false, gate: false, bias: false, softplus: false))
    try check(Case(b: 3, l: 33, h: 8, p: 4, g: 2, n: 8, chunk: 10), threads: 1)
    try check(Case(b: 1, l: 300, h: 1, p: 16, g: 1, n: 32, chunk: 100, initial: true))
  }

  /// Chunked == recurrence == quadratic dual form (with an initial state).
  @Test func threeFormsAgree() throws {
    let seed = testSeed()
    let x = Self.inputs(Case(b: 2, l: 70, h: 4, p: 6, g: 2, n: 9, chunk: 16, initial: true), seed: seed)
    let rec = try StateSpaceReference.ssdRecurrence(x)
    let quad = try StateSpaceReference.ssdQuadratic(x)
    var num = 0.0, den = 0.0
    for i in quad.indices { num += (quad[i] - rec.output[i]) * (quad[i] - rec.output[i]); den += rec.output[i] * rec.output[i] }
    #expect((num / den).squareRoot() <= 1e-9, "recurrence vs quadratic, seed \(seed)")
    for chunk in [1, 5, 16, 70, 128] {
      let r = try SSD(chunk: chunk)(x)
      #expect(relativeError(r.output, quad) <= 1e-5, "chunk \(chunk) vs quadratic, seed \(seed)")
    }
  }

  /// Splitting a sequence and carrying the final state gives the whole sequence's output.
  @Test func finalStateContinues() throws {
    let c = Case(b: 1, l: 90, h: 2, p: 4, g: 1, n: 8, chunk: 16)
    let x = Self.inputs(c, seed: testSeed())
    let whole = try SSD(chunk: 16)(x)
    func part(_ t: Tensor, _ r: Range<Int>) -> Tensor {
      let inner = t.shape.dropFirst(2).reduce(1, *)
      return t.withUnsafeBufferPointer { p in
        Tensor(shape: [t.shape[0], r.count] + t.shape.dropFirst(2)) { o in for i in 0..<(r.count * inner) { o[i] = p[r.lowerBound * inner + i] } }
      }
    }
    var first = x, second = x
    for (r, y) in [(0..<37, 0), (37..<90, 1)] {
      var s = y == 0 ? first : second
      s.x = part(x.x, r); s.dt = part(x.dt, r); s.B = part(x.B, r); s.C = part(x.C, r); s.z = x.z.map { part($0, r) }
      if y == 0 { first = s } else { second = s }
    }
    let r1 = try SSD(chunk: 16)(first)
    second.initialState = r1.finalState
    let r2 = try SSD(chunk: 16)(second)
    #expect(relativeError(r2.finalState, whole.finalState) <= 1e-5)
    let joined = r1.output.scalars + r2.output.scalars
    #expect(relativeError(try Tensor(shape: whole.output.shape, scalars: joined), whole.output) <= 1e-5)
  }

  @Test func badInputsThrow() throws {
    let good = Self.inputs(Case(b: 1, l: 20, h: 4, p: 4, g: 2, n: 8), seed: 5)
    var x = good
    x.A = Tensor(shape: [4, 1])
    #expect(throws: SubqError.self) { try SSD()(x) }
    x = good
    x.B = Tensor(shape: [1, 20, 3, 8]); x.C = x.B
    do { _ = try SSD()(x); Issue.record("no error") } catch { #expect(error.description.contains("groups (3) must divide the heads (4)")) }
    x = good
    x.dt[flat: 7] = .nan
    do { _ = try SSD()(x); Issue.record("no error") } catch {
      guard case .nonFinite(_, let t, let i, _) = error else { Issue.record("\(error)"); return }
      #expect(t == "dt" && i == [0, 1, 3])
    }
    #expect(throws: SubqError.self) { try SSD(chunk: 0) }
    #expect(throws: SubqError.self) { try SSD(chunk: 64, threads: 0) }
  }
}
