import ArgumentParser
import Foundation
import Subquadratic
import SubqBench

/// `subq attention`: one attention call on .npy inputs.
struct AttentionCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "attention",
    abstract: "Compute attention of Q over K/V read from .npy files and write O (and the log-sum-exp).",
    discussion: """
      Inputs are float16/32/64 .npy arrays of rank 2 ([N, D]), 3 ([H, N, D]; [N, H, D] with --layout bshd) \
      or 4 ([B, H, N, D]; [B, N, H, D]). O is written as float32 in Q's layout and rank; the LSE as [B, Hq, Nq].
      """)

  @Option(help: "Method name (see `subq methods`).")
  var method = "flash"

  @Option(help: "Queries .npy.") var q: String
  @Option(help: "Keys .npy.") var k: String
  @Option(help: "Values .npy.") var v: String

  @Option(help: "Memory layout of the arrays: bhsd ([B, H, N, D]) or bshd ([B, N, H, D]).")
  var layout: AttentionLayout = .bhsd

  @OptionGroup var mask: MaskOptions

  @OptionGroup(title: "Sparse method options") var sparse: SparseOptions

  @Option(name: .customLong("param"), help: "Method parameter name=value (repeatable).")
  var params: [String] = []

  @Option(help: "Seed for methods that sample (same as --param seed=N).")
  var seed: UInt64?

  @Option(help: "Output .npy path.") var out: String
  @Option(help: "Write the log-sum-exp per query row to this .npy path.") var lse: String?

  func run() throws {
    var parameters = try parseParams(params, method: method)
    if let seed { parameters.values["seed"] = String(seed) }
    var mask = self.mask
    try sparse.apply(method: method, to: &parameters, mask: &mask)
    let m = try AttentionMethods.make(method, parameters: parameters)
    let (qt, qRank) = try AttentionFiles.load(q, tensor: "Q", layout: layout)
    let (kt, _) = try AttentionFiles.load(k, tensor: "K", layout: layout)
    let (vt, _) = try AttentionFiles.load(v, tensor: "V", layout: layout)
    let options = try mask.attentionOptions(layout: layout, returnLSE: lse != nil)
    let result = try m.attention(queries: qt, keys: kt, values: vt, options: options)
    let output = try AttentionFiles.fromRank4(result.output, rank: qRank, layout: layout)
    try NPY.write(output, to: out)
    if let lse, let l = result.lse {
      do {
        try NPY.write(l, to: lse)
      } catch {
        try? FileManager.default.removeItem(atPath: out)
        throw error
      }
    }
  }
}
