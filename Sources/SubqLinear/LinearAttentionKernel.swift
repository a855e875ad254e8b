import SubqCore
import SubqKernels

/// The shared engine of kernelized attention without softmax:
///
///     out_i = φ(q_i)ᵀ S_i / (φ(q_i)·z_i + eps)       (with denominator)
///     out_i = φ(q_i)ᵀ S_i                             (without: TransNormer's NormAttention)
///
/// where `S_i = Σ_j φ(k_j) v_jᵀ` and `z_i = Σ_j φ(k_j)` run over every key (non-causal) or the keys
/// j ≤ i (causal). Used by ``LinearAttention``, ``TransNormerAttention`` and ``LinFusionAttention``.
///
/// The denominator rides along as an extra value column of ones: with `V' = [V | 1]`, the state
/// `S' = Σ φ(k) V'ᵀ` holds `z` in its last column and one product gives numerator and denominator.
///
/// **Causal, chunked.** Positions are cut into chunks of `chunk` rows. For chunk `c` with state
/// `S'` of all earlier keys:
///
///     O'_c = φ(Q_c) S'  +  tril(φ(Q_c) φ(K_c)ᵀ) V'_c        (quadratic inside the chunk)
///     S'  += φ(K_c)ᵀ V'_c                                     (running state between chunks)
///
/// all as register-tiled products (`GemmTiles`), the triangular one skipping the zero upper part.
/// Work is parallel over (batch, head) and, when there are fewer of those than about twice the
/// cores, over sequence segments too: segment states are summed first (one extra pass over the
/// keys of all but the last segment), then every segment runs from its own initial state.
///
/// **Non-causal.** `S'` per (batch, key/value head) is summed over key segments in parallel, then
/// every query chunk is one product `φ(Q_c) S'`.
///
/// Extra memory: per worker `O(chunk·(D + Dv + chunk) + D·Dv)`, plus one `D×(Dv+1)` state per
/// (batch, head, segment). Never an N×N matrix.
struct LinearKernel: Sendable {
  var featureMap: FeatureMap
  var denominator: Bool
  var eps: Float
  var chunk: Int

  /// Scratch geometry for head dims D, Dv.
  struct Layout {
    let C: Int, Cp: Int, D: Int, Dv: Int, W: Int
    let fq: Int, fkT: Int, vp: Int, a: Int, o: Int, s: Int, tmp: Int, total: Int
    init(chunk C: Int, D: Int, Dv: Int, denominator: Bool) {
      let L = laneWidth
      func up(_ n: Int) -> Int { (n + 15) / 16 * 16 }
      self.C = C
      self.D = D
      self.Dv = Dv
      Cp = (C + L - 1) / L * L
      W = (Dv + (denominator ? 1 : 0) + L - 1) / L * L
      fq = 0
      fkT = fq + up(C * D)
      vp = fkT + up(D * Cp)
      a = vp + up(Cp * W)
      o = a + up(C * Cp)
      s = o + up(C * W)
      tmp = s + up(D * W)
      total = tmp + up(D + L) + 16
    }
    var stateFloats: Int { D * W }
  }

  /// Fills φ(K)ᵀ `[D][Cp]` and V' `[Cp][W]` for `r` keys starting at row `j0` of one head.
  @inline(__always)
  func packKeys(_ l: Layout, k: UnsafePointer<Float>, v: UnsafePointer<Float>, j0: Int, r: Int, scratch: UnsafeMutablePointer<Float>) {
    let fkT = scratch + l.fkT, vp = scratch + l.vp, tmp = scratch + l.tmp
    let D = l.D, Dv = l.Dv, Cp = l.Cp, W = l.W
    for j in 0..<r {
      featureMap.apply(k + (j0 + j) * D, tmp, D)
      for d in 0..<D { fkT[d * Cp + j] = tmp[d] }
      let row = vp + j * W
      row.update(from: v + (j0 + j) * Dv, count: Dv)
      var c = Dv
      if denominator { row[c] = 1; c += 1 }
      while c < W { row[c] = 0; c += 1 }
    }
    if r < Cp {
      for d in 0..<D { for j in r..<Cp { fkT[d * Cp + j] = 0 } }
      (vp + r * W).update(repeating: 0, count: (Cp - r) * W)
    }
  }

  /// `state += φ(K)ᵀ V'` over keys `j0..<j1` of one head (K `[Nk, D]`, V `[Nk, Dv]` at the head).
  func accumulate(_ l: Layout, k: UnsafePointer<Float>, v: UnsafePointer<Float>, from j0: Int, to j1: Int,
                  state: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>) {
    var c0 = j0
    while c0 < j1 {
      let r = min(l.C, j1 - c0)
      packKeys(l, k: k, v: v, j0: c0, r: r, scratch: scratch)
      GemmTiles.gemm(m: l.D, n: l.W, k: r, a: scratch + l.fkT, lda: l.Cp, b: scratch + l.vp, ldb: l.W,
                     c: state, ldc: l.W, accumulate: true)
      c0 += r
    }
  }

  /// Writes output rows from O' `[r][W]`: divides by the denominator column when there is one.
  @inline(__always)
  func writeOutput(_ l: Layout, o: UnsafePointer<Float>, r: Int, out: UnsafeMutablePointer<Float>) {
    let Dv = l.Dv, W = l.W
    for i in 0..<r {
      let src = o + i * W, dst = out + i * Dv
      if denominator {
        let inv = 1 / (src[Dv] + eps)
        for c in 0..<Dv { dst[c] = src[c] * inv }
      } else {
        dst.update(from: src, count: Dv)
      }
    }
  }

  /// Causal pass over query rows `i0..<i1` of one head, starting from `state` (updated in place
  /// to the state after row `i1 − 1`). Q, K, V, out point at the head's row 0.
  func causalRows(_ l: Layout, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                  out: UnsafeMutablePointer<Float>, from i0: Int, to i1: Int,
                  state: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>) {
    let D = l.D, Cp = l.Cp, W = l.W
    let fq = scratch + l.fq, a = scratch + l.a, o = scratch + l.o
    var c0 = i0
    while c0 < i1 {
      let r = min(l.C, i1 - c0)
      for i in 0..<r { featureMap.apply(q + (c0 + i) * D, fq + i * D, D) }
      packKeys(l, k: k, v: v, j0: c0, r: r, scratch: scratch)
      // O' = φ(Q) S'
      GemmTiles.gemm(m: r, n: W, k: D, a: fq, lda: D, b: state, ldb: W, c: o, ldc: W, accumulate: false)
      // A = φ(Q) φ(K)ᵀ, lower part only, then zero above the diagonal where the next product reads.
      GemmTiles.gemm(m: r, n: Cp, k: D, a: fq, lda: D, b: scratch + l.fkT, ldb: Cp, c: a, ldc: Cp,
                     accumulate: false, lowerN: true)
      let t = GemmTiles.rows
      for i in 0..<r {
        let end = min(r, i / t * t + t)
        var j = i + 1
        while j < end { a[i * Cp + j] = 0; j += 1 }
      }
      // O' += tril(A) V'
      GemmTiles.gemm(m: r, n: W, k: r, a: a, lda: Cp, b: scratch + l.vp, ldb: W, c: o, ldc: W,
                     accumulate: true, lowerK: true)
      // S' += φ(K)ᵀ V'
      GemmTiles.gemm(m: D, n: W, k: r, a: scratch + l.fkT, lda: Cp, b: scratch + l.vp, ldb: W, c: state, ldc: W, accumulate: true)
      writeOutput(l, o: o, r: r, out: out + c0 * l.Dv)
      c0 += r
    }
  }

  /// Non-causal output rows `i0..<i1` of one head from the full state.
  func nonCausalRows(_ l: Layout, q: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, from i0: Int, to i1: Int,
                     state: UnsafePointer<Float>, scratch: UnsafeMutablePointer<Float>) {
    let D = l.D, W = l.W
    let fq = scratch + l.fq, o = scratch + l.o
    var c0 = i0
    while c0 < i1 {
      let r = min(l.C, i1 - c0)
      for i in 0..<r { featureMap.apply(q + (c0 + i) * D, fq + i * D, D) }
      GemmTiles.gemm(m: r, n: W, k: D, a: fq, lda: D, b: state, ldb: W, c: o, ldc: W, accumulate: false)
      writeOutput(l, o: o, r: r, out: out + c0 * l.Dv)
      c0 += r
    }
  }

  /// Segments per head so that there are at least about two work items per thread.
  static func segments(heads: Int, length: Int, chunk: Int, threads: Int) -> Int {
    let chunks = (length + chunk - 1) / chunk
    if heads >= 2 * threads || threads == 1 { return 1 }
    return max(1, min(chunks, (2 * threads + heads - 1) / heads))
  }

  /// Runs the whole call. `initialState`, if given, is `[B·Hkv][D][W]` (the state of earlier keys,
  /// causal only); `finalState`, if given, receives the state after the last key in the same form.
  func run(
    _ p: AttentionLikeProblem, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
    out: UnsafeMutablePointer<Float>, initialState: UnsafePointer<Float>?, finalState: UnsafeMutablePointer<Float>?
  ) {
    let l = Layout(chunk: chunk, D: p.headDim, Dv: p.valueDim, denominator: denominator)
    let B = p.batch, Hq = p.queryHeads, Hkv = p.keyValueHeads, Nq = p.queryLength, Nk = p.keyLength
    let D = p.headDim, Dv = p.valueDim, group = p.group
    let SF = l.stateFloats
    let qp = SendablePointer(q), kp = SendablePointer(k), vp = SendablePointer(v), op = SendablePointer(out)
    @Sendable func qHead(_ b: Int, _ h: Int) -> UnsafePointer<Float> { UnsafePointer(qp.pointer) + ((b * Hq + h) * Nq) * D }
    @Sendable func kHead(_ b: Int, _ g: Int) -> UnsafePointer<Float> { UnsafePointer(kp.pointer) + ((b * Hkv + g) * Nk) * D }
    @Sendable func vHead(_ b: Int, _ g: Int) -> UnsafePointer<Float> { UnsafePointer(vp.pointer) + ((b * Hkv + g) * Nk) * Dv }
    @Sendable func oHead(_ b: Int, _ h: Int) -> UnsafeMutablePointer<Float> { op.pointer + ((b * Hq + h) * Nq) * Dv }

    if !p.causal {
      // States per (b, g, key segment), summed into segment 0.
      let segs = Self.segments(heads: B * Hkv, length: Nk, chunk: chunk, threads: p.threads)
      let per = (Nk + segs - 1) / segs
      let states = AlignedBuffer<Float>(count: B * Hkv * segs * SF)
      let sp = SendablePointer(states.pointer)
      let workers1 = Parallel.workers(for: B * Hkv * segs, threads: p.threads)
      let scratch1 = AlignedBuffer<Float>(count: workers1 * l.total)
      let s1 = SendablePointer(scratch1.pointer)
      Parallel.forEach(B * Hkv * segs, threads: workers1) { item, worker in
        let bg = item / segs, seg = item % segs
        let (b, g) = (bg / Hkv, bg % Hkv)
        let j0 = seg * per, j1 = min(Nk, j0 + per)
        if j0 < j1 {
          accumulate(l, k: kHead(b, g), v: vHead(b, g), from: j0, to: j1, state: sp.pointer + item * SF,
                     scratch: s1.pointer + worker * l.total)
        }
      }
      for bg in 0..<(B * Hkv) {
        let s0 = sp.pointer + bg * segs * SF
        for seg in 1..<max(1, segs) {
          let si = s0 + seg * SF
          for x in 0..<SF { s0[x] += si[x] }
        }
        if let finalState { (finalState + bg * SF).update(from: s0, count: SF) }
      }
      // Query chunks, in groups of rows, over all heads.
      let rowsPer = max(l.C, ((Nq + 3) / 4 + l.C - 1) / l.C * l.C)
      let blocks = (Nq + rowsPer - 1) / rowsPer
      let items = B * Hq * blocks
      let workers = Parallel.workers(for: items, threads: p.threads)
      let scratch = AlignedBuffer<Float>(count: workers * l.total)
      let s2 = SendablePointer(scratch.pointer)
      Parallel.forEach(items, threads: workers) { item, worker in
        let bh = item / blocks, blk = item % blocks
        let (b, h) = (bh / Hq, bh % Hq)
        let i0 = blk * rowsPer, i1 = min(Nq, i0 + rowsPer)
        nonCausalRows(l, q: qHead(b, h), out: oHead(b, h), from: i0, to: i1,
                      state: sp.pointer + (b * Hkv + h / group) * segs * SF, scratch: s2.pointer + worker * l.total)
      }
      withExtendedLifetime(states) {}
      withExtendedLifetime(scratch1) {}
      withExtendedLifetime(scratch) {}
      return
    }

    // Causal: Nq == Nk = N.
    let N = Nq
    let segs = Self.segments(heads: B * Hq, length: N, chunk: chunk, threads: p.threads)
    // Segment boundaries on chunk multiples.
    let chunksTotal = (N + chunk - 1) / chunk
    let chunksPer = (chunksTotal + segs - 1) / segs
    let per = chunksPer * chunk
    // Initial states per (b, g, seg): seg 0 = initialState (or 0); seg t = seg t−1 + keys of segment t−1.
    let states = AlignedBuffer<Float>(count: B * Hkv * segs * SF)
    let sp = SendablePointer(states.pointer)
    let ip = initialState.map { SendablePointer($0) }
    if segs > 1 {
      let items1 = B * Hkv * (segs - 1)
      let workers1 = Parallel.workers(for: items1, threads: p.threads)
      let scratch1 = AlignedBuffer<Float>(count: workers1 * l.total)
      let s1 = SendablePointer(scratch1.pointer)
      Parallel.forEach(items1, threads: workers1) { item, worker in
        let bg = item / (segs - 1), seg = item % (segs - 1)
        let (b, g) = (bg / Hkv, bg % Hkv)
        let j0 = seg * per, j1 = min(N, j0 + per)
        // Segment sums are stored one slot up; the prefix sum below turns them into initial states.
        if j0 < j1 {
          accumulate(l, k: kHead(b, g), v: vHead(b, g), from: j0, to: j1,
                     state: sp.pointer + (bg * segs + seg + 1) * SF, scratch: s1.pointer + worker * l.total)
        }
      }
      withExtendedLifetime(scratch1) {}
    }
    for bg in 0..<(B * Hkv) {
      let s0 = sp.pointer + bg * segs * SF
      if let ip { s0.update(from: ip.pointer + bg * SF, count: SF) }
      for seg in 1..<max(1, segs) {
        let prev = s0 + (seg - 1) * SF, cur = s0 + seg * SF
        for x in 0..<SF { cur[x] += prev[x] }
      }
    }
    let items = B * Hq * segs
    let workers = Parallel.workers(for: items, threads: p.threads)
    let scratch = AlignedBuffer<Float>(count: workers * (l.total + SF))
    let s2 = SendablePointer(scratch.pointer)
    let fp = finalState.map { SendablePointer($0) }
    Parallel.forEach(items, threads: workers) { item, worker in
      let bh = item / segs, seg = item % segs
      let (b, h) = (bh / Hq, bh % Hq)
      let g = h / group
      let i0 = seg * per, i1 = min(N, i0 + per)
      let mine = s2.pointer + worker * (l.total + SF)
      let state = mine + l.total
      state.update(from: sp.pointer + ((b * Hkv + g) * segs + seg) * SF, count: SF)
      if i0 < i1 {
        causalRows(l, q: qHead(b, h), k: kHead(b, g), v: vHead(b, g), out: oHead(b, h), from: i0, to: i1,
                   state: state, scratch: mine)
      }
      if let fp, seg == segs - 1, h % group == 0 {
        (fp.pointer + (b * Hkv + g) * SF).update(from: state, count: SF)
      }
    }
    withExtendedLifetime(states) {}
    withExtendedLifetime(scratch) {}
  }
}
