import Foundation
import SubqCore

/// A record of chosen layers' attention inputs and outputs while a ``LlamaSession`` runs, for
/// studying real queries and keys outside the model (`subq trace`, then
/// `subq decode-bench --trace`).
///
/// For each recorded layer and each position the session runs, it keeps what that layer's
/// attention sees: the query of every query head and the key of every key/value head *after*
/// RoPE, the values, and the attention output (before `Wo`). Attention inside the model is causal
/// with scale `1/√D` and grouped queries (query head h reads key/value head `h / (Hq / Hkv)`), so
/// `Attention(queries, keys, values)` with those settings reproduces ``Layer/output`` (up to the
/// method's rounding; the session's prefill runs `flash`, decode steps split-KV).
///
/// Start one with ``LlamaSession/startTrace(layers:)``. Every `prefill` and `decode` of the
/// session from then on appends its positions, in order; a step that throws appends nothing. If
/// the session drops positions (``LlamaSession/reset()``), the trace drops the same ones.
///
/// Memory: `4 · (2·Hq + 2·Hkv) · D` bytes per position and recorded layer (SmolLM2-135M:
/// 6 KiB, so 48 MiB per layer at 8192 positions).
public final class AttentionTrace: @unchecked Sendable {
  /// The recorded layers, ascending.
  public let layers: [Int]
  /// Query heads, key/value heads and head dimension of the model.
  public let heads: Int, kvHeads: Int, headDim: Int
  /// Position of the first recorded token.
  public let startPosition: Int
  /// Recorded positions: `startPosition ..< startPosition + count`.
  public private(set) var count = 0

  /// Per recorded layer, rows `[count, H·D]` as the model computes them.
  private var q: [[Float]], k: [[Float]], v: [[Float]], out: [[Float]]
  private let slot: [Int: Int]

  init(layers: [Int], heads: Int, kvHeads: Int, headDim: Int, startPosition: Int) {
    self.layers = layers
    self.heads = heads
    self.kvHeads = kvHeads
    self.headDim = headDim
    self.startPosition = startPosition
    q = Array(repeating: [], count: layers.count)
    k = q
    v = q
    out = q
    slot = Dictionary(uniqueKeysWithValues: layers.enumerated().map { ($1, $0) })
  }

  /// The inputs and output of one layer's attention over the recorded positions.
  public struct Layer: Sendable {
    public var layer: Int
    /// `[Hq, N, D]`, after RoPE.
    public var queries: Tensor
    /// `[Hkv, N, D]`, after RoPE.
    public var keys: Tensor
    /// `[Hkv, N, D]`.
    public var values: Tensor
    /// `[Hq, N, D]`: the attention output the model used.
    public var output: Tensor
  }

  /// Layer `layer`'s record, head-major.
  /// - Throws: ``SubqError/argument(op:name:value:reason:)`` when `layer` is not recorded.
  public func layer(_ layer: Int) throws(SubqError) -> Layer {
    guard let s = slot[layer] else {
      throw .argument(op: "llm.trace", name: "layer", value: "\(layer)", reason: "not recorded (recorded: \(layers.map(String.init).joined(separator: ",")))")
    }
    let n = count, D = headDim
    func byHead(_ rows: [Float], _ h: Int) -> Tensor {
      Tensor(shape: [h, n, D]) { t in
        rows.withUnsafeBufferPointer { r in
          for hh in 0..<h {
            for i in 0..<n { (t.baseAddress! + (hh * n + i) * D).update(from: r.baseAddress! + (i * h + hh) * D, count: D) }
          }
        }
      }
    }
    return Layer(layer: layer, queries: byHead(q[s], heads), keys: byHead(k[s], kvHeads), values: byHead(v[s], kvHeads),
                 output: byHead(out[s], heads))
  }

  /// Whether `layer` is recorded.
  func records(_ layer: Int) -> Bool { slot[layer] != nil }

  /// Appends `n` rows of layer `layer`: `q`, `out` `[n, Hq·D]` and `k`, `v` `[n, ld]` (the first
  /// `Hkv·D` entries of each row).
  func append(layer: Int, n: Int, q qp: UnsafePointer<Float>, k kp: UnsafePointer<Float>, v vp: UnsafePointer<Float>, ld: Int,
              out op: UnsafePointer<Float>) {
    guard let s = slot[layer] else { return }
    let qd = heads * headDim, kvd = kvHeads * headDim
    q[s].append(contentsOf: UnsafeBufferPointer(start: qp, count: n * qd))
    out[s].append(contentsOf: UnsafeBufferPointer(start: op, count: n * qd))
    for i in 0..<n {
      k[s].append(contentsOf: UnsafeBufferPointer(start: kp + i * ld, count: kvd))
      v[s].append(contentsOf: UnsafeBufferPointer(start: vp + i * ld, count: kvd))
    }
  }

  /// Marks `n` more positions complete (after every recorded layer appended them).
  func commit(_ n: Int) { count += n }

  /// Drops everything after the first `length` recorded positions (also uncommitted rows).
  func truncate(to length: Int) {
    let m = Swift.max(0, Swift.min(length, count))
    let qd = heads * headDim, kvd = kvHeads * headDim
    for s in layers.indices {
      q[s].removeSubrange((m * qd)...)
      out[s].removeSubrange((m * qd)...)
      k[s].removeSubrange((m * kvd)...)
      v[s].removeSubrange((m * kvd)...)
    }
    count = m
  }
}

extension LlamaSession {
  /// Starts recording the attention of `layers` (see ``AttentionTrace``) from the next step on,
  /// replacing any trace in progress, and returns the trace.
  /// - Throws: ``SubqError/argument(op:name:value:reason:)`` for an empty list or a layer outside
  ///   `0..<layers`.
  @discardableResult
  public func startTrace(layers: [Int]) throws(SubqError) -> AttentionTrace {
    let L = model.config.layers
    guard !layers.isEmpty else { throw .argument(op: "llm.trace", name: "layers", value: "[]", reason: "name at least one layer") }
    for l in layers where l < 0 || l >= L {
      throw .argument(op: "llm.trace", name: "layers", value: "\(l)", reason: "must be in 0..<\(L) (the model's layers)")
    }
    let c = model.config
    let t = AttentionTrace(layers: Array(Set(layers)).sorted(), heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim,
                           startPosition: position)
    trace = t
    return t
  }

  /// Stops recording; returns the trace that was in progress.
  @discardableResult
  public func stopTrace() -> AttentionTrace? {
    defer { trace = nil }
    return trace
  }
}
