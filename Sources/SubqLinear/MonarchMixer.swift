import Foundation
import SubqAttention
import SubqCore
import SubqKernels

/// Monarch Mixer's sequence mixer (Fu et al., "Monarch Mixer: A Simple Sub-Quadratic GEMM-Based
/// Architecture", NeurIPS 2023), as M2's `MonarchMixerSequenceMixing.forward` computes it on
/// X `[B, N, C]`:
///
///     u = X W_inᵀ + b_in                                  [B, N, 3C]
///     u = short_conv(u)     depthwise, 3 taps, causal: u'_t = w₀u_{t−2} + w₁u_{t−1} + w₂u_t + b
///     x1, x2, v = split(u)                                 (channels 0..<C, C..<2C, 2C..<3C)
///     y = long_conv(v ⊙ x1; h) + (v ⊙ x1) ⊙ skip           (FFT convolution, ``LongConvolution``)
///     y = y ⊙ x2                                           (post gate)
///     y += long_conv(X; h₂) + X ⊙ skip₂                    (when the residual filter is given)
///     out = y W_outᵀ + b_out
///
/// The long filter is bidirectional when `filter_fn.k_rev` is given (M2-BERT) and causal
/// otherwise; a causal call (``MixerOptions/causal``) rejects a reverse filter. Causal mixing
/// (M2-GPT) is the zero-padded FFT convolution with the forward filter only: output t depends on
/// inputs ≤ t (the short convolution is causal in both modes, as in the reference).
///
/// **Weights** (file stems in a `--weights` directory; names follow the reference's parameters):
/// `in_linear.weight` `[3C, C]`, `in_linear.bias` `[3C]`, `short_filter.weight` `[3C, 1, 3]`,
/// `short_filter.bias` `[3C]`, `filter_fn.k` `[C, Lmax]`, `filter_fn.k_rev` `[C, Lmax]`
/// (optional), `filter_fn.bias` `[C]` (the multiplicative skip "D"), the same three with
/// `filter_fn2` for the residual long convolution (optional), `out_linear.weight` `[C, C]`,
/// `out_linear.bias` `[C]`. The filters are the *evaluated* implicit filters — the reference's
/// `filter_fn.filter(Lmax)` and `filter_rev(Lmax)` rearranged to `[C, Lmax]` — with `Lmax ≥ N`;
/// taps `0..<N` are used, as the reference evaluates its filter MLP on the first N of its `l_max`
/// positions.
///
/// Differences from the reference: the implicit filter MLP (a training-time parameterization) is
/// not evaluated here; `hyena_training_additions` (a LayerNorm before the mixer) and dropout are
/// not applied; the FFT length is the smallest `2^a3^b5^c ≥ 2N − 1` instead of 2N (the same
/// linear convolution).
///
/// - Complexity: O(B·N·C²) for the projections, O(C·(B+1)·N log N) for the convolutions;
///   extra memory O(B·N·C) plus O(threads·N·laneWidth) for the transforms.
public struct MonarchMixer: SequenceMixer {
  public static let info = MixerInfo(
    name: "monarch",
    summary: "Monarch Mixer (M2) sequence mixer: in-projection, short conv, gated long convolution by FFT, out-projection",
    paper: "Fu et al., Monarch Mixer: A Simple Sub-Quadratic GEMM-Based Architecture (NeurIPS 2023)",
    complexity: "O(N·C²) projections + O(C·N log N) FFT convolution; O(N·C) memory",
    input: .sequence, supportsCausal: true, supportsNonCausal: true,
    parameters: [],
    weights: [
      MixerWeightSpec("in_linear.weight", shape: "[3C, C]", "input projection to x1, x2, v"),
      MixerWeightSpec("in_linear.bias", shape: "[3C]", "its bias"),
      MixerWeightSpec("short_filter.weight", shape: "[3C, 1, 3]", "depthwise causal 3-tap convolution"),
      MixerWeightSpec("short_filter.bias", shape: "[3C]", "its bias"),
      MixerWeightSpec("filter_fn.k", shape: "[C, Lmax ≥ N]", "evaluated forward long filter h_fwd"),
      MixerWeightSpec("filter_fn.k_rev", shape: "[C, Lmax ≥ N]", required: false, "evaluated reverse filter h_rev (bidirectional, non-causal only)"),
      MixerWeightSpec("filter_fn.bias", shape: "[C]", "multiplicative skip D of the long convolution"),
      MixerWeightSpec("filter_fn2.k", shape: "[C, Lmax ≥ N]", required: false, "residual long convolution of the input: forward filter"),
      MixerWeightSpec("filter_fn2.k_rev", shape: "[C, Lmax ≥ N]", required: false, "residual long convolution: reverse filter"),
      MixerWeightSpec("filter_fn2.bias", shape: "[C]", required: false, "residual long convolution: skip (required with filter_fn2.k)"),
      MixerWeightSpec("out_linear.weight", shape: "[C, C]", "output projection"),
      MixerWeightSpec("out_linear.bias", shape: "[C]", "its bias"),
    ])

  public init() {}

  public init(parameters: MixerParameters) throws(SubqError) {
    try parameters.validate(for: Self.info)
  }

  public var parameterValues: [String: String] { [:] }

  /// Checked weights for width C and length N.
  struct Weights {
    var inW: Tensor, inB: Tensor, convW: Tensor, convB: Tensor
    var k: Tensor, kRev: Tensor?, skip: Tensor
    var k2: Tensor?, k2Rev: Tensor?, skip2: Tensor?
    var outW: Tensor, outB: Tensor
    var lmax: Int
  }

  func checkedWeights(_ w: MixerWeights, C: Int, N: Int, causal: Bool) throws(SubqError) -> Weights {
    let i = Self.info
    try w.validate(for: i)
    let op = i.op
    guard let kt = w.tensors["filter_fn.k"] else { throw .argument(op: op, name: "weights", value: "filter_fn.k.npy", reason: "missing") }
    guard kt.rank == 2, kt.shape[0] == C, kt.shape[1] >= N else {
      throw .shape(op: op, tensor: w.label("filter_fn.k"), shape: kt.shape, reason: "expected [\(C), Lmax] with Lmax ≥ N = \(N)")
    }
    let lmax = kt.shape[1]
    let filter = [C, lmax]
    let r = Weights(
      inW: try w.required("in_linear.weight", shape: [3 * C, C], i), inB: try w.required("in_linear.bias", shape: [3 * C], i),
      convW: try w.required("short_filter.weight", shape: [3 * C, 1, 3], i), convB: try w.required("short_filter.bias", shape: [3 * C], i),
      k: try w.required("filter_fn.k", shape: filter, i), kRev: try w.tensor("filter_fn.k_rev", shape: filter, i),
      skip: try w.required("filter_fn.bias", shape: [C], i),
      k2: try w.tensor("filter_fn2.k", shape: filter, i), k2Rev: try w.tensor("filter_fn2.k_rev", shape: filter, i),
      skip2: try w.tensor("filter_fn2.bias", shape: [C], i),
      outW: try w.required("out_linear.weight", shape: [C, C], i), outB: try w.required("out_linear.bias", shape: [C], i), lmax: lmax)
    if causal, r.kRev != nil || r.k2Rev != nil {
      throw .argument(op: op, name: "weights", value: w.label(r.kRev != nil ? "filter_fn.k_rev" : "filter_fn2.k_rev"),
                      reason: "a reverse (bidirectional) filter makes the mixer non-causal; drop it for causal mixing")
    }
    if (r.k2 == nil) != (r.skip2 == nil) || (r.k2 == nil && r.k2Rev != nil) {
      throw .argument(op: op, name: "weights", value: "filter_fn2.*",
                      reason: "the residual long convolution needs filter_fn2.k and filter_fn2.bias (and filter_fn2.k_rev only with them)")
    }
    if r.k2 != nil, (r.kRev == nil) != (r.k2Rev == nil) {
      throw .argument(op: op, name: "weights", value: "filter_fn.k_rev / filter_fn2.k_rev",
                      reason: "give reverse filters for both long convolutions or for neither")
    }
    return r
  }

  public func mix(_ inputs: MixerInputs, weights: MixerWeights, options: MixerOptions) throws(SubqError) -> Tensor {
    let op = Self.info.op
    let x = try inputs.sequenceTensor(Self.info)
    let (B, N, C) = try validateSequence(op: op, x, options: options)
    let threads = try options.resolvedThreads(op)
    let w = try checkedWeights(weights, C: C, N: N, causal: options.causal)
    let C3 = 3 * C
    let rows = B * N
    // u = X W_inᵀ + b, then the short convolution in place (descending t reads unmodified rows).
    var u = [Float](repeating: 0, count: rows * C3)
    var y = [Float](repeating: 0, count: rows * C)
    var out = outputTensor([B, N, C])
    let inWT = w.inW.withUnsafeBufferPointer { GemmTiles.transpose($0.baseAddress!, rows: C3, cols: C) }
    let outWT = w.outW.withUnsafeBufferPointer { GemmTiles.transpose($0.baseAddress!, rows: C, cols: C) }
    x.withUnsafeBufferPointer { xb in
      u.withUnsafeMutableBufferPointer { ub in
        inWT.withUnsafeBufferPointer { wt in
          w.inB.withUnsafeBufferPointer { bb in
            GemmTiles.linear(rows: rows, inFeatures: C, outFeatures: C3, x: xb.baseAddress!, ldx: C, wT: wt.baseAddress!,
                             bias: bb.baseAddress!, y: ub.baseAddress!, ldy: C3, threads: threads)
          }
        }
        // Short conv + gate v ← v ⊙ x1, parallel over (batch, channel blocks).
        let up = SendablePointer(ub.baseAddress!)
        let cw = w.convW.scalars, cb = w.convB.scalars
        let cwp = cw, cbp = cb
        let cblk = 64
        let nblk = (C3 + cblk - 1) / cblk
        Parallel.forEach(B * nblk, threads: threads) { item, _ in
          let b = item / nblk, c0 = (item % nblk) * cblk, c1 = min(C3, c0 + cblk)
          let base = up.pointer + b * N * C3
          var t = N - 1
          while t >= 0 {
            let row = base + t * C3
            for c in c0..<c1 {
              var s = cbp[c] + cwp[3 * c + 2] * row[c]
              if t >= 1 { s += cwp[3 * c + 1] * row[c - C3] }
              if t >= 2 { s += cwp[3 * c] * row[c - 2 * C3] }
              row[c] = s
            }
            t -= 1
          }
        }
        Parallel.forEach(B * N, threads: threads) { r, _ in
          let row = up.pointer + r * C3
          for c in 0..<C { row[2 * C + c] *= row[c] }
        }
        // y = long_conv(v) + v ⊙ skip, on the v channels (columns 2C..<3C of u).
        let uBase = ub.baseAddress!
        y.withUnsafeMutableBufferPointer { yb in
          let yBase = yb.baseAddress!
          w.k.withUnsafeBufferPointer { kb in
            w.skip.withUnsafeBufferPointer { sb in
              let run = { (rev: UnsafePointer<Float>?) in
                LongConvolution.apply(batch: B, length: N, channels: C, x: uBase + 2 * C, ldx: C3, y: yBase, ldy: C,
                                      accumulate: false, kFwd: kb.baseAddress!, kRev: rev, ldk: w.lmax, skip: sb.baseAddress!, threads: threads)
              }
              if let kr = w.kRev { kr.withUnsafeBufferPointer { run($0.baseAddress!) } } else { run(nil) }
            }
          }
          // Post gate y ← y ⊙ x2.
          let yp = SendablePointer(yb.baseAddress!)
          Parallel.forEach(B * N, threads: threads) { r, _ in
            let row = up.pointer + r * C3, yr = yp.pointer + r * C
            for c in 0..<C { yr[c] *= row[C + c] }
          }
          // Residual long convolution of the input.
          if let k2 = w.k2, let s2 = w.skip2 {
            k2.withUnsafeBufferPointer { kb in
              s2.withUnsafeBufferPointer { sb in
                let run = { (rev: UnsafePointer<Float>?) in
                  LongConvolution.apply(batch: B, length: N, channels: C, x: xb.baseAddress!, ldx: C, y: yBase, ldy: C,
                                        accumulate: true, kFwd: kb.baseAddress!, kRev: rev, ldk: w.lmax, skip: sb.baseAddress!, threads: threads)
                }
                if let kr = w.k2Rev { kr.withUnsafeBufferPointer { run($0.baseAddress!) } } else { run(nil) }
              }
            }
          }
          out.withUnsafeMutableBufferPointer { ob in
            outWT.withUnsafeBufferPointer { wt in
              w.outB.withUnsafeBufferPointer { bb in
                GemmTiles.linear(rows: rows, inFeatures: C, outFeatures: C, x: yb.baseAddress!, ldx: C, wT: wt.baseAddress!,
                                 bias: bb.baseAddress!, y: ob.baseAddress!, ldy: C, threads: threads)
              }
            }
          }
        }
      }
    }
    return out
  }

  /// Random weights with the reference's scales: linears U(±1/√fan_in) (PyTorch's default),
  /// the short filter U(±1/√3), decaying long filters `N(0,1)·e^{−t·|δ_c|}` (the exponential
  /// modulation of M2's filter), skip N(0, 1); bidirectional unless `shape.causal`.
  public func randomWeights(shape: MixerBenchShape, seed: UInt64) -> MixerWeights {
    let C = shape.modelDim, N = shape.length
    var g = SeededGenerator(seed: seed)
    let a = Float(1 / Double(C).squareRoot()), a3 = Float(1 / 3.0.squareRoot())
    func filter(_ seed: UInt64) -> Tensor {
      var gg = SeededGenerator(seed: seed)
      return Tensor(shape: [C, N]) { p in
        for c in 0..<C {
          // δ from ln(1e-2)/1.5 to ln(1e-2)/0.3 across channels; t = position / N.
          let delta = abs(-4.605 / 1.5 + (-4.605 / 0.3 + 4.605 / 1.5) * Double(c) / Double(max(1, C - 1)))
          for t in 0..<N { p[c * N + t] = Float(gg.nextNormal() * _exp(-Double(t) / Double(N) * delta)) }
        }
      }
    }
    var w: [String: Tensor] = [
      "in_linear.weight": Tensor.randomUniform(shape: [3 * C, C], seed: g.next(), in: -a...a),
      "in_linear.bias": Tensor.randomUniform(shape: [3 * C], seed: g.next(), in: -a...a),
      "short_filter.weight": Tensor.randomUniform(shape: [3 * C, 1, 3], seed: g.next(), in: -a3...a3),
      "short_filter.bias": Tensor.randomUniform(shape: [3 * C], seed: g.next(), in: -a3...a3),
      "filter_fn.k": filter(g.next()),
      "filter_fn.bias": Tensor.randomNormal(shape: [C], seed: g.next()),
      "out_linear.weight": Tensor.randomUniform(shape: [C, C], seed: g.next(), in: -a...a),
      "out_linear.bias": Tensor.randomUniform(shape: [C], seed: g.next(), in: -a...a),
    ]
    if !shape.causal { w["filter_fn.k_rev"] = filter(g.next()) }
    return MixerWeights(w)
  }

  /// Projections `2·N·C·(3C + C)`, short conv `6·N·3C`, and three transforms of length M ≈ 2N
  /// per pair of lane groups of channels (counted as `5·M·log₂M` per complex transform of one
  /// channel pair, halved for packing two real channels) plus the spectral products.
  public func flops(_ s: MixerBenchShape) -> Double {
    let N = Double(s.length), C = Double(s.modelDim), B = Double(s.batch)
    let M = Double(LongConvolution.fftSize(s.length))
    let fft = 5 * M * log2(M) / 2
    return B * (2 * N * C * 4 * C + 18 * N * C) + C * (B * 2 + 1) * fft + B * C * M * 8
  }
}
