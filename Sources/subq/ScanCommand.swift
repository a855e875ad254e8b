import ArgumentParser
import Foundation
import Subquadratic

/// Reads an optional .npy file.
func readOptional(_ path: String?) throws(SubqError) -> Tensor? {
  guard let path else { return nil }
  return try NPY.read(path)
}

/// Adds a leading axis of extent 1.
func batched(_ t: Tensor) throws(SubqError) -> Tensor { try t.reshaped([1] + t.shape) }

/// Removes a leading axis of extent 1.
func unbatched(_ t: Tensor) throws(SubqError) -> Tensor { try t.reshaped(Array(t.shape.dropFirst())) }

/// Writes the first file, then the optional second; if the second fails the first is removed,
/// so a failed command leaves no output behind.
func writeOutputs(_ first: (Tensor, String), _ second: (Tensor, String)?) throws(SubqError) {
  try NPY.write(first.0, to: first.1)
  if let second {
    do throws(SubqError) {
      try NPY.write(second.0, to: second.1)
    } catch {
      try? FileManager.default.removeItem(atPath: first.1)
      throw error
    }
  }
}

/// `subq scan`: the Mamba selective scan on .npy files.
struct ScanCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "scan",
    abstract: "Run the Mamba selective scan (S6) on .npy inputs and write the output (and the last state).",
    discussion: """
      Shapes as mamba's selective_scan_ref: u, delta, z [B, D, L]; A [D, N]; B, C [B, N, L] or grouped \
      [B, G, N, L]; D, delta bias [D]; initial state and last state [B, D, N]. Without the batch axis \
      (u [D, L]) every batched input drops it too (B, C [N, L] or [G, N, L], state [D, N]) and so do the \
      outputs. Δ = softplus(delta + bias) with --delta-softplus; out = (Σ C·h + D·u)·SiLU(z).
      """)

  @Option(help: "Input u, [B, D, L].") var u: String
  @Option(help: "Step sizes delta, [B, D, L].") var delta: String
  @Option(name: .customLong("A"), help: "State matrix A, [D, N].") var a: String
  @Option(name: .customLong("B"), help: "Input projection B, [B, N, L] or [B, G, N, L].") var b: String
  @Option(name: .customLong("C"), help: "Output projection C, [B, N, L] or [B, G, N, L].") var c: String
  @Option(name: .customLong("D"), help: "Skip connection D, [D].") var d: String?
  @Option(help: "Gate z, [B, D, L].") var z: String?
  @Option(name: .customLong("delta-bias"), help: "Bias added to delta, [D].") var deltaBias: String?
  @Flag(name: .customLong("delta-softplus"), help: "Apply softplus to delta + bias.") var deltaSoftplus = false
  @Option(name: .customLong("initial-state"), help: "Initial state, [B, D, N].") var initialState: String?
  @Option(help: "Output .npy path, [B, D, L].") var out: String
  @Option(name: .customLong("last-state"), help: "Write the last state [B, D, N] here.") var lastState: String?
  @Option(help: "Also split the sequence into chunks of this many steps (default: automatic).") var chunk: Int?
  @Option(help: "Worker threads (default: all cores).") var threads: Int?

  func run() throws {
    var x = SelectiveScanInputs(
      u: try NPY.read(u), delta: try NPY.read(delta), A: try NPY.read(a), B: try NPY.read(b), C: try NPY.read(c),
      D: try readOptional(d), z: try readOptional(z), deltaBias: try readOptional(deltaBias), deltaSoftplus: deltaSoftplus,
      initialState: try readOptional(initialState))
    let single = x.u.rank == 2
    if single {
      x.u = try batched(x.u)
      x.delta = try batched(x.delta)
      x.B = try batched(x.B)
      x.C = try batched(x.C)
      x.z = try x.z.map { (t: Tensor) throws(SubqError) in try batched(t) }
      x.initialState = try x.initialState.map { (t: Tensor) throws(SubqError) in try batched(t) }
    }
    let scan = SelectiveScan(parallelism: chunk.map { .sequenceChunks(length: $0) } ?? .automatic, threads: threads)
    let r = try scan(x)
    let output = single ? try unbatched(r.output) : r.output
    let state = single ? try unbatched(r.lastState) : r.lastState
    try writeOutputs((output, out), lastState.map { (state, $0) })
  }
}

/// `subq ssd`: the Mamba-2 SSD scan on .npy files.
struct SSDCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "ssd",
    abstract: "Run the Mamba-2 SSD chunked scan on .npy inputs and write the output (and the final state).",
    discussion: """
      Shapes as mamba's mamba_chunk_scan_combined: x, z [B, L, H, P]; dt [B, L, H]; A, dt bias [H]; \
      B, C [B, L, G, N] (or [B, L, N]); D [H] or [H, P]; initial and final state [B, H, P, N]. Without the \
      batch axis (x [L, H, P]) the batched inputs and outputs drop it too. Any length: the last chunk may be \
      shorter.
      """)

  @Option(help: "Input x, [B, L, H, P].") var x: String
  @Option(help: "Step sizes dt, [B, L, H].") var dt: String
  @Option(name: .customLong("A"), help: "One scalar per head, [H].") var a: String
  @Option(name: .customLong("B"), help: "B, [B, L, G, N].") var b: String
  @Option(name: .customLong("C"), help: "C, [B, L, G, N].") var c: String
  @Option(name: .customLong("D"), help: "Skip connection, [H] or [H, P].") var d: String?
  @Option(help: "Gate z, [B, L, H, P].") var z: String?
  @Option(name: .customLong("dt-bias"), help: "Bias added to dt, [H].") var dtBias: String?
  @Flag(name: .customLong("dt-softplus"), help: "Apply softplus to dt + bias.") var dtSoftplus = false
  @Option(name: .customLong("initial-state"), help: "Initial state, [B, H, P, N].") var initialState: String?
  @Option(help: "Steps per chunk.") var chunk = 64
  @Option(help: "Output .npy path, [B, L, H, P].") var out: String
  @Option(name: .customLong("final-state"), help: "Write the final state [B, H, P, N] here.") var finalState: String?
  @Option(help: "Worker threads (default: all cores).") var threads: Int?

  func run() throws {
    let ssd = try SSD(chunk: chunk, threads: threads)
    var i = SSDInputs(
      x: try NPY.read(x), dt: try NPY.read(dt), A: try NPY.read(a), B: try NPY.read(b), C: try NPY.read(c),
      D: try readOptional(d), z: try readOptional(z), dtBias: try readOptional(dtBias), dtSoftplus: dtSoftplus,
      initialState: try readOptional(initialState))
    let single = i.x.rank == 3
    if single {
      i.x = try batched(i.x)
      i.dt = try batched(i.dt)
      i.B = try batched(i.B)
      i.C = try batched(i.C)
      i.z = try i.z.map { (t: Tensor) throws(SubqError) in try batched(t) }
      i.initialState = try i.initialState.map { (t: Tensor) throws(SubqError) in try batched(t) }
    }
    let r = try ssd(i)
    let output = single ? try unbatched(r.output) : r.output
    let state = single ? try unbatched(r.finalState) : r.finalState
    try writeOutputs((output, out), finalState.map { (state, $0) })
  }
}
