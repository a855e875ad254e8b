import Foundation
import SubqCore
import SubqKernels

/// The data-dependent rates of a Titans memory, one value per token, each in [0, 1].
public struct MemoryGates: Sendable {
  /// θ_t: the step size of the gradient (surprise) of token t, `[L]`.
  public var theta: Tensor
  /// η_t: how much of the previous surprise (momentum) carries over, `[L]`.
  public var eta: Tensor
  /// α_t: the forgetting gate (weight decay) of token t, `[L]`.
  public var alpha: Tensor

  public init(theta: Tensor, eta: Tensor, alpha: Tensor) {
    self.theta = theta
    self.eta = eta
    self.alpha = alpha
  }
}

/// The state of a Titans memory: the MLP's weights and the momentum (surprise) of each.
public struct MemoryState: Sendable {
  /// Layer weights W_1 … W_m, `[d_{l−1}, d_l]`.
  public var weights: [Tensor]
  /// S, the same shapes as `weights`.
  public var momentum: [Tensor]

  /// A state with the given weights and zero momentum.
  public init(weights: [Tensor]) {
    self.weights = weights
    self.momentum = weights.map { Tensor(shape: $0.shape, repeating: 0) }
  }

  public init(weights: [Tensor], momentum: [Tensor]) {
    self.weights = weights
    self.momentum = momentum
  }
}

/// The neural long-term memory of Titans: an MLP whose weights are trained at test time.
///
/// The memory is M(k) = W_m·…·SiLU(W_2·SiLU(W_1·k)) (row vectors: `k·W_1`, SiLU between layers,
/// none after the last; one layer is a linear memory). Storing token t with key k_t and value
/// v_t uses the associative loss ℓ(M; k_t, v_t) = ‖M(k_t) − v_t‖² (summed over features, as the
/// paper writes it) and
///
///     S_t = η_t·S_{t−1} − θ_t·∇ℓ(M_{t'}; k_t, v_t)        (surprise with momentum)
///     M_t = (1 − α_t)·M_{t−1} + S_t                         (forgetting gate)
///
/// where t' is the start of t's chunk: inside a chunk of `chunk` tokens every gradient is taken
/// at the chunk-start weights (the paper's parallel training, §3.2), so a chunk costs one batched
/// forward and backward pass, and the token-by-token recurrences of S and M collapse into two
/// weighted gradient sums with scalar coefficients:
/// `S_b = (Π η)·S_0 − Σ_k θ_k·(Π_{j>k} η_j)·u_k` and `M_b = (Π (1−α))·M_0 + c·S_0 − Σ_k θ_k·g_k·u_k`
/// (g_k and c from a backward recursion over the chunk). With `chunk` = 1 this is the exact
/// sequential rule. Gradients are written by hand (no autodiff).
///
/// Retrieval is a forward pass without update: y = M*(q). In ``process(keys:values:queries:gates:state:)``
/// token t reads the memory as it was at the start of its chunk (after every earlier chunk was
/// stored), so the output never depends on later tokens.
///
/// Paper: Behrouz, Zhong & Mirrokni, *Titans: Learning to Memorize at Test Time* (2025). There is
/// no official code; unlike `titans-pytorch` the gates are per token (not per chunk), the loss is
/// summed (not averaged) over features, the memory has no residual/LayerNorm wrapper, and a final
/// partial chunk is stored too (not cached).
///
/// - Complexity: O(L·|M|) time (about 4 passes over the weights per token), O(|M|) memory for
///   the state, one thread per sequence.
public struct NeuralMemory: Sendable {
  /// Tokens whose gradients share the same (chunk-start) weights.
  public let chunk: Int

  static let op = "titans.memory"

  /// - Parameter chunk: tokens per chunk, 1...4096.
  public init(chunk: Int = 16) throws(SubqError) {
    guard chunk >= 1, chunk <= 4096 else { throw .argument(op: Self.op, name: "chunk", value: "\(chunk)", reason: "must be in 1...4096") }
    self.chunk = chunk
  }

  /// Xavier-uniform random layers of sizes `sizes[0] → sizes[1] → …` (for tests and benchmarks).
  public static func randomWeights(sizes: [Int], seed: UInt64) -> [Tensor] {
    var g = SeededGenerator(seed: seed)
    return (0..<(sizes.count - 1)).map { l in
      let bound = Float((6.0 / Double(sizes[l] + sizes[l + 1])).squareRoot())
      return Tensor.randomUniform(shape: [sizes[l], sizes[l + 1]], seed: g.next(), in: -bound...bound)
    }
  }

  /// Checks that `weights` chain (`[d0, d1], [d1, d2], …`), are finite, and returns the sizes.
  static func sizes(_ weights: [Tensor], op: String) throws(SubqError) -> [Int] {
    guard !weights.isEmpty else { throw .argument(op: op, name: "memory", value: "no layers", reason: "the memory MLP needs at least one layer") }
    var sizes = [Int]()
    for (l, w) in weights.enumerated() {
      try checkMatrix(w, "memory layer \(l)", op: op, rows: l == 0 ? nil : sizes.last!, cols: nil)
      if l == 0 { sizes.append(w.shape[0]) }
      sizes.append(w.shape[1])
    }
    return sizes
  }

  /// The memory's outputs for `queries` `[L, d0]` under `weights`, without any update: `[L, d_m]`.
  public func retrieve(queries: Tensor, weights: [Tensor]) throws(SubqError) -> Tensor {
    let sizes = try Self.sizes(weights, op: Self.op)
    try checkMatrix(queries, "queries", op: Self.op, rows: nil, cols: sizes[0])
    let ws = MLPWorkspace(sizes: sizes, rows: queries.shape[0])
    return queries.withUnsafeBufferPointer { q in
      Tensor(shape: [queries.shape[0], sizes.last!]) { o in
        withWeights(weights) { w in ws.forward(w, q.baseAddress!, rows: queries.shape[0], into: o.baseAddress!) }
      }
    }
  }

  /// Stores `keys` `[L, d0]` → `values` `[L, d_m]` chunk by chunk and returns the new state.
  public func memorize(keys: Tensor, values: Tensor, gates: MemoryGates, state: MemoryState) throws(SubqError) -> MemoryState {
    let sizes = try validate(keys: keys, values: values, queries: nil, gates: gates, state: state)
    var st = state
    run(keys: keys, values: values, queries: nil, gates: gates, state: &st, ws: MLPWorkspace(sizes: sizes, rows: chunk), output: nil)
    return st
  }

  /// For each chunk: reads `queries` of the chunk from the memory as it stands, then stores the
  /// chunk's `keys` → `values`. Returns the outputs `[L, d_m]` and the final state.
  public func process(keys: Tensor, values: Tensor, queries: Tensor, gates: MemoryGates, state: MemoryState) throws(SubqError) -> (output: Tensor, state: MemoryState) {
    let sizes = try validate(keys: keys, values: values, queries: queries, gates: gates, state: state)
    var st = state
    let ws = MLPWorkspace(sizes: sizes, rows: chunk)
    var out = Tensor(shape: [keys.shape[0], sizes.last!]) { _ in }
    out.withUnsafeMutableBufferPointer { o in
      run(keys: keys, values: values, queries: queries, gates: gates, state: &st, ws: ws, output: o.baseAddress!)
    }
    return (out, st)
  }

  func validate(keys: Tensor, values: Tensor, queries: Tensor?, gates: MemoryGates, state: MemoryState) throws(SubqError) -> [Int] {
    let op = Self.op
    let sizes = try Self.sizes(state.weights, op: op)
    guard state.momentum.count == state.weights.count, zip(state.momentum, state.weights).allSatisfy({ $0.shape == $1.shape }) else {
      throw .shape(op: op, tensor: "momentum", shape: state.momentum.map(\.count), reason: "must have one tensor per layer with the weights' shapes")
    }
    for (l, m) in state.momentum.enumerated() { try checkFinite(m, "momentum \(l)", op: op) }
    try checkMatrix(keys, "keys", op: op, rows: nil, cols: sizes[0])
    let n = keys.shape[0]
    try checkMatrix(values, "values", op: op, rows: n, cols: sizes.last!)
    if let queries { try checkMatrix(queries, "queries", op: op, rows: n, cols: sizes[0]) }
    for (t, name) in [(gates.theta, "theta"), (gates.eta, "eta"), (gates.alpha, "alpha")] {
      guard t.shape == [n] else { throw .shape(op: op, tensor: name, shape: t.shape, reason: "expected one value per token, [\(n)]") }
      for (i, v) in t.scalars.enumerated() where !(v >= 0 && v <= 1) {
        throw .argument(op: op, name: "\(name)[\(i)]", value: "\(v)", reason: "must be in [0, 1]")
      }
    }
    return sizes
  }

  /// The chunk loop (inputs already validated).
  func run(keys: Tensor, values: Tensor, queries: Tensor?, gates: MemoryGates, state: inout MemoryState,
           ws: MLPWorkspace, output: UnsafeMutablePointer<Float>?) {
    let n = keys.shape[0]
    let dOut = ws.sizes.last!
    let theta = gates.theta.scalars.map(Double.init), eta = gates.eta.scalars.map(Double.init)
    let alpha = gates.alpha.scalars.map(Double.init)
    let layers = state.weights.count
    // Flat copies of weights and momentum to update in place.
    let sizesW = state.weights.map(\.count)
    let w = sizesW.map { UnsafeMutablePointer<Float>.allocate(capacity: $0) }
    let s = sizesW.map { UnsafeMutablePointer<Float>.allocate(capacity: $0) }
    let gS = sizesW.map { UnsafeMutablePointer<Float>.allocate(capacity: $0) }
    let gM = sizesW.map { UnsafeMutablePointer<Float>.allocate(capacity: $0) }
    defer { for p in w + s + gS + gM { p.deallocate() } }
    for l in 0..<layers {
      state.weights[l].withUnsafeBufferPointer { w[l].initialize(from: $0.baseAddress!, count: sizesW[l]) }
      state.momentum[l].withUnsafeBufferPointer { s[l].initialize(from: $0.baseAddress!, count: sizesW[l]) }
    }
    let wConst = w.map { UnsafePointer($0) }
    let wS = UnsafeMutablePointer<Float>.allocate(capacity: chunk), wM = UnsafeMutablePointer<Float>.allocate(capacity: chunk)
    defer { wS.deallocate(); wM.deallocate() }
    keys.withUnsafeBufferPointer { kp in
      values.withUnsafeBufferPointer { vp in
        withOptional(queries) { qp in
          var t0 = 0
          while t0 < n {
            let b = min(chunk, n - t0)
            // Read first, with the chunk-start weights.
            if let qp, let output { ws.forward(wConst, qp + t0 * ws.sizes[0], rows: b, into: output + t0 * dOut) }
            // Scalar coefficients of the chunk, in Double (token i of the chunk is t0 + i):
            // coefS_i = θ_i·Π_{j>i} η_j, coefM_i = θ_i·g_i with g_{b−1} = 1,
            // g_i = Π_{j>i}(1 − α_j) + η_{i+1}·g_{i+1}.
            var eAfter = 1.0, fAfter = 1.0, g = 1.0
            for i in stride(from: b - 1, through: 0, by: -1) {
              if i < b - 1 {
                eAfter *= eta[t0 + i + 1]
                fAfter *= 1 - alpha[t0 + i + 1]
                g = fAfter + eta[t0 + i + 1] * g
              }
              wS[i] = Float(theta[t0 + i] * eAfter)
              wM[i] = Float(theta[t0 + i] * g)
            }
            let etaAll = Float(eta[t0] * eAfter), keep = Float((1 - alpha[t0]) * fAfter), carryS = Float(eta[t0] * g)
            // Gradient sums Σ coef_i·∇ℓ_i at the chunk-start weights.
            for l in 0..<layers {
              gS[l].update(repeating: 0, count: sizesW[l])
              gM[l].update(repeating: 0, count: sizesW[l])
            }
            ws.gradients(wConst, keys: kp.baseAddress! + t0 * ws.sizes[0], values: vp.baseAddress! + t0 * dOut, rows: b,
                         weightsS: wS, weightsM: wM, gS: gS, gM: gM)
            // M ← keep·M + carryS·S − G_M ;  S ← etaAll·S − G_S.
            for l in 0..<layers {
              let wl = w[l], sl = s[l], gsl = gS[l], gml = gM[l]
              for i in 0..<sizesW[l] {
                let sOld = sl[i]
                wl[i] = fmadd(fmadd(-gml[i], keep, wl[i]), carryS, sOld)
                sl[i] = fmadd(-gsl[i], etaAll, sOld)
              }
            }
            t0 += b
          }
        }
      }
    }
    for l in 0..<layers {
      state.weights[l] = Tensor(shape: state.weights[l].shape) { $0.baseAddress!.update(from: w[l], count: sizesW[l]) }
      state.momentum[l] = Tensor(shape: state.weights[l].shape) { $0.baseAddress!.update(from: s[l], count: sizesW[l]) }
    }
  }
}

/// Activations and deltas of an MLP memory for up to `rows` tokens (owned raw buffers).
final class MLPWorkspace {
  let sizes: [Int]
  let rows: Int
  /// Pre-activations z_l, activations a_l = SiLU(z_l) and deltas of layers 1…m (index l−1);
  /// a_0 is the input.
  let z: [UnsafeMutablePointer<Float>], a: [UnsafeMutablePointer<Float>], delta: [UnsafeMutablePointer<Float>]

  init(sizes: [Int], rows: Int) {
    self.sizes = sizes
    self.rows = rows
    func alloc() -> [UnsafeMutablePointer<Float>] {
      sizes.dropFirst().map { n in
        let p = UnsafeMutablePointer<Float>.allocate(capacity: max(1, rows * n))
        p.initialize(repeating: 0, count: max(1, rows * n))
        return p
      }
    }
    z = alloc(); a = alloc(); delta = alloc()
  }

  deinit { for p in z + a + delta { p.deallocate() } }

  /// out[rows, d_m] = M(x[rows, d_0]).
  func forward(_ w: [UnsafePointer<Float>], _ x: UnsafePointer<Float>, rows n: Int, into out: UnsafeMutablePointer<Float>) {
    let m = sizes.count - 1
    runForward(w, x, rows: n)
    matmul(input(m - 1, x), w[m - 1], out, m: n, k: sizes[m - 1], n: sizes[m])
  }

  /// The input of layer l (0-based): x for the first, else the previous activation.
  func input(_ l: Int, _ x: UnsafePointer<Float>) -> UnsafePointer<Float> { l == 0 ? x : UnsafePointer(a[l - 1]) }

  /// Fills z and a for the hidden layers (all but the last).
  func runForward(_ w: [UnsafePointer<Float>], _ x: UnsafePointer<Float>, rows n: Int) {
    let m = sizes.count - 1
    for l in 0..<(m - 1) {
      matmul(input(l, x), w[l], z[l], m: n, k: sizes[l], n: sizes[l + 1])
      let count = n * sizes[l + 1]
      a[l].update(from: z[l], count: count)
      siluInPlace(a[l], count)
    }
  }

  /// gS_l += Σ_i weightsS[i]·∂ℓ_i/∂W_l and gM_l likewise, for ℓ_i = ‖M(k_i) − v_i‖².
  func gradients(_ w: [UnsafePointer<Float>], keys: UnsafePointer<Float>, values: UnsafePointer<Float>, rows n: Int,
                 weightsS: UnsafePointer<Float>, weightsM: UnsafePointer<Float>,
                 gS: [UnsafeMutablePointer<Float>], gM: [UnsafeMutablePointer<Float>]) {
    let m = sizes.count - 1
    runForward(w, keys, rows: n)
    // Output layer: δ_m = 2·(M(k) − v).
    let dm = sizes[m]
    let d = delta[m - 1]
    matmul(input(m - 1, keys), w[m - 1], d, m: n, k: sizes[m - 1], n: dm)
    for i in 0..<(n * dm) { d[i] = 2 * (d[i] - values[i]) }
    // Back through the layers: ∇W_l = a_{l−1}ᵀ·diag(c)·δ_l, δ_{l−1} = (δ_l·W_lᵀ) ⊙ SiLU'(z_{l−1}).
    for l in stride(from: m - 1, through: 0, by: -1) {
      let (rowsIn, cols) = (sizes[l], sizes[l + 1])
      weightedOuterSum(input(l, keys), delta[l], weightsS, gS[l], rows: n, k: rowsIn, n: cols)
      weightedOuterSum(input(l, keys), delta[l], weightsM, gM[l], rows: n, k: rowsIn, n: cols)
      if l > 0 {
        let prev = delta[l - 1], zp = z[l - 1]
        matmulTransposedB(delta[l], w[l], prev, m: n, k: cols, n: rowsIn)
        for i in 0..<(n * rowsIn) {
          let x = Double(zp[i])
          let sg = 1 / (1 + Foundation.exp(-x))
          prev[i] *= Float(sg * (1 + x * (1 - sg)))
        }
      }
    }
  }
}

/// Calls `body` with the base addresses of the weights' scalars.
func withWeights<R>(_ weights: [Tensor], _ body: ([UnsafePointer<Float>]) -> R) -> R {
  var ptrs: [UnsafePointer<Float>] = []
  func go(_ i: Int) -> R {
    if i == weights.count { return body(ptrs) }
    return weights[i].withUnsafeBufferPointer { p in
      ptrs.append(p.baseAddress!)
      return go(i + 1)
    }
  }
  return go(0)
}
