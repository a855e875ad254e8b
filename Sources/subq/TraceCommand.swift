import ArgumentParser
import Foundation
import Subquadratic
import SubqBench
import SubqLLM

/// `subq trace`: records chosen layers' attention queries, keys, values and outputs while the
/// model reads a text, as `.npy` files.
struct TraceCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "trace",
    abstract: "Record layers' attention inputs (post-RoPE Q, K, V) and outputs while a GGUF model reads a text.",
    discussion: """
      The text is tokenized and its first --tokens tokens (default: all, at most the model's context) run through \
      the model in one batched prefill with exact attention (flash, Float32 KV cache). For every layer in --layers \
      the command writes, under --out-dir: layer-L/q.npy [Hq, N, D] and layer-L/k.npy [Hkv, N, D] after RoPE, \
      layer-L/v.npy [Hkv, N, D] and layer-L/out.npy [Hq, N, D] (the attention output before Wo), all Float32, and \
      trace.json (model, text, token ids, shapes, scale). The model's attention is causal with scale 1/sqrt(D) \
      and grouped queries (query head h reads key/value head h / (Hq / Hkv)): attention of q, k, v with those \
      settings gives out. `subq decode-bench --method tokenselect|retrieval --trace DIR/layer-L` replays a layer \
      as a decode benchmark. Memory: about 6 KiB per token and layer for SmolLM2-135M, plus the session.
      """)

  @OptionGroup var modelOptions: ModelOptions
  @Option(help: "UTF-8 text file to read.") var text: String
  @Option(help: "Tokens to run (default: the whole text, at most the model's context).") var tokens: Int?
  @Option(help: "Layers to record, comma-separated (0-based).") var layers: String
  @Option(name: .customLong("out-dir"), help: "Directory for layer-L/{q,k,v,out}.npy and trace.json (created if missing).")
  var outDir: String

  func run() throws {
    let op = "trace"
    try modelOptions.validateThreads()
    if !modelOptions.params.isEmpty {
      throw SubqError.unsupported(op: op, feature: "--param", reason: "the trace runs exact attention (flash), which takes no parameters")
    }
    if modelOptions.kvCache != .float32 {
      throw SubqError.unsupported(op: op, feature: "--kv-cache \(modelOptions.kvCache.rawValue)",
                                  reason: "the trace records Float32 keys and values; a rounded cache would make out.npy differ from them")
    }
    var layerList: [Int] = []
    for part in layers.split(separator: ",", omittingEmptySubsequences: false) {
      guard let l = Int(part.trimmingCharacters(in: .whitespaces)), l >= 0 else {
        throw SubqError.argument(op: op, name: "--layers", value: layers, reason: "expected layer numbers ≥ 0 separated by commas")
      }
      layerList.append(l)
    }
    if let tokens, tokens < 1 { throw SubqError.argument(op: op, name: "--tokens", value: "\(tokens)", reason: "must be at least 1") }
    guard let body = try? String(contentsOfFile: text, encoding: .utf8) else {
      throw SubqError.file(path: text, reason: FileManager.default.fileExists(atPath: text) ? "cannot be read as UTF-8 text" : "no such file")
    }
    var isDir: ObjCBool = false
    if FileManager.default.fileExists(atPath: outDir, isDirectory: &isDir), !isDir.boolValue {
      throw SubqError.file(path: outDir, reason: "exists and is not a directory (--out-dir)")
    }
    let model = try modelOptions.load()
    let c = model.config
    for l in layerList where l >= c.layers {
      throw SubqError.argument(op: op, name: "--layers", value: "\(l)", reason: "must be in 0..<\(c.layers) (the model's layers)")
    }
    let all = model.tokenizer.encode(body)
    let n: Int
    if let tokens {
      if tokens > c.contextLength {
        throw SubqError.argument(op: op, name: "--tokens", value: "\(tokens)", reason: "exceeds the model's context \(c.contextLength)")
      }
      if tokens > all.count {
        throw SubqError.argument(op: op, name: "--tokens", value: "\(tokens)", reason: "the text \(text) has only \(all.count) tokens")
      }
      n = tokens
    } else {
      n = min(all.count, c.contextLength)
    }
    if n < 1 { throw SubqError.argument(op: op, name: "--text", value: text, reason: "has no tokens") }
    let ids = Array(all[0..<n])

    let session = try modelOptions.session(model, capacity: n, attention: .exact)
    let trace = try session.startTrace(layers: layerList)
    note("trace: \(n) tokens of \(text) through \((modelOptions.path as NSString).lastPathComponent), recording layers \(trace.layers.map(String.init).joined(separator: ","))…")
    _ = try session.prefill(ids)
    let records = try trace.layers.map { l throws(SubqError) in try trace.layer(l) }

    // Everything is computed: write the files.
    let fm = FileManager.default
    do { try fm.createDirectory(atPath: outDir, withIntermediateDirectories: true) } catch {
      throw SubqError.file(path: outDir, reason: "cannot create the directory: \(error.localizedDescription)")
    }
    struct Meta: Encodable {
      var build: String, model: String, text: String, tokens: Int, layers: [Int]
      var heads: Int, kvHeads: Int, headDim: Int, scale: Double, causal: Bool, ropeTheta: Double
      var files: [String: String]
      var tokenIds: [Int]
    }
    var files: [String: String] = [:]
    for r in records {
      let dir = (outDir as NSString).appendingPathComponent("layer-\(r.layer)")
      do { try fm.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch {
        throw SubqError.file(path: dir, reason: "cannot create the directory: \(error.localizedDescription)")
      }
      for (name, t) in [("q", r.queries), ("k", r.keys), ("v", r.values), ("out", r.output)] {
        try NPY.write(t, to: (dir as NSString).appendingPathComponent("\(name).npy"))
      }
      files["layer-\(r.layer)"] = "q.npy [\(c.heads), \(n), \(c.headDim)], k.npy and v.npy [\(c.kvHeads), \(n), \(c.headDim)], out.npy [\(c.heads), \(n), \(c.headDim)]"
    }
    let meta = Meta(build: BuildInfo.summary, model: modelOptions.path, text: text, tokens: n, layers: trace.layers,
                    heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, scale: 1 / Double(c.headDim).squareRoot(), causal: true,
                    ropeTheta: c.ropeTheta, files: files, tokenIds: ids)
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
    try AtomicFile.write(try enc.encode(meta), to: (outDir as NSString).appendingPathComponent("trace.json"))
    print("traced \(n) tokens (Hq=\(c.heads) Hkv=\(c.kvHeads) D=\(c.headDim)), layers \(trace.layers.map(String.init).joined(separator: ",")) → \(outDir)/layer-L/{q,k,v,out}.npy, trace.json"
          + String(format: "  (prefill %.1f s)", session.timings.prefillSeconds))
  }
}
