import Foundation
import SubqCore

/// One layer's recorded attention inputs, replayed by ``SelectionDecodeBench`` as decoding
/// (`subq decode-bench --trace DIR`): `DIR/q.npy` `[Hq, N, D]`, `DIR/k.npy` `[Hkv, N, D]`,
/// `DIR/v.npy` `[Hkv, N, D]`, Float32 (what `subq trace` writes per layer; any other `.npy` files
/// in the directory are ignored).
///
/// The replay: the first `context` positions are the cached prompt, and their queries the
/// prefill queries the RetrievalAttention index is built from; decode step s appends position
/// `context + s`'s key and value and attends with its queries — what decoding the same text
/// does. Attention is causal with scale `1/√D` (a LLaMA model's; `subq trace` records after RoPE).
public struct DecodeTrace: Sendable {
  /// The directory the files came from.
  public var directory: String
  public var queries: Tensor
  public var keys: Tensor
  public var values: Tensor

  /// Recorded positions N.
  public var tokens: Int { keys.shape[1] }
  public var heads: Int { queries.shape[0] }
  public var kvHeads: Int { keys.shape[0] }
  public var dim: Int { keys.shape[2] }

  /// Reads and checks the three files.
  /// - Throws: ``SubqError/file(path:reason:)`` for a missing or malformed file,
  ///   ``SubqError/shape(op:tensor:shape:reason:)`` for a tensor that is not rank 3 or disagrees
  ///   with the others (positions, head dimension, heads not a multiple of kv heads),
  ///   ``SubqError/unsupported(op:feature:reason:)`` for a value dimension other than the key
  ///   dimension (the paged cache holds one), ``SubqError/nonFinite(op:tensor:index:value:)`` for
  ///   a NaN or infinity.
  public static func load(directory: String) throws(SubqError) -> DecodeTrace {
    let op = "decode-bench.trace"
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDir), isDir.boolValue else {
      throw .file(path: directory, reason: "no such directory (--trace names a directory holding q.npy, k.npy and v.npy, e.g. `subq trace`'s layer-L)")
    }
    func read(_ name: String) throws(SubqError) -> Tensor {
      let path = (directory as NSString).appendingPathComponent(name)
      guard FileManager.default.fileExists(atPath: path) else {
        throw .file(path: path, reason: "no such file (a trace directory holds q.npy [Hq, N, D], k.npy and v.npy [Hkv, N, D])")
      }
      let t = try NPY.read(path)
      guard t.rank == 3 else { throw .shape(op: op, tensor: name, shape: t.shape, reason: "expected rank 3, [heads, positions, dim]") }
      guard t.shape.allSatisfy({ $0 >= 1 }) else { throw .shape(op: op, tensor: name, shape: t.shape, reason: "has an empty extent") }
      if let i = t.firstNonFinite() {
        throw .nonFinite(op: op, tensor: name, index: t.index(ofFlat: i), value: SubqError.describe(t[flat: i]))
      }
      return t
    }
    let q = try read("q.npy"), k = try read("k.npy"), v = try read("v.npy")
    let N = k.shape[1], D = k.shape[2], Hkv = k.shape[0]
    guard q.shape[1] == N else { throw .shape(op: op, tensor: "q.npy", shape: q.shape, reason: "has \(q.shape[1]) positions, k.npy has \(N)") }
    guard v.shape[1] == N else { throw .shape(op: op, tensor: "v.npy", shape: v.shape, reason: "has \(v.shape[1]) positions, k.npy has \(N)") }
    guard q.shape[2] == D else { throw .shape(op: op, tensor: "q.npy", shape: q.shape, reason: "head dimension \(q.shape[2]) differs from k.npy's \(D)") }
    guard v.shape[0] == Hkv else { throw .shape(op: op, tensor: "v.npy", shape: v.shape, reason: "has \(v.shape[0]) heads, k.npy has \(Hkv)") }
    guard v.shape[2] == D else {
      throw .unsupported(op: op, feature: "value dimension \(v.shape[2]) ≠ key dimension \(D) (v.npy)", reason: "the paged KV cache holds one head dimension")
    }
    guard q.shape[0] % Hkv == 0 else {
      throw .shape(op: op, tensor: "q.npy", shape: q.shape, reason: "\(q.shape[0]) query heads are not a multiple of k.npy's \(Hkv) kv heads")
    }
    return DecodeTrace(directory: directory, queries: q, keys: k, values: v)
  }

  /// Positions `range` of a `[H, N, D]` tensor, `[H, range.count, D]`.
  static func slice(_ t: Tensor, _ range: Range<Int>) -> Tensor {
    let H = t.shape[0], N = t.shape[1], D = t.shape[2], n = range.count
    return Tensor(shape: [H, n, D]) { out in
      t.withUnsafeBufferPointer { src in
        for h in 0..<H {
          (out.baseAddress! + h * n * D).update(from: src.baseAddress! + (h * N + range.lowerBound) * D, count: n * D)
        }
      }
    }
  }
}
