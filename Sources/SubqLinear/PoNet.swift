import Foundation
import SubqAttention
import SubqCore
import SubqKernels

/// PoNet's pooling token mixer (Tan et al., "PoNet: Pooling Network for Efficient Token Mixing in
/// Long Sequences", ICLR 2022) on X `[B, N, C]` with `H` heads of width `d = C/H`:
///
///     Hq, Hk, Ho, Hs, Hl = X W_{q,k,o,s,l}ᵀ + b                 (five C×C projections)
///     GA:  g_h  = mean_i Hq[i, h];  a_j = softmax_j(g_h · Hk[j, h] / √d);  g'_h = Σ_j a_j Hk[j, h]
///     SMP: s_i  = max_{j ∈ seg(i)} Hs[j]                       (segment max pooling)
///     LMP: l_i  = max(Hl[i−1], Hl[i], Hl[i+1])                 (MaxPool1d(3, 1, 1), edges excluded)
///     O[i, h] = (g'_h + s[i, h]) ⊙ Ho[i, h] + l[i, h]
///
/// Keys double as values in the global aggregation (the official code's `V = Hk`). Segments are
/// the LRA form of the official code: `segments` equal runs of `⌊N/segments⌋ + 1` positions
/// (`seg(i) = i / (⌊N/segments⌋ + 1)`), the last one shorter; `segments = 1` pools the whole
/// sequence.
///
/// **Weights** (file stems): `q_proj`, `k_proj`, `o_proj`, `s_proj`, `l_proj`, each `.weight`
/// `[C, C]` (PyTorch `Linear` layout, out × in) and optional `.bias` `[C]` (zero when absent).
///
/// Differences from the paper's code: no padding mask (every position is a valid token; give
/// only real tokens) and no `[CLS]`/`[SEP]` sentence segmentation (segments are the LRA form);
/// BERT's `SelfOutput` (dense, residual, LayerNorm) after the mixer is the caller's. The mean of
/// `Hq` is computed as `mean(X) W_qᵀ + b_q` (the same value, one matrix-vector product); `Hq`,
/// `Ho` and `Hl` are never stored whole.
///
/// - Complexity: O(B·N·C²) for the projections and O(B·N·C) for the pooling — linear in N;
///   extra memory O(N·C): Hk and Hs of one batch entry at a time.
public struct PoNetMixer: SequenceMixer {
  public static let info = MixerInfo(
    name: "ponet",
    summary: "PoNet: global attention pooling + segment max pooling + local max pooling, fused multiplicatively",
    paper: "Tan et al., PoNet: Pooling Network for Efficient Token Mixing in Long Sequences (ICLR 2022)",
    complexity: "O(N·C²) projections + O(N·C) pooling; O(N·C) memory",
    input: .sequence, supportsCausal: false, supportsNonCausal: true,
    parameters: [
      MethodParameter("heads", default: "8", "heads of the global aggregation (must divide C)"),
      MethodParameter("segments", default: "1", "segment count of the segment max pooling (LRA form)"),
    ],
    weights: ["q", "k", "o", "s", "l"].flatMap { n in
      [MixerWeightSpec("\(n)_proj.weight", shape: "[C, C]", "W_\(n)"),
       MixerWeightSpec("\(n)_proj.bias", shape: "[C]", required: false, "b_\(n) (zero when absent)")]
    })

  public let heads: Int
  public let segments: Int

  public init(heads: Int = 8, segments: Int = 1) throws(SubqError) {
    guard heads >= 1 else { throw .argument(op: Self.info.op, name: "heads", value: "\(heads)", reason: "must be at least 1") }
    guard segments >= 1 else { throw .argument(op: Self.info.op, name: "segments", value: "\(segments)", reason: "must be at least 1") }
    self.heads = heads
    self.segments = segments
  }

  public init(parameters: MixerParameters) throws(SubqError) {
    try parameters.validate(for: Self.info)
    try self.init(heads: try parameters.int("heads", Self.info, in: 1...65536),
                  segments: try parameters.int("segments", Self.info, in: 1...Int(Int32.max)))
  }

  public var parameterValues: [String: String] { ["heads": "\(heads)", "segments": "\(segments)"] }

  /// Segment length of the LRA segmentation for length N.
  public func segmentLength(_ n: Int) -> Int { n / segments + 1 }

  public func mix(_ inputs: MixerInputs, weights: MixerWeights, options: MixerOptions) throws(SubqError) -> Tensor {
    let i = Self.info, op = i.op
    try i.check(causal: options.causal)
    let x = try inputs.sequenceTensor(i)
    let (B, N, C) = try validateSequence(op: op, x, options: options)
    let threads = try options.resolvedThreads(op)
    guard C % heads == 0 else {
      throw .argument(op: op, name: "heads", value: "\(heads)", reason: "must divide the model width C = \(C)")
    }
    try weights.validate(for: i)
    var w: [String: Tensor] = [:], bias: [String: [Float]] = [:]
    for n in ["q", "k", "o", "s", "l"] {
      w[n] = try weights.required("\(n)_proj.weight", shape: [C, C], i)
      bias[n] = try weights.tensor("\(n)_proj.bias", shape: [C], i)?.scalars ?? [Float](repeating: 0, count: C)
    }
    let dh = C / heads
    // Transposed weights: [W_k; W_s]ᵀ as [C, 2C], [W_o; W_l]ᵀ as [C, 2C], W_qᵀ as [C, C].
    func t(_ a: String, _ b: String) -> [Float] {
      var out = [Float](repeating: 0, count: 2 * C * C)
      w[a]!.withUnsafeBufferPointer { wa in w[b]!.withUnsafeBufferPointer { wb in
        for r in 0..<C { for c in 0..<C { out[c * 2 * C + r] = wa[r * C + c]; out[c * 2 * C + C + r] = wb[r * C + c] } }
      } }
      return out
    }
    let ksT = t("k", "s"), olT = t("o", "l")
    let ksB = bias["k"]! + bias["s"]!, olB = bias["o"]! + bias["l"]!
    let wq = w["q"]!.scalars, bq = bias["q"]!
    let segLen = segmentLength(N)
    let nseg = (N + segLen - 1) / segLen
    var out = outputTensor([B, N, C])
    var hks = [Float](repeating: 0, count: N * 2 * C)      // [N, Hk | Hs] of one batch entry
    var smax = [Float](repeating: 0, count: nseg * C)
    var gp = [Float](repeating: 0, count: C)                // g' over all heads
    let invSqrt = 1 / Float(Double(dh).squareRoot())
    x.withUnsafeBufferPointer { xb in
      out.withUnsafeMutableBufferPointer { ob in
        hks.withUnsafeMutableBufferPointer { hb in
          smax.withUnsafeMutableBufferPointer { sb in
            gp.withUnsafeMutableBufferPointer { gb in
              let hp = SendablePointer(hb.baseAddress!), sp = SendablePointer(sb.baseAddress!), gpp = SendablePointer(gb.baseAddress!)
              let opp = SendablePointer(ob.baseAddress!)
              for b in 0..<B {
                let xrow = xb.baseAddress! + b * N * C
                let xp = SendablePointer(xrow)
                // g = mean(X) W_qᵀ + b_q.
                var mean = [Double](repeating: 0, count: C)
                for r in 0..<N { let row = xrow + r * C; for c in 0..<C { mean[c] += Double(row[c]) } }
                var g = [Float](repeating: 0, count: C)
                for o in 0..<C {
                  var s = Double(bq[o])
                  for c in 0..<C { s += Double(wq[o * C + c]) * mean[c] / Double(N) }
                  g[o] = Float(s)
                }
                // Hk | Hs for every position.
                ksT.withUnsafeBufferPointer { wt in
                  ksB.withUnsafeBufferPointer { bb in
                    GemmTiles.linear(rows: N, inFeatures: C, outFeatures: 2 * C, x: xrow, ldx: C, wT: wt.baseAddress!,
                                     bias: bb.baseAddress!, y: hp.pointer, ldy: 2 * C, threads: threads)
                  }
                }
                // GA per head: softmax over positions of g_h · Hk / √d, then the weighted sum of Hk.
                let workers = Parallel.workers(for: heads, threads: threads)
                let logits = AlignedBuffer<Float>(count: workers * N)
                let lp = SendablePointer(logits.pointer)
                let gh = g
                Parallel.forEach(heads, threads: workers) { h, worker in
                  let lg = lp.pointer + worker * N
                  var m = -Float.infinity
                  gh.withUnsafeBufferPointer { gq in
                    for j in 0..<N {
                      let v = dot(gq.baseAddress! + h * dh, hp.pointer + j * 2 * C + h * dh, dh) * invSqrt
                      lg[j] = v
                      m = max(m, v)
                    }
                  }
                  let sum = expShiftSum(lg, shift: m, N)
                  let acc = gpp.pointer + h * dh
                  acc.update(repeating: 0, count: dh)
                  for j in 0..<N { axpy(lg[j], hp.pointer + j * 2 * C + h * dh, acc, dh) }
                  scale(acc, 1 / sum, dh)
                }
                withExtendedLifetime(logits) {}
                // SMP: per-segment maxima of Hs.
                Parallel.forEach(nseg, threads: threads) { sgi, _ in
                  let r0 = sgi * segLen, r1 = min(N, r0 + segLen)
                  let dst = sp.pointer + sgi * C
                  dst.update(from: hp.pointer + r0 * 2 * C + C, count: C)
                  for r in (r0 + 1)..<max(r0 + 1, r1) {
                    let src = hp.pointer + r * 2 * C + C
                    var c = 0
                    while c + laneWidth <= C { storeLane(vmax(loadLane(dst + c), loadLane(src + c)), dst + c); c += laneWidth }
                    while c < C { dst[c] = max(dst[c], src[c]); c += 1 }
                  }
                }
                // Output rows in blocks: Ho | Hl for the block and one halo row each side.
                let block = 96
                let blocks = (N + block - 1) / block
                let workers2 = Parallel.workers(for: blocks, threads: threads)
                let scratchCount = (block + 2) * 2 * C
                let scratch = AlignedBuffer<Float>(count: workers2 * scratchCount)
                let scp = SendablePointer(scratch.pointer)
                olT.withUnsafeBufferPointer { wt in
                  olB.withUnsafeBufferPointer { bb in
                    let wtp = SendablePointer(wt.baseAddress!), bbp = SendablePointer(bb.baseAddress!)
                    Parallel.forEach(blocks, threads: workers2) { blk, worker in
                      let i0 = blk * block, i1 = min(N, i0 + block)
                      let h0 = max(0, i0 - 1), h1 = min(N, i1 + 1)
                      let sc = scp.pointer + worker * scratchCount
                      for r in 0..<(h1 - h0) { (sc + r * 2 * C).update(from: bbp.pointer, count: 2 * C) }
                      GemmTiles.gemm(m: h1 - h0, n: 2 * C, k: C, a: xp.pointer + h0 * C, lda: C, b: wtp.pointer, ldb: 2 * C,
                                     c: sc, ldc: 2 * C, accumulate: true)
                      for i in i0..<i1 {
                        let row = sc + (i - h0) * 2 * C
                        let prev = i > 0 ? row - 2 * C : row, next = i + 1 < N ? row + 2 * C : row
                        let s = sp.pointer + (i / segLen) * C
                        let o = opp.pointer + (b * N + i) * C
                        var c = 0
                        while c + laneWidth <= C {
                          let lmp = vmax(vmax(loadLane(prev + C + c), loadLane(row + C + c)), loadLane(next + C + c))
                          let f = loadLane(gpp.pointer + c) + loadLane(s + c)
                          storeLane(fmadd(lmp, f, loadLane(row + c)), o + c)
                          c += laneWidth
                        }
                        while c < C {
                          let lmp = max(max(prev[C + c], row[C + c]), next[C + c])
                          o[c] = fmadd(lmp, gpp.pointer[c] + s[c], row[c])
                          c += 1
                        }
                      }
                    }
                  }
                }
                withExtendedLifetime(scratch) {}
              }
            }
          }
        }
      }
    }
    return out
  }

  /// Uniform random weights U(±1/√C) and biases (PyTorch's Linear initialization).
  public func randomWeights(shape: MixerBenchShape, seed: UInt64) -> MixerWeights {
    let C = shape.modelDim
    var g = SeededGenerator(seed: seed)
    let a = Float(1 / Double(C).squareRoot())
    var w: [String: Tensor] = [:]
    for n in ["q", "k", "o", "s", "l"] {
      w["\(n)_proj.weight"] = Tensor.randomUniform(shape: [C, C], seed: g.next(), in: -a...a)
      w["\(n)_proj.bias"] = Tensor.randomUniform(shape: [C], seed: g.next(), in: -a...a)
    }
    return MixerWeights(w)
  }

  /// Four `N×C×C` projections (Hk, Hs, Ho, Hl; Hq only through its mean) at 2 FLOPs per
  /// multiply-add, plus the pooling and fusion, `≈ 8·N·C`.
  public func flops(_ s: MixerBenchShape) -> Double {
    let N = Double(s.length), C = Double(s.modelDim)
    return Double(s.batch) * (8 * N * C * C + 8 * N * C)
  }
}
