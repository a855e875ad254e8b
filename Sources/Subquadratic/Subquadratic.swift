// Subquadratic: the umbrella module. `import Subquadratic` brings in every method family.
@_exported import SubqApproximate
@_exported import SubqAttention
@_exported import SubqCore
@_exported import SubqRing
@_exported import SubqLinear
@_exported import SubqStateSpace
@_exported import SubqDecoding
@_exported import SubqKVSelection
@_exported import SubqSparse
@_exported import SubqLLM

/// Every attention method in the library, by name.
public enum AttentionMethods {
  /// All registered methods, exact ones first.
  public static let all: [any AttentionMethod.Type] = [
    FlashAttention.self,
    NaiveAttention.self,
    SplitKVAttention.self,
    TokenSelect.self,
    NeighborhoodAttention.self,
    SinkAttention.self,
    CombinerAttention.self,
    HyperAttention.self,
    HiPAttention.self,
    ProbSparseAttention.self,
  ]

  /// The method type registered under `name`.
  public static func type(named name: String) -> (any AttentionMethod.Type)? {
    all.first { $0.info.name == name }
  }

  /// Creates the method `name` with `parameters`.
  /// - Throws: ``SubqError/argument(op:name:value:reason:)`` for an unknown method or parameter.
  public static func make(_ name: String, parameters: MethodParameters = MethodParameters()) throws(SubqError) -> any AttentionMethod {
    guard let t = type(named: name) else {
      throw .argument(op: "attention", name: "method", value: name,
                      reason: "unknown method (known: \(all.map { $0.info.name }.joined(separator: ", ")))")
    }
    return try t.init(parameters: parameters)
  }
}
