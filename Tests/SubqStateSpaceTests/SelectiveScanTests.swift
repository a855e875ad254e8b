import Foundation
import Subquadratic
import SubqTestSupport
import Testing

/// The selective scan against mamba's `selective_scan_ref` semantics written in Float64.
///
/// Tolerance: relative Frobenius error ≤ 1e-5 on the output and on the last state. Float32 steps
/// round at ≈ 6e-8 and the decay exponential errs by ≤ 2.3e-7; with |A| ≥ 0.3 and Δ ≈ 0.1–1 a
/// step's error fades within tens of steps, so errors stay near 1e-6. A wrong group, bias,
/// softplus, skip, gate or state carry costs ≥ 1e-2.
struct SelectiveScanTests {
  struct Case: CustomStringConvertible {
    var b = 1, d = 5, l = 77, n = 16
    var groupsB: Int? = nil, groupsC: Int? = nil
    var skip = true, gate = true, bias = true, softplus = true, initial = false
    var positiveA = false
    var description: String {
      "B\(b) D\(d) L\(l) N\(n) G\(groupsB.map(String.init) ?? "-")/\(groupsC.map(String.init) ?? "-")"
        + (skip ? " D" : "") + (gate ? " z" : "") + (bias ? " bias" : "") + (softplus ? " softplus" : "")
        + (initial ? " h0" : "") + (positiveA ? " A>0" : "")
    }
  }

  static func inputs(_ c: Case, seed: UInt64) -> SelectiveScanInputs {
    var g = SeededGenerator(seed: seed)
    func normal(_ shape: [Int], _ std: Float = 1, _ mean: Float = 0) -> Tensor {
      Tensor.randomNormal(shape: shape, seed: g.next(), mean: mean, std: std)
    }
    let a = Tensor(shape: [c.d, c.n]) { p in
      for i in p.indices {
        let mag = Float(Foundation.exp(-1.2 + 2.7 * g.nextUnit()))  // |A| in [0.3, 4.5]
        p[i] = c.positiveA && i % 7 == 3 ? 0.05 : -mag
      }
    }
    let bShape = c.groupsB.map { [c.b, $0, c.n, c.l] } ?? [c.b, c.n, c.l]
    let cShape = c.groupsC.map { [c.b, $0, c.n, c.l] } ?? [c.b, c.n, c.l]
    // Without softplus, delta is the step itself: keep it mostly in (0, 1), some negative when
    // testing the general exponential.
    let delta = c.softplus ? normal([c.b, c.d, c.l], 0.5, -1) : Tensor.randomUniform(shape: [c.b, c.d, c.l], seed: g.next(), in: c.positiveA ? -0.05...0.6 : 0.05...0.8)
    return SelectiveScanInputs(
      u: normal([c.b, c.d, c.l]), delta: delta, A: a, B: normal(bShape), C: normal(cShape),
      D: c.skip ? normal([c.d]) : nil, z: c.gate ? normal([c.b, c.d, c.l]) : nil,
      deltaBias: c.bias ? Tensor.randomUniform(shape: [c.d], seed: g.next(), in: -0.5...0.5) : nil,
      deltaSoftplus: c.softplus, initialState: c.initial ? normal([c.b, c.d, c.n]) : nil)
  }

  func check(_ c: Case, _ scan: SelectiveScan = SelectiveScan(), seed: UInt64 = testSeed()) throws {
    let x = Self.inputs(c, seed: seed)
    let ref = try StateSpaceReference.selectiveScan(x)
    let r = try scan(x)
    #expect(r.output.shape == [c.b, c.d, c.l] && r.lastState.shape == [c.b, c.d, c.n])
    #expect(!hasNaN(r.output), "NaN: \(c) seed \(seed)")
    let e = relativeError(r.output, ref.output), es = relativeError(r.lastState, ref.lastState)
    #expect(e <= 1e-5, "output error \(e): \(c) \(scan.parallelism) seed \(seed)")
    #expect(es <= 1e-5, "last-state error \(es): \(c) \(scan.parallelism) seed \(seed)")
  }

  @Test("lengths and state sizes, channel-parallel", arguments: [1, 2, 15, 16, 17, 77, 300])
  func lengths(l: Int) throws {
    for n in [1, 3, 16, 17, 32] {
      try check(Case(d: 3, l: l, n: n), SelectiveScan(parallelism: .channels))
    }
  }

  @Test func optionalInputsEachWay() throws {
    for mask in 0..<32 {
      try check(Case(b: 2, d: 4, l: 45, n: 8, skip: mask & 1 != 0, gate: mask & 2 != 0, bias: mask & 4 != 0,
                     softplus: mask & 8 != 0, initial: mask & 16 != 0))
    }
  }

  @Test func groupedBAndC() throws {
    try check(Case(b: 2, d: 6, l: 50, n: 16, groupsB: 3, groupsC: 2))
    try check(Case(b: 1, d: 9, l: 33, n: 5, groupsB: 9, groupsC: nil, initial: true))
    try check(Case(b: 1, d: 4, l: 20, n: 16, groupsB: 1, groupsC: 4))
  }

  @Test("a growing state (A > 0, Δ < 0) takes the general exponential")
  func generalExponential() throws {
    try check(Case(d: 3, l: 40, n: 16, softplus: false, positiveA: true))
  }

  /// The chunked parallel scan (local scans, carry, rescan) against the sequential Float64 loop,
  /// for lengths that are not multiples of the chunk.
  @Test("sequence-chunked == sequential", arguments: [(300, 37), (1000, 128), (257, 256), (64, 1), (130, 64)])
  func chunked(l: Int, chunk: Int) throws {
    try check(Case(b: 1, d: 2, l: l, n: 16, initial: true), SelectiveScan(parallelism: .sequenceChunks(length: chunk)))
    try check(Case(b: 2, d: 3, l: l, n: 5, groupsB: 3), SelectiveScan(parallelism: .sequenceChunks(length: chunk), threads: 3))
  }

  @Test func chunkedEqualsChannelParallel() throws {
    let x = Self.inputs(Case(b: 1, d: 3, l: 5000, n: 16, initial: true), seed: testSeed())
    let a = try SelectiveScan(parallelism: .channels)(x)
    let b = try SelectiveScan(parallelism: .sequenceChunks(length: 777))(x)
    #expect(relativeError(b.output, a.output) <= 1e-5)
    #expect(relativeError(b.lastState, a.lastState) <= 1e-5)
    // automatic picks chunks here (3 channels, 5000 steps)
    let c = try SelectiveScan()(x)
    #expect(relativeError(c.output, a.output) <= 1e-5)
  }

  /// Decoding token by token gives the full scan's outputs and last state.
  @Test func decodeStepsEqualScan() throws {
    let c = Case(b: 2, d: 6, l: 40, n: 16, groupsB: 2, groupsC: 3, initial: true)
    let seed = testSeed()
    let x = Self.inputs(c, seed: seed)
    let full = try SelectiveScan()(x)
    var state = x.initialState!
    func column(_ t: Tensor, _ i: Int) -> Tensor {
      let s = t.shape
      let rows = s.dropLast().reduce(1, *)
      return Tensor(shape: Array(s.dropLast())) { p in
        t.withUnsafeBufferPointer { q in for r in 0..<rows { p[r] = q[r * s.last! + i] } }
      }
    }
    var outs: [[Float]] = []
    for t in 0..<c.l {
      let y = try SelectiveScan.step(state: &state, u: column(x.u, t), delta: column(x.delta, t), A: x.A,
                                     B: column(x.B, t), C: column(x.C, t), D: x.D, z: x.z.map { column($0, t) },
                                     deltaBias: x.deltaBias, deltaSoftplus: true)
      outs.append(y.scalars)
    }
    // Reassemble [B, D, L].
    let stepped = Tensor(shape: [c.b, c.d, c.l]) { p in
      for t in 0..<c.l { for r in 0..<(c.b * c.d) { p[r * c.l + t] = outs[t][r] } }
    }
    #expect(relativeError(stepped, full.output) <= 1e-5, "seed \(seed)")
    #expect(relativeError(state, full.lastState) <= 1e-5, "seed \(seed)")
  }

  @Test func emptySequenceKeepsState() throws {
    var x = Self.inputs(Case(d: 2, l: 0, n: 4, initial: true), seed: 1)
    x.B = Tensor(shape: [1, 4, 0])
    x.C = Tensor(shape: [1, 4, 0])
    let r = try SelectiveScan()(x)
    #expect(r.output.shape == [1, 2, 0])
    #expect(r.lastState == x.initialState!)
  }

  @Test func badInputsThrow() throws {
    let good = Self.inputs(Case(b: 1, d: 4, l: 30, n: 8), seed: 3)
    var x = good
    x.A = Tensor(shape: [3, 8])
    #expect(throws: SubqError.self) { try SelectiveScan()(x) }
    x = good
    x.B = Tensor(shape: [1, 3, 8, 30])
    do { _ = try SelectiveScan()(x); Issue.record("no error for 3 groups of 4 channels") } catch {
      #expect(error.description.contains("groups (3) must divide the channels (4)"))
    }
    x = good
    x.z = Tensor(shape: [1, 4, 29])
    #expect(throws: SubqError.self) { try SelectiveScan()(x) }
    // Non-finite values anywhere are named, also those read only inside the kernel.
    for (name, pos) in [("u", 17), ("delta", 29), ("z", 0), ("B", 5), ("C", 100)] {
      x = good
      switch name {
      case "u": x.u[flat: pos] = .nan
      case "delta": x.delta[flat: pos] = .infinity
      case "z": x.z![flat: pos] = -.infinity
      case "B": x.B[flat: pos] = .nan
      default: x.C[flat: pos] = .nan
      }
      for p in [SelectiveScan.Parallelism.channels, .sequenceChunks(length: 7)] {
        do { _ = try SelectiveScan(parallelism: p)(x); Issue.record("no error for non-finite \(name)") } catch {
          guard case .nonFinite(_, let tensor, let index, _) = error else { Issue.record("\(error)"); continue }
          #expect(tensor == name)
          #expect(index == x.u.index(ofFlat: pos) || name == "B" || name == "C")
        }
      }
    }
    #expect(throws: SubqError.self) { try SelectiveScan(parallelism: .sequenceChunks(length: 0))(good) }
    #expect(throws: SubqError.self) { try SelectiveScan(threads: 0)(good) }
  }
}
