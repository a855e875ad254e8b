import ArgumentParser
import Foundation
import Subquadratic
import SubqBench
import SubqLLM

/// `subq needle`: passkey retrieval accuracy over context lengths and depths, per method.
struct NeedleCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "needle",
    abstract: "Passkey retrieval in filler text: an accuracy grid (context × depth) per attention method.",
    discussion: """
      Each trial hides "The pass key is N" (a random 5-digit N) at the given depth of repeated filler sentences, \
      asks for it at the end, prefills the prompt through the attention method and decodes up to 8 tokens \
      greedily; the trial is correct when the first number in the answer is N. Context lengths are in tokens \
      (K = 1024) and must fit the model's context.
      """)

  @OptionGroup var modelOptions: ModelOptions
  @Option(help: "Context lengths in tokens, comma-separated (K = 1024).") var context = "4096,8192"
  @Option(help: "Needle depths in [0, 1], comma-separated.") var depths = "0.1,0.5,0.9"
  @Option(help: "Trials (different passkeys) per cell.") var trials = 1
  @Option(help: "Seed for the passkeys.") var seed: UInt64 = 1
  @Option(help: "Attention methods, comma-separated or repeated (see `subq methods`).") var attention: [String] = []
  @Flag(help: "Print every trial's answer on stderr.") var verbose = false
  @Flag(help: "Print JSON instead of tables.") var json = false

  func run() throws {
    try modelOptions.validateThreads()
    let methods = methodList(attention)
    try modelOptions.checkParamTargets(methods)
    let configs = try methods.map { try modelOptions.attention($0) }
    let lengths = try parseLengths(context, option: "--context")
    var ds: [Double] = []
    for part in depths.split(separator: ",") {
      guard let d = Double(part.trimmingCharacters(in: .whitespaces)), d >= 0, d <= 1 else {
        throw SubqError.argument(op: "needle", name: "--depths", value: depths, reason: "expected numbers in [0, 1] separated by commas")
      }
      ds.append(d)
    }
    if ds.isEmpty { throw SubqError.argument(op: "needle", name: "--depths", value: depths, reason: "empty list") }
    if trials < 1 { throw SubqError.argument(op: "needle", name: "--trials", value: "\(trials)", reason: "must be at least 1") }
    let model = try modelOptions.load()
    for n in lengths where n > model.config.contextLength {
      throw SubqError.argument(op: "needle", name: "--context", value: "\(n)", reason: "exceeds the model's context \(model.config.contextLength)")
    }
    // The same passkeys for every method.
    var rng = SeededGenerator(seed: seed)
    var keys: [[[String]]] = []
    for _ in lengths { keys.append(ds.map { _ in (0..<trials).map { _ in String(10_000 + Int(rng.next() % 90_000)) } }) }

    var all: [(String, [NeedleTrial])] = []
    for (name, att) in zip(methods, configs) {
      var done: [NeedleTrial] = []
      for (li, n) in lengths.enumerated() {
        let session = try LlamaSession(model: model, capacity: n, attention: att, threads: modelOptions.threadCount, cache: modelOptions.kvCache)
        for (di, d) in ds.enumerated() {
          for t in 0..<trials {
            let r = try LLMEvaluation.needleTrial(session: session, context: n, depth: d, passkey: keys[li][di][t])
            if verbose || !json {
              note(String(format: "%@ context %d depth %.2f: %@ (key %@, answer %@) prefill %.1f tok/s", name, n, d,
                          r.correct ? "found" : "missed", r.passkey, r.answer.debugDescription, Double(r.promptTokens) / r.prefillSeconds))
            }
            done.append(r)
          }
        }
      }
      all.append((name, done))
    }
    if json {
      struct Row: Encodable { var method: String; var trials: [NeedleTrial] }
      let enc = JSONEncoder()
      enc.outputFormatting = [.prettyPrinted, .sortedKeys]
      print(String(decoding: try enc.encode(all.map { Row(method: $0.0, trials: $0.1) }), as: UTF8.self))
      return
    }
    print(BuildInfo.summary)
    print("model \((modelOptions.path as NSString).lastPathComponent); \(trials) trial(s) per cell; accuracy by context (rows) and depth (columns)")
    for (name, done) in all {
      print("\nmethod \(name)")
      var table = TextTable(header: ["context"] + ds.map { String(format: "%.2f", $0) } + ["all"], rightAligned: Set(0...(ds.count + 1)))
      for n in lengths {
        var row = [String(n)]
        for d in ds {
          let cell = done.filter { $0.context == n && $0.depth == d }
          row.append("\(cell.filter(\.correct).count)/\(cell.count)")
        }
        let line = done.filter { $0.context == n }
        row.append(String(format: "%.0f%%", 100 * Double(line.filter(\.correct).count) / Double(line.count)))
        table.add(row)
      }
      print(table.render())
    }
  }
}
