import ArgumentParser
import Foundation
import Subquadratic
import SubqBench
import SubqLLM

/// `subq perplexity`: sliding-window perplexity of a text file, per attention method.
struct PerplexityCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "perplexity",
    abstract: "Perplexity of a text file under a GGUF model, per attention method, with the delta against exact attention.",
    discussion: """
      The text is tokenized and cut into windows of --context tokens every --stride tokens; each window is one \
      batched prefill through the attention method, and scores only the tokens no earlier window scored. Exact \
      attention (flash) is always evaluated first, as the baseline of the delta column. Prefill tokens/s counts \
      every token run through the model (logits included).
      """)

  @OptionGroup var modelOptions: ModelOptions
  @Option(help: "UTF-8 text file to evaluate.") var text: String
  @Option(help: "Window length in tokens (at most the model's context).") var context = 2048
  @Option(help: "Tokens between window starts (default: context / 2).") var stride: Int?
  @Option(name: .customLong("max-tokens"), help: "Evaluate only the first N tokens of the text.") var maxTokens: Int?
  @Option(help: "Attention methods, comma-separated or repeated (see `subq methods`).") var attention: [String] = []
  @Flag(help: "Print JSON instead of a table.") var json = false

  func run() throws {
    try modelOptions.validateThreads()
    var methods = methodList(attention)
    if methods.first != "flash" { methods.removeAll { $0 == "flash" }; methods.insert("flash", at: 0) }
    try modelOptions.checkParamTargets(methods)
    let configs = try methods.map { try modelOptions.attention($0) }
    if let maxTokens, maxTokens < 2 {
      throw SubqError.argument(op: "perplexity", name: "--max-tokens", value: "\(maxTokens)", reason: "must be at least 2")
    }
    guard let body = try? String(contentsOfFile: text, encoding: .utf8) else {
      throw SubqError.file(path: text, reason: FileManager.default.fileExists(atPath: text) ? "cannot be read as UTF-8 text" : "no such file")
    }
    let model = try modelOptions.load()
    if context < 2 || context > model.config.contextLength {
      throw SubqError.argument(op: "perplexity", name: "--context", value: "\(context)", reason: "must be in 2...\(model.config.contextLength) (the model's context)")
    }
    let s = stride ?? max(1, context / 2)
    if s < 1 || s > context {
      throw SubqError.argument(op: "perplexity", name: "--stride", value: "\(s)", reason: "must be in 1...\(context)")
    }
    var tokens = model.tokenizer.encode(body)
    if let maxTokens, tokens.count > maxTokens { tokens = Array(tokens[0..<maxTokens]) }
    if tokens.count < 2 { throw SubqError.argument(op: "perplexity", name: "--text", value: text, reason: "has fewer than 2 tokens") }
    let window = min(context, tokens.count)
    var results: [(String, PerplexityResult)] = []
    for (name, att) in zip(methods, configs) {
      let session = try LlamaSession(model: model, capacity: window, attention: att, threads: modelOptions.threadCount, cache: modelOptions.kvCache)
      if !json { note("\(name): evaluating \(tokens.count) tokens, context \(window), stride \(s)…") }
      let r = try LLMEvaluation.perplexity(session: session, tokens: tokens, context: window, stride: s)
      results.append((name, r))
    }
    if json {
      struct Row: Encodable { var method: String; var result: PerplexityResult; var tokensPerSecond: Double; var deltaVsExact: Double }
      struct Report: Encodable { var build: String; var model: String; var text: String; var tokens: Int; var context: Int; var stride: Int; var threads: Int; var rows: [Row] }
      let base = results[0].1.perplexity
      let rep = Report(build: BuildInfo.summary, model: modelOptions.path, text: text, tokens: tokens.count, context: window, stride: s,
                       threads: modelOptions.threadCount,
                       rows: results.map { Row(method: $0.0, result: $0.1, tokensPerSecond: $0.1.tokensPerSecond, deltaVsExact: $0.1.perplexity - base) })
      let enc = JSONEncoder()
      enc.outputFormatting = [.prettyPrinted, .sortedKeys]
      print(String(decoding: try enc.encode(rep), as: UTF8.self))
      return
    }
    print(BuildInfo.summary)
    print("\(MachineInfo.cpuModel), \(MachineInfo.cores) cores, \(modelOptions.threadCount) threads")
    print("model \((modelOptions.path as NSString).lastPathComponent); text \(text): \(tokens.count) tokens; context \(window), stride \(s)")
    var table = TextTable(header: ["method", "perplexity", "Δ vs exact", "NLL/token", "scored", "windows", "prefill tok/s"], rightAligned: Set(1..<7))
    let base = results[0].1.perplexity
    for (name, r) in results {
      table.add([name, String(format: "%.4f", r.perplexity), name == "flash" ? "—" : String(format: "%+.4f", r.perplexity - base),
                 String(format: "%.4f", r.meanNLL), String(r.scoredTokens), String(r.windows), String(format: "%.1f", r.tokensPerSecond)])
    }
    print(table.render())
  }
}
