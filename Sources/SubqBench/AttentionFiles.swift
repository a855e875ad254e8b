import SubqAttention
import SubqCore

/// Loading attention inputs from `.npy` files the way `subq` accepts them.
///
/// Arrays may have rank 2 (`[N, D]`), 3 (`[H, N, D]`, or `[N, H, D]` in bshd layout) or 4
/// (`[B, H, N, D]` / `[B, N, H, D]`); missing leading axes are 1. Outputs are written back in the
/// queries' rank.
public enum AttentionFiles {
  /// The tensor at `path` as rank 4 in `layout`, and its original rank.
  public static func load(_ path: String, tensor: String, layout: AttentionLayout) throws(SubqError) -> (tensor: Tensor, rank: Int) {
    let t = try NPY.read(path)
    return (try toRank4(t, name: "\(tensor) (\(path))", layout: layout), t.rank)
  }

  /// `t` viewed as rank 4 in `layout`.
  public static func toRank4(_ t: Tensor, name: String, layout: AttentionLayout) throws(SubqError) -> Tensor {
    switch t.rank {
    case 4: return t
    case 3: return try t.reshaped(layout == .bhsd ? [1] + t.shape : [1, t.shape[0], t.shape[1], t.shape[2]])
    case 2: return try t.reshaped(layout == .bhsd ? [1, 1, t.shape[0], t.shape[1]] : [1, t.shape[0], 1, t.shape[1]])
    default:
      let expect = layout == .bhsd ? "[N, D], [H, N, D] or [B, H, N, D]" : "[N, D], [N, H, D] or [B, N, H, D]"
      throw .shape(op: "attention", tensor: name, shape: t.shape, reason: "expected rank 2–4: \(expect)")
    }
  }

  /// A rank-4 output reshaped to `rank` (dropping leading axes of extent 1).
  public static func fromRank4(_ t: Tensor, rank: Int, layout: AttentionLayout) throws(SubqError) -> Tensor {
    let s = t.shape
    switch rank {
    case 4: return t
    case 3:
      guard s[0] == 1 else { return t }
      return try t.reshaped(Array(s.dropFirst()))
    case 2:
      guard s[0] == 1, (layout == .bhsd ? s[1] : s[2]) == 1 else { return t }
      return try t.reshaped(layout == .bhsd ? [s[2], s[3]] : [s[1], s[3]])
    default: return t
    }
  }
}
