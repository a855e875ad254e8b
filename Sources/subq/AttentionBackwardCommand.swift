import ArgumentParser
import Foundation
import Subquadratic
import SubqBench

/// `subq attention-backward`: gradients of attention on .npy inputs.
struct AttentionBackwardCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "attention-backward",
    abstract: "Compute dQ, dK and dV of attention from Q, K, V and dO read from .npy files.",
    discussion: """
      The forward pass (output and log-sum-exp) is recomputed with the same method and options. Inputs are \
      float16/32/64 .npy arrays as for `subq attention`; dO has the output's shape. dQ, dK and dV are written \
      as float32 in the shapes of Q, K and V. Methods with a backward pass: flash (FlashAttention-2, \
      deterministic) and naive (Float64 reference).
      """)

  @Option(help: "Method name: flash or naive.")
  var method = "flash"

  @Option(help: "Queries .npy.") var q: String
  @Option(help: "Keys .npy.") var k: String
  @Option(help: "Values .npy.") var v: String
  @Option(help: "Gradient of the loss with respect to the output, .npy (the output's shape).") var dout: String

  @Option(help: "Memory layout of the arrays: bhsd ([B, H, N, D]) or bshd ([B, N, H, D]).")
  var layout: AttentionLayout = .bhsd

  @OptionGroup var mask: MaskOptions

  @Option(name: .customLong("param"), help: "Method parameter name=value (repeatable).")
  var params: [String] = []

  @Option(help: "Output .npy path for dQ.") var dq: String
  @Option(help: "Output .npy path for dK.") var dk: String
  @Option(help: "Output .npy path for dV.") var dv: String

  func run() throws {
    for (a, b) in [(dq, dk), (dq, dv), (dk, dv)] where a == b {
      throw SubqError.argument(op: "attention-backward", name: "--dq/--dk/--dv", value: a, reason: "the three output paths must differ")
    }
    let m = try AttentionMethods.make(method, parameters: try parseParams(params, method: method))
    guard let differentiable = m as? any DifferentiableAttentionMethod else {
      let names = AttentionMethods.all.filter { $0 is any DifferentiableAttentionMethod.Type }.map { $0.info.name }
      throw SubqError.unsupported(op: "attention-backward", feature: "method \(method)",
                                  reason: "it has no backward pass (methods with one: \(names.joined(separator: ", ")))")
    }
    let (qt, qRank) = try AttentionFiles.load(q, tensor: "Q", layout: layout)
    let (kt, kRank) = try AttentionFiles.load(k, tensor: "K", layout: layout)
    let (vt, vRank) = try AttentionFiles.load(v, tensor: "V", layout: layout)
    let (dot, _) = try AttentionFiles.load(dout, tensor: "dO", layout: layout)
    let options = try mask.attentionOptions(layout: layout, returnLSE: false)
    let g = try differentiable.gradients(queries: qt, keys: kt, values: vt, outputGradient: dot, options: options)
    let outputs = [
      (try AttentionFiles.fromRank4(g.queries, rank: qRank, layout: layout), dq),
      (try AttentionFiles.fromRank4(g.keys, rank: kRank, layout: layout), dk),
      (try AttentionFiles.fromRank4(g.values, rank: vRank, layout: layout), dv),
    ]
    // Everything is computed; write the files, and leave none behind if one fails.
    var written: [String] = []
    for (tensor, path) in outputs {
      do {
        try NPY.write(tensor, to: path)
        written.append(path)
      } catch {
        for p in written { try? FileManager.default.removeItem(atPath: p) }
        throw error
      }
    }
  }
}
