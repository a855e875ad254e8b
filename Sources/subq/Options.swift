import ArgumentParser
import Foundation
import Subquadratic
import SubqBench

extension AttentionLayout: ExpressibleByArgument {}
extension CausalAlignment: ExpressibleByArgument {}
extension DataKind: ExpressibleByArgument {}

/// The masking and scoring options shared by every attention command.
struct MaskOptions: ParsableArguments {
  @Flag(help: "Causal masking (aligned as --causal-align says).")
  var causal = false

  @Option(name: .customLong("causal-align"), help: "Where the causal diagonal sits when Nq ≠ Nk: bottom-right (flash-attn) or top-left (PyTorch).")
  var causalAlign: CausalAlignment = .bottomRight

  @Option(parsing: .unconditional, help: "Sliding window L,R: query i sees keys i+off−L … i+off+R; -1 is unbounded. With --method sinks: the recent-window size W.")
  var window: String?

  @Option(help: "Logit soft-capping value c > 0: s = c·tanh(s/c).")
  var softcap: Float?

  @Option(help: "Softmax scale (default 1/√D).")
  var scale: Float?

  @Option(help: "ALiBi slopes, .npy of shape [Hq] or [B, Hq].")
  var alibi: String?

  @Option(name: .customLong("key-lengths"), help: "Valid keys per batch entry, .npy of shape [B] (integers).")
  var keyLengths: String?

  @Option(name: .customLong("cu-seqlens-q"), help: "Packed sequences: cumulative query lengths [S+1], .npy.")
  var cuSeqlensQ: String?

  @Option(name: .customLong("cu-seqlens-k"), help: "Packed sequences: cumulative key lengths [S+1], .npy.")
  var cuSeqlensK: String?

  @Flag(name: .customLong("allow-nonfinite"), help: "Accept NaN and ±∞ in the inputs.")
  var allowNonFinite = false

  @Option(help: "Worker threads (default: all cores, or SUBQ_THREADS).")
  var threads: Int?

  /// The library options these flags describe (files are read here).
  func attentionOptions(layout: AttentionLayout, returnLSE: Bool) throws(SubqError) -> AttentionOptions {
    var o = AttentionOptions(scale: scale, causal: causal, alignment: causalAlign, softcap: softcap, layout: layout,
                             returnLSE: returnLSE, allowNonFinite: allowNonFinite, threads: threads)
    if let window { o.window = try parseWindow(window) }
    if let alibi { o.alibiSlopes = try NPY.read(alibi) }
    if let keyLengths { o.keyLengths = try NPY.readIntegers(keyLengths) }
    if let cuSeqlensQ { o.cuSeqlensQ = try NPY.readIntegers(cuSeqlensQ) }
    if let cuSeqlensK { o.cuSeqlensK = try NPY.readIntegers(cuSeqlensK) }
    return o
  }
}

/// Parses `L,R` (−1 unbounded) into a window.
func parseWindow(_ s: String) throws(SubqError) -> AttentionWindow {
  let parts = s.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
  guard parts.count == 2, let l = Int(parts[0]), let r = Int(parts[1]) else {
    throw .argument(op: "attention", name: "--window", value: s, reason: "expected L,R (integers, -1 for unbounded)")
  }
  for (side, w) in [("left", l), ("right", r)] where w < -1 {
    throw .argument(op: "attention", name: "--window", value: s, reason: "\(side) size \(w) is negative (use -1 for unbounded)")
  }
  return AttentionWindow(left: l == -1 ? nil : l, right: r == -1 ? nil : r)
}

/// Parses repeated `name=value` (or `method.name=value`) parameters.
///
/// With a `method`, prefixed names for other methods are skipped and unprefixed ones apply.
func parseParams(_ items: [String], method: String? = nil) throws(SubqError) -> MethodParameters {
  var values: [String: String] = [:]
  for item in items {
    guard let eq = item.firstIndex(of: "="), eq != item.startIndex else {
      throw .argument(op: "subq", name: "--param", value: item, reason: "expected name=value")
    }
    var name = String(item[..<eq])
    let value = String(item[item.index(after: eq)...])
    if let dot = name.firstIndex(of: "."), method != nil {
      let target = String(name[..<dot])
      if target != method { continue }
      name = String(name[name.index(after: dot)...])
    }
    values[name] = value
  }
  return MethodParameters(values)
}

/// Parses a comma-separated list of lengths; accepts K and M suffixes (1K = 1024).
func parseLengths(_ s: String, option: String) throws(SubqError) -> [Int] {
  var out: [Int] = []
  for part in s.split(separator: ",") {
    let t = part.trimmingCharacters(in: .whitespaces).uppercased()
    var mult = 1
    var digits = Substring(t)
    if t.hasSuffix("K") { mult = 1024; digits = digits.dropLast() }
    if t.hasSuffix("M") { mult = 1024 * 1024; digits = digits.dropLast() }
    guard let n = Int(digits), n > 0 else {
      throw .argument(op: "subq", name: option, value: s, reason: "expected positive integers separated by commas (K = 1024)")
    }
    out.append(n * mult)
  }
  if out.isEmpty { throw .argument(op: "subq", name: option, value: s, reason: "empty list") }
  return out
}
