import ArgumentParser
import Foundation
import Subquadratic

/// `subq titans`: a Titans layer (LMM or MAC) on .npy inputs, weights from a directory.
struct TitansCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "titans",
    abstract: "Run a Titans layer (neural long-term memory, alone or as context for attention) on .npy inputs.",
    discussion: """
      x is [L, d] or [B, L, d]. The weights directory holds .npy files (row-vector convention, x·W): \
      memory_0.npy, memory_1.npy, … the memory MLP's initial layers [d0, d1], [d1, d2], …; wq.npy, wk.npy \
      [d, d0]; wv.npy [d, d_m]; gates.npy [d + 1, 3] (logits of θ, η, α from [x, 1]). MAC also needs \
      persistent.npy [N_p, d] and attn_wq.npy, attn_wk.npy, attn_wv.npy, attn_wo.npy [d, d], and d_m = d. \
      --final-memory DIR writes each sequence's final memory_i.npy and momentum_i.npy (with a leading \
      batch axis when x has one).
      """)

  enum ArrangementName: String, ExpressibleByArgument, CaseIterable { case lmm, mac }

  @Option(help: "Input x, [L, d] or [B, L, d].") var x: String
  @Option(help: "Directory of weight .npy files (see below).") var weights: String
  @Option(help: "lmm (the memory alone) or mac (memory as context).") var arrangement: ArrangementName = .lmm
  @Option(help: "Tokens whose memory gradients share the chunk-start weights.") var chunk = 16
  @Option(help: "MAC: tokens per segment.") var segment = 64
  @Option(help: "MAC: attention heads.") var heads = 1
  @Option(name: .customLong("max-lr"), help: "Largest surprise step θ, in (0, 1].") var maxLR: Float = 0.1
  @Option(help: "Output .npy path.") var out: String
  @Option(name: .customLong("final-memory"), help: "Directory for the final memory weights and momentum.") var finalMemory: String?
  @Option(help: "Worker threads (default: all cores).") var threads: Int?

  func run() throws {
    let arr: TitansLayer.Arrangement = arrangement == .mac ? .memoryAsContext(segment: segment, heads: heads) : .memory
    let layer = try TitansLayer(arrangement: arr, chunk: chunk, threads: threads)
    let dir = URL(fileURLWithPath: weights)
    func file(_ name: String) -> String { dir.appendingPathComponent(name).path }
    func read(_ name: String) throws(SubqError) -> Tensor { try NPY.read(file(name)) }
    var memory: [Tensor] = []
    while FileManager.default.fileExists(atPath: file("memory_\(memory.count).npy")) {
      memory.append(try read("memory_\(memory.count).npy"))
    }
    if memory.isEmpty {
      throw SubqError.file(path: file("memory_0.npy"), reason: "no such file (the memory needs at least one layer, memory_0.npy)")
    }
    var w = TitansWeights(memory: memory, query: try read("wq.npy"), key: try read("wk.npy"), value: try read("wv.npy"),
                          gates: try read("gates.npy"), maxLearningRate: maxLR)
    if arrangement == .mac {
      w.persistent = try read("persistent.npy")
      w.attentionQuery = try read("attn_wq.npy")
      w.attentionKey = try read("attn_wk.npy")
      w.attentionValue = try read("attn_wv.npy")
      w.attentionOutput = try read("attn_wo.npy")
    } else if FileManager.default.fileExists(atPath: file("persistent.npy")) {
      // Present but unused would be a silent surprise: say so.
      note("subq: note: persistent.npy and the attention weights are used only with --arrangement mac")
    }
    let input = try NPY.read(x)
    let r = try layer(input, weights: w)
    var files: [(Tensor, String)] = [(r.output, out)]
    if let finalMemory {
      let fdir = URL(fileURLWithPath: finalMemory)
      var isDir: ObjCBool = false
      guard FileManager.default.fileExists(atPath: fdir.path, isDirectory: &isDir), isDir.boolValue else {
        throw SubqError.file(path: fdir.path, reason: "no such directory")
      }
      for l in 0..<memory.count {
        let stackW = try stack(r.memory.map { $0.weights[l] }, keepBatch: input.rank == 3)
        let stackS = try stack(r.memory.map { $0.momentum[l] }, keepBatch: input.rank == 3)
        files.append((stackW, fdir.appendingPathComponent("memory_\(l).npy").path))
        files.append((stackS, fdir.appendingPathComponent("momentum_\(l).npy").path))
      }
    }
    var written: [String] = []
    for (t, path) in files {
      do throws(SubqError) {
        try NPY.write(t, to: path)
        written.append(path)
      } catch {
        for p in written { try? FileManager.default.removeItem(atPath: p) }
        throw error
      }
    }
  }

  /// The tensors stacked on a new leading axis (or the single tensor when not batched).
  func stack(_ ts: [Tensor], keepBatch: Bool) throws(SubqError) -> Tensor {
    if !keepBatch { return ts[0] }
    let n = ts[0].count
    return Tensor(shape: [ts.count] + ts[0].shape) { p in
      for (i, t) in ts.enumerated() { t.withUnsafeBufferPointer { (p.baseAddress! + i * n).update(from: $0.baseAddress!, count: n) } }
    }
  }
}
