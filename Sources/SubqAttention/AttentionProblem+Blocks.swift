import SubqCore

extension AttentionProblem {
  /// A problem over caller-chosen blocks of query and key rows, for drivers that split one
  /// attention across several kernel calls (sequence parallelism, split-KV).
  ///
  /// The tensors are `[B, Hq, queryLength, D]`, `[B, Hkv, keyLength, D]`, `[B, Hkv, keyLength, Dv]`
  /// (bhsd). Each sequence names a block of query rows and a block of key rows and the offset
  /// `off = (global position of the first query) − (global position of the first key)`, so a causal
  /// problem masks exactly the keys that are in the future of each query in the whole sequence
  /// (query i sees key j when `j ≤ i + off`). The caller guarantees what `validate` would check:
  /// positive extents, `Hq` a multiple of `Hkv`, finite inputs, rows inside the tensors.
  package static func blocks(
    op: String, batch: Int, queryHeads: Int, keyValueHeads: Int, queryLength: Int, keyLength: Int,
    headDim: Int, valueDim: Int, scale: Float, causal: Bool, softcap: Float?,
    sequences: [AttentionSequence], threads: Int
  ) -> AttentionProblem {
    precondition(queryHeads >= 1 && keyValueHeads >= 1 && queryHeads % keyValueHeads == 0, "\(op): bad head counts")
    precondition(headDim >= 1 && valueDim >= 1 && threads >= 1, "\(op): bad dims or threads")
    for s in sequences {
      precondition(s.batch >= 0 && s.batch < batch && s.queryStart >= 0 && s.queryStart + s.queryCount <= queryLength
                   && s.keyStart >= 0 && s.keyStart + s.keyCount <= keyLength, "\(op): block outside the tensors")
    }
    return AttentionProblem(
      op: op, batch: batch, queryHeads: queryHeads, keyValueHeads: keyValueHeads, queryLength: queryLength,
      keyLength: keyLength, headDim: headDim, valueDim: valueDim, layout: .bhsd, scale: scale,
      windowLeft: nil, windowRight: causal ? 0 : nil, causal: causal, alignment: .bottomRight,
      softcap: softcap, alibi: nil, keyLengths: nil, isVarlen: true, sequences: sequences,
      returnLSE: true, threads: threads)
  }
}

extension AttentionSequence {
  /// A sequence (or a block of one) for ``AttentionProblem/blocks(op:batch:queryHeads:keyValueHeads:queryLength:keyLength:headDim:valueDim:scale:causal:softcap:sequences:threads:)``.
  package static func block(batch: Int, queryStart: Int, queryCount: Int, keyStart: Int, keyCount: Int, offset: Int) -> AttentionSequence {
    AttentionSequence(batch: batch, queryStart: queryStart, queryCount: queryCount, keyStart: keyStart, keyCount: keyCount, offset: offset)
  }
}
