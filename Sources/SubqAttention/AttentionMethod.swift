import SubqCore

/// A tunable parameter of an attention method.
public struct MethodParameter: Sendable, Equatable {
  /// Name used with `--param method.name=value` and in reports.
  public var name: String
  /// Default value, as text.
  public var defaultValue: String
  /// What it controls, one line.
  public var summary: String

  public init(_ name: String, default defaultValue: String, _ summary: String) {
    self.name = name
    self.defaultValue = defaultValue
    self.summary = summary
  }
}

/// Static description of an attention method, for `subq methods`, `subq compare` and errors.
public struct MethodInfo: Sendable {
  /// Registry name (`flash`, `hyper`, …).
  public var name: String
  /// One-line summary.
  public var summary: String
  /// The paper it implements.
  public var paper: String
  /// Time and extra-memory complexity.
  public var complexity: String
  /// Whether the output is exact softmax attention (up to rounding).
  public var isExact: Bool
  /// Tunable parameters.
  public var parameters: [MethodParameter]
  /// The ``AttentionOptions/activeFeatures`` the method implements; any other active feature is
  /// rejected with ``SubqError/unsupported(op:feature:reason:)``.
  public var supportedFeatures: Set<String>

  public init(
    name: String, summary: String, paper: String, complexity: String, isExact: Bool,
    parameters: [MethodParameter] = [], supportedFeatures: Set<String>
  ) {
    self.name = name
    self.summary = summary
    self.paper = paper
    self.complexity = complexity
    self.isExact = isExact
    self.parameters = parameters
    self.supportedFeatures = supportedFeatures
  }

  /// Every feature name ``AttentionOptions/activeFeatures`` can report.
  public static let allFeatures: Set<String> = ["causal", "window", "softcap", "alibi", "key-lengths", "varlen"]

  /// Throws for the first active option this method does not implement.
  public func check(_ options: AttentionOptions) throws(SubqError) {
    for f in options.activeFeatures where !supportedFeatures.contains(f) {
      throw .unsupported(op: "attention.\(name)", feature: f,
                         reason: "\(name) implements \(supportedFeatures.isEmpty ? "no masking options" : supportedFeatures.sorted().joined(separator: ", "))")
    }
  }
}

/// Parameter values given to a method by name, as text (from `--param` or code).
///
/// Methods read them through the typed accessors, which fall back to the declared default and
/// throw ``SubqError/argument(op:name:value:reason:)`` for values that do not parse or are out of
/// range. ``MethodParameters/validate(for:)`` rejects names the method does not declare, so a
/// misspelt parameter is never silently ignored.
public struct MethodParameters: Sendable, Equatable {
  public var values: [String: String]

  public init(_ values: [String: String] = [:]) { self.values = values }

  /// Throws for a name `info` does not declare.
  public func validate(for info: MethodInfo) throws(SubqError) {
    let known = Set(info.parameters.map(\.name))
    for name in values.keys.sorted() where !known.contains(name) {
      let list = known.isEmpty ? "it takes none" : "known: " + known.sorted().joined(separator: ", ")
      throw .argument(op: "attention.\(info.name)", name: name, value: values[name]!, reason: "unknown parameter (\(list))")
    }
  }

  private func raw(_ name: String, _ info: MethodInfo) -> String {
    if let v = values[name] { return v }
    guard let p = info.parameters.first(where: { $0.name == name }) else {
      preconditionFailure("\(info.name) reads undeclared parameter \(name)")
    }
    return p.defaultValue
  }

  /// An integer parameter in `range`.
  public func int(_ name: String, _ info: MethodInfo, in range: ClosedRange<Int> = Int.min...Int.max) throws(SubqError) -> Int {
    let s = raw(name, info)
    guard let v = Int(s) else { throw .argument(op: "attention.\(info.name)", name: name, value: s, reason: "not an integer") }
    guard range.contains(v) else {
      throw .argument(op: "attention.\(info.name)", name: name, value: s, reason: "must be in \(range.lowerBound)...\(range.upperBound)")
    }
    return v
  }

  /// A floating-point parameter in `range`.
  public func double(_ name: String, _ info: MethodInfo, in range: ClosedRange<Double> = -Double.greatestFiniteMagnitude...Double.greatestFiniteMagnitude) throws(SubqError) -> Double {
    let s = raw(name, info)
    guard let v = Double(s), v.isFinite else { throw .argument(op: "attention.\(info.name)", name: name, value: s, reason: "not a finite number") }
    guard range.contains(v) else {
      throw .argument(op: "attention.\(info.name)", name: name, value: s, reason: "must be in \(range.lowerBound)...\(range.upperBound)")
    }
    return v
  }

  /// A Boolean parameter (`true`/`false`/`1`/`0`).
  public func bool(_ name: String, _ info: MethodInfo) throws(SubqError) -> Bool {
    let s = raw(name, info)
    switch s.lowercased() {
    case "true", "1", "yes": return true
    case "false", "0", "no": return false
    default: throw .argument(op: "attention.\(info.name)", name: name, value: s, reason: "not a Boolean (true or false)")
    }
  }

  /// A 64-bit seed.
  public func seed(_ name: String, _ info: MethodInfo) throws(SubqError) -> UInt64 {
    let s = raw(name, info)
    guard let v = UInt64(s) else { throw .argument(op: "attention.\(info.name)", name: name, value: s, reason: "not a non-negative integer seed") }
    return v
  }

  /// A text parameter from a fixed set of choices.
  public func choice(_ name: String, _ info: MethodInfo, _ choices: [String]) throws(SubqError) -> String {
    let s = raw(name, info)
    guard choices.contains(s) else {
      throw .argument(op: "attention.\(info.name)", name: name, value: s, reason: "must be one of \(choices.joined(separator: ", "))")
    }
    return s
  }
}

/// A softmax-attention method: exact or approximate, with the shared inputs and options.
///
/// Conforming types are values holding their parameters; `attention` validates its inputs with
/// ``AttentionProblem/validate(op:queries:keys:values:options:)`` and rejects options it does not
/// implement (``MethodInfo/check(_:)``).
public protocol AttentionMethod: Sendable {
  /// Name, paper, complexity, parameters and supported options.
  static var info: MethodInfo { get }
  /// Creates the method from named parameters (defaults for the ones not given).
  init(parameters: MethodParameters) throws(SubqError)
  /// The parameter values in effect, by name (for reports).
  var parameterValues: [String: String] { get }
  /// Computes attention of `queries` over `keys`/`values`.
  func attention(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions) throws(SubqError) -> AttentionResult
}

extension AttentionMethod {
  public var parameterValues: [String: String] { [:] }
  public var info: MethodInfo { Self.info }
}

/// A query row: batch entry, query head, position.
public struct QueryRow: Hashable, Sendable {
  public var batch: Int
  public var head: Int
  public var row: Int
  public init(batch: Int, head: Int, row: Int) {
    self.batch = batch
    self.head = head
    self.row = row
  }
}

/// A method that attends to a chosen subset of keys per query, and can say which.
public protocol KeySelectingMethod: AttentionMethod {
  /// For each requested query row, the key positions the method attends to (sorted, unique).
  func selectedKeys(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions, rows: [QueryRow]) throws(SubqError) -> [[Int]]
}
