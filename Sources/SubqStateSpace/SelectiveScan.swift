import Foundation
import SubqCore
import SubqKernels
#if SUBQ_AVX512
import SubqScanC
#endif

/// The inputs of a selective scan, in the layout of mamba's `selective_scan_ref`.
///
/// Letters: `B` batch, `D` channels, `L` length, `N` state size per channel, `G` groups of
/// channels sharing one B (or C) sequence.
public struct SelectiveScanInputs: Sendable {
  /// The input sequence, `[B, D, L]`.
  public var u: Tensor
  /// The raw step sizes, `[B, D, L]` (before `deltaBias` and softplus).
  public var delta: Tensor
  /// The state matrix, `[D, N]` (negative for a stable scan; mamba uses −exp(A_log)).
  public var A: Tensor
  /// The input projection, `[B, N, L]` (one for all channels) or `[B, G, N, L]` (channel d
  /// uses group d / (D / G)).
  public var B: Tensor
  /// The output projection, `[B, N, L]` or `[B, G, N, L]`, grouped like `B` (its own G).
  public var C: Tensor
  /// Skip connection `[D]`: adds D_d·u to the output, before the gate.
  public var D: Tensor?
  /// Gate `[B, D, L]`: the output is multiplied by SiLU(z).
  public var z: Tensor?
  /// Added to `delta` per channel, `[D]`, before the softplus.
  public var deltaBias: Tensor?
  /// Whether Δ = softplus(delta + bias) (threshold 20, as PyTorch) instead of delta + bias.
  public var deltaSoftplus: Bool
  /// The state before the first step, `[B, D, N]`; zeros when nil.
  public var initialState: Tensor?

  public init(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor? = nil, z: Tensor? = nil,
    deltaBias: Tensor? = nil, deltaSoftplus: Bool = false, initialState: Tensor? = nil
  ) {
    self.u = u
    self.delta = delta
    self.A = A
    self.B = B
    self.C = C
    self.D = D
    self.z = z
    self.deltaBias = deltaBias
    self.deltaSoftplus = deltaSoftplus
    self.initialState = initialState
  }
}

/// The result of a selective scan.
public struct SelectiveScanResult: Sendable {
  /// `[B, D, L]`.
  public var output: Tensor
  /// The state after the last step, `[B, D, N]` (mamba's `last_state`).
  public var lastState: Tensor
}

/// The Mamba selective scan (S6), forward, on all cores.
///
/// For each batch entry b, channel d and state index n, with Δ = softplus(delta + bias) (or
/// delta + bias):
///
///     h[t] = exp(Δ[t]·A[d,n]) · h[t−1] + Δ[t]·B[n,t]·u[t]        (ZOH for A, Euler for B)
///     y[t] = Σₙ C[n,t]·h[t]  +  D[d]·u[t]
///     out[t] = y[t] · SiLU(z[t])
///
/// exactly as mamba's `selective_scan_ref` (Gu & Dao, *Mamba: Linear-Time Sequence Modeling with
/// Selective State Spaces*, 2023), plus an optional initial state. The state is never
/// materialized over time: `exp(Δ·A)` and `Δ·B·u` are computed on the fly (the reference builds
/// `[B, D, L, N]` tensors of them).
///
/// **How it runs.** Channels are independent, so the scan is parallel over (batch, channel
/// block); inside a channel the state vector of N floats is the SIMD vector (N is padded to the
/// lane width), the per-step scalars (softplus, Δ·u, SiLU of the gate) are computed 16 (or 8)
/// steps at a time, and so are the outputs C·h. On AVX-512 builds with N ≤ 16 a block of 16
/// steps runs in C intrinsics (`SubqScanC`: a vscalefps exponential, a transposing shuffle tree
/// for the 16 sums, reciprocals instead of divisions), because Swift cannot express those
/// instructions; elsewhere the same steps run in Swift SIMD. Time is cut into
/// tiles so the transposed B and C of a tile stay in cache while every channel of a block walks
/// it. When there are too few channels for the cores (`B·D` small), the sequence is also cut into
/// chunks: each chunk is scanned from a zero state to get its final state, the chunk states are
/// carried serially (h_in[c+1] = exp(A·ΣΔ_c)·h_in[c] + h_local[c]), and each chunk is scanned
/// again from its true initial state writing the outputs (the fix-up, done as a rescan so the
/// output is written once).
///
/// Non-finite inputs are rejected (``SubqError/nonFinite(op:tensor:index:value:)``): A, B, C, D,
/// the bias and the initial state are checked up front, u, delta and z inside the kernel, and the
/// result is discarded if any was found.
///
/// - Complexity: O(B·D·L·N) time; extra memory O(B·G·L·N) for the transposed B and C, plus
///   O(B·D·N·chunks) in chunked mode.
public struct SelectiveScan: Sendable {
  /// How the work is split over cores.
  public enum Parallelism: Sendable, Equatable {
    /// Channels when there are enough (B·D ≥ 4 × threads), channels and sequence chunks otherwise.
    case automatic
    /// Over (batch, channel) only.
    case channels
    /// Over (batch, channel, chunk of `length` steps), with the carry and fix-up passes.
    case sequenceChunks(length: Int)
  }

  /// How the work is split.
  public var parallelism: Parallelism
  /// Worker threads (default: `Parallel.defaultThreads`).
  public var threads: Int?

  public init(parallelism: Parallelism = .automatic, threads: Int? = nil) {
    self.parallelism = parallelism
    self.threads = threads
  }

  static let op = "selective-scan"

  /// Runs the scan.
  /// - Throws: ``SubqError`` for bad ranks or shapes, a group count that does not divide D, a
  ///   bad chunk length or thread count, or non-finite inputs.
  public func callAsFunction(_ inputs: SelectiveScanInputs) throws(SubqError) -> SelectiveScanResult {
    let shape = try ScanShape.validate(inputs, op: Self.op)
    let threads = self.threads ?? Parallel.defaultThreads
    if threads < 1 { throw .argument(op: Self.op, name: "threads", value: "\(threads)", reason: "must be at least 1") }
    var chunk: Int? = nil
    switch parallelism {
    case .channels: break
    case .sequenceChunks(let length):
      if length < 1 { throw .argument(op: Self.op, name: "chunk length", value: "\(length)", reason: "must be at least 1") }
      chunk = length
    case .automatic:
      let lanes = shape.batch * shape.channels
      if lanes < 4 * threads && shape.length >= 2048 {
        let pieces = (4 * threads + lanes - 1) / lanes
        chunk = max(1024, (shape.length + pieces - 1) / pieces)
      }
    }
    return try ScanRunner(shape: shape, inputs: inputs, threads: threads).run(chunk: chunk)
  }

  /// One decoding step: advances `state` by one token and returns that token's output.
  ///
  /// Shapes: `state` `[B, D, N]` (updated in place), `u`, `delta`, `z` `[B, D]`, `A` `[D, N]`,
  /// `B` and `C` `[B, N]` or `[B, G, N]`, `D` and `deltaBias` `[D]`. Returns `[B, D]`. Running
  /// the steps of a sequence one by one gives the same outputs and final state as the full scan
  /// (mamba's `selective_state_update`).
  ///
  /// - Complexity: O(B·D·N).
  public static func step(
    state: inout Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor? = nil,
    z: Tensor? = nil, deltaBias: Tensor? = nil, deltaSoftplus: Bool = false
  ) throws(SubqError) -> Tensor {
    let op = "selective-scan.step"
    guard state.rank == 3 else { throw .shape(op: op, tensor: "state", shape: state.shape, reason: "expected rank 3 [B, D, N]") }
    let (nb, nd, nn) = (state.shape[0], state.shape[1], state.shape[2])
    // Reuse the scan's validation on a length-1 view.
    let inputs = SelectiveScanInputs(
      u: try reshape(u, [nb, nd, 1], op: op, name: "u", expect: "[B, D]"),
      delta: try reshape(delta, [nb, nd, 1], op: op, name: "delta", expect: "[B, D]"),
      A: A,
      B: try reshape(B, B.rank == 2 ? [B.shape[0], B.shape[1], 1] : B.shape + [1], op: op, name: "B", expect: "[B, N] or [B, G, N]"),
      C: try reshape(C, C.rank == 2 ? [C.shape[0], C.shape[1], 1] : C.shape + [1], op: op, name: "C", expect: "[B, N] or [B, G, N]"),
      D: D, z: try z.map { (t: Tensor) throws(SubqError) in try reshape(t, [nb, nd, 1], op: op, name: "z", expect: "[B, D]") },
      deltaBias: deltaBias, deltaSoftplus: deltaSoftplus, initialState: state)
    let s = try ScanShape.validate(inputs, op: op)
    guard s.state == nn else { throw .shape(op: op, tensor: "state", shape: state.shape, reason: "state size \(nn) differs from A's \(s.state)") }
    if let bad = u.firstNonFinite() { throw .nonFinite(op: op, tensor: "u", index: u.index(ofFlat: bad), value: SubqError.describe(u[flat: bad])) }
    if let bad = delta.firstNonFinite() { throw .nonFinite(op: op, tensor: "delta", index: delta.index(ofFlat: bad), value: SubqError.describe(delta[flat: bad])) }
    if let z, let bad = z.firstNonFinite() { throw .nonFinite(op: op, tensor: "z", index: z.index(ofFlat: bad), value: SubqError.describe(z[flat: bad])) }

    var out = Tensor(shape: [nb, nd], repeating: 0)
    let a = A.scalars, bv = B.scalars, cv = C.scalars, uv = u.scalars, dv = delta.scalars
    let skip = D?.scalars, zv = z?.scalars, bias = deltaBias?.scalars
    let gB = nd / s.groupsB, gC = nd / s.groupsC
    state.withUnsafeMutableBufferPointer { st in
      out.withUnsafeMutableBufferPointer { o in
        for b in 0..<nb {
          for d in 0..<nd {
            var dt = dv[b * nd + d] + (bias?[d] ?? 0)
            if deltaSoftplus { dt = Float(softplus(Double(dt))) }
            let x = uv[b * nd + d]
            let bRow = (b * s.groupsB + d / gB) * nn, cRow = (b * s.groupsC + d / gC) * nn
            let h = st.baseAddress! + (b * nd + d) * nn
            var y: Float = 0
            for n in 0..<nn {
              let dA = Float(Foundation.exp(Double(dt * a[d * nn + n])))
              h[n] = fmadd(dt * bv[bRow + n] * x, h[n], dA)
              y = fmadd(y, h[n], cv[cRow + n])
            }
            if let skip { y = fmadd(y, skip[d], x) }
            if let zv { y *= Float(silu(Double(zv[b * nd + d]))) }
            o[b * nd + d] = y
          }
        }
      }
    }
    return out
  }

  static func reshape(_ t: Tensor, _ shape: [Int], op: String, name: String, expect: String) throws(SubqError) -> Tensor {
    guard t.count == shape.reduce(1, *), t.rank + 1 == shape.count else {
      throw .shape(op: op, tensor: name, shape: t.shape, reason: "expected \(expect) matching the state")
    }
    return try t.reshaped(shape)
  }
}

/// The validated geometry of a selective scan.
struct ScanShape: Sendable {
  var batch: Int, channels: Int, length: Int, state: Int
  var groupsB: Int, groupsC: Int
  var hasD: Bool, hasZ: Bool, hasBias: Bool, softplus: Bool, hasInitial: Bool

  static func validate(_ x: SelectiveScanInputs, op: String) throws(SubqError) -> ScanShape {
    guard x.u.rank == 3 else { throw .shape(op: op, tensor: "u", shape: x.u.shape, reason: "expected rank 3 [B, D, L]") }
    let (nb, nd, nl) = (x.u.shape[0], x.u.shape[1], x.u.shape[2])
    if nb < 1 { throw .shape(op: op, tensor: "u", shape: x.u.shape, reason: "empty batch") }
    if nd < 1 { throw .shape(op: op, tensor: "u", shape: x.u.shape, reason: "no channels") }
    if x.delta.shape != x.u.shape { throw .shape(op: op, tensor: "delta", shape: x.delta.shape, reason: "must match u's shape \(x.u.shape)") }
    guard x.A.rank == 2, x.A.shape[0] == nd, x.A.shape[1] >= 1 else {
      throw .shape(op: op, tensor: "A", shape: x.A.shape, reason: "expected [D, N] = [\(nd), N] with N ≥ 1")
    }
    let nn = x.A.shape[1]
    func groups(_ t: Tensor, _ name: String) throws(SubqError) -> Int {
      switch t.rank {
      case 3:
        guard t.shape == [nb, nn, nl] else { throw .shape(op: op, tensor: name, shape: t.shape, reason: "expected [B, N, L] = [\(nb), \(nn), \(nl)] (or grouped [B, G, N, L])") }
        return 1
      case 4:
        let g = t.shape[1]
        guard t.shape[0] == nb, t.shape[2] == nn, t.shape[3] == nl, g >= 1 else {
          throw .shape(op: op, tensor: name, shape: t.shape, reason: "expected [B, G, N, L] = [\(nb), G, \(nn), \(nl)]")
        }
        guard nd % g == 0 else { throw .shape(op: op, tensor: name, shape: t.shape, reason: "groups (\(g)) must divide the channels (\(nd))") }
        return g
      default:
        throw .shape(op: op, tensor: name, shape: t.shape, reason: "expected [B, N, L] or [B, G, N, L] (a time-invariant [D, N] \(name) is not supported)")
      }
    }
    let gb = try groups(x.B, "B"), gc = try groups(x.C, "C")
    if let d = x.D, d.shape != [nd] { throw .shape(op: op, tensor: "D", shape: d.shape, reason: "expected [D] = [\(nd)]") }
    if let z = x.z, z.shape != x.u.shape { throw .shape(op: op, tensor: "z", shape: z.shape, reason: "must match u's shape \(x.u.shape)") }
    if let b = x.deltaBias, b.shape != [nd] { throw .shape(op: op, tensor: "delta bias", shape: b.shape, reason: "expected [D] = [\(nd)]") }
    if let s = x.initialState, s.shape != [nb, nd, nn] { throw .shape(op: op, tensor: "initial state", shape: s.shape, reason: "expected [B, D, N] = [\(nb), \(nd), \(nn)]") }
    for (t, name) in [(x.A, "A"), (x.D, "D"), (x.deltaBias, "delta bias"), (x.initialState, "initial state")] {
      if let t, let bad = t.firstNonFinite() {
        throw .nonFinite(op: op, tensor: name, index: t.index(ofFlat: bad), value: SubqError.describe(t[flat: bad]))
      }
    }
    return ScanShape(batch: nb, channels: nd, length: nl, state: nn, groupsB: gb, groupsC: gc,
                     hasD: x.D != nil, hasZ: x.z != nil, hasBias: x.deltaBias != nil, softplus: x.deltaSoftplus,
                     hasInitial: x.initialState != nil)
  }
}

// MARK: - Kernel

/// Compile-time switches for the inner loop.
protocol ScanExp { static func exp2(_ x: Lane) -> Lane }
enum DecayExp: ScanExp { @inline(__always) static func exp2(_ x: Lane) -> Lane { exp2Decay(x) } }
enum AnyExp: ScanExp { @inline(__always) static func exp2(_ x: Lane) -> Lane { exp2Clamped(x) } }
protocol ScanFlag { static var on: Bool { get } }
enum Yes: ScanFlag { static var on: Bool { true } }
enum No: ScanFlag { static var on: Bool { false } }

/// Raw pointers and geometry of one scan call; shared read-only by the workers.
struct ScanKernel: @unchecked Sendable {
  let s: ScanShape
  /// Padded state size (a multiple of the lane width) and vectors per state.
  let npad: Int, nv: Int
  let u: UnsafePointer<Float>, delta: UnsafePointer<Float>, z: UnsafePointer<Float>?
  let out: UnsafeMutablePointer<Float>
  /// A·log₂e, `[D][npad]`, zero-padded.
  let a2: UnsafePointer<Float>
  /// B and C transposed: `[B][G][L][npad]`, zero-padded.
  let bt: UnsafePointer<Float>, ct: UnsafePointer<Float>
  let skip: UnsafePointer<Float>?, bias: UnsafePointer<Float>?
  /// Whether every A of the channel is ≤ 0 (`[D]`), so exp(Δ·A) ≤ 1 when Δ ≥ 0.
  let stable: UnsafePointer<Bool>
  /// Floats of per-worker scratch one `scan` call needs.
  static var scratchFloats: Int { 5 * Lane.scalarCount + (Lane.scalarCount + 1) * Lane.scalarCount + 16 }

  /// Scans steps `l0..<l1` of channel `d` of batch entry `b`, starting from (and leaving the
  /// final state in) `state` (`npad` floats). Writes the outputs when `write`. Returns ΣΔ over
  /// the steps, and whether a non-finite u, delta or z was read.
  @inline(__always)
  func scan(b: Int, d: Int, l0: Int, l1: Int, state: UnsafeMutablePointer<Float>, write: Bool,
            scratch: UnsafeMutablePointer<Float>) -> (sumDelta: Float, nonFinite: Bool) {
    let W = Lane.scalarCount
    let L = s.length
    let row = (b * s.channels + d) * L
    let uRow = u + row, dRow = delta + row
    let zRow = z.map { $0 + row }
    let oRow = out + row
    let bRow = bt + (b * s.groupsB + d / (s.channels / s.groupsB)) * L * npad
    let cRow = ct + (b * s.groupsC + d / (s.channels / s.groupsC)) * L * npad
    let aRow = UnsafeRawPointer(a2 + d * npad).assumingMemoryBound(to: Lane.self)
    let st = UnsafeMutableRawPointer(state).assumingMemoryBound(to: Lane.self)
    let sd = scratch, sdu = scratch + W
    let p = UnsafeMutableRawPointer(scratch + 2 * W).assumingMemoryBound(to: Lane.self)
    #if SUBQ_AVX512
    let uo = scratch + 2 * W + (W + 1) * W, gt = uo + W, nfp = gt + W
    nfp.update(repeating: 0, count: W)
    #endif
    let dSkip = Lane(repeating: skip?[d] ?? 0)
    #if !SUBQ_AVX512
    let dBias = Lane(repeating: bias?[d] ?? 0)
    let iota = laneIota
    #endif
    let aStable = stable[d]
    var nf = Lane()
    var sum = Lane()
    var l = l0
    while l < l1 {
      let c = min(W, l1 - l)
      var dv: Lane, uv: Lane, zv = Lane()
      #if SUBQ_AVX512
      // Loads, softplus, Δ·u, the gate and the finiteness check in C (no divisions).
      subq_scan_prep16(dRow + l, uRow + l, zRow.map { $0 + l }, c, bias?[d] ?? 0, s.softplus ? 1 : 0, sd, sdu, uo, gt, nfp)
      dv = loadLane(sd)
      uv = loadLane(uo)
      zv = loadLane(gt)  // SiLU(z) already
      #else
      if c == W {
        dv = loadLane(dRow + l)
        uv = loadLane(uRow + l)
        if let zRow { zv = loadLane(zRow + l) }
      } else {
        dv = Lane(); uv = Lane()
        for j in 0..<c { dv[j] = dRow[l + j]; uv[j] = uRow[l + j]; if let zRow { zv[j] = zRow[l + j] } }
      }
      // x·0 is 0 for finite x and NaN otherwise.
      nf = fmadd(nf, dv + uv + zv, Lane())
      dv += dBias
      if s.softplus { dv = softplusLane(dv) }
      if c < W { dv = dv.replacing(with: 0, where: iota .>= Lane(repeating: Float(c))) }
      storeLane(dv, sd)
      storeLane(dv * uv, sdu)
      if zRow != nil { zv = siluLane(zv) }
      #endif
      sum += dv
      let fast = aStable && !any(dv .< 0)
      let bAt = bRow + l * npad, cAt = cRow + l * npad
      if nv == 1 && c == W && write {
        // The common case: a full block with a one-vector state.
        #if SUBQ_AVX512
        // The C block (vscalefps exponential, shuffle-tree sums) handles any argument.
        let ys = UnsafeMutableRawPointer(p).assumingMemoryBound(to: Float.self)
        subq_scan_block16(state, a2 + d * npad, sd, sdu, bAt, cAt, npad, ys)
        let y = loadLane(ys)
        #else
        let (y, h) = fast ? fullBlock(DecayExp.self, st[0], aRow[0], sd, sdu, bAt, cAt, p)
          : fullBlock(AnyExp.self, st[0], aRow[0], sd, sdu, bAt, cAt, p)
        st[0] = h
        #endif
        var out = fmadd(y, dSkip, uv)
        if zRow != nil { out *= zv }
        storeLane(out, oRow + l)
        l += c
        continue
      } else if nv == 1 {
        var h = st[0]
        switch (fast, write) {
        case (true, true): steps1(DecayExp.self, Yes.self, &h, aRow[0], sd, sdu, bAt, cAt, c, p)
        case (true, false): steps1(DecayExp.self, No.self, &h, aRow[0], sd, sdu, bAt, cAt, c, p)
        case (false, true): steps1(AnyExp.self, Yes.self, &h, aRow[0], sd, sdu, bAt, cAt, c, p)
        case (false, false): steps1(AnyExp.self, No.self, &h, aRow[0], sd, sdu, bAt, cAt, c, p)
        }
        st[0] = h
      } else {
        switch (fast, write) {
        case (true, true): stepsN(DecayExp.self, Yes.self, st, aRow, sd, sdu, bAt, cAt, c, p)
        case (true, false): stepsN(DecayExp.self, No.self, st, aRow, sd, sdu, bAt, cAt, c, p)
        case (false, true): stepsN(AnyExp.self, Yes.self, st, aRow, sd, sdu, bAt, cAt, c, p)
        case (false, false): stepsN(AnyExp.self, No.self, st, aRow, sd, sdu, bAt, cAt, c, p)
        }
      }
      if write {
        for j in c..<W { p[j] = Lane() }
        compilerBarrier(p)
        var y = fmadd(transposedSums(p), dSkip, uv)
        if zRow != nil { y *= zv }
        if c == W {
          storeLane(y, oRow + l)
        } else {
          for j in 0..<c { oRow[l + j] = y[j] }
        }
      }
      l += c
    }
    #if SUBQ_AVX512
    nf = loadLane(nfp)
    #endif
    return (hsum(sum), hsum(nf) != 0 || hsum(nf).isNaN)
  }

  /// A full block of W steps with a one-vector state held in registers. Returns the W outputs
  /// Σₙ C·h (before the skip and the gate) and the new state.
  ///
  /// The per-step products C·h go to scratch memory and are summed afterwards
  /// (``transposedSums(_:)``). An opaque call sits between the two: without it LLVM forwards
  /// the stores, pushes the sums' half-vector extractions back through the arithmetic and
  /// splits the whole recurrence into 128-bit pieces, which made the scan several times slower.
  @inline(__always)
  func fullBlock<E: ScanExp>(
    _: E.Type, _ h0: Lane, _ a: Lane, _ sd: UnsafeMutablePointer<Float>, _ sdu: UnsafeMutablePointer<Float>,
    _ bAt: UnsafePointer<Float>, _ cAt: UnsafePointer<Float>, _ p: UnsafeMutablePointer<Lane>
  ) -> (y: Lane, h: Lane) {
    let np = npad
    var h = h0
    for j in 0..<Lane.scalarCount {
      let dA = E.exp2(a * Lane(repeating: sd[j]))
      h = fmadd(loadLane(bAt + j * np) * Lane(repeating: sdu[j]), h, dA)
      p[j] = fmadd(Lane(), h, loadLane(cAt + j * np))
    }
    compilerBarrier(p)
    return (transposedSums(p), h)
  }

  /// `c` steps with a one-vector state held in a register.
  @inline(__always)
  func steps1<E: ScanExp, F: ScanFlag>(
    _: E.Type, _: F.Type, _ h: inout Lane, _ a: Lane, _ sd: UnsafeMutablePointer<Float>, _ sdu: UnsafeMutablePointer<Float>,
    _ bAt: UnsafePointer<Float>, _ cAt: UnsafePointer<Float>, _ c: Int, _ p: UnsafeMutablePointer<Lane>
  ) {
    let np = npad
    for j in 0..<c {
      let dA = E.exp2(a * Lane(repeating: sd[j]))
      h = fmadd(loadLane(bAt + j * np) * Lane(repeating: sdu[j]), h, dA)
      if F.on { p[j] = fmadd(Lane(), h, loadLane(cAt + j * np)) }
    }
  }

  /// `c` steps with a state of `nv` vectors kept in memory.
  @inline(__always)
  func stepsN<E: ScanExp, F: ScanFlag>(
    _: E.Type, _: F.Type, _ st: UnsafeMutablePointer<Lane>, _ a: UnsafePointer<Lane>, _ sd: UnsafeMutablePointer<Float>,
    _ sdu: UnsafeMutablePointer<Float>, _ bAt: UnsafePointer<Float>, _ cAt: UnsafePointer<Float>, _ c: Int,
    _ p: UnsafeMutablePointer<Lane>
  ) {
    let np = npad, W = Lane.scalarCount
    for j in 0..<c {
      let dt = Lane(repeating: sd[j]), du = Lane(repeating: sdu[j])
      var acc = Lane()
      for v in 0..<nv {
        let dA = E.exp2(a[v] * dt)
        let h = fmadd(loadLane(bAt + j * np + v * W) * du, st[v], dA)
        st[v] = h
        if F.on { acc = fmadd(acc, h, loadLane(cAt + j * np + v * W)) }
      }
      if F.on { p[j] = acc }
    }
  }
}

// MARK: - Driver

/// Prepares the transposed operands, runs the workers and assembles the result.
struct ScanRunner {
  let shape: ScanShape
  let inputs: SelectiveScanInputs
  let threads: Int
  let op = SelectiveScan.op

  func run(chunk: Int?) throws(SubqError) -> SelectiveScanResult {
    let s = shape
    let W = Lane.scalarCount
    let npad = (s.state + W - 1) / W * W
    let (nb, nd, nl, nn) = (s.batch, s.channels, s.length, s.state)
    var output = Tensor(shape: [nb, nd, nl]) { _ in }
    var last = Tensor(shape: [nb, nd, nn]) { _ in }
    if nl == 0 {
      last = inputs.initialState ?? Tensor(shape: [nb, nd, nn], repeating: 0)
      return SelectiveScanResult(output: output, lastState: last)
    }

    // A·log₂e padded, and which channels have A ≤ 0 everywhere.
    let a2 = AlignedBuffer<Float>(count: nd * npad)
    let stable = UnsafeMutablePointer<Bool>.allocate(capacity: nd)
    defer { stable.deallocate() }
    inputs.A.withUnsafeBufferPointer { a in
      for d in 0..<nd {
        var ok = true
        for n in 0..<nn {
          a2.pointer[d * npad + n] = a[d * nn + n] * log2e
          if a[d * nn + n] > 0 { ok = false }
        }
        stable[d] = ok
      }
    }
    // B and C transposed to [B][G][L][npad] (in parallel), checking they are finite.
    let bt = AlignedBuffer<Float>(count: nb * s.groupsB * nl * npad)
    let ct = AlignedBuffer<Float>(count: nb * s.groupsC * nl * npad)
    if let bad = transpose(inputs.B, groups: s.groupsB, into: bt.pointer, npad: npad) {
      throw .nonFinite(op: op, tensor: "B", index: inputs.B.index(ofFlat: bad), value: SubqError.describe(inputs.B[flat: bad]))
    }
    if let bad = transpose(inputs.C, groups: s.groupsC, into: ct.pointer, npad: npad) {
      throw .nonFinite(op: op, tensor: "C", index: inputs.C.index(ofFlat: bad), value: SubqError.describe(inputs.C[flat: bad]))
    }

    let skip = inputs.D?.scalars, bias = inputs.deltaBias?.scalars
    let states = AlignedBuffer<Float>(count: nb * nd * npad)
    if let init0 = inputs.initialState {
      init0.withUnsafeBufferPointer { p in
        for r in 0..<(nb * nd) { for n in 0..<nn { states.pointer[r * npad + n] = p[r * nn + n] } }
      }
    }
    let workersMax = threads
    let flags = AlignedBuffer<Int32>(count: workersMax * 16)
    let scratchFloats = (ScanKernel.scratchFloats + 31) / 16 * 16  // whole 64-byte lines: Lane pointers stay aligned
    let scratch = AlignedBuffer<Float>(count: workersMax * scratchFloats)

    let zTensor = inputs.z
    inputs.u.withUnsafeBufferPointer { up in
      inputs.delta.withUnsafeBufferPointer { dp in
        output.withUnsafeMutableBufferPointer { op in
          withOptional(zTensor) { zp in
            withOptionalArray(skip) { sp in
              withOptionalArray(bias) { bp in
                let k = ScanKernel(
                  s: s, npad: npad, nv: npad / W, u: up.baseAddress!, delta: dp.baseAddress!, z: zp,
                  out: op.baseAddress!, a2: a2.pointer, bt: bt.pointer, ct: ct.pointer, skip: sp, bias: bp,
                  stable: UnsafePointer(stable))
                if let chunk, chunk < nl {
                  runChunked(k, chunk: chunk, states: states.pointer, flags: flags.pointer, scratch: scratch.pointer, scratchFloats: scratchFloats)
                } else {
                  runChannels(k, states: states.pointer, flags: flags.pointer, scratch: scratch.pointer, scratchFloats: scratchFloats)
                }
              }
            }
          }
        }
      }
    }
    var flagged = false
    for w in 0..<workersMax where flags.pointer[w * 16] != 0 { flagged = true }
    if flagged {
      for (t, name) in [(inputs.u, "u"), (inputs.delta, "delta"), (inputs.z, "z")] {
        if let t, let bad = t.firstNonFinite() {
          throw .nonFinite(op: op, tensor: name, index: t.index(ofFlat: bad), value: SubqError.describe(t[flat: bad]))
        }
      }
    }
    last.withUnsafeMutableBufferPointer { p in
      for r in 0..<(nb * nd) { for n in 0..<nn { p[r * nn + n] = states.pointer[r * npad + n] } }
    }
    withExtendedLifetime(a2) {}; withExtendedLifetime(bt) {}; withExtendedLifetime(ct) {}
    withExtendedLifetime(states) {}; withExtendedLifetime(flags) {}; withExtendedLifetime(scratch) {}
    return SelectiveScanResult(output: output, lastState: last)
  }

  /// Channel-parallel: each item is a block of channels of one batch entry, walking time in
  /// tiles so a tile of B and C serves every channel of the block from cache.
  func runChannels(_ k: ScanKernel, states: UnsafeMutablePointer<Float>, flags: UnsafeMutablePointer<Int32>,
                   scratch: UnsafeMutablePointer<Float>, scratchFloats: Int) {
    let s = k.s
    let block = 8
    let blocksPerBatch = (s.channels + block - 1) / block
    let tile = 256  // B and C of a tile (2 × 256 × N floats) stay in L1 while the block's channels walk it
    let st = SendablePointer(states), fl = SendablePointer(flags), sc = SendablePointer(scratch)
    Parallel.forEach(s.batch * blocksPerBatch, threads: threads) { item, worker in
      let b = item / blocksPerBatch
      let d0 = (item % blocksPerBatch) * block, d1 = min(s.channels, d0 + block)
      let mine = sc.pointer + worker * scratchFloats
      var l0 = 0
      var bad = false
      while l0 < s.length {
        let l1 = min(s.length, l0 + tile)
        for d in d0..<d1 {
          let r = k.scan(b: b, d: d, l0: l0, l1: l1, state: st.pointer + (b * s.channels + d) * k.npad, write: true, scratch: mine)
          bad = bad || r.nonFinite
        }
        l0 = l1
      }
      if bad { fl.pointer[worker * 16] = 1 }
    }
  }

  /// Sequence-chunked: local scans from zero, a serial carry of the chunk states, then a rescan
  /// of every chunk from its true initial state.
  func runChunked(_ k: ScanKernel, chunk: Int, states: UnsafeMutablePointer<Float>, flags: UnsafeMutablePointer<Int32>,
                  scratch: UnsafeMutablePointer<Float>, scratchFloats: Int) {
    let s = k.s
    let np = k.npad
    let chunks = (s.length + chunk - 1) / chunk
    let rows = s.batch * s.channels
    // Local final states and ΣΔ of chunks 0..<chunks−1, then the carried initial states.
    let local = AlignedBuffer<Float>(count: rows * chunks * np)
    let sums = AlignedBuffer<Float>(count: rows * chunks)
    let carry = AlignedBuffer<Float>(count: rows * chunks * np)
    let lp = SendablePointer(local.pointer), sp = SendablePointer(sums.pointer), cp = SendablePointer(carry.pointer)
    let st = SendablePointer(states), fl = SendablePointer(flags), sc = SendablePointer(scratch)
    // Phase 1: local scans (no output).
    Parallel.forEach(rows * (chunks - 1), threads: threads) { item, worker in
      let r = item / (chunks - 1), c = item % (chunks - 1)
      let h = lp.pointer + (r * chunks + c) * np
      for n in 0..<np { h[n] = 0 }
      let res = k.scan(b: r / s.channels, d: r % s.channels, l0: c * chunk, l1: min(s.length, (c + 1) * chunk),
                       state: h, write: false, scratch: sc.pointer + worker * scratchFloats)
      sp.pointer[r * chunks + c] = res.sumDelta
      if res.nonFinite { fl.pointer[worker * 16] = 1 }
    }
    // Phase 2: carry, per (batch, channel), serially over chunks.
    Parallel.forEach(rows, threads: threads) { r, _ in
      let d = r % s.channels
      let a = k.a2 + d * np
      let h0 = cp.pointer + r * chunks * np
      for n in 0..<np { h0[n] = st.pointer[r * np + n] }
      for c in 0..<(chunks - 1) {
        let prev = h0 + c * np, next = h0 + (c + 1) * np, loc = lp.pointer + (r * chunks + c) * np
        let sum = sp.pointer[r * chunks + c]
        for n in 0..<np {
          let decay = Float(Foundation.exp2(Double(a[n]) * Double(sum)))
          next[n] = fmadd(loc[n], decay, prev[n])
        }
      }
    }
    // Phase 3: rescan every chunk from its carried state, writing the outputs; the last chunk's
    // final state is the scan's last state.
    Parallel.forEach(rows * chunks, threads: threads) { item, worker in
      let r = item / chunks, c = item % chunks
      let h = cp.pointer + (r * chunks + c) * np
      let res = k.scan(b: r / s.channels, d: r % s.channels, l0: c * chunk, l1: min(s.length, (c + 1) * chunk),
                       state: h, write: true, scratch: sc.pointer + worker * scratchFloats)
      if res.nonFinite { fl.pointer[worker * 16] = 1 }
      if c == chunks - 1 { for n in 0..<np { st.pointer[r * np + n] = h[n] } }
    }
    withExtendedLifetime(local) {}; withExtendedLifetime(sums) {}; withExtendedLifetime(carry) {}
  }

  /// Writes `t` (`[B, N, L]` or `[B, G, N, L]`) as `[B][G][L][npad]` with zero padding. Returns
  /// the flat index of a non-finite value if there is one.
  func transpose(_ t: Tensor, groups: Int, into dst: UnsafeMutablePointer<Float>, npad: Int) -> Int? {
    let (nb, nl, nn) = (shape.batch, shape.length, shape.state)
    let rows = nb * groups
    let lBlock = 256
    let lBlocks = (nl + lBlock - 1) / lBlock
    let found = AlignedBuffer<Int>(count: max(1, rows * lBlocks))
    let fp = SendablePointer(found.pointer)
    let dp = SendablePointer(dst)
    t.withUnsafeBufferPointer { src in
      let sp = SendablePointer(src.baseAddress!)
      Parallel.forEach(rows * lBlocks, threads: threads) { item, _ in
        let r = item / lBlocks
        let l0 = (item % lBlocks) * lBlock, l1 = min(nl, l0 + lBlock)
        let from = sp.pointer + r * nn * nl
        let to = dp.pointer + r * nl * npad
        var bad = -1
        for n in 0..<nn {
          let row = from + n * nl
          for l in l0..<l1 {
            let x = row[l]
            if !x.isFinite && bad < 0 { bad = (r * nn + n) * nl + l }
            to[l * npad + n] = x
          }
        }
        for l in l0..<l1 { for n in nn..<npad { to[l * npad + n] = 0 } }
        fp.pointer[item] = bad + 1
      }
    }
    var first: Int? = nil
    for i in 0..<(rows * lBlocks) where found.pointer[i] > 0 {
      let idx = found.pointer[i] - 1
      if first == nil || idx < first! { first = idx }
    }
    withExtendedLifetime(found) {}
    return first
  }
}

/// An opaque call: LLVM must assume it reads and writes `p`, so values stored there before it
/// are not forwarded into the code after it.
/// (It may write `p` under a flag that is never set, so LLVM cannot prove it does not.)
@inline(never)
func compilerBarrier(_ p: UnsafeMutablePointer<Lane>) {
  if barrierNeverSet { p[0] = Lane(repeating: .nan) }
}
nonisolated(unsafe) var barrierNeverSet = false

/// Calls `body` with the base address of `t`'s scalars, or nil.
@inline(__always)
func withOptional<R>(_ t: Tensor?, _ body: (UnsafePointer<Float>?) -> R) -> R {
  guard let t else { return body(nil) }
  return t.withUnsafeBufferPointer { body($0.baseAddress!) }
}

/// Calls `body` with the base address of `a`, or nil.
@inline(__always)
func withOptionalArray<R>(_ a: [Float]?, _ body: (UnsafePointer<Float>?) -> R) -> R {
  guard let a else { return body(nil) }
  return a.withUnsafeBufferPointer { body($0.baseAddress!) }
}
