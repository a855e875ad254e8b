import ArgumentParser
import Foundation
import Subquadratic
import SubqLLM

/// `subq generate`: stream a completion from a GGUF model.
struct GenerateCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "generate",
    abstract: "Generate text with a GGUF LLaMA-family model, streaming tokens; reports prefill and decode tokens/s.",
    discussion: """
      The prompt is run in one batched prefill through the --attention method (any registered method), \
      then tokens are decoded one at a time against the KV cache (flash: the exact split-KV decode kernel; \
      other methods: the method itself over the cached keys). Temperature 0 is greedy decoding. \
      Special tokens written in the prompt (such as <|im_start|>) are recognized; --chat wraps the prompt \
      in the ChatML template of instruction-tuned models.
      """)

  @OptionGroup var modelOptions: ModelOptions
  @Option(help: "Prompt text.") var prompt: String?
  @Option(name: .customLong("prompt-file"), help: "Read the prompt from this file instead.") var promptFile: String?
  @Flag(help: "Wrap the prompt in the ChatML chat template (<|im_start|>user … <|im_start|>assistant).") var chat = false
  @Option(name: .customLong("max-tokens"), help: "Tokens to generate at most.") var maxTokens = 128
  @Option(help: "Sampling temperature (0: greedy).") var temperature: Float = 0
  @Option(name: .customLong("top-k"), help: "Sample among the k most likely tokens.") var topK = 40
  @Option(name: .customLong("top-p"), help: "Nucleus sampling: smallest set of tokens with this probability mass.") var topP: Float = 0.95
  @Option(help: "Sampling seed.") var seed: UInt64 = 0
  @Option(help: "Attention method (see `subq methods`).") var attention = "flash"
  @Option(help: "KV cache positions (default: prompt + max tokens, at most the model's context).") var context: Int?
  @Flag(help: "Print only the generated text (no timing report on stderr).") var quiet = false

  func run() throws {
    try modelOptions.validateThreads()
    try modelOptions.checkParamTargets([attention])
    if maxTokens < 0 {
      throw SubqError.argument(op: "generate", name: "--max-tokens", value: "\(maxTokens)", reason: "must be ≥ 0")
    }
    var text: String
    switch (prompt, promptFile) {
    case let (p?, nil): text = p
    case let (nil, f?):
      guard let s = try? String(contentsOfFile: f, encoding: .utf8) else { throw SubqError.file(path: f, reason: "cannot be read as UTF-8 text") }
      text = s
    case (nil, nil): throw SubqError.argument(op: "generate", name: "--prompt", value: "missing", reason: "give --prompt TEXT or --prompt-file FILE")
    default: throw SubqError.argument(op: "generate", name: "--prompt-file", value: promptFile!, reason: "give either --prompt or --prompt-file, not both")
    }
    var sampler = try Sampler(temperature: temperature, topK: topK, topP: topP, seed: seed)
    let att = try modelOptions.attention(attention)
    let model = try modelOptions.load()
    let tok = model.tokenizer
    if chat {
      guard tok.id(of: "<|im_start|>") != nil, tok.id(of: "<|im_end|>") != nil else {
        throw SubqError.unsupported(op: "generate", feature: "--chat", reason: "the model's vocabulary has no <|im_start|>/<|im_end|> tokens")
      }
      text = "<|im_start|>user\n\(text)<|im_end|>\n<|im_start|>assistant\n"
    }
    let ids = tok.encode(text)
    if ids.isEmpty { throw SubqError.argument(op: "generate", name: "--prompt", value: "\"\"", reason: "the prompt has no tokens") }
    let capacity = context ?? min(model.config.contextLength, ids.count + maxTokens)
    if ids.count > capacity {
      throw SubqError.argument(op: "generate", name: "--prompt", value: "\(ids.count) tokens",
                               reason: "longer than the context (\(capacity) positions)")
    }
    let session = try LlamaSession(model: model, capacity: capacity, attention: att, threads: modelOptions.threadCount, cache: modelOptions.kvCache)
    var logits = try session.prefill(ids)
    var stream = StreamingDecoder(tok)
    let out = FileHandle.standardOutput
    var generated = 0
    var stop = "max tokens"
    while generated < maxTokens {
      let next = sampler.sample(logits)
      if tok.stopTokens.contains(next) { stop = "end of text"; break }
      out.write(Data(stream.push(next).utf8))
      generated += 1
      if generated == maxTokens { break }
      if session.position >= session.capacity { stop = "context full"; break }
      logits = try session.decode(next)
    }
    out.write(Data((stream.flush() + "\n").utf8))
    if !quiet {
      let t = session.timings
      note(BuildInfo.summary)
      note(String(format: "model %@: %d layers, dim %d, %d/%d heads, %@; attention %@; %@ KV cache; %d threads",
                  (model.file.path as NSString).lastPathComponent, model.config.layers, model.config.dim, model.config.heads,
                  model.config.kvHeads, formatBytes(Double(model.weightBytes)), attention, session.cachePrecision.rawValue, session.threads))
      note(String(format: "prefill: %d tokens in %.3f s = %.1f tokens/s", t.prefillTokens, t.prefillSeconds, t.prefillTokensPerSecond))
      note(String(format: "decode:  %d tokens in %.3f s = %.1f tokens/s (context %d → %d; stopped: %@)",
                  t.decodeTokens, t.decodeSeconds, t.decodeTokensPerSecond, ids.count, session.position, stop))
    }
  }
}

/// Formats a byte count ("98.4 MiB").
private func formatBytes(_ b: Double) -> String {
  let units = ["B", "KiB", "MiB", "GiB"]
  var v = b, u = 0
  while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
  return String(format: u == 0 ? "%.0f %@" : "%.1f %@", v, units[u])
}
