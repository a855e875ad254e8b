import Foundation
import SubqCore
import SubqKernels

/// Picks the next token from logits: greedy at temperature 0, otherwise softmax sampling at the
/// given temperature restricted to the `topK` most likely tokens and to the smallest set of them
/// whose probability reaches `topP` (nucleus sampling), with a seeded generator.
public struct Sampler: Sendable {
  public let temperature: Float
  public let topK: Int
  public let topP: Float
  var rng: SeededGenerator

  /// - Throws: ``SubqError/argument(op:name:value:reason:)`` for a negative or non-finite
  ///   temperature, `topK` < 1 or `topP` outside (0, 1].
  public init(temperature: Float = 0, topK: Int = 40, topP: Float = 0.95, seed: UInt64 = 0) throws(SubqError) {
    guard temperature >= 0, temperature.isFinite else {
      throw .argument(op: "sampler", name: "temperature", value: "\(temperature)", reason: "must be a finite value ≥ 0 (0 is greedy)")
    }
    guard topK >= 1 else { throw .argument(op: "sampler", name: "top-k", value: "\(topK)", reason: "must be at least 1") }
    guard topP > 0, topP <= 1 else { throw .argument(op: "sampler", name: "top-p", value: "\(topP)", reason: "must be in (0, 1]") }
    self.temperature = temperature
    self.topK = topK
    self.topP = topP
    rng = SeededGenerator(seed: seed)
  }

  /// The index of the largest logit (the lowest index among ties).
  public static func argmax(_ logits: [Float]) -> Int {
    var best = 0
    for i in 1..<logits.count where logits[i] > logits[best] { best = i }
    return best
  }

  /// The next token.
  public mutating func sample(_ logits: [Float]) -> Int {
    if temperature == 0 { return Sampler.argmax(logits) }
    // Top-k candidates, most likely first.
    let k = Swift.min(topK, logits.count)
    var idx = Array(0..<logits.count)
    idx.sort { logits[$0] > logits[$1] || (logits[$0] == logits[$1] && $0 < $1) }
    let cand = Array(idx.prefix(k))
    let m = logits[cand[0]]
    var p = cand.map { Double(Foundation.exp(Double((logits[$0] - m) / temperature))) }
    let total = p.reduce(0, +)
    p = p.map { $0 / total }
    // Nucleus: keep the smallest prefix whose mass reaches topP.
    var keep = p.count, acc = 0.0
    for (i, x) in p.enumerated() {
      acc += x
      if acc >= Double(topP) { keep = i + 1; break }
    }
    let mass = p.prefix(keep).reduce(0, +)
    var u = rng.nextUnit() * mass
    for i in 0..<keep {
      u -= p[i]
      if u < 0 { return cand[i] }
    }
    return cand[keep - 1]
  }
}

/// Natural-log softmax probability of `target` under `logits`: `l_t − m − log Σ e^(l_i − m)`, the
/// sum in Float32 lanes with the vector exponential (relative error ≈ 1e-6 on the sum, far below
/// what a perplexity reported to four digits can show).
public func logProbability(_ logits: UnsafeBufferPointer<Float>, target: Int) -> Double {
  let n = logits.count
  let m = maxElement(logits.baseAddress!, n)
  let sum = withUnsafeTemporaryAllocation(of: Float.self, capacity: n) { tmp -> Float in
    tmp.baseAddress!.update(from: logits.baseAddress!, count: n)
    return expShiftSum(tmp.baseAddress!, shift: m, n)
  }
  return Double(logits[target] - m) - Foundation.log(Double(sum))
}
