import Foundation
import SubqCore
import SubqKernels

/// The weights of one selective S6 branch over a sequence of width `d` (tokens, or channels
/// for the channel mixer) with `e` inner channels, state size `n` and a causal convolution of
/// width `k`. Row-vector convention: a projection is `x · W`.
public struct SelectiveBranchWeights: Sendable {
  /// `[d, e]`: x̄ = SiLU(conv(x·W_in) + convBias).
  public var inProj: Tensor
  /// Depthwise causal convolution `[e, k]` (mamba's conv1d weight `[e, 1, k]`): tap j multiplies
  /// the input k − 1 − j steps back.
  public var conv: Tensor
  /// `[e]`.
  public var convBias: Tensor
  /// `[d, n]`: B = x·W_B (from the mixer's input, as the paper writes it).
  public var bProj: Tensor
  /// `[d, n]`: C = x·W_C.
  public var cProj: Tensor
  /// `[d, e]`: Δ = softplus(x·W_Δ + deltaBias).
  public var deltaProj: Tensor
  /// `[e]`.
  public var deltaBias: Tensor
  /// `[e, n]` (negative; mamba stores −exp(A_log)).
  public var A: Tensor
  /// `[e]`: the scan's D skip.
  public var skip: Tensor

  public init(inProj: Tensor, conv: Tensor, convBias: Tensor, bProj: Tensor, cProj: Tensor, deltaProj: Tensor,
              deltaBias: Tensor, A: Tensor, skip: Tensor) {
    self.inProj = inProj
    self.conv = conv
    self.convBias = convBias
    self.bProj = bProj
    self.cProj = cProj
    self.deltaProj = deltaProj
    self.deltaBias = deltaBias
    self.A = A
    self.skip = skip
  }

  /// Mamba-style random initialisation: S4D-real A = −[1 … n], Δ bias giving Δ ≈ 0.001–0.1,
  /// uniform projections (for tests and benchmarks).
  public static func random(width d: Int, inner e: Int, state n: Int, conv k: Int = 4, seed: UInt64) -> SelectiveBranchWeights {
    var g = SeededGenerator(seed: seed)
    func u(_ r: Int, _ c: Int) -> Tensor {
      let b = Float(1 / Double(r).squareRoot())
      return .randomUniform(shape: [r, c], seed: g.next(), in: -b...b)
    }
    let dtBias = Tensor(shape: [e]) { p in
      for i in p.indices {
        let dt = Foundation.exp(Foundation.log(0.001) + g.nextUnit() * (Foundation.log(0.1) - Foundation.log(0.001)))
        p[i] = Float(dt + Foundation.log(-Foundation.expm1(-dt)))
      }
    }
    return SelectiveBranchWeights(
      inProj: u(d, e), conv: u(k, e).reshapedTransposed(), convBias: .randomUniform(shape: [e], seed: g.next(), in: -0.1...0.1),
      bProj: u(d, n), cProj: u(d, n), deltaProj: u(d, e), deltaBias: dtBias,
      A: Tensor(shape: [e, n]) { p in for i in p.indices { p[i] = -Float(i % n + 1) } },
      skip: Tensor(shape: [e], repeating: 1))
  }
}

/// The selective token mixer of one MambaMixer layer (unidirectional, over tokens).
public struct TokenMixerWeights: Sendable {
  public var branch: SelectiveBranchWeights
  /// `[D, E]`: the gate x_MLP = x·W_gate; the scan's output is multiplied by SiLU(x_MLP).
  public var gate: Tensor
  /// `[E, D]`: back to the model width.
  public var outProj: Tensor

  public init(branch: SelectiveBranchWeights, gate: Tensor, outProj: Tensor) {
    self.branch = branch
    self.gate = gate
    self.outProj = outProj
  }
}

/// The selective channel mixer of one MambaMixer layer (bidirectional, over channels: the
/// sequence is xᵀ, its "tokens" are the D channels and their width is the length L).
public struct ChannelMixerWeights: Sendable {
  public var forward: SelectiveBranchWeights
  /// The branch scanning the channels in reverse order.
  public var backward: SelectiveBranchWeights
  /// `[L, E]`: the gate shared by both directions.
  public var gate: Tensor
  /// `[E, L]`.
  public var outProj: Tensor

  public init(forward: SelectiveBranchWeights, backward: SelectiveBranchWeights, gate: Tensor, outProj: Tensor) {
    self.forward = forward
    self.backward = backward
    self.gate = gate
    self.outProj = outProj
  }
}

/// The weights of a stack of 𝓛 MambaMixer layers with the weighted averaging of earlier outputs.
public struct MambaMixerWeights: Sendable {
  public var token: [TokenMixerWeights]
  public var channel: [ChannelMixerWeights]
  /// α[ℓ−1][i], i < ℓ: weight of y_Token⁽ⁱ⁾ in the token mixer's input of layer ℓ.
  public var alpha: [[Float]]
  /// β[ℓ−1][i], i < ℓ: weight of y_Channel⁽ⁱ⁾ in the token mixer's input of layer ℓ.
  public var beta: [[Float]]
  /// θ[ℓ−1][i], i ≤ ℓ: weight of y_Token⁽ⁱ⁾ in the channel mixer's input of layer ℓ.
  public var theta: [[Float]]
  /// γ[ℓ−1][i], i < ℓ: weight of y_Channel⁽ⁱ⁾ in the channel mixer's input of layer ℓ.
  public var gamma: [[Float]]

  public init(token: [TokenMixerWeights], channel: [ChannelMixerWeights], alpha: [[Float]], beta: [[Float]],
              theta: [[Float]], gamma: [[Float]]) {
    self.token = token
    self.channel = channel
    self.alpha = alpha
    self.beta = beta
    self.theta = theta
    self.gamma = gamma
  }

  /// Averaging weights of plain sequential stacking: layer ℓ's token mixer takes the previous
  /// layer's channel-mixer output (x for ℓ = 1) and its channel mixer takes its token-mixer
  /// output; every other weight is 0.
  public static func sequentialAveraging(layers: Int) -> (alpha: [[Float]], beta: [[Float]], theta: [[Float]], gamma: [[Float]]) {
    var a: [[Float]] = [], b: [[Float]] = [], t: [[Float]] = [], g: [[Float]] = []
    for l in 1...max(1, layers) {
      var al = [Float](repeating: 0, count: l), be = al
      var th = [Float](repeating: 0, count: l + 1)
      if l == 1 { al[0] = 1 } else { be[l - 1] = 1 }
      th[l] = 1
      a.append(al); b.append(be); t.append(th); g.append([Float](repeating: 0, count: l))
    }
    return (a, b, t, g)
  }
}

/// MambaMixer: selective token mixing, selective channel mixing, and weighted averaging of
/// earlier outputs (Behrouz, Santacatterina & Zabih, *MambaMixer: Efficient Selective State
/// Space Models with Dual Token and Channel Selection*, 2024). There is no released code; this
/// follows the paper's equations for 1-D sequences (its TSM2 form):
///
///     token mixer    x̄ = SiLU(conv(x·W_in)),  B = x·W_B,  C = x·W_C,  Δ = softplus(x·W_Δ + b)
///                    y_Token = (S6(x̄; Δ, A, B, C) + D·x̄) ⊙ SiLU(x·W_gate) · W_out
///     channel mixer  the same on xᵀ (sequence over the D channels, width L), in both directions:
///                    y_Channel = (S6_fwd(x̃) ⊙ g + Flip(S6_bwd(Flip x̃)) ⊙ g) · W_out,  g = SiLU(xᵀ·W_gate)
///     averaging      x_Token⁽ℓ⁾ = Σ_{i<ℓ} α_{ℓ,i} y_Token⁽ⁱ⁾ + Σ_{i<ℓ} β_{ℓ,i} y_Channel⁽ⁱ⁾
///                    x_Channel⁽ℓ⁾ = Σ_{i≤ℓ} θ_{ℓ,i} y_Token⁽ⁱ⁾ + Σ_{i<ℓ} γ_{ℓ,i} y_Channel⁽ⁱ⁾
///                    with y_Token⁽⁰⁾ = y_Channel⁽⁰⁾ = x; the output is y_Channel⁽𝓛⁾.
///
/// Choices where the paper is silent (documented, not guessed silently): the "MLP" gate is one
/// linear map and ⊗ multiplies by its SiLU, as in Mamba; each mixer ends with an output
/// projection back to its width (needed for the averaging to type-check); B, C and Δ come from
/// the mixer's input x (as the paper writes, unlike Mamba's x̄); the two channel directions have
/// their own S6 weights and share the gate and the output projection; no normalisation. The
/// S6 scans run on ``SelectiveScan``.
///
/// The token mixer is causal over tokens; the channel mixer mixes all positions (its width is
/// the length), so the block as a whole is not causal and its channel weights fix the length L.
///
/// - Complexity: O(𝓛·B·(L·D·E + L·E·N + D·E_c·(L + N_c))) time.
public struct MambaMixer: Sendable {
  /// Worker threads for the scans (default `Parallel.defaultThreads`).
  public let threads: Int?

  static let op = "mamba-mixer"

  public init(threads: Int? = nil) throws(SubqError) {
    if let threads, threads < 1 { throw .argument(op: Self.op, name: "threads", value: "\(threads)", reason: "must be at least 1") }
    self.threads = threads
  }

  /// Runs the stack on `x` `[B, L, D]` (or `[L, D]`); returns the same shape.
  public func callAsFunction(_ x: Tensor, weights w: MambaMixerWeights) throws(SubqError) -> Tensor {
    let op = Self.op
    guard x.rank == 2 || x.rank == 3 else { throw .shape(op: op, tensor: "x", shape: x.shape, reason: "expected [L, D] or [B, L, D]") }
    let nb = x.rank == 3 ? x.shape[0] : 1, nl = x.shape[x.rank - 2], nd = x.shape[x.rank - 1]
    guard nb >= 1, nl >= 1, nd >= 1 else { throw .shape(op: op, tensor: "x", shape: x.shape, reason: "empty") }
    try checkFinite(x, "x", op: op)
    try validate(w, length: nl, width: nd)
    let scan = SelectiveScan(parallelism: .channels, threads: threads)
    var out = [Float]()
    out.reserveCapacity(x.count)
    for b in 0..<nb {
      let xb = x.withUnsafeBufferPointer { p in Tensor(shape: [nl, nd]) { $0.baseAddress!.update(from: p.baseAddress! + b * nl * nd, count: nl * nd) } }
      var yTok = [xb], yCh = [xb]
      for l in 1...w.token.count {
        let xt = try combine(yTok, Array(w.alpha[l - 1]), yCh, Array(w.beta[l - 1]))
        yTok.append(try tokenMixer(xt, w.token[l - 1], scan))
        let xc = try combine(yTok, Array(w.theta[l - 1]), yCh, Array(w.gamma[l - 1]))
        yCh.append(try channelMixer(xc, w.channel[l - 1], scan))
      }
      out += yCh.last!.scalars
    }
    return try Tensor(shape: x.shape, scalars: out)
  }

  /// The selective token mixer alone on one sequence `x` `[L, D]` → `[L, D]` (causal over tokens).
  public func tokenMixer(_ x: Tensor, weights: TokenMixerWeights) throws(SubqError) -> Tensor {
    guard x.rank == 2, x.shape[0] >= 1 else { throw .shape(op: Self.op, tensor: "x", shape: x.shape, reason: "expected [L, D]") }
    try checkFinite(x, "x", op: Self.op)
    try Self.validateToken(weights, "token", width: x.shape[1])
    return try tokenMixer(x, weights, SelectiveScan(parallelism: .channels, threads: threads))
  }

  /// Σ a_i·ys_i + Σ b_i·zs_i.
  func combine(_ ys: [Tensor], _ a: [Float], _ zs: [Tensor], _ b: [Float]) throws(SubqError) -> Tensor {
    var acc = [Float](repeating: 0, count: ys[0].count)
    acc.withUnsafeMutableBufferPointer { o in
      for (t, c) in zip(ys, a) where c != 0 { t.withUnsafeBufferPointer { axpy(c, $0.baseAddress!, o.baseAddress!, o.count) } }
      for (t, c) in zip(zs, b) where c != 0 { t.withUnsafeBufferPointer { axpy(c, $0.baseAddress!, o.baseAddress!, o.count) } }
    }
    return try Tensor(shape: ys[0].shape, scalars: acc)
  }

  /// One S6 branch over `x` `[n, d]` (sequence of n items of width d) with gate logits `gate`
  /// `[n, e]`: returns (S6(x̄) + D·x̄) ⊙ SiLU(gate), `[n, e]`.
  func branch(_ x: Tensor, _ w: SelectiveBranchWeights, gate: Tensor, _ scan: SelectiveScan) throws(SubqError) -> Tensor {
    let n = x.shape[0]
    let e = w.inProj.shape[1], k = w.conv.shape[1]
    // x̄ = SiLU(causal depthwise conv(x·W_in) + bias), [n, e].
    let pre = project(x, rows: n, w.inProj)
    var xbar = Tensor(shape: [n, e], repeating: 0)
    let cw = w.conv.scalars, cb = w.convBias.scalars
    pre.withUnsafeBufferPointer { p in
      xbar.withUnsafeMutableBufferPointer { o in
        for t in 0..<n {
          for c in 0..<e {
            var s = cb[c]
            for j in 0..<k {
              let src = t - (k - 1) + j
              if src >= 0 { s = fmadd(s, cw[c * k + j], p[src * e + c]) }
            }
            o[t * e + c] = s
          }
        }
        siluInPlace(o.baseAddress!, n * e)
      }
    }
    // The scan in its [B, D, L] layout: channels e, length n.
    let inputs = SelectiveScanInputs(
      u: try transpose(xbar).reshaped([1, e, n]),
      delta: try transpose(project(x, rows: n, w.deltaProj)).reshaped([1, e, n]),
      A: w.A,
      B: try transpose(project(x, rows: n, w.bProj)).reshaped([1, w.A.shape[1], n]),
      C: try transpose(project(x, rows: n, w.cProj)).reshaped([1, w.A.shape[1], n]),
      D: w.skip, z: try transpose(gate).reshaped([1, e, n]), deltaBias: w.deltaBias, deltaSoftplus: true)
    return transpose(try scan(inputs).output.reshaped([e, n]))
  }

  func tokenMixer(_ x: Tensor, _ w: TokenMixerWeights, _ scan: SelectiveScan) throws(SubqError) -> Tensor {
    let n = x.shape[0]
    let y = try branch(x, w.branch, gate: project(x, rows: n, w.gate), scan)
    return project(y, rows: n, w.outProj)
  }

  func channelMixer(_ x: Tensor, _ w: ChannelMixerWeights, _ scan: SelectiveScan) throws(SubqError) -> Tensor {
    let xt = transpose(x)  // [D, L]: D items of width L
    let nd = xt.shape[0]
    let gate = project(xt, rows: nd, w.gate)
    let fwd = try branch(xt, w.forward, gate: gate, scan)
    // Backward: scan the flipped channel order with the flipped gate, then flip back.
    let bwd = flip(try branch(flip(xt), w.backward, gate: flip(gate), scan))
    let sum = try combine([fwd], [1], [bwd], [1])
    return transpose(project(sum, rows: nd, w.outProj))
  }

  func validate(_ w: MambaMixerWeights, length nl: Int, width nd: Int) throws(SubqError) {
    let op = Self.op
    let layers = w.token.count
    guard layers >= 1, w.channel.count == layers else {
      throw .argument(op: op, name: "layers", value: "\(layers) token, \(w.channel.count) channel", reason: "need the same number ≥ 1 of each")
    }
    for (name, arr, extra) in [("alpha", w.alpha, 0), ("beta", w.beta, 0), ("theta", w.theta, 1), ("gamma", w.gamma, 0)] {
      guard arr.count == layers else { throw .argument(op: op, name: name, value: "\(arr.count) rows", reason: "need one row per layer (\(layers))") }
      for (i, row) in arr.enumerated() {
        guard row.count == i + 1 + extra else {
          throw .argument(op: op, name: "\(name)[\(i + 1)]", value: "\(row.count) weights", reason: "layer \(i + 1) needs \(i + 1 + extra)")
        }
        if let bad = row.first(where: { !$0.isFinite }) { throw .argument(op: op, name: "\(name)[\(i + 1)]", value: "\(bad)", reason: "must be finite") }
      }
    }
    func branch(_ b: SelectiveBranchWeights, _ name: String, width d: Int) throws(SubqError) -> Int {
      try Self.validateBranch(b, name, width: d)
    }
    for l in 0..<layers {
      let t = w.token[l], c = w.channel[l]
      try Self.validateToken(t, "token[\(l)]", width: nd)
      let ef = try branch(c.forward, "channel[\(l)].forward", width: nl)
      let eb = try branch(c.backward, "channel[\(l)].backward", width: nl)
      guard eb == ef else { throw .shape(op: op, tensor: "channel[\(l)].backward.inProj", shape: c.backward.inProj.shape, reason: "inner width must match the forward branch (\(ef))") }
      try checkMatrix(c.gate, "channel[\(l)].gate", op: op, rows: nl, cols: ef)
      try checkMatrix(c.outProj, "channel[\(l)].outProj", op: op, rows: ef, cols: nl)
    }
  }

  static func validateToken(_ t: TokenMixerWeights, _ name: String, width nd: Int) throws(SubqError) {
    let e = try validateBranch(t.branch, name, width: nd)
    try checkMatrix(t.gate, "\(name).gate", op: op, rows: nd, cols: e)
    try checkMatrix(t.outProj, "\(name).outProj", op: op, rows: e, cols: nd)
  }

  @discardableResult
  static func validateBranch(_ b: SelectiveBranchWeights, _ name: String, width d: Int) throws(SubqError) -> Int {
      try checkMatrix(b.inProj, "\(name).inProj", op: op, rows: d, cols: nil)
      let e = b.inProj.shape[1]
      try checkMatrix(b.conv, "\(name).conv", op: op, rows: e, cols: nil)
      try checkMatrix(b.A, "\(name).A", op: op, rows: e, cols: nil)
      let n = b.A.shape[1]
      try checkMatrix(b.bProj, "\(name).bProj", op: op, rows: d, cols: n)
      try checkMatrix(b.cProj, "\(name).cProj", op: op, rows: d, cols: n)
      try checkMatrix(b.deltaProj, "\(name).deltaProj", op: op, rows: d, cols: e)
      for (t, tn) in [(b.convBias, "convBias"), (b.deltaBias, "deltaBias"), (b.skip, "skip")] {
        guard t.shape == [e] else { throw .shape(op: op, tensor: "\(name).\(tn)", shape: t.shape, reason: "expected [\(e)]") }
        try checkFinite(t, "\(name).\(tn)", op: op)
      }
      return e
  }
}

/// `[r, c]` → `[c, r]`.
func transpose(_ t: Tensor) -> Tensor {
  let (r, c) = (t.shape[0], t.shape[1])
  return t.withUnsafeBufferPointer { p in
    Tensor(shape: [c, r]) { o in for i in 0..<r { for j in 0..<c { o[j * r + i] = p[i * c + j] } } }
  }
}

/// The rows of `[r, c]` in reverse order.
func flip(_ t: Tensor) -> Tensor {
  let (r, c) = (t.shape[0], t.shape[1])
  return t.withUnsafeBufferPointer { p in
    Tensor(shape: [r, c]) { o in for i in 0..<r { (o.baseAddress! + i * c).update(from: p.baseAddress! + (r - 1 - i) * c, count: c) } }
  }
}

extension Tensor {
  /// A `[r, c]` matrix transposed to `[c, r]`.
  func reshapedTransposed() -> Tensor { transpose(self) }
}
