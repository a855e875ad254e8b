import Foundation
import SubqCore

/// Perplexity of a model on a token sequence.
public struct PerplexityResult: Sendable, Codable {
  /// exp(mean negative log-likelihood per scored token).
  public var perplexity: Double
  /// Mean negative log-likelihood (nats per token).
  public var meanNLL: Double
  /// Tokens whose probability was scored.
  public var scoredTokens: Int
  /// Windows evaluated.
  public var windows: Int
  /// Tokens run through the model (all windows).
  public var processedTokens: Int
  /// Wall-clock seconds of the forward passes (logits included).
  public var seconds: Double
  /// `processedTokens / seconds`.
  public var tokensPerSecond: Double { seconds > 0 ? Double(processedTokens) / seconds : 0 }
}

/// Passkey retrieval: one trial.
public struct NeedleTrial: Sendable, Codable {
  public var context: Int
  public var depth: Double
  public var passkey: String
  /// The generated continuation.
  public var answer: String
  public var correct: Bool
  /// Prompt tokens actually used.
  public var promptTokens: Int
  public var prefillSeconds: Double
}

/// Long-context evaluations of a session.
public enum LLMEvaluation {
  /// Sliding-window perplexity.
  ///
  /// Windows of `context` tokens start every `stride` tokens (the last one ends at the end of the
  /// sequence); each window is run from an empty cache and scores only the targets that no earlier
  /// window scored, so every target after the first window is predicted from at least
  /// `context − stride` tokens of context. Token t is scored as −log p(tokens[t] | tokens[<t]).
  ///
  /// - Throws: ``SubqError/argument(op:name:value:reason:)`` for fewer than 2 tokens, a context
  ///   outside 2…session capacity, or a stride outside 1…context.
  public static func perplexity(
    session: LlamaSession, tokens: [Int], context: Int, stride: Int, progress: ((Int, Int) -> Void)? = nil
  ) throws(SubqError) -> PerplexityResult {
    guard tokens.count >= 2 else {
      throw .argument(op: "llm.perplexity", name: "text", value: "\(tokens.count) tokens", reason: "needs at least 2 tokens")
    }
    guard context >= 2, context <= session.capacity else {
      throw .argument(op: "llm.perplexity", name: "context", value: "\(context)", reason: "must be in 2...\(session.capacity)")
    }
    guard stride >= 1, stride <= context else {
      throw .argument(op: "llm.perplexity", name: "stride", value: "\(stride)", reason: "must be in 1...\(context)")
    }
    var nll = 0.0, scored = 0, windows = 0, processed = 0
    var prevEnd = 0
    var s = 0
    let t0 = Date()
    while true {
      let e = Swift.min(s + context, tokens.count)
      // Targets t in max(prevEnd, s+1)..<e, predicted at window rows t−1−s.
      let first = Swift.max(prevEnd, s + 1)
      if first < e {
        session.reset()
        let window = Array(tokens[s..<e])
        let rows = (first - 1 - s)..<(e - 1 - s)
        try session.prefill(window, logitsFor: rows) { row, logits in
          nll -= logProbability(logits, target: tokens[s + row + 1])
        }
        scored += rows.count
        processed += window.count
        windows += 1
        progress?(e, tokens.count)
      }
      prevEnd = e
      if e >= tokens.count { break }
      s += stride
    }
    let secs = Date().timeIntervalSince(t0)
    let mean = nll / Double(scored)
    return PerplexityResult(perplexity: Foundation.exp(mean), meanNLL: mean, scoredTokens: scored, windows: windows,
                            processedTokens: processed, seconds: secs)
  }

  static let needleIntro = "There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you about the important information there.\n"
  static let needleFiller = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

  /// The passkey prompt: an instruction, filler sentences with the needle sentence inserted after
  /// `depth` of them, and the question. Its length is the largest whole number of filler
  /// sentences that keeps the prompt within `context − answerTokens` tokens.
  public static func needlePrompt(tokenizer: Tokenizer, context: Int, depth: Double, passkey: String, answerTokens: Int = 8) throws(SubqError) -> [Int] {
    guard depth >= 0, depth <= 1 else {
      throw .argument(op: "llm.needle", name: "depth", value: "\(depth)", reason: "must be in 0...1")
    }
    let intro = tokenizer.encode(needleIntro, addSpecial: true, parseSpecial: false)
    let filler = tokenizer.encode(needleFiller, addSpecial: false, parseSpecial: false)
    let needle = tokenizer.encode(" The pass key is \(passkey). Remember it. \(passkey) is the pass key.", addSpecial: false, parseSpecial: false)
    let question = tokenizer.encode("\nWhat is the pass key? The pass key is", addSpecial: false, parseSpecial: false)
    let fixed = intro.count + needle.count + question.count + answerTokens
    let reps = (context - fixed) / filler.count
    guard reps >= 1 else {
      throw .argument(op: "llm.needle", name: "context", value: "\(context)", reason: "too short for the passkey prompt (needs at least \(fixed + filler.count) tokens)")
    }
    let at = Int((depth * Double(reps)).rounded())
    var out = intro
    for r in 0..<reps {
      if r == at { out += needle }
      out += filler
    }
    if at >= reps { out += needle }
    return out + question
  }

  /// One passkey trial: prefill the prompt, decode greedily up to `answerTokens` tokens, and
  /// check that the first number in the answer is the passkey.
  public static func needleTrial(session: LlamaSession, context: Int, depth: Double, passkey: String, answerTokens: Int = 8) throws(SubqError) -> NeedleTrial {
    let tok = session.model.tokenizer
    let prompt = try needlePrompt(tokenizer: tok, context: context, depth: depth, passkey: passkey, answerTokens: answerTokens)
    session.reset()
    let t0 = Date()
    var logits = try session.prefill(prompt)
    let prefill = Date().timeIntervalSince(t0)
    var out: [Int] = []
    for _ in 0..<answerTokens {
      let next = Sampler.argmax(logits)
      if tok.stopTokens.contains(next) { break }
      out.append(next)
      if session.position >= session.capacity { break }
      logits = try session.decode(next)
    }
    let answer = tok.decode(out)
    let firstNumber = answer.split(whereSeparator: { !$0.isNumber }).first.map(String.init) ?? ""
    return NeedleTrial(context: context, depth: depth, passkey: passkey, answer: answer, correct: firstNumber == passkey,
                       promptTokens: prompt.count, prefillSeconds: prefill)
  }
}
