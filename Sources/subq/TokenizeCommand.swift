import ArgumentParser
import Foundation
import Subquadratic
import SubqLLM

/// `subq tokenize`: the token ids of a text under a GGUF model's tokenizer.
struct TokenizeCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "tokenize", abstract: "Print the token ids of a text (or their count) under a GGUF model's tokenizer.")

  @OptionGroup var modelOptions: ModelOptions
  @Option(help: "Text to tokenize.") var prompt: String?
  @Option(help: "Read the text from this file instead.") var text: String?
  @Flag(help: "Print only the number of tokens.") var count = false
  @Flag(name: .customLong("no-special"), help: "Treat special-token text such as <|im_start|> as plain text.") var noSpecial = false

  func run() throws {
    let body: String
    switch (prompt, text) {
    case let (p?, nil): body = p
    case let (nil, f?):
      guard let s = try? String(contentsOfFile: f, encoding: .utf8) else { throw SubqError.file(path: f, reason: "cannot be read as UTF-8 text") }
      body = s
    default: throw SubqError.argument(op: "tokenize", name: "--prompt", value: prompt == nil ? "missing" : "both", reason: "give exactly one of --prompt TEXT and --text FILE")
    }
    let model = try modelOptions.load()
    let ids = model.tokenizer.encode(body, parseSpecial: !noSpecial)
    print(count ? String(ids.count) : ids.map(String.init).joined(separator: " "))
  }
}
