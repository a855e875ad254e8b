import Foundation
import SubqAttention
import SubqCore

/// What a sequence mixer takes as input.
public enum MixerInputKind: String, Sendable, CaseIterable, Codable {
  /// Queries, keys and values `[B, H, N, D]` (keys/values may have fewer heads, `Hq % Hkv == 0`),
  /// like softmax attention; the output is `[B, Hq, N, Dv]`.
  case attention
  /// One tensor `[B, N, C]` on the model dimension, mixed with the mixer's weights; the output is
  /// `[B, N, C]`.
  case sequence
}

/// A weight array a mixer reads, with its file name in a `--weights` directory.
public struct MixerWeightSpec: Sendable, Equatable {
  /// The name, also the file stem: `<name>.npy`.
  public var name: String
  /// The expected shape in symbols (`C` model width, `H` heads, `N` length, …).
  public var shape: String
  /// What it is and, for imported models, which reference parameter it corresponds to.
  public var summary: String
  /// Whether the mixer cannot run without it (optional ones default as the summary says).
  public var required: Bool

  public init(_ name: String, shape: String, required: Bool = true, _ summary: String) {
    self.name = name
    self.shape = shape
    self.summary = summary
    self.required = required
  }
}

/// Static description of a sequence mixer, for `subq mix`, `subq mix-bench` and `subq compare`.
public struct MixerInfo: Sendable {
  /// Registry name (`linear`, `transnormer`, …), used with `--method`.
  public var name: String
  /// One-line summary.
  public var summary: String
  /// The paper it implements.
  public var paper: String
  /// Time and extra-memory complexity.
  public var complexity: String
  /// Its input form.
  public var input: MixerInputKind
  /// Whether a causal form exists / a non-causal form exists.
  public var supportsCausal: Bool
  public var supportsNonCausal: Bool
  /// Tunable parameters (`--param name=value`).
  public var parameters: [MethodParameter]
  /// Weight arrays it reads (empty for mixers that take Q, K, V directly).
  public var weights: [MixerWeightSpec]

  public init(
    name: String, summary: String, paper: String, complexity: String, input: MixerInputKind,
    supportsCausal: Bool, supportsNonCausal: Bool, parameters: [MethodParameter] = [], weights: [MixerWeightSpec] = []
  ) {
    self.name = name
    self.summary = summary
    self.paper = paper
    self.complexity = complexity
    self.input = input
    self.supportsCausal = supportsCausal
    self.supportsNonCausal = supportsNonCausal
    self.parameters = parameters
    self.weights = weights
  }

  /// The operation name used in errors: `mix.<name>`.
  public var op: String { "mix.\(name)" }

  /// Throws when `causal` asks for a form the mixer does not have.
  public func check(causal: Bool) throws(SubqError) {
    if causal && !supportsCausal {
      throw .unsupported(op: op, feature: "causal", reason: "\(name) is non-causal only, as its paper defines it")
    }
    if !causal && !supportsNonCausal {
      throw .unsupported(op: op, feature: "non-causal", reason: "\(name) is causal only")
    }
  }
}

/// Parameter values given to a mixer by name, as text (from `--param` or code).
///
/// The typed accessors fall back to the declared default and throw
/// ``SubqError/argument(op:name:value:reason:)`` (op `mix.<name>`) for values that do not parse or
/// are out of range; ``validate(for:)`` rejects names the mixer does not declare.
public struct MixerParameters: Sendable, Equatable {
  public var values: [String: String]

  public init(_ values: [String: String] = [:]) { self.values = values }

  /// Throws for a name `info` does not declare.
  public func validate(for info: MixerInfo) throws(SubqError) {
    let known = Set(info.parameters.map(\.name))
    for name in values.keys.sorted() where !known.contains(name) {
      let list = known.isEmpty ? "it takes none" : "known: " + known.sorted().joined(separator: ", ")
      throw .argument(op: info.op, name: name, value: values[name]!, reason: "unknown parameter (\(list))")
    }
  }

  private func raw(_ name: String, _ info: MixerInfo) -> String {
    if let v = values[name] { return v }
    guard let p = info.parameters.first(where: { $0.name == name }) else {
      preconditionFailure("\(info.name) reads undeclared parameter \(name)")
    }
    return p.defaultValue
  }

  /// An integer parameter in `range`.
  public func int(_ name: String, _ info: MixerInfo, in range: ClosedRange<Int>) throws(SubqError) -> Int {
    let s = raw(name, info)
    guard let v = Int(s) else { throw .argument(op: info.op, name: name, value: s, reason: "not an integer") }
    guard range.contains(v) else {
      throw .argument(op: info.op, name: name, value: s, reason: "must be in \(range.lowerBound)...\(range.upperBound)")
    }
    return v
  }

  /// A floating-point parameter in `range`.
  public func double(_ name: String, _ info: MixerInfo, in range: ClosedRange<Double>) throws(SubqError) -> Double {
    let s = raw(name, info)
    guard let v = Double(s), v.isFinite else { throw .argument(op: info.op, name: name, value: s, reason: "not a finite number") }
    guard range.contains(v) else {
      throw .argument(op: info.op, name: name, value: s, reason: "must be in \(range.lowerBound)...\(range.upperBound)")
    }
    return v
  }

  /// A Boolean parameter (`true`/`false`/`1`/`0`).
  public func bool(_ name: String, _ info: MixerInfo) throws(SubqError) -> Bool {
    let s = raw(name, info)
    switch s.lowercased() {
    case "true", "1", "yes": return true
    case "false", "0", "no": return false
    default: throw .argument(op: info.op, name: name, value: s, reason: "not a Boolean (true or false)")
    }
  }

  /// A text parameter from a fixed set of choices.
  public func choice(_ name: String, _ info: MixerInfo, _ choices: [String]) throws(SubqError) -> String {
    let s = raw(name, info)
    guard choices.contains(s) else {
      throw .argument(op: info.op, name: name, value: s, reason: "must be one of \(choices.joined(separator: ", "))")
    }
    return s
  }
}

/// The inputs of one mixer call: Q, K, V for ``MixerInputKind/attention`` mixers, X for
/// ``MixerInputKind/sequence`` mixers.
public struct MixerInputs: Sendable {
  public var queries: Tensor?
  public var keys: Tensor?
  public var values: Tensor?
  public var x: Tensor?

  public init(queries: Tensor? = nil, keys: Tensor? = nil, values: Tensor? = nil, x: Tensor? = nil) {
    self.queries = queries
    self.keys = keys
    self.values = values
    self.x = x
  }

  /// Q, K, V `[B, H, N, D]`.
  public static func attention(_ q: Tensor, _ k: Tensor, _ v: Tensor) -> MixerInputs { MixerInputs(queries: q, keys: k, values: v) }
  /// X `[B, N, C]`.
  public static func sequence(_ x: Tensor) -> MixerInputs { MixerInputs(x: x) }

  /// Q, K, V, or a typed error naming what is missing or extra.
  func attentionTensors(_ info: MixerInfo) throws(SubqError) -> (Tensor, Tensor, Tensor) {
    if x != nil {
      throw .argument(op: info.op, name: "x", value: "given", reason: "\(info.name) mixes queries, keys and values; give Q, K and V instead of X")
    }
    guard let q = queries, let k = keys, let v = values else {
      let missing = [("Q", queries), ("K", keys), ("V", values)].filter { $0.1 == nil }.map(\.0)
      throw .argument(op: info.op, name: missing.joined(separator: ", "), value: "missing", reason: "\(info.name) needs Q, K and V")
    }
    return (q, k, v)
  }

  /// X, or a typed error.
  func sequenceTensor(_ info: MixerInfo) throws(SubqError) -> Tensor {
    if queries != nil || keys != nil || values != nil {
      throw .argument(op: info.op, name: "Q/K/V", value: "given", reason: "\(info.name) mixes one sequence X [B, N, C]; give X instead of Q, K, V")
    }
    guard let x else { throw .argument(op: info.op, name: "X", value: "missing", reason: "\(info.name) needs X [B, N, C]") }
    return x
  }
}

/// Named weight arrays for a mixer, loaded from a directory of `.npy` files or built in code.
///
/// Every mixer checks the weights it is given against its ``MixerInfo/weights``: a missing
/// required array, a name it does not know, or a wrong shape is a typed error naming the array
/// (and the file it came from), so nothing is silently ignored or invented.
public struct MixerWeights: Sendable {
  /// The arrays by name.
  public var tensors: [String: Tensor]
  /// Where each array came from (a file path), for error messages.
  public var sources: [String: String]

  public init(_ tensors: [String: Tensor] = [:]) {
    self.tensors = tensors
    self.sources = [:]
  }

  /// Whether no arrays are given.
  public var isEmpty: Bool { tensors.isEmpty }

  /// Loads every `*.npy` file of `directory`, keyed by file stem.
  /// - Throws: ``SubqError/file(path:reason:)`` when the directory cannot be read or a file is not
  ///   a valid `.npy` file.
  public static func load(directory: String) throws(SubqError) -> MixerWeights {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDir) else {
      throw .file(path: directory, reason: "no such directory")
    }
    guard isDir.boolValue else { throw .file(path: directory, reason: "not a directory (--weights takes a directory of .npy files)") }
    let names: [String]
    do { names = try FileManager.default.contentsOfDirectory(atPath: directory) } catch {
      throw .file(path: directory, reason: "cannot be listed")
    }
    var w = MixerWeights()
    for file in names.sorted() where file.hasSuffix(".npy") && !file.hasPrefix(".") {
      let path = (directory as NSString).appendingPathComponent(file)
      let stem = String(file.dropLast(4))
      w.tensors[stem] = try NPY.read(path)
      w.sources[stem] = path
    }
    return w
  }

  /// How an array is named in errors: its file when it came from one.
  public func label(_ name: String) -> String { sources[name] ?? name }

  /// Throws for arrays `info` does not declare and for missing required ones.
  public func validate(for info: MixerInfo) throws(SubqError) {
    let known = Set(info.weights.map(\.name))
    for name in tensors.keys.sorted() where !known.contains(name) {
      throw .argument(op: info.op, name: "weights", value: label(name),
                      reason: "unknown weight array '\(name)' (\(info.name) reads: \(info.weights.map(\.name).joined(separator: ", ")))")
    }
    for spec in info.weights where spec.required && tensors[spec.name] == nil {
      throw .argument(op: info.op, name: "weights", value: spec.name + ".npy", reason: "missing: \(info.name) needs \(spec.name) \(spec.shape) (\(spec.summary))")
    }
  }

  /// The array `name` checked against `shape`, or nil when absent.
  public func tensor(_ name: String, shape: [Int], _ info: MixerInfo) throws(SubqError) -> Tensor? {
    guard let t = tensors[name] else { return nil }
    if t.shape != shape {
      let spec = info.weights.first { $0.name == name }?.shape ?? ""
      throw .shape(op: info.op, tensor: label(name), shape: t.shape, reason: "expected \(shape) \(spec)")
    }
    if let bad = t.firstNonFinite() {
      throw .nonFinite(op: info.op, tensor: label(name), index: t.index(ofFlat: bad), value: SubqError.describe(t[flat: bad]))
    }
    return t
  }

  /// The required array `name` checked against `shape`.
  public func required(_ name: String, shape: [Int], _ info: MixerInfo) throws(SubqError) -> Tensor {
    guard let t = try tensor(name, shape: shape, info) else {
      throw .argument(op: info.op, name: "weights", value: name + ".npy", reason: "missing: \(info.name) needs \(name) \(shape)")
    }
    return t
  }
}

/// Options shared by every mixer call.
public struct MixerOptions: Sendable {
  /// Causal mixing: output i depends on inputs ≤ i only.
  public var causal: Bool
  /// Worker threads; `nil` uses ``Parallel/defaultThreads``.
  public var threads: Int?
  /// Accept NaN and ±∞ in the inputs (by default they are an error).
  public var allowNonFinite: Bool

  public init(causal: Bool = false, threads: Int? = nil, allowNonFinite: Bool = false) {
    self.causal = causal
    self.threads = threads
    self.allowNonFinite = allowNonFinite
  }

  /// Resolved thread count; throws for values below 1.
  func resolvedThreads(_ op: String) throws(SubqError) -> Int {
    guard let t = threads else { return Parallel.defaultThreads }
    guard t >= 1 else { throw .argument(op: op, name: "threads", value: "\(t)", reason: "must be at least 1") }
    return t
  }
}

/// The problem size of a mixer benchmark: attention-like mixers get Q, K, V `[B, H, N, D]`;
/// mixers on the model dimension get X `[B, N, H·D]`.
public struct MixerBenchShape: Sendable, Equatable, Codable {
  public var batch: Int
  public var heads: Int
  public var length: Int
  public var headDim: Int
  public var causal: Bool
  public var threads: Int

  public init(batch: Int = 1, heads: Int = 8, length: Int, headDim: Int = 64, causal: Bool, threads: Int = Parallel.defaultThreads) {
    self.batch = batch
    self.heads = heads
    self.length = length
    self.headDim = headDim
    self.causal = causal
    self.threads = threads
  }

  /// The model width of sequence mixers, `H·D`.
  public var modelDim: Int { heads * headDim }
}

/// One prepared benchmark run of a mixer: inputs and weights are built, `run` performs exactly one
/// forward pass (consuming its output), and `flops` is the work of that pass under the mixer's
/// documented FLOP model (multiply-adds count 2).
public struct MixerBenchmark: Sendable {
  /// One forward pass.
  public let run: @Sendable () throws(SubqError) -> Void
  /// Floating-point operations of one pass.
  public let flops: Double
  /// Bytes of input, weights and output (resident before the run).
  public let dataBytes: Double
  /// What was built, e.g. `Q,K,V [1, 8, 4096, 64]`.
  public let inputDescription: String

  public init(run: @escaping @Sendable () throws(SubqError) -> Void, flops: Double, dataBytes: Double, inputDescription: String) {
    self.run = run
    self.flops = flops
    self.dataBytes = dataBytes
    self.inputDescription = inputDescription
  }
}

/// A sequence mixer that is not softmax attention: its output is a different function of the
/// input, so it is compared with attention on speed only, and checked against its own Float64
/// definition.
///
/// Conforming types hold their parameters. The uniform entry points are:
/// - ``mix(_:weights:options:)``: one forward pass on given inputs and weights (what `subq mix`
///   calls); validates everything first and throws typed errors.
/// - ``randomWeights(shape:seed:)`` and ``benchmark(_:seed:)``: random inputs and weights of a
///   given size and a closure running one forward pass (what `subq mix-bench` and `subq compare`
///   time).
public protocol SequenceMixer: Sendable {
  /// Name, paper, complexity, input form, parameters and weight arrays.
  static var info: MixerInfo { get }
  /// Creates the mixer from named parameters (defaults for the ones not given).
  init(parameters: MixerParameters) throws(SubqError)
  /// The parameter values in effect, by name (for reports).
  var parameterValues: [String: String] { get }
  /// One forward pass. Attention-like mixers take `inputs.queries/keys/values` and return
  /// `[B, Hq, N, Dv]`; sequence mixers take `inputs.x` `[B, N, C]` and return `[B, N, C]`.
  func mix(_ inputs: MixerInputs, weights: MixerWeights, options: MixerOptions) throws(SubqError) -> Tensor
  /// Random weights for model width `shape.modelDim` (scaled like the reference's
  /// initialization), for benchmarks and `--random-weights`. Empty for mixers without weights.
  func randomWeights(shape: MixerBenchShape, seed: UInt64) -> MixerWeights
  /// FLOPs of one forward pass at `shape` (multiply-adds count 2).
  func flops(_ shape: MixerBenchShape) -> Double
}

extension SequenceMixer {
  public var info: MixerInfo { Self.info }

  /// Builds random inputs (N(0, 1)) and weights of `shape` and returns one-forward-pass closure.
  public func benchmark(_ shape: MixerBenchShape, seed: UInt64) throws(SubqError) -> MixerBenchmark {
    try Self.info.check(causal: shape.causal)
    var g = SeededGenerator(seed: seed)
    let inputs: MixerInputs
    let desc: String
    var bytes: Double
    switch Self.info.input {
    case .attention:
      let s = [shape.batch, shape.heads, shape.length, shape.headDim]
      inputs = .attention(Tensor.randomNormal(shape: s, seed: g.next()), Tensor.randomNormal(shape: s, seed: g.next()),
                          Tensor.randomNormal(shape: s, seed: g.next()))
      desc = "Q,K,V \(s)"
      bytes = 4 * 4 * Double(s.reduce(1, *))
    case .sequence:
      let s = [shape.batch, shape.length, shape.modelDim]
      inputs = .sequence(Tensor.randomNormal(shape: s, seed: g.next()))
      desc = "X \(s)"
      bytes = 2 * 4 * Double(s.reduce(1, *))
    }
    let weights = randomWeights(shape: shape, seed: g.next())
    bytes += weights.tensors.values.reduce(0) { $0 + 4 * Double($1.count) }
    let options = MixerOptions(causal: shape.causal, threads: shape.threads)
    let mixer = self
    // Validate once outside the timed closure.
    _ = try mixer.mix(inputs, weights: weights, options: MixerOptions(causal: shape.causal, threads: shape.threads))
    return MixerBenchmark(
      run: { () throws(SubqError) -> Void in
        let y = try mixer.mix(inputs, weights: weights, options: options)
        withExtendedLifetime(y) {}
      }, flops: flops(shape), dataBytes: bytes, inputDescription: desc)
  }
}

/// Every sequence mixer in the library, by name (not softmax attention: see ``SequenceMixer``).
public enum SequenceMixers {
  /// All registered mixers.
  public static let all: [any SequenceMixer.Type] = [
    LinearAttention.self,
    TransNormerAttention.self,
    LinFusionAttention.self,
    PoNetMixer.self,
    MonarchMixer.self,
  ]

  /// The mixer type registered under `name`.
  public static func type(named name: String) -> (any SequenceMixer.Type)? {
    all.first { $0.info.name == name }
  }

  /// Creates the mixer `name` with `parameters`.
  /// - Throws: ``SubqError/argument(op:name:value:reason:)`` for an unknown mixer or parameter.
  public static func make(_ name: String, parameters: MixerParameters = MixerParameters()) throws(SubqError) -> any SequenceMixer {
    guard let t = type(named: name) else {
      throw .argument(op: "mix", name: "method", value: name,
                      reason: "unknown mixer (known: \(all.map { $0.info.name }.joined(separator: ", ")))")
    }
    return try t.init(parameters: parameters)
  }
}
