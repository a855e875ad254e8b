import SubqCore

/// A method whose output is exact softmax attention restricted to a fixed set of keys per query that
/// depends only on positions (neighborhood windows, sinks plus a recent window, …).
///
/// ``KeySelectingMethod/selectedKeys(queries:keys:values:options:rows:)`` returns that set, so a
/// Float64 reference over the selected keys checks the method exactly, and benchmarks count FLOPs
/// over ``attendedPairs(queries:keys:values:options:)`` instead of every visible pair.
public protocol PatternAttentionMethod: KeySelectingMethod {
  /// The number of (query, key) pairs the call attends to, summed over batch entries, sequences
  /// and query heads.
  func attendedPairs(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions) throws(SubqError) -> Double
}
