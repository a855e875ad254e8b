import Foundation
import SubqCore

/// The reference backward pass: every score, probability and gradient in Float64.
///
/// For each sequence and key/value head g it materializes, for every query head of the group, the
/// `[Nq, Nk]` scores S (mask, softcap and ALiBi as ``AttentionOptions`` defines them), the
/// probabilities P, dP = dO·Vᵀ and dS = P ∘ (dP − rowsum(P ∘ dP)), and accumulates
/// dQ = τ·(dS ∘ T)·K, dK += τ·(dS ∘ T)ᵀ·Q and dV += Pᵀ·dO (T is the softcap's tanh derivative),
/// summing dK and dV over the group's query heads. It recomputes the forward pass itself.
///
/// This is the specification the fast backward passes are tested against; it is itself checked
/// against central finite differences of the Float64 forward pass.
///
/// - Complexity: O(B·Hq·Nq·Nk·(D + Dv)) time, O(Nq·Nk) memory per worker thread.
extension NaiveAttention: DifferentiableAttentionMethod {
  public func gradients(
    queries: Tensor, keys: Tensor, values: Tensor, outputGradient: Tensor, options: AttentionOptions
  ) throws(SubqError) -> AttentionGradients {
    let r = try Self.referenceGradients(queries: queries, keys: keys, values: values, outputGradient: outputGradient, options: options)
    func tensor(_ shape: [Int], _ x: [Double]) -> Tensor { Tensor(shape: shape) { p in for i in p.indices { p[i] = Float(x[i]) } } }
    return AttentionGradients(queries: tensor(queries.shape, r.dq), keys: tensor(keys.shape, r.dk), values: tensor(values.shape, r.dv))
  }

  /// The Float64 gradients (flat, in the layouts of Q, K and V) and the validated problem.
  /// - Throws: ``SubqError`` for invalid inputs (as the forward pass), or a `outputGradient` whose
  ///   shape differs from the output's or that holds NaN/±∞ (unless allowed).
  public static func referenceGradients(
    queries: Tensor, keys: Tensor, values: Tensor, outputGradient: Tensor, options: AttentionOptions
  ) throws(SubqError) -> (dq: [Double], dk: [Double], dv: [Double], problem: AttentionProblem) {
    let p = try AttentionProblem.validate(op: "attention.naive.backward", queries: queries, keys: keys, values: values, options: options)
    try p.checkOutputLike(outputGradient, name: "dO", allowNonFinite: options.allowNonFinite)
    func doubles(_ t: Tensor) -> [Double] { t.withUnsafeBufferPointer { $0.map(Double.init) } }
    let g = gradients64(p, q: doubles(queries), k: doubles(keys), v: doubles(values), dout: doubles(outputGradient))
    return (g.dq, g.dk, g.dv, p)
  }

  /// The Float64 forward pass on Float64 inputs laid out as `p` describes: output and
  /// log-sum-exp (+∞ for rows that see no key). Used to check the gradients by finite differences.
  package static func forward64(_ p: AttentionProblem, q: [Double], k: [Double], v: [Double]) -> (output: [Double], lse: [Double]) {
    var out = [Double](repeating: 0, count: p.outputShape.reduce(1, *))
    var lse = [Double](repeating: .infinity, count: p.lseShape.reduce(1, *))
    for seq in p.sequences {
      for h in 0..<p.queryHeads {
        let probs = probabilities(p, seq, h, q, k)
        let g = p.kvHead(h)
        for i in 0..<seq.queryCount {
          let oBase = p.outputRows.offset(batch: seq.batch, head: h, row: seq.queryStart + i)
          lse[(seq.batch * p.queryHeads + h) * p.queryLength + seq.queryStart + i] = probs.lse[i]
          for j in 0..<seq.keyCount where probs.p[i * seq.keyCount + j] > 0 {
            let vBase = p.valueRows.offset(batch: seq.batch, head: g, row: seq.keyStart + j)
            for c in 0..<p.valueDim { out[oBase + c] += probs.p[i * seq.keyCount + j] * v[vBase + c] }
          }
        }
      }
    }
    return (out, lse)
  }

  /// Softmax probabilities `[nq][nk]` of one sequence and query head, the tanh of the softcap
  /// argument per element (0 without a softcap), and the log-sum-exp per query.
  private static func probabilities(
    _ p: AttentionProblem, _ seq: AttentionSequence, _ h: Int, _ q: [Double], _ k: [Double]
  ) -> (p: [Double], t: [Double], lse: [Double]) {
    let nq = seq.queryCount, nk = seq.keyCount
    let g = p.kvHead(h)
    let tau = Double(p.scale)
    let cap = p.softcap.map(Double.init)
    let slope = p.alibi.map { Double($0[seq.batch * p.queryHeads + h]) }
    var s = [Double](repeating: -.infinity, count: nq * nk)  // the O(N²) matrix
    var t = [Double](repeating: 0, count: nq * nk)
    var lse = [Double](repeating: .infinity, count: nq)
    for i in 0..<nq {
      let qBase = p.queryRows.offset(batch: seq.batch, head: h, row: seq.queryStart + i)
      var m = -Double.infinity
      for j in 0..<nk where p.isVisible(seq, query: i, key: j) {
        let kBase = p.keyRows.offset(batch: seq.batch, head: g, row: seq.keyStart + j)
        var x = 0.0
        for d in 0..<p.headDim { x += q[qBase + d] * k[kBase + d] }
        x *= tau
        if let cap {
          let th = Foundation.tanh(x / cap)
          t[i * nk + j] = th
          x = cap * th
        }
        if let slope { x -= slope * Double(abs(i + seq.offset - j)) }
        s[i * nk + j] = x
        m = Swift.max(m, x)
      }
      guard m > -.infinity else {
        for j in 0..<nk { s[i * nk + j] = 0 }
        continue
      }
      var l = 0.0
      for j in 0..<nk {
        let e = Foundation.exp(s[i * nk + j] - m)
        s[i * nk + j] = e
        l += e
      }
      for j in 0..<nk { s[i * nk + j] /= l }
      lse[i] = m + Foundation.log(l)
    }
    return (s, t, lse)
  }

  /// The Float64 gradients on Float64 inputs laid out as `p` describes.
  package static func gradients64(
    _ p: AttentionProblem, q: [Double], k: [Double], v: [Double], dout: [Double]
  ) -> (dq: [Double], dk: [Double], dv: [Double]) {
    var dq = [Double](repeating: 0, count: q.count)
    var dk = [Double](repeating: 0, count: k.count)
    var dv = [Double](repeating: 0, count: v.count)
    let items = p.sequences.count * p.keyValueHeads
    let D = p.headDim, Dv = p.valueDim
    let tau = Double(p.scale)
    dq.withUnsafeMutableBufferPointer { dqb in
      dk.withUnsafeMutableBufferPointer { dkb in
        dv.withUnsafeMutableBufferPointer { dvb in
          let dqp = SendablePointer(dqb.baseAddress!), dkp = SendablePointer(dkb.baseAddress!), dvp = SendablePointer(dvb.baseAddress!)
          // One worker per (sequence, key/value head): it owns that head's dK and dV rows and the
          // dQ rows of the group's query heads.
          Parallel.forEach(items, threads: p.threads) { item, _ in
            let seq = p.sequences[item / p.keyValueHeads]
            let g = item % p.keyValueHeads
            let nq = seq.queryCount, nk = seq.keyCount
            for h in (g * p.groupSize)..<((g + 1) * p.groupSize) {
              let probs = probabilities(p, seq, h, q, k)
              for i in 0..<nq {
                let qBase = p.queryRows.offset(batch: seq.batch, head: h, row: seq.queryStart + i)
                let oBase = p.outputRows.offset(batch: seq.batch, head: h, row: seq.queryStart + i)
                // dP_ij = dO_i · v_j and D_i = Σ_j P_ij dP_ij (= dO_i · O_i).
                var dP = [Double](repeating: 0, count: nk)
                var Di = 0.0
                for j in 0..<nk where probs.p[i * nk + j] > 0 {
                  let vBase = p.valueRows.offset(batch: seq.batch, head: g, row: seq.keyStart + j)
                  var x = 0.0
                  for c in 0..<Dv { x += dout[oBase + c] * v[vBase + c] }
                  dP[j] = x
                  Di += probs.p[i * nk + j] * x
                }
                for j in 0..<nk where probs.p[i * nk + j] > 0 {
                  let pij = probs.p[i * nk + j]
                  let kBase = p.keyRows.offset(batch: seq.batch, head: g, row: seq.keyStart + j)
                  let vBase = p.valueRows.offset(batch: seq.batch, head: g, row: seq.keyStart + j)
                  for c in 0..<Dv { dvp.pointer[vBase + c] += pij * dout[oBase + c] }
                  var ds = pij * (dP[j] - Di)
                  if p.softcap != nil {
                    let th = probs.t[i * nk + j]
                    ds *= 1 - th * th
                  }
                  ds *= tau
                  for d in 0..<D {
                    dqp.pointer[qBase + d] += ds * k[kBase + d]
                    dkp.pointer[kBase + d] += ds * q[qBase + d]
                  }
                }
              }
            }
          }
        }
      }
    }
    return (dq, dk, dv)
  }
}
