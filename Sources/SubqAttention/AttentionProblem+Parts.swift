import SubqCore

// Package-level helpers for methods that run exact attention on parts of a validated problem
// (approximate and sparse methods call `FlashAttention.forward` on sub-blocks).

extension AttentionSequence {
  /// A sequence: query rows `queries` and key rows `keys` (along the tensors' sequence axis) of
  /// batch entry `batch`, with causal/window offset `offset`.
  package init(batch: Int, queries: Range<Int>, keys: Range<Int>, offset: Int) {
    self.init(batch: batch, queryStart: queries.lowerBound, queryCount: queries.count,
              keyStart: keys.lowerBound, keyCount: keys.count, offset: offset)
  }
}

extension AttentionProblem {
  /// The same problem (tensors, scale, mask, threads) over other `sequences`, e.g. diagonal blocks
  /// of the original sequences. The caller guarantees that every sequence lies inside the tensors
  /// and that its rows passed this problem's validation.
  package func restricted(to sequences: [AttentionSequence], returnLSE: Bool) -> AttentionProblem {
    AttentionProblem(
      op: op, batch: batch, queryHeads: queryHeads, keyValueHeads: keyValueHeads, queryLength: queryLength,
      keyLength: keyLength, headDim: headDim, valueDim: valueDim, layout: layout, scale: scale,
      windowLeft: windowLeft, windowRight: windowRight, causal: causal, alignment: alignment, softcap: softcap,
      alibi: alibi, keyLengths: keyLengths, isVarlen: isVarlen, sequences: sequences, returnLSE: returnLSE,
      threads: threads)
  }
}
