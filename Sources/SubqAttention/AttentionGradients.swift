import SubqCore

/// Gradients of a scalar loss with respect to the inputs of an attention call.
///
/// Given dO = ∂loss/∂O for the output O = softmax(S)·V of ``AttentionOptions``' scores S, the
/// gradients are, per sequence and query head h reading key/value head g,
///
///     dV[g] = Σ_{h in group g} Pᵀ · dO            P = softmax(S)
///     dS    = P ∘ (dO·Vᵀ − D),                    D_i = Σ_c dO_ic · O_ic
///     dQ    = τ · (dS ∘ T) · K,                   T = 1 − tanh²(τ·q·k/c) under a softcap c, else 1
///     dK[g] = τ · Σ_{h in group g} (dS ∘ T)ᵀ · Q
///
/// ALiBi slopes, masks and key lengths are constants: keys a query never sees get no gradient
/// from it, and keys past a sequence's length (or outside every query's window) get dK = dV = 0.
public struct AttentionGradients: Sendable {
  /// dQ, with the shape and layout of the queries.
  public var queries: Tensor
  /// dK, with the shape and layout of the keys (summed over each key/value head's query heads).
  public var keys: Tensor
  /// dV, with the shape and layout of the values.
  public var values: Tensor

  public init(queries: Tensor, keys: Tensor, values: Tensor) {
    self.queries = queries
    self.keys = keys
    self.values = values
  }
}

/// An attention method that can also compute the gradients of its output.
public protocol DifferentiableAttentionMethod: AttentionMethod {
  /// The gradients of a loss with respect to Q, K and V, given `outputGradient` = ∂loss/∂O
  /// (shape of the output). Recomputes whatever the forward pass would have saved.
  ///
  /// `options.returnLSE` has no effect here; every other option applies as in the forward pass.
  func gradients(
    queries: Tensor, keys: Tensor, values: Tensor, outputGradient: Tensor, options: AttentionOptions
  ) throws(SubqError) -> AttentionGradients
}

extension AttentionProblem {
  /// Checks a tensor that must have the output's shape (O or dO of a backward pass).
  package func checkOutputLike(_ t: Tensor, name: String, allowNonFinite: Bool) throws(SubqError) {
    if t.shape != outputShape {
      throw .shape(op: op, tensor: name, shape: t.shape, reason: "expected the output's shape \(outputShape) (\(layout.rawValue) layout)")
    }
    if !allowNonFinite, let bad = t.firstNonFinite() {
      throw .nonFinite(op: op, tensor: name, index: t.index(ofFlat: bad), value: SubqError.describe(t[flat: bad]))
    }
  }

  /// Checks a forward pass's log-sum-exp for a backward pass: shape `[B, Hq, Nq]`, no NaN and no
  /// −∞ (+∞ marks a row that saw no key).
  package func checkLSE(_ t: Tensor, name: String = "LSE") throws(SubqError) {
    if t.shape != lseShape {
      throw .shape(op: op, tensor: name, shape: t.shape, reason: "expected [B, Hq, Nq] = \(lseShape)")
    }
    if let bad = t.withUnsafeBufferPointer({ $0.firstIndex { $0.isNaN || $0 == -.infinity } }) {
      throw .nonFinite(op: op, tensor: name, index: t.index(ofFlat: bad), value: SubqError.describe(t[flat: bad]))
    }
  }
}
