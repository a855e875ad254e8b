import Foundation
import Subquadratic
import SubqTestSupport
import Testing

/// The Titans neural memory: hand-written gradients against finite differences, the chunked
/// Float32 update against the token-by-token Float64 rule.
struct TitansMemoryTests {
  static func gates(_ n: Int, seed: UInt64) -> MemoryGates {
    var g = SeededGenerator(seed: seed)
    return MemoryGates(
      theta: .randomUniform(shape: [n], seed: g.next(), in: 0.005...0.05),
      eta: .randomUniform(shape: [n], seed: g.next(), in: 0.5...0.95),
      alpha: .randomUniform(shape: [n], seed: g.next(), in: 0...0.1))
  }

  /// The Float64 backpropagation equals central finite differences of ℓ = ‖M(k) − v‖².
  /// Tolerance 1e-6 relative: the O(h²) truncation with h = 1e-5 is ~1e-10, rounding ~1e-11/h.
  @Test("reference gradient == finite differences", arguments: [[5, 3], [4, 7, 3], [3, 6, 5, 2]])
  func referenceGradient(sizes: [Int]) throws {
    let seed = testSeed()
    var g = SeededGenerator(seed: seed)
    let mem = StateSpaceReference.MLP(NeuralMemory.randomWeights(sizes: sizes, seed: g.next()))
    let k = (0..<sizes[0]).map { _ in g.nextNormal() }, v = (0..<sizes.last!).map { _ in g.nextNormal() }
    let grad = mem.gradient(k, v)
    let h = 1e-5
    var num = 0.0, den = 0.0
    for l in mem.layers.indices {
      for i in mem.layers[l].indices {
        var plus = mem, minus = mem
        plus.layers[l][i] += h
        minus.layers[l][i] -= h
        let fd = (plus.loss(k, v) - minus.loss(k, v)) / (2 * h)
        num += (fd - grad[l][i]) * (fd - grad[l][i])
        den += fd * fd
      }
    }
    #expect((num / den).squareRoot() <= 1e-6, "sizes \(sizes) seed \(seed)")
  }

  /// The Float32 update of one token with θ = 1, η = α = 0 is W − ∇ℓ: compare W − W' with a
  /// finite-difference gradient of the loss. Tolerance 1e-5 relative: W − W' cancels to the
  /// gradient's size, losing ≈ ulp(W)/|∇ℓ| ≈ 1e-7…1e-6.
  @Test("Float32 update == finite-difference gradient", arguments: [[6, 4], [5, 9, 4], [4, 8, 8, 3]])
  func updateIsGradient(sizes: [Int]) throws {
    let seed = testSeed()
    var g = SeededGenerator(seed: seed)
    let weights = NeuralMemory.randomWeights(sizes: sizes, seed: g.next())
    let k = Tensor.randomNormal(shape: [1, sizes[0]], seed: g.next())
    let v = Tensor.randomNormal(shape: [1, sizes.last!], seed: g.next())
    let one = MemoryGates(theta: Tensor(shape: [1], repeating: 1), eta: Tensor(shape: [1], repeating: 0), alpha: Tensor(shape: [1], repeating: 0))
    let next = try NeuralMemory(chunk: 1).memorize(keys: k, values: v, gates: one, state: MemoryState(weights: weights))
    let mem = StateSpaceReference.MLP(weights)
    let kd = k.scalars.map(Double.init), vd = v.scalars.map(Double.init)
    let h = 1e-5
    var num = 0.0, den = 0.0
    for l in weights.indices {
      let before = weights[l].scalars, after = next.weights[l].scalars
      for i in before.indices {
        var plus = mem, minus = mem
        plus.layers[l][i] += h
        minus.layers[l][i] -= h
        let fd = (plus.loss(kd, vd) - minus.loss(kd, vd)) / (2 * h)
        let step = Double(before[i]) - Double(after[i])
        num += (fd - step) * (fd - step)
        den += fd * fd
      }
      // The momentum holds −∇ℓ too.
      #expect(relativeError(next.momentum[l], before.indices.map { Double(after[$0]) - Double(before[$0]) }) <= 1e-6)
    }
    #expect((num / den).squareRoot() <= 1e-5, "sizes \(sizes) seed \(seed)")
  }

  /// Chunked Float32 memory == token-by-token Float64 rule with gradients at chunk-start
  /// weights: outputs, final weights and momentum. Tolerance 1e-5 relative (updates of size
  /// θ·∇ℓ accumulate Float32 rounding of ~1e-7 per token over ≤ 50 tokens).
  @Test("chunked == token-by-token reference", arguments: [1, 4, 16, 50])
  func chunkedMatchesReference(chunk: Int) throws {
    for sizes in [[8, 8], [8, 16, 6], [5, 12, 7, 5]] {
      let seed = testSeed()
      var g = SeededGenerator(seed: seed)
      let n = 37
      let weights = NeuralMemory.randomWeights(sizes: sizes, seed: g.next())
      let momentum = weights.map { Tensor.randomNormal(shape: $0.shape, seed: g.next(), std: 0.01) }
      // Keys of norm ≈ 1.4 keep 2θ‖k‖² < 1: the test-time learning is stable.
      let k = Tensor.randomNormal(shape: [n, sizes[0]], seed: g.next(), std: 0.5)
      let v = Tensor.randomNormal(shape: [n, sizes.last!], seed: g.next())
      let q = Tensor.randomNormal(shape: [n, sizes[0]], seed: g.next())
      let gt = Self.gates(n, seed: g.next())
      let ref = try StateSpaceReference.neuralMemory(keys: k, values: v, queries: q, gates: gt, weights: weights, momentum: momentum, chunk: chunk)
      let r = try NeuralMemory(chunk: chunk).process(keys: k, values: v, queries: q, gates: gt, state: MemoryState(weights: weights, momentum: momentum))
      let ctx = "sizes \(sizes) chunk \(chunk) seed \(seed)"
      #expect(relativeError(r.output, ref.output) <= 1e-5, "output: \(ctx)")
      for l in weights.indices {
        #expect(relativeError(r.state.weights[l], ref.weights[l]) <= 1e-5, "weights \(l): \(ctx)")
        #expect(relativeError(r.state.momentum[l], ref.momentum[l]) <= 1e-5, "momentum \(l): \(ctx)")
      }
      // memorize alone reaches the same state.
      let m = try NeuralMemory(chunk: chunk).memorize(keys: k, values: v, gates: gt, state: MemoryState(weights: weights, momentum: momentum))
      for l in weights.indices { #expect(m.weights[l] == r.state.weights[l]) }
    }
  }

  /// A token's output depends only on earlier chunks and its own query.
  @Test func noLookAhead() throws {
    let sizes = [6, 10, 6], n = 40, chunk = 8
    var g = SeededGenerator(seed: testSeed())
    let weights = NeuralMemory.randomWeights(sizes: sizes, seed: g.next())
    let k = Tensor.randomNormal(shape: [n, 6], seed: g.next()), v = Tensor.randomNormal(shape: [n, 6], seed: g.next())
    let q = Tensor.randomNormal(shape: [n, 6], seed: g.next())
    let gt = Self.gates(n, seed: g.next())
    let mem = try NeuralMemory(chunk: chunk)
    let a = try mem.process(keys: k, values: v, queries: q, gates: gt, state: MemoryState(weights: weights))
    var k2 = k, v2 = v, q2 = q
    for i in (24 * 6)..<(n * 6) { k2[flat: i] += 1; v2[flat: i] -= 2; q2[flat: i] *= -1 }
    let b = try mem.process(keys: k2, values: v2, queries: q2, gates: gt, state: MemoryState(weights: weights))
    #expect(Array(a.output.scalars[0..<(24 * 6)]) == Array(b.output.scalars[0..<(24 * 6)]))
    #expect(a.output.scalars[(24 * 6)..<(n * 6)] != b.output.scalars[(24 * 6)..<(n * 6)])
  }

  @Test func retrieveIsForwardPass() throws {
    let weights = NeuralMemory.randomWeights(sizes: [5, 9, 4], seed: 3)
    let q = Tensor.randomNormal(shape: [7, 5], seed: 4)
    let y = try NeuralMemory().retrieve(queries: q, weights: weights)
    let mem = StateSpaceReference.MLP(weights)
    let ref = (0..<7).flatMap { i in mem(q.scalars[(i * 5)..<(i * 5 + 5)].map(Double.init)) }
    #expect(relativeError(y, ref) <= 1e-6)
  }

  @Test func badInputsThrow() throws {
    let w = NeuralMemory.randomWeights(sizes: [4, 6, 3], seed: 1)
    let k = Tensor.randomNormal(shape: [5, 4], seed: 2), v = Tensor.randomNormal(shape: [5, 3], seed: 3)
    var gt = Self.gates(5, seed: 4)
    gt.eta[flat: 2] = 1.5
    #expect(throws: SubqError.argument(op: "titans.memory", name: "eta[2]", value: "1.5", reason: "must be in [0, 1]")) {
      try NeuralMemory().memorize(keys: k, values: v, gates: gt, state: MemoryState(weights: w))
    }
    #expect(throws: SubqError.self) {
      try NeuralMemory().memorize(keys: k, values: Tensor(shape: [5, 4]), gates: Self.gates(5, seed: 4), state: MemoryState(weights: w))
    }
    #expect(throws: SubqError.self) {
      try NeuralMemory().memorize(keys: k, values: v, gates: Self.gates(5, seed: 4), state: MemoryState(weights: [w[1], w[0]]))
    }
    #expect(throws: SubqError.self) { try NeuralMemory(chunk: 0) }
  }
}
