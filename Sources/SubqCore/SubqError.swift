/// The one error type every Subquadratic operation throws.
///
/// Each case names the operation (`op`, e.g. `"attention.flash"` or `"npy.read"`), the tensor,
/// parameter or file involved, and the offending value, so that a message such as
///
///     attention.flash: K has shape [1, 3, 100, 64]: query heads (8) must be a multiple of key/value heads (3)
///
/// is enough to find and fix the problem. Operations validate all their inputs before any work
/// starts; kernels never throw.
public enum SubqError: Error, Equatable, Sendable, CustomStringConvertible {
  /// A tensor's rank or shape does not fit the operation.
  case shape(op: String, tensor: String, shape: [Int], reason: String)
  /// A parameter or option has a value the operation cannot use.
  case argument(op: String, name: String, value: String, reason: String)
  /// A tensor holds NaN or ±∞ where finite values are required.
  case nonFinite(op: String, tensor: String, index: [Int], value: String)
  /// A file cannot be opened, read, parsed or written.
  case file(path: String, reason: String)
  /// The operation does not implement a requested feature or combination of options.
  case unsupported(op: String, feature: String, reason: String)
  /// The operation was cancelled (for example by Ctrl-C) before it finished.
  case cancelled(op: String)

  public var description: String {
    switch self {
    case let .shape(op, tensor, shape, reason):
      return "\(op): \(tensor) has shape \(shape): \(reason)"
    case let .argument(op, name, value, reason):
      return "\(op): \(name) = \(value): \(reason)"
    case let .nonFinite(op, tensor, index, value):
      return "\(op): \(tensor) holds \(value) at index \(index): inputs must be finite"
    case let .file(path, reason):
      return "\(path): \(reason)"
    case let .unsupported(op, feature, reason):
      return "\(op): \(feature) is not supported: \(reason)"
    case let .cancelled(op):
      return "\(op): cancelled"
    }
  }

  /// How a non-finite value is named in messages: "NaN", "+inf" or "-inf".
  public static func describe(_ value: Float) -> String {
    value.isNaN ? "NaN" : value == .infinity ? "+inf" : value == -.infinity ? "-inf" : "\(value)"
  }
}
