import Foundation
import SubqCore

/// Plain Float64 loops that state what the fast scans compute. They are the specification the
/// tests check against; they run on one thread and are meant for small inputs.
public enum StateSpaceReference {
  /// mamba's `selective_scan_ref`, step by step in Double.
  ///
  /// Returns the output `[B, D, L]` and the last state `[B, D, N]`, flattened row-major.
  public static func selectiveScan(_ x: SelectiveScanInputs) throws(SubqError) -> (output: [Double], lastState: [Double]) {
    let s = try ScanShape.validate(x, op: "selective-scan.reference")
    let (nb, nd, nl, nn) = (s.batch, s.channels, s.length, s.state)
    let u = x.u.scalars.map(Double.init), dl = x.delta.scalars.map(Double.init)
    let a = x.A.scalars.map(Double.init), bm = x.B.scalars.map(Double.init), cm = x.C.scalars.map(Double.init)
    let skip = x.D?.scalars.map(Double.init), z = x.z?.scalars.map(Double.init)
    let bias = x.deltaBias?.scalars.map(Double.init), h0 = x.initialState?.scalars.map(Double.init)
    var out = [Double](repeating: 0, count: nb * nd * nl)
    var last = [Double](repeating: 0, count: nb * nd * nn)
    for b in 0..<nb {
      for d in 0..<nd {
        let gb = d / (nd / s.groupsB), gc = d / (nd / s.groupsC)
        var h = (0..<nn).map { h0?[(b * nd + d) * nn + $0] ?? 0 }
        for t in 0..<nl {
          let i = (b * nd + d) * nl + t
          var dt = dl[i] + (bias?[d] ?? 0)
          if x.deltaSoftplus { dt = softplus(dt) }
          var y = 0.0
          for n in 0..<nn {
            let bv = bm[((b * s.groupsB + gb) * nn + n) * nl + t]
            let cv = cm[((b * s.groupsC + gc) * nn + n) * nl + t]
            h[n] = Foundation.exp(dt * a[d * nn + n]) * h[n] + dt * bv * u[i]
            y += cv * h[n]
          }
          if let skip { y += skip[d] * u[i] }
          if let z { y *= silu(z[i]) }
          out[i] = y
        }
        for n in 0..<nn { last[(b * nd + d) * nn + n] = h[n] }
      }
    }
    return (out, last)
  }

  /// The SSD recurrence step by step in Double: h = exp(dt·A)·h + dt·x ⊗ B, y = h·C + D·x,
  /// gated. Returns the output `[B, L, H, P]` and the final state `[B, H, P, N]`.
  public static func ssdRecurrence(_ x: SSDInputs) throws(SubqError) -> (output: [Double], finalState: [Double]) {
    let s = try SSDShape.validate(x, op: "ssd.reference")
    let v = SSDValues(x, s)
    let (nb, nl, nh, np, nn) = (s.batch, s.length, s.heads, s.headDim, s.state)
    var out = [Double](repeating: 0, count: nb * nl * nh * np)
    var final = [Double](repeating: 0, count: nb * nh * np * nn)
    for b in 0..<nb {
      for h in 0..<nh {
        var st = (0..<(np * nn)).map { v.h0?[(b * nh + h) * np * nn + $0] ?? 0 }
        for t in 0..<nl {
          let d = v.dt(b, t, h)
          let decay = Foundation.exp(d * v.a[h])
          for p in 0..<np {
            let xp = v.x[((b * nl + t) * nh + h) * np + p]
            var y = 0.0
            for n in 0..<nn {
              st[p * nn + n] = decay * st[p * nn + n] + d * xp * v.B(b, t, h, n)
              y += st[p * nn + n] * v.C(b, t, h, n)
            }
            out[((b * nl + t) * nh + h) * np + p] = v.finish(y, b, t, h, p)
          }
        }
        for i in 0..<(np * nn) { final[(b * nh + h) * np * nn + i] = st[i] }
      }
    }
    return (out, final)
  }

  /// The SSD output by its quadratic dual form in Double: for each sequence and head the L×L
  /// matrix M[i, j] = (C_i·B_j)·exp(a_{j+1} + … + a_i)·dt_j (j ≤ i) applied to x, plus the
  /// initial state's contribution exp(a_1 + … + a_i)·(h0·C_i). Allocates L×L: for tests only.
  public static func ssdQuadratic(_ x: SSDInputs) throws(SubqError) -> [Double] {
    let s = try SSDShape.validate(x, op: "ssd.reference")
    let v = SSDValues(x, s)
    let (nb, nl, nh, np, nn) = (s.batch, s.length, s.heads, s.headDim, s.state)
    var out = [Double](repeating: 0, count: nb * nl * nh * np)
    for b in 0..<nb {
      for h in 0..<nh {
        var cum = [Double](repeating: 0, count: nl + 1)  // cum[i+1] = a_0 + … + a_i
        for t in 0..<nl { cum[t + 1] = cum[t] + v.dt(b, t, h) * v.a[h] }
        var m = [Double](repeating: 0, count: nl * nl)
        for i in 0..<nl {
          for j in 0...i {
            var cb = 0.0
            for n in 0..<nn { cb += v.C(b, i, h, n) * v.B(b, j, h, n) }
            // Segment sum a_{j+1} + … + a_i, summed directly (the stable segsum).
            var seg = 0.0
            if j < i { for k in (j + 1)...i { seg += v.dt(b, k, h) * v.a[h] } }
            m[i * nl + j] = cb * Foundation.exp(seg) * v.dt(b, j, h)
          }
        }
        for i in 0..<nl {
          for p in 0..<np {
            var y = 0.0
            for j in 0...i { y += m[i * nl + j] * v.x[((b * nl + j) * nh + h) * np + p] }
            if let h0 = v.h0 {
              var c = 0.0
              for n in 0..<nn { c += h0[((b * nh + h) * np + p) * nn + n] * v.C(b, i, h, n) }
              y += Foundation.exp(cum[i + 1]) * c
            }
            out[((b * nl + i) * nh + h) * np + p] = v.finish(y, b, i, h, p)
          }
        }
      }
    }
    return out
  }
}

extension StateSpaceReference {
  /// An MLP memory in Double: layers `[d_{l−1}][d_l]` flattened, SiLU between layers.
  public struct MLP: Sendable {
    public var sizes: [Int]
    public var layers: [[Double]]

    public init(_ weights: [Tensor]) {
      sizes = [weights[0].shape[0]] + weights.map { $0.shape[1] }
      layers = weights.map { $0.scalars.map(Double.init) }
    }

    /// M(x).
    public func callAsFunction(_ x: [Double]) -> [Double] {
      var a = x
      for (l, w) in layers.enumerated() {
        var z = [Double](repeating: 0, count: sizes[l + 1])
        for r in 0..<sizes[l] { for c in 0..<sizes[l + 1] { z[c] += a[r] * w[r * sizes[l + 1] + c] } }
        a = l == layers.count - 1 ? z : z.map(silu)
      }
      return a
    }

    /// ℓ = ‖M(k) − v‖².
    public func loss(_ k: [Double], _ v: [Double]) -> Double {
      zip(self(k), v).reduce(0) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) }
    }

    /// ∇ℓ with respect to every layer, by backpropagation written out.
    public func gradient(_ k: [Double], _ v: [Double]) -> [[Double]] {
      var zs: [[Double]] = [], acts: [[Double]] = [k]
      for (l, w) in layers.enumerated() {
        var z = [Double](repeating: 0, count: sizes[l + 1])
        for r in 0..<sizes[l] { for c in 0..<sizes[l + 1] { z[c] += acts[l][r] * w[r * sizes[l + 1] + c] } }
        zs.append(z)
        acts.append(l == layers.count - 1 ? z : z.map(silu))
      }
      var delta = zip(acts.last!, v).map { 2 * ($0 - $1) }
      var grads = layers.map { [Double](repeating: 0, count: $0.count) }
      for l in stride(from: layers.count - 1, through: 0, by: -1) {
        for r in 0..<sizes[l] { for c in 0..<sizes[l + 1] { grads[l][r * sizes[l + 1] + c] = acts[l][r] * delta[c] } }
        if l > 0 {
          var prev = [Double](repeating: 0, count: sizes[l])
          for r in 0..<sizes[l] {
            var s = 0.0
            for c in 0..<sizes[l + 1] { s += delta[c] * layers[l][r * sizes[l + 1] + c] }
            let x = zs[l - 1][r], sg = 1 / (1 + Foundation.exp(-x))
            prev[r] = s * sg * (1 + x * (1 - sg))
          }
          delta = prev
        }
      }
      return grads
    }
  }

  /// The Titans memory token by token in Double: for each token, the gradient at the weights of
  /// its chunk's start, then S = η·S − θ·∇ℓ and M = (1 − α)·M + S; each token reads the memory
  /// as it was at its chunk's start. Returns the outputs `[L, d_m]` and the final weights and
  /// momentum.
  public static func neuralMemory(keys: Tensor, values: Tensor, queries: Tensor, gates: MemoryGates, weights: [Tensor],
                                  momentum: [Tensor]? = nil, chunk: Int) throws(SubqError) -> (output: [Double], weights: [[Double]], momentum: [[Double]]) {
    _ = try NeuralMemory(chunk: chunk).validate(keys: keys, values: values, queries: queries, gates: gates,
                                               state: MemoryState(weights: weights, momentum: momentum ?? weights.map { Tensor(shape: $0.shape, repeating: 0) }))
    var mem = MLP(weights)
    var s = momentum?.map { $0.scalars.map(Double.init) } ?? mem.layers.map { [Double](repeating: 0, count: $0.count) }
    let (n, d0, dm) = (keys.shape[0], keys.shape[1], values.shape[1])
    let k = keys.scalars.map(Double.init), v = values.scalars.map(Double.init), q = queries.scalars.map(Double.init)
    let th = gates.theta.scalars.map(Double.init), et = gates.eta.scalars.map(Double.init), al = gates.alpha.scalars.map(Double.init)
    var out = [Double](repeating: 0, count: n * dm)
    var start = mem
    for t in 0..<n {
      if t % chunk == 0 { start = mem }
      let y = start(Array(q[(t * d0)..<((t + 1) * d0)]))
      for c in 0..<dm { out[t * dm + c] = y[c] }
      let g = start.gradient(Array(k[(t * d0)..<((t + 1) * d0)]), Array(v[(t * dm)..<((t + 1) * dm)]))
      for l in 0..<mem.layers.count {
        for i in mem.layers[l].indices {
          s[l][i] = et[t] * s[l][i] - th[t] * g[l][i]
          mem.layers[l][i] = (1 - al[t]) * mem.layers[l][i] + s[l][i]
        }
      }
    }
    return (out, mem.layers, s)
  }
}

/// SSD inputs as Doubles with indexing helpers, for the references.
struct SSDValues {
  let s: SSDShape
  let x: [Double], dtRaw: [Double], a: [Double], bm: [Double], cm: [Double]
  let d: [Double]?, z: [Double]?, bias: [Double]?, h0: [Double]?
  let dRank: Int

  init(_ i: SSDInputs, _ s: SSDShape) {
    self.s = s
    x = i.x.scalars.map(Double.init); dtRaw = i.dt.scalars.map(Double.init); a = i.A.scalars.map(Double.init)
    bm = i.B.scalars.map(Double.init); cm = i.C.scalars.map(Double.init)
    d = i.D?.scalars.map(Double.init); dRank = i.D?.rank ?? 0
    z = i.z?.scalars.map(Double.init); bias = i.dtBias?.scalars.map(Double.init); h0 = i.initialState?.scalars.map(Double.init)
  }

  func dt(_ b: Int, _ t: Int, _ h: Int) -> Double {
    let v = dtRaw[(b * s.length + t) * s.heads + h] + (bias?[h] ?? 0)
    return s.softplus ? softplus(v) : v
  }
  func group(_ h: Int) -> Int { h / (s.heads / s.groups) }
  func B(_ b: Int, _ t: Int, _ h: Int, _ n: Int) -> Double { bm[((b * s.length + t) * s.groups + group(h)) * s.state + n] }
  func C(_ b: Int, _ t: Int, _ h: Int, _ n: Int) -> Double { cm[((b * s.length + t) * s.groups + group(h)) * s.state + n] }
  /// Adds D·x and applies the gate.
  func finish(_ y0: Double, _ b: Int, _ t: Int, _ h: Int, _ p: Int) -> Double {
    let i = ((b * s.length + t) * s.heads + h) * s.headDim + p
    var y = y0
    if let d { y += (dRank == 1 ? d[h] : d[h * s.headDim + p]) * x[i] }
    if let z { y *= silu(z[i]) }
    return y
  }
}
