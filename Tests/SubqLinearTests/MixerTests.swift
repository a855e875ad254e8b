import Foundation
import SubqLinear
import Subquadratic
import SubqTestSupport
import Testing

/// TransNormer, LinFusion, PoNet and Monarch Mixer against their Float64 definitions, the registry,
/// and weight handling.
///
/// Tolerance: relative Frobenius error ≤ 1e-5 (Float32 accumulation over ≤ a few hundred terms;
/// the FFT adds ≈ 1e-6); PoNet ≤ 2e-5 (its global softmax runs over every position and its maxima
/// pick single Float32 values whose rounding is not averaged away).
@Suite struct MixerTests {
  init() { MixerDebug.poisonOutputs = true }

  func qkv(_ b: Int, _ h: Int, _ n: Int, _ d: Int, _ dv: Int, seed: UInt64) -> (Tensor, Tensor, Tensor) {
    (Tensor.randomNormal(shape: [b, h, n, d], seed: seed), Tensor.randomNormal(shape: [b, h, n, d], seed: seed + 1),
     Tensor.randomNormal(shape: [b, h, n, dv], seed: seed + 2))
  }

  @Test("TransNormer NormAttention == definition + SimpleRMSNorm over all heads")
  func normAttention() throws {
    let seed = testSeed()
    for (n, d, dv, fm, causal, chunk) in [(65, 16, 16, FeatureMap.elu, true, 64), (200, 32, 24, .elu, false, 64),
                                           (130, 8, 12, .eluPlusOne, true, 7), (1, 5, 5, .elu, true, 64), (333, 20, 20, .eluPlusOne, false, 16)] {
      let (q, k, v) = qkv(2, 3, n, d, dv, seed: seed)
      let m = try TransNormerAttention(kind: .norm, featureMap: fm, chunk: chunk)
      let out = try m.forward(queries: q, keys: k, values: v, causal: causal, threads: 2)
      var ref = kernelAttentionReference(q, k, v, featureMap: fm, causal: causal, denominator: false, eps: 0)
      rmsNormAcrossHeads(&ref, B: 2, H: 3, N: n, Dv: dv)
      #expect(!hasNaN(out))
      let err = relativeError(out, ref)
      #expect(err <= 1e-5, "n\(n) d\(d) \(fm) causal \(causal): \(err) seed \(seed)")
    }
  }

  @Test("TransNormer DiagAttention == the reference's padded block form", arguments: ["relu", "softmax"])
  func diagAttention(activation: String) throws {
    let seed = testSeed()
    let act = TransNormerAttention.DiagActivation(rawValue: activation)!
    for (n, block, causal) in [(100, 64, false), (100, 64, true), (64, 64, false), (7, 3, true), (7, 3, false), (200, 33, false), (1, 64, false)] {
      let (q, k, v) = qkv(1, 2, n, 24, 16, seed: seed)
      let m = try TransNormerAttention(kind: .diag, diagActivation: act, block: block)
      let out = try m.forward(queries: q, keys: k, values: v, causal: causal, threads: 2)
      var ref = diagAttentionReference(q, k, v, block: block, causal: causal, softmax: act == .softmax)
      if act == .relu { rmsNormAcrossHeads(&ref, B: 1, H: 2, N: n, Dv: 16) }
      let err = relativeError(out, ref)
      #expect(err <= 1e-5, "n\(n) block\(block) causal \(causal) \(activation): \(err) seed \(seed)")
    }
  }

  @Test("LinFusion == φ(Q)·mean(φ(K)Vᵀ) / (φ(Q)·mean φ(K) + 1e-4)")
  func linFusion() throws {
    let seed = testSeed()
    for (nq, nk, hq, hkv) in [(100, 100, 2, 2), (37, 300, 4, 2), (1, 5, 1, 1)] {
      let q = Tensor.randomNormal(shape: [2, hq, nq, 24], seed: seed)
      let k = Tensor.randomNormal(shape: [2, hkv, nk, 24], seed: seed + 1)
      let v = Tensor.randomNormal(shape: [2, hkv, nk, 12], seed: seed + 2)
      let out = try LinFusionAttention().forward(queries: q, keys: k, values: v, threads: 2)
      // Written with means, as the paper and reference do.
      let (fq, fk, vd) = (doubles(q).map(FeatureMap.eluPlusOne.apply), doubles(k).map(FeatureMap.eluPlusOne.apply), doubles(v))
      var ref = [Double](repeating: 0, count: 2 * hq * nq * 12)
      for b in 0..<2 { for h in 0..<hq {
        let g = h / (hq / hkv)
        var kv = [Double](repeating: 0, count: 24 * 12), km = [Double](repeating: 0, count: 24)
        for j in 0..<nk { for d in 0..<24 {
          let kk = fk[((b * hkv + g) * nk + j) * 24 + d]
          km[d] += kk / Double(nk)
          for c in 0..<12 { kv[d * 12 + c] += kk * vd[((b * hkv + g) * nk + j) * 12 + c] / Double(nk) }
        } }
        for i in 0..<nq {
          let qi = ((b * hq + h) * nq + i) * 24
          var z = 1e-4
          for d in 0..<24 { z += fq[qi + d] * km[d] }
          for c in 0..<12 { ref[((b * hq + h) * nq + i) * 12 + c] = (0..<24).reduce(0.0) { $0 + fq[qi + $1] * kv[$1 * 12 + c] } / z }
        }
      } }
      #expect(relativeError(out, ref) <= 1e-5, "nq\(nq) nk\(nk) seed \(seed)")
    }
    #expect(throws: SubqError.self) {
      try LinFusionAttention().mix(.attention(Tensor(shape: [1, 1, 4, 4]), Tensor(shape: [1, 1, 4, 4]), Tensor(shape: [1, 1, 4, 4])),
                                   weights: MixerWeights(), options: MixerOptions(causal: true))
    }
  }

  @Test("PoNet == GA + SMP + LMP by definition", arguments: [1, 3, 7])
  func ponet(segments: Int) throws {
    let seed = testSeed()
    for (B, N, C, H) in [(2, 50, 24, 3), (1, 1, 8, 2), (1, 301, 40, 4), (1, 97, 33, 1)] {
      let m = try PoNetMixer(heads: H, segments: segments)
      var w = m.randomWeights(shape: MixerBenchShape(heads: 1, length: N, headDim: C, causal: false), seed: seed)
      if C == 33 { w.tensors["o_proj.bias"] = nil }  // optional bias absent = zero
      let x = Tensor.randomNormal(shape: [B, N, C], seed: seed + 9)
      let out = try m.mix(.sequence(x), weights: w, options: MixerOptions(threads: 2))
      let ref = ponetReference(x, w, heads: H, segments: segments)
      #expect(!hasNaN(out))
      let err = relativeError(out, ref)
      #expect(err <= 2e-5, "B\(B) N\(N) C\(C) H\(H) segments \(segments): \(err) seed \(seed)")
    }
  }

  func m2Weights(C: Int, N: Int, lmax: Int, bidirectional: Bool, residual: Bool, seed: UInt64) -> MixerWeights {
    var w = MonarchMixer().randomWeights(shape: MixerBenchShape(heads: 1, length: lmax, headDim: C, causal: !bidirectional), seed: seed)
    if residual {
      w.tensors["filter_fn2.k"] = Tensor.randomNormal(shape: [C, lmax], seed: seed + 5, std: 0.3)
      w.tensors["filter_fn2.bias"] = Tensor.randomNormal(shape: [C], seed: seed + 6)
      if bidirectional { w.tensors["filter_fn2.k_rev"] = Tensor.randomNormal(shape: [C, lmax], seed: seed + 7, std: 0.3) }
    }
    // Taps at N and beyond must never be read: make them huge, so a leak is loud.
    for name in ["filter_fn.k", "filter_fn.k_rev", "filter_fn2.k", "filter_fn2.k_rev"] where lmax > N {
      guard var t = w.tensors[name] else { continue }
      for c in 0..<C { for j in N..<lmax { t[c, j] = 1e30 } }
      w.tensors[name] = t
    }
    return w
  }

  @Test("Monarch Mixer (M2) == the reference pipeline with a direct convolution")
  func m2Mixer() throws {
    let seed = testSeed()
    for (B, N, lmax, C, bidirectional, residual) in [(2, 40, 40, 16, true, false), (1, 77, 100, 33, true, true), (2, 64, 64, 40, false, false),
                                                      (1, 130, 131, 8, false, true), (1, 1, 1, 3, true, false)] {
      let w = m2Weights(C: C, N: N, lmax: lmax, bidirectional: bidirectional, residual: residual, seed: seed)
      let x = Tensor.randomNormal(shape: [B, N, C], seed: seed + 11)
      let out = try MonarchMixer().mix(.sequence(x), weights: w, options: MixerOptions(causal: !bidirectional, threads: 2))
      let ref = m2Reference(x, w)
      #expect(!hasNaN(out))
      let err = relativeError(out, ref)
      #expect(err <= 1e-5, "B\(B) N\(N) C\(C) bidirectional \(bidirectional) residual \(residual): \(err) seed \(seed)")
    }
  }

  @Test("causal M2 has no look-ahead")
  func m2Causal() throws {
    let seed = testSeed()
    let (N, C) = (120, 24)
    let w = m2Weights(C: C, N: N, lmax: N, bidirectional: false, residual: true, seed: seed)
    var x = Tensor.randomNormal(shape: [1, N, C], seed: seed + 1)
    let a = try MonarchMixer().mix(.sequence(x), weights: w, options: MixerOptions(causal: true))
    // Replace every input after t = 60 with a fresh draw of the same scale.
    let fresh = Tensor.randomNormal(shape: [1, N, C], seed: seed + 2)
    for t in 61..<N { for c in 0..<C { x[0, t, c] = fresh[0, t, c] } }
    let b = try MonarchMixer().mix(.sequence(x), weights: w, options: MixerOptions(causal: true))
    var diff = 0.0, norm = 0.0, later = 0.0
    for t in 0..<N { for c in 0..<C {
      let d = Double(a[0, t, c] - b[0, t, c])
      if t <= 60 { diff += d * d; norm += Double(a[0, t, c] * a[0, t, c]) } else { later += d * d }
    } }
    // Outputs ≤ 60 change only by FFT rounding (the transform mixes all positions numerically);
    // a leak would move them as much as the later outputs moved.
    let worst = (diff / norm).squareRoot()
    #expect(later > 1, "the later outputs must change")
    #expect(worst <= 1e-5, "look-ahead \(worst), seed \(seed)")
  }

  @Test("weights: missing, unknown, mis-shaped and direction errors name the array")
  func weightErrors() throws {
    let (N, C) = (16, 8)
    let x = Tensor.randomNormal(shape: [1, N, C], seed: 1)
    let good = m2Weights(C: C, N: N, lmax: N, bidirectional: true, residual: false, seed: 3)
    func message(_ w: MixerWeights, causal: Bool = false) -> String {
      do { _ = try MonarchMixer().mix(.sequence(x), weights: w, options: MixerOptions(causal: causal)); return "" } catch { return error.description }
    }
    #expect(message(good) == "")
    var w = good; w.tensors["out_linear.bias"] = nil
    #expect(message(w).contains("out_linear.bias") && message(w).contains("missing"))
    w = good; w.tensors["bogus"] = Tensor(shape: [1])
    #expect(message(w).contains("unknown weight array 'bogus'"))
    w = good; w.tensors["in_linear.weight"] = Tensor(shape: [3 * C, C + 1])
    #expect(message(w).contains("in_linear.weight"))
    w = good; w.tensors["filter_fn.k"] = Tensor(shape: [C, N - 1])
    #expect(message(w).contains("filter_fn.k") && message(w).contains("Lmax"))
    #expect(message(good, causal: true).contains("filter_fn.k_rev"))
    #expect(message(MixerWeights()).contains("missing"))
    let p = try PoNetMixer(heads: 3)
    #expect(throws: SubqError.self) { try p.mix(.sequence(x), weights: p.randomWeights(shape: MixerBenchShape(heads: 1, length: N, headDim: C, causal: false), seed: 1), options: MixerOptions()) }
    #expect(throws: SubqError.self) { try LinearAttention().mix(.sequence(x), weights: MixerWeights(), options: MixerOptions()) }
    #expect(throws: SubqError.self) { try LinearAttention().mix(.attention(x, x, x), weights: MixerWeights(["w": Tensor(shape: [1])]), options: MixerOptions()) }
  }

  @Test("every registered mixer runs its benchmark entry point")
  func registry() throws {
    #expect(SequenceMixers.all.map { $0.info.name } == ["linear", "transnormer", "linfusion", "ponet", "monarch"])
    for t in SequenceMixers.all {
      let m = try t.init(parameters: MixerParameters())
      for causal in [false, true] where causal ? t.info.supportsCausal : t.info.supportsNonCausal {
        let b = try m.benchmark(MixerBenchShape(batch: 1, heads: 2, length: 100, headDim: 16, causal: causal, threads: 2), seed: 1)
        try b.run()
        #expect(b.flops > 0 && b.dataBytes > 0)
      }
      if !t.info.supportsCausal {
        #expect(throws: SubqError.self) { try m.benchmark(MixerBenchShape(length: 8, headDim: 4, causal: true), seed: 1) }
      }
    }
    #expect(throws: SubqError.self) { try SequenceMixers.make("nope") }
  }
}
