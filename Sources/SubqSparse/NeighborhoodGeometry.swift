import SubqCore

/// One axis of a neighborhood-attention grid: its length, window size, dilation and causality.
///
/// The window rule is NATTEN's (stride 1). Tokens are split into `dilation` groups by index modulo
/// the dilation; group `g` holds `length / dilation + (g < length % dilation ? 1 : 0)` tokens and a
/// query only sees keys of its own group, at group coordinates (index / dilation):
///
/// - non-causal: the window of group coordinate `i` starts at `clamp(i − ⌊k/2⌋, 0, n − k)` and holds
///   `k` keys, so windows shift (not shrink) at the borders and every query sees exactly `k` keys.
///   An even `k` has `k/2` keys on the left and `k/2 − 1` on the right.
/// - causal: the window is `max(0, i − k + 1) … i`; it does not shift, so early tokens see fewer keys.
public struct NeighborhoodAxis: Sendable, Equatable {
  /// Tokens along the axis.
  public var length: Int
  /// Window size k (keys per query along the axis).
  public var kernel: Int
  /// Dilation δ.
  public var dilation: Int
  /// Whether the axis is causal.
  public var causal: Bool

  public init(length: Int, kernel: Int, dilation: Int = 1, causal: Bool = false) {
    self.length = length
    self.kernel = kernel
    self.dilation = dilation
    self.causal = causal
  }

  /// Tokens in dilation group `g`.
  @inlinable public func groupLength(_ g: Int) -> Int {
    length / dilation + (g < length % dilation ? 1 : 0)
  }

  /// First key (group coordinate) of the window of group coordinate `i` in a group of `n` tokens.
  @inlinable public func windowStart(_ i: Int, groupLength n: Int) -> Int {
    causal ? Swift.max(0, i - kernel + 1) : Swift.min(Swift.max(i - kernel / 2, 0), n - kernel)
  }

  /// Keys in the window of group coordinate `i`.
  @inlinable public func windowCount(_ i: Int) -> Int {
    causal ? Swift.min(kernel, i + 1) : kernel
  }

  /// The keys (original indices along the axis) that index `i` sees, ascending.
  public func window(of i: Int) -> [Int] {
    let g = i % dilation, c = i / dilation
    let s = windowStart(c, groupLength: groupLength(g))
    return (s..<(s + windowCount(c))).map { g + dilation * $0 }
  }

  /// Σ over every index of the axis of its window size.
  public var totalWindow: Int {
    var t = 0
    for g in 0..<dilation { for c in 0..<groupLength(g) { t += windowCount(c) } }
    return t
  }
}

/// Parsing of the `AxBxC` lists neighborhood attention takes (`128x128`, `7`, `1,0`).
enum GridText {
  /// Integers separated by `x` or `,`.
  static func integers(_ s: String, name: String, op: String) throws(SubqError) -> [Int] {
    let parts = s.lowercased().split(whereSeparator: { $0 == "x" || $0 == "," || $0 == "×" }).map { $0.trimmingCharacters(in: .whitespaces) }
    var out: [Int] = []
    for p in parts {
      guard let v = Int(p) else { throw .argument(op: op, name: name, value: s, reason: "expected integers separated by x, e.g. 7x7") }
      out.append(v)
    }
    if out.isEmpty { throw .argument(op: op, name: name, value: s, reason: "expected integers separated by x, e.g. 7x7") }
    return out
  }

  /// Booleans (`1`/`0`/`true`/`false`) separated by `,` or `x`.
  static func booleans(_ s: String, name: String, op: String) throws(SubqError) -> [Bool] {
    let parts = s.lowercased().split(whereSeparator: { $0 == "x" || $0 == "," }).map { $0.trimmingCharacters(in: .whitespaces) }
    var out: [Bool] = []
    for p in parts {
      switch p {
      case "1", "true", "yes": out.append(true)
      case "0", "false", "no": out.append(false)
      default: throw .argument(op: op, name: name, value: s, reason: "expected 0/1 per axis separated by commas, e.g. 1,0")
      }
    }
    if out.isEmpty { throw .argument(op: op, name: name, value: s, reason: "expected 0/1 per axis separated by commas, e.g. 1,0") }
    return out
  }
}
