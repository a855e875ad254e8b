import SubqCore

/// Where the causal diagonal sits when the query and key lengths differ.
public enum CausalAlignment: String, Sendable, CaseIterable {
  /// flash-attn ≥ 2.1 and MLX: the last query aligns with the last key. Query i sees keys
  /// j ≤ i + Nk − Nq. With Nq = 2, Nk = 5 the mask rows are `1 1 1 1 0` / `1 1 1 1 1`.
  case bottomRight = "bottom-right"
  /// PyTorch's `scaled_dot_product_attention(is_causal=True)`: query i sees keys j ≤ i.
  /// With Nq = 2, Nk = 5 the rows are `1 0 0 0 0` / `1 1 0 0 0`.
  case topLeft = "top-left"
}

/// Memory order of the query, key, value and output tensors.
public enum AttentionLayout: String, Sendable, CaseIterable {
  /// `[B, H, N, D]`: heads before positions (PyTorch's SDPA, MLX).
  case bhsd
  /// `[B, N, H, D]`: positions before heads (flash-attn's `flash_attn_func`).
  case bshd
}

/// A local attention window: query i sees keys j with `i + off − left ≤ j ≤ i + off + right`, where
/// `off` is the causal alignment offset (Nk − Nq bottom-right, 0 top-left). `nil` is unbounded, as
/// flash-attn's −1.
public struct AttentionWindow: Sendable, Equatable {
  public var left: Int?
  public var right: Int?
  public init(left: Int?, right: Int?) {
    self.left = left
    self.right = right
  }
  /// No window.
  public static let unbounded = AttentionWindow(left: nil, right: nil)
}

/// The options every softmax-attention method takes, with flash-attn's semantics.
///
/// The score of query i and key j is
///
///     s = τ · q_i · k_j                         (τ = `scale`, default 1/√D)
///     s = c · tanh(s / c)                       (when `softcap` = c > 0)
///     s = s − slope_h · |i + off − j|           (when ALiBi slopes are given)
///
/// and key j is visible to query i when j is inside the sequence (below `keyLengths[b]` when given)
/// and inside the window; `causal` is the window (∞, 0). A query that sees no key outputs zeros
/// and log-sum-exp +∞ (never NaN).
public struct AttentionOptions: Sendable {
  /// Softmax scale τ; `nil` means 1/√D.
  public var scale: Float?
  /// Causal masking (equivalent to a window with `right = 0`).
  public var causal: Bool
  /// Where the causal diagonal and the window sit when Nq ≠ Nk.
  public var alignment: CausalAlignment
  /// Sliding window; combined with `causal` by taking `right = 0`.
  public var window: AttentionWindow
  /// Logit soft-capping value c > 0 (Gemma 2, Grok): `s = c · tanh(τ·q·k / c)`.
  public var softcap: Float?
  /// ALiBi slopes, shape `[Hq]` or `[B, Hq]`; the bias −slope·|i + off − j| is added after softcap.
  public var alibiSlopes: Tensor?
  /// Valid keys per batch entry, `[B]`; keys at positions ≥ `keyLengths[b]` are never read.
  public var keyLengths: [Int]?
  /// Packed variable-length sequences: cumulative query offsets `[S + 1]`, starting at 0 and
  /// ending at Nq. Requires `B == 1`; sequence s owns query rows `cuSeqlensQ[s]..<cuSeqlensQ[s+1]`
  /// and key rows `cuSeqlensK[s]..<cuSeqlensK[s+1]` and attends only within itself.
  public var cuSeqlensQ: [Int]?
  /// Cumulative key offsets `[S + 1]` for packed sequences (see `cuSeqlensQ`).
  public var cuSeqlensK: [Int]?
  /// Memory order of Q, K, V and the output.
  public var layout: AttentionLayout
  /// Whether to return the log-sum-exp of each query row (natural log), shape `[B, Hq, Nq]`.
  public var returnLSE: Bool
  /// Accept NaN and ±∞ in the inputs (by default they are an error).
  public var allowNonFinite: Bool
  /// Worker threads; `nil` uses ``Parallel/defaultThreads``.
  public var threads: Int?

  public init(
    scale: Float? = nil, causal: Bool = false, alignment: CausalAlignment = .bottomRight,
    window: AttentionWindow = .unbounded, softcap: Float? = nil, alibiSlopes: Tensor? = nil,
    keyLengths: [Int]? = nil, cuSeqlensQ: [Int]? = nil, cuSeqlensK: [Int]? = nil,
    layout: AttentionLayout = .bhsd, returnLSE: Bool = false, allowNonFinite: Bool = false,
    threads: Int? = nil
  ) {
    self.scale = scale
    self.causal = causal
    self.alignment = alignment
    self.window = window
    self.softcap = softcap
    self.alibiSlopes = alibiSlopes
    self.keyLengths = keyLengths
    self.cuSeqlensQ = cuSeqlensQ
    self.cuSeqlensK = cuSeqlensK
    self.layout = layout
    self.returnLSE = returnLSE
    self.allowNonFinite = allowNonFinite
    self.threads = threads
  }

  /// The options that change which keys a query sees or how scores are formed, by name; used by
  /// methods to reject options they do not implement.
  public var activeFeatures: [String] {
    var f: [String] = []
    if causal { f.append("causal") }
    if window.left != nil || window.right != nil { f.append("window") }
    if softcap != nil { f.append("softcap") }
    if alibiSlopes != nil { f.append("alibi") }
    if keyLengths != nil { f.append("key-lengths") }
    if cuSeqlensQ != nil || cuSeqlensK != nil { f.append("varlen") }
    return f
  }
}

/// The result of an attention call.
public struct AttentionResult: Sendable {
  /// The output, in the layout of the queries: `[B, Hq, Nq, Dv]` (bhsd) or `[B, Nq, Hq, Dv]` (bshd).
  public var output: Tensor
  /// Log-sum-exp per query row (natural log), `[B, Hq, Nq]`, when requested; +∞ for rows that see
  /// no key.
  public var lse: Tensor?

  public init(output: Tensor, lse: Tensor?) {
    self.output = output
    self.lse = lse
  }
}
