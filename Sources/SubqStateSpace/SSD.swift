import Foundation
import SubqCore
import SubqKernels

/// The inputs of a Mamba-2 SSD scan, in the layout of mamba's `mamba_chunk_scan_combined`.
///
/// Letters: `B` batch, `L` length, `H` heads, `P` head dimension, `G` groups of heads sharing
/// B and C (head h uses group h / (H / G)), `N` state size.
public struct SSDInputs: Sendable {
  /// `[B, L, H, P]`.
  public var x: Tensor
  /// Raw step sizes `[B, L, H]` (before `dtBias` and softplus).
  public var dt: Tensor
  /// One scalar per head, `[H]` (negative for a stable scan).
  public var A: Tensor
  /// `[B, L, G, N]` (or `[B, L, N]` for one group).
  public var B: Tensor
  /// `[B, L, G, N]` (or `[B, L, N]`), grouped like `B`.
  public var C: Tensor
  /// Skip connection `[H]` or `[H, P]`: adds D·x (x not scaled by dt), before the gate.
  public var D: Tensor?
  /// Gate `[B, L, H, P]`: the output is multiplied by SiLU(z).
  public var z: Tensor?
  /// Added to `dt` per head, `[H]`, before the softplus.
  public var dtBias: Tensor?
  /// Whether dt = softplus(dt + bias) (threshold 20).
  public var dtSoftplus: Bool
  /// The state before the first step, `[B, H, P, N]`; zeros when nil.
  public var initialState: Tensor?

  public init(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor? = nil, z: Tensor? = nil,
              dtBias: Tensor? = nil, dtSoftplus: Bool = false, initialState: Tensor? = nil) {
    self.x = x
    self.dt = dt
    self.A = A
    self.B = B
    self.C = C
    self.D = D
    self.z = z
    self.dtBias = dtBias
    self.dtSoftplus = dtSoftplus
    self.initialState = initialState
  }
}

/// The result of an SSD scan.
public struct SSDResult: Sendable {
  /// `[B, L, H, P]`.
  public var output: Tensor
  /// The state after the last step, `[B, H, P, N]`.
  public var finalState: Tensor
}

/// Mamba-2's state space duality (SSD) scan, chunked: quadratic attention-like form inside a
/// chunk, state passing between chunks.
///
/// Per head h with a scalar A_h, and dt = softplus(dt + bias) (or dt + bias):
///
///     h[t] = exp(dt[t]·A_h)·h[t−1] + dt[t]·x[t] ⊗ B[t]         (state [P, N])
///     y[t] = h[t]·C[t] + D·x[t],   out[t] = y[t]·SiLU(z[t])
///
/// computed as mamba's `ssd_minimal_discrete` (Dao & Gu, *Transformers are SSMs*, 2024, Listing
/// 1) on X = x·dt and a = A·dt: inside a chunk of Q steps,
/// `Y_diag[i] = Σ_{j≤i} (C_i·B_j)·exp(a_{j+1} + … + a_i)·X_j`; the state entering the chunk adds
/// `Y_off[i] = exp(a_1 + … + a_i)·(state·C_i)`; the state leaving it is
/// `exp(Σa)·state + Σ_j exp(a_{j+1} + … + a_Q)·X_j ⊗ B_j`.
///
/// Differences from the minimal reference: any length (the last chunk is shorter, no padding);
/// the inter-chunk recurrence is a sequential pass (as mamba's Triton `state_passing`), not the
/// (L/Q)² matrix; the segment sums are differences of running sums kept in double-float
/// (hi + lo) so they stay exact to rounding (the stable `segsum`) without the Q² cumulative sums;
/// C·Bᵀ of a chunk is computed once for all heads of a group processed together.
///
/// Work is parallel over (batch, group, block of heads); each worker walks the chunks in order.
///
/// - Complexity: O(B·H·L·(Q·P + N·P)) time plus O(B·G·L·Q·N) for C·Bᵀ; extra memory
///   O(threads·(Q² + Q·P + P·N)).
public struct SSD: Sendable {
  /// Steps per chunk.
  public let chunk: Int
  /// Worker threads (default `Parallel.defaultThreads`).
  public let threads: Int?

  static let op = "ssd"

  /// - Parameter chunk: steps per chunk, 1...1024 (mamba-2 uses 256; 64 suits CPU caches).
  public init(chunk: Int = 64, threads: Int? = nil) throws(SubqError) {
    guard chunk >= 1, chunk <= 1024 else { throw .argument(op: Self.op, name: "chunk", value: "\(chunk)", reason: "must be in 1...1024") }
    if let threads, threads < 1 { throw .argument(op: Self.op, name: "threads", value: "\(threads)", reason: "must be at least 1") }
    self.chunk = chunk
    self.threads = threads
  }

  /// Runs the scan.
  /// - Throws: ``SubqError`` for bad ranks or shapes, groups that do not divide the heads, or
  ///   non-finite inputs.
  public func callAsFunction(_ inputs: SSDInputs) throws(SubqError) -> SSDResult {
    let s = try SSDShape.validate(inputs, op: Self.op)
    let threads = self.threads ?? Parallel.defaultThreads
    var out = Tensor(shape: [s.batch, s.length, s.heads, s.headDim]) { _ in }
    var final = Tensor(shape: [s.batch, s.heads, s.headDim, s.state]) { _ in }
    let perGroup = s.heads / s.groups
    // Blocks of heads: enough items for the cores, as few C·Bᵀ recomputations as possible.
    let blocks = min(perGroup, max(1, (3 * threads + s.batch * s.groups - 1) / (s.batch * s.groups)))
    let headsPerBlock = (perGroup + blocks - 1) / blocks
    let items = s.batch * s.groups * blocks
    let Q = min(chunk, max(1, s.length))
    let plan = SSDPlan(s: s, Q: Q)
    let workers = Parallel.workers(for: items, threads: threads)
    let scratch = AlignedBuffer<Float>(count: workers * plan.scratchFloats)
    let sc = SendablePointer(scratch.pointer)
    let dSkip = inputs.D.map { d in d.rank == 1 ? d.scalars.flatMap { Array(repeating: $0, count: s.headDim) } : d.scalars }
    let bias = inputs.dtBias?.scalars
    let a = inputs.A.scalars
    inputs.x.withUnsafeBufferPointer { xp in
      inputs.dt.withUnsafeBufferPointer { dtp in
        inputs.B.withUnsafeBufferPointer { bp in
          inputs.C.withUnsafeBufferPointer { cp in
            out.withUnsafeMutableBufferPointer { op in
              final.withUnsafeMutableBufferPointer { fp in
                withOptional(inputs.z) { zp in
                  withOptional(inputs.initialState) { ip in
                    withOptionalArray(dSkip) { dp in
                      withOptionalArray(bias) { biasp in
                        a.withUnsafeBufferPointer { ap in
                          let k = SSDKernel(
                            plan: plan, x: xp.baseAddress!, dt: dtp.baseAddress!, B: bp.baseAddress!, C: cp.baseAddress!,
                            z: zp, initial: ip, D: dp, bias: biasp, A: ap.baseAddress!, out: op.baseAddress!, final: fp.baseAddress!)
                          Parallel.forEach(items, threads: threads) { item, worker in
                            let b = item / (s.groups * blocks)
                            let g = (item / blocks) % s.groups
                            let h0 = g * perGroup + (item % blocks) * headsPerBlock
                            let h1 = min(g * perGroup + perGroup, h0 + headsPerBlock)
                            if h0 < h1 { k.run(b: b, g: g, heads: h0..<h1, scratch: sc.pointer + worker * plan.scratchFloats) }
                          }
                        }
                      }
                    }
                  }
                }
              }
            }
          }
        }
      }
    }
    withExtendedLifetime(scratch) {}
    return SSDResult(output: out, finalState: final)
  }
}

/// Validated SSD geometry.
struct SSDShape: Sendable {
  var batch: Int, length: Int, heads: Int, headDim: Int, groups: Int, state: Int
  var softplus: Bool

  static func validate(_ x: SSDInputs, op: String) throws(SubqError) -> SSDShape {
    guard x.x.rank == 4 else { throw .shape(op: op, tensor: "x", shape: x.x.shape, reason: "expected rank 4 [B, L, H, P]") }
    let (nb, nl, nh, np) = (x.x.shape[0], x.x.shape[1], x.x.shape[2], x.x.shape[3])
    if nb < 1 { throw .shape(op: op, tensor: "x", shape: x.x.shape, reason: "empty batch") }
    if nh < 1 || np < 1 { throw .shape(op: op, tensor: "x", shape: x.x.shape, reason: "needs at least one head of dimension ≥ 1") }
    if x.dt.shape != [nb, nl, nh] { throw .shape(op: op, tensor: "dt", shape: x.dt.shape, reason: "expected [B, L, H] = [\(nb), \(nl), \(nh)]") }
    if x.A.shape != [nh] { throw .shape(op: op, tensor: "A", shape: x.A.shape, reason: "expected one scalar per head, [H] = [\(nh)]") }
    func groups(_ t: Tensor, _ name: String) throws(SubqError) -> (Int, Int) {
      if t.rank == 3, t.shape[0] == nb, t.shape[1] == nl, t.shape[2] >= 1 { return (1, t.shape[2]) }
      guard t.rank == 4, t.shape[0] == nb, t.shape[1] == nl, t.shape[2] >= 1, t.shape[3] >= 1 else {
        throw .shape(op: op, tensor: name, shape: t.shape, reason: "expected [B, L, G, N] = [\(nb), \(nl), G, N] (or [B, L, N])")
      }
      guard nh % t.shape[2] == 0 else {
        throw .shape(op: op, tensor: name, shape: t.shape, reason: "groups (\(t.shape[2])) must divide the heads (\(nh))")
      }
      return (t.shape[2], t.shape[3])
    }
    let (gb, nn) = try groups(x.B, "B")
    let (gc, nc) = try groups(x.C, "C")
    if gc != gb || nc != nn { throw .shape(op: op, tensor: "C", shape: x.C.shape, reason: "must have B's groups and state size (\(x.B.shape))") }
    if let d = x.D, d.shape != [nh] && d.shape != [nh, np] {
      throw .shape(op: op, tensor: "D", shape: d.shape, reason: "expected [H] = [\(nh)] or [H, P] = [\(nh), \(np)]")
    }
    if let z = x.z, z.shape != x.x.shape { throw .shape(op: op, tensor: "z", shape: z.shape, reason: "must match x's shape \(x.x.shape)") }
    if let b = x.dtBias, b.shape != [nh] { throw .shape(op: op, tensor: "dt bias", shape: b.shape, reason: "expected [H] = [\(nh)]") }
    if let s = x.initialState, s.shape != [nb, nh, np, nn] {
      throw .shape(op: op, tensor: "initial state", shape: s.shape, reason: "expected [B, H, P, N] = [\(nb), \(nh), \(np), \(nn)]")
    }
    let all: [(Tensor?, String)] = [(x.x, "x"), (x.dt, "dt"), (x.A, "A"), (x.B, "B"), (x.C, "C"), (x.D, "D"), (x.z, "z"),
                                    (x.dtBias, "dt bias"), (x.initialState, "initial state")]
    for (t, name) in all {
      if let t, let bad = t.firstNonFinite() {
        throw .nonFinite(op: op, tensor: name, index: t.index(ofFlat: bad), value: SubqError.describe(t[flat: bad]))
      }
    }
    return SSDShape(batch: nb, length: nl, heads: nh, headDim: np, groups: gb, state: nn, softplus: x.dtSoftplus)
  }
}

/// Chunk size and scratch layout of one SSD call.
struct SSDPlan: Sendable {
  let s: SSDShape
  let Q: Int
  /// Scratch regions (floats): C·Bᵀ [Q][Q], weights [Q], X·dt [Q][P], state [P][N], dt, hi, lo,
  /// exp(cumsum) and row vectors [Q] each.
  let cbOff = 0
  var wOff: Int { cbOff + round16(Q * Q) }
  var xsOff: Int { wOff + round16(Q) }
  var stOff: Int { xsOff + round16(Q * s.headDim) }
  var vecOff: Int { stOff + round16(s.headDim * s.state) }
  var scratchFloats: Int { vecOff + 5 * round16(Q) + round16(s.headDim) + 64 }
  func round16(_ n: Int) -> Int { (n + 15) / 16 * 16 }
}

/// Raw pointers of one SSD call.
struct SSDKernel: @unchecked Sendable {
  let plan: SSDPlan
  let x: UnsafePointer<Float>, dt: UnsafePointer<Float>, B: UnsafePointer<Float>, C: UnsafePointer<Float>
  let z: UnsafePointer<Float>?, initial: UnsafePointer<Float>?
  /// D expanded to [H][P], or nil.
  let D: UnsafePointer<Float>?
  let bias: UnsafePointer<Float>?
  let A: UnsafePointer<Float>
  let out: UnsafeMutablePointer<Float>, final: UnsafeMutablePointer<Float>

  /// Runs heads `heads` (all of group `g`) of batch entry `b` through every chunk.
  func run(b: Int, g: Int, heads: Range<Int>, scratch: UnsafeMutablePointer<Float>) {
    let s = plan.s
    let (nl, nh, np, nn, ng) = (s.length, s.heads, s.headDim, s.state, s.groups)
    let Q = plan.Q
    let cb = scratch + plan.cbOff, w = scratch + plan.wOff, xs = scratch + plan.xsOff
    let vec = scratch + plan.vecOff
    let r16 = plan.round16(Q)
    let dts = vec, hi = vec + r16, lo = vec + 2 * r16, ecs = vec + 3 * r16, yrow = vec + 5 * r16
    let states = UnsafeMutablePointer<Float>.allocate(capacity: max(1, heads.count * np * nn))
    defer { states.deallocate() }
    // Initial states of the block's heads.
    for (i, h) in heads.enumerated() {
      let st = states + i * np * nn
      if let initial {
        st.update(from: initial + ((b * nh + h) * np) * nn, count: np * nn)
      } else {
        st.update(repeating: 0, count: np * nn)
      }
    }
    let rowBC = ng * nn  // stride between time steps in B and C
    var t0 = 0
    while t0 < nl {
      let q = min(Q, nl - t0)
      let bBase = B + ((b * nl + t0) * ng + g) * nn
      let cBase = C + ((b * nl + t0) * ng + g) * nn
      // C·Bᵀ for the chunk, lower triangle (shared by the heads of the group).
      for i in 0..<q {
        let ci = cBase + i * rowBC
        for j in 0...i { cb[i * Q + j] = dot(ci, bBase + j * rowBC, nn) }
      }
      for (hi_, h) in heads.enumerated() {
        let st = states + hi_ * np * nn
        // dt, X = x·dt, and the running sums of a = A·dt in double-float.
        var acc = 0.0
        let ah = Double(A[h])
        for i in 0..<q {
          let t = t0 + i
          var d = dt[(b * nl + t) * nh + h] + (bias?[h] ?? 0)
          if s.softplus { d = Float(softplus(Double(d))) }
          dts[i] = d
          acc += ah * Double(d)
          let high = Float(acc)
          hi[i] = high
          lo[i] = Float(acc - Double(high))
          ecs[i] = Float(Foundation.exp(acc))
          let xt = x + ((b * nl + t) * nh + h) * np
          let xr = xs + i * np
          for p in 0..<np { xr[p] = xt[p] * d }
        }
        // Outputs.
        for i in 0..<q {
          // Y_diag: weights CB[i, j]·exp(S_i − S_j) over j ≤ i, then Σ_j w_j X_j.
          decayRow(w, cb + i * Q, hi, lo, i: i)
          for p in 0..<np { yrow[p] = 0 }
          for j in 0...i { axpy(w[j], xs + j * np, yrow, np) }
          // Y_off: exp(S_i)·(state·C_i).
          let ci = cBase + i * rowBC
          let e = ecs[i]
          let t = t0 + i
          let xt = x + ((b * nl + t) * nh + h) * np
          let o = out + ((b * nl + t) * nh + h) * np
          for p in 0..<np {
            var y = fmadd(yrow[p], e, dot(st + p * nn, ci, nn))
            if let D { y = fmadd(y, D[h * np + p], xt[p]) }
            o[p] = y
          }
          if let z {
            let zt = z + ((b * nl + t) * nh + h) * np
            gate(o, zt, np)
          }
        }
        // State leaving the chunk: exp(S_last)·state + Σ_j exp(S_last − S_j)·X_j ⊗ B_j.
        let last = q - 1
        let total = ecs[last]
        scale(st, total, np * nn)
        for j in 0..<q {
          let diff = (hi[last] - hi[j]) + (lo[last] - lo[j])
          let wj = Float(Foundation.exp(Double(diff)))
          let bj = bBase + j * rowBC
          let xr = xs + j * np
          for p in 0..<np { axpy(wj * xr[p], bj, st + p * nn, nn) }
        }
      }
      t0 += q
    }
    for (i, h) in heads.enumerated() {
      (final + (b * nh + h) * np * nn).update(from: states + i * np * nn, count: np * nn)
    }
  }

  /// w[j] = cb[j]·exp((hi_i − hi_j) + (lo_i − lo_j)) for j ≤ i.
  @inline(__always)
  func decayRow(_ w: UnsafeMutablePointer<Float>, _ cb: UnsafePointer<Float>, _ hi: UnsafePointer<Float>,
                _ lo: UnsafePointer<Float>, i: Int) {
    let W = Lane.scalarCount
    let hI = Lane(repeating: hi[i]), lI = Lane(repeating: lo[i])
    var j = 0
    while j + W <= i + 1 {
      let diff = (hI - loadLane(hi + j)) + (lI - loadLane(lo + j))
      storeLane(loadLane(cb + j) * exp2Clamped(diff * Lane(repeating: log2e)), w + j)
      j += W
    }
    while j <= i {
      let diff = (hi[i] - hi[j]) + (lo[i] - lo[j])
      w[j] = cb[j] * Float(Foundation.exp(Double(diff)))
      j += 1
    }
  }

  /// o[p] *= SiLU(z[p]).
  @inline(__always)
  func gate(_ o: UnsafeMutablePointer<Float>, _ z: UnsafePointer<Float>, _ n: Int) {
    let W = Lane.scalarCount
    var p = 0
    while p + W <= n {
      storeLane(loadLane(o + p) * siluLane(loadLane(z + p)), o + p)
      p += W
    }
    while p < n {
      o[p] *= Float(silu(Double(z[p])))
      p += 1
    }
  }
}
