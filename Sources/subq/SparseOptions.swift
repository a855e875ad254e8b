import ArgumentParser
import Subquadratic

/// `subq attention` flags of the local and structured sparse methods. Each maps onto one method
/// parameter (the same as `--param name=value`); a flag for another method is an error, and so is
/// giving a parameter both as a flag and with `--param`.
///
/// `--window` is shared with the flash options: `L,R` is the sliding window of every method that
/// takes one; with `--method sinks` it is a single integer W, the recent-window size.
struct SparseOptions: ParsableArguments {
  @Option(help: "neighborhood: token grid, row-major, e.g. 128x128 (default: 1-D of the sequence).")
  var grid: String?

  @Option(help: "neighborhood: window size per axis, e.g. 7x7 (one value: every axis).")
  var kernel: String?

  @Option(help: "neighborhood: dilation per axis, e.g. 2x2.")
  var dilation: String?

  @Option(name: .customLong("causal-axes"), help: "neighborhood: causal flag per axis, e.g. 1,0.")
  var causalAxes: String?

  @Option(help: "neighborhood: relative positional bias .npy of shape [Hq, 2k₁−1, …].")
  var rpb: String?

  @Option(help: "sinks: number of initial keys every query sees (the recent window is --window W).")
  var sinks: String?

  @Option(help: "combiner: factorization, fixed, axial or logsparse.")
  var variant: String?

  @Option(help: "combiner: block (row) length for fixed and axial, or auto.")
  var block: String?

  /// Moves the flags into `parameters` for `method` (and `--window W` for sinks out of `mask`).
  func apply(method: String, to parameters: inout MethodParameters, mask: inout MaskOptions) throws(SubqError) {
    let flags: [(flag: String, value: String?, method: String, name: String)] = [
      ("--grid", grid, "neighborhood", "grid"), ("--kernel", kernel, "neighborhood", "kernel"),
      ("--dilation", dilation, "neighborhood", "dilation"), ("--causal-axes", causalAxes, "neighborhood", "causal-axes"),
      ("--rpb", rpb, "neighborhood", "rpb"), ("--sinks", sinks, "sinks", "sinks"),
      ("--variant", variant, "combiner", "variant"), ("--block", block, "combiner", "block"),
    ]
    for f in flags {
      guard let value = f.value else { continue }
      guard method == f.method else {
        throw .argument(op: "attention", name: f.flag, value: value, reason: "applies to --method \(f.method) only (method is \(method))")
      }
      try set(f.name, value, flag: f.flag, in: &parameters)
    }
    if method == "sinks", let w = mask.window {
      guard let size = Int(w.trimmingCharacters(in: .whitespaces)) else {
        throw .argument(op: "attention", name: "--window", value: w,
                        reason: "with --method sinks, give the recent-window size W as one integer (L,R is the sliding window of other methods)")
      }
      try set("window", String(size), flag: "--window", in: &parameters)
      mask.window = nil
    }
  }

  private func set(_ name: String, _ value: String, flag: String, in parameters: inout MethodParameters) throws(SubqError) {
    if let old = parameters.values[name] {
      throw .argument(op: "attention", name: flag, value: value, reason: "also given as --param \(name)=\(old); give it once")
    }
    parameters.values[name] = value
  }
}
