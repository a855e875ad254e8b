import Foundation
import SubqAttention
import SubqCore
import SubqKernels

/// StreamingLLM attention: causal attention to the first `sinks` keys (the attention sinks) plus a
/// sliding window of the most recent `window` keys.
///
/// Query i of a sequence sits at key position `P = i + off` (off = Nk − Nq for the default
/// bottom-right alignment, 0 for top-left, as in ``AttentionOptions``) and sees the keys
///
///     j ∈ [0, S) ∪ [P − W + 1, P],   0 ≤ j ≤ P,   j < Nk
///
/// each once (the two ranges never double count where they overlap). The output is exact softmax
/// attention over those keys. The kernel is the flash machinery run over two key ranges per query
/// block with one online softmax: no mask is materialized and no other key is read.
///
/// Positions: the kernel uses the key positions as stored. StreamingLLM additionally re-indexes
/// positions *within the cache* (RoPE applied to cached keys by their cache index, pre-RoPE keys
/// cached); that is a model-level step done before calling this kernel, as is evicting keys from
/// the cache. With a cache of `S + W` keys and one new query, this computes exactly one
/// StreamingLLM decoding step.
///
/// The method is causal by definition: the `causal` option is accepted and changes nothing;
/// `causal-align` chooses the diagonal. Key lengths and packed sequences apply per sequence.
///
/// - Complexity: O(B·Hq·Nq·(S + W)·(D + Dv)) time, O(threads·64·(D + Dv + 96)) scratch.
public struct SinkAttention: PatternAttentionMethod {
  public static let info = MethodInfo(
    name: "sinks",
    summary: "StreamingLLM: causal attention to the first S keys (sinks) plus a sliding window of the last W keys, fused",
    paper: "Xiao et al., Efficient Streaming Language Models with Attention Sinks (2023)",
    complexity: "O(N·(S+W)·D) time, O(1) extra memory per thread",
    isExact: false,
    parameters: [
      MethodParameter("sinks", default: "4", "number of initial keys every query sees (S ≥ 0)"),
      MethodParameter("window", default: "1024", "recent keys per query, including its own position (W ≥ 1)"),
    ],
    supportedFeatures: ["causal", "softcap", "key-lengths", "varlen"])

  /// Sink keys S.
  public let sinks: Int
  /// Recent-window size W (the query's own position included).
  public let window: Int

  static let op = "attention.sinks"
  static let blockQ = max(64, AttentionTiles.width)
  static let blockK = 96

  /// - Throws: ``SubqError/argument(op:name:value:reason:)`` for `sinks < 0` or `window < 1`.
  public init(sinks: Int = 4, window: Int = 1024) throws(SubqError) {
    guard sinks >= 0 else { throw .argument(op: Self.op, name: "sinks", value: "\(sinks)", reason: "must be ≥ 0") }
    guard window >= 1 else { throw .argument(op: Self.op, name: "window", value: "\(window)", reason: "must be ≥ 1") }
    self.sinks = sinks
    self.window = window
  }

  public init(parameters: MethodParameters) throws(SubqError) {
    try parameters.validate(for: Self.info)
    try self.init(sinks: parameters.int("sinks", Self.info, in: 0...Int(Int32.max)),
                  window: parameters.int("window", Self.info, in: 1...Int(Int32.max)))
  }

  public var parameterValues: [String: String] { ["sinks": "\(sinks)", "window": "\(window)"] }

  /// The keys query `i` of `seq` sees: the sink range and the recent range, each possibly empty.
  func ranges(_ seq: AttentionSequence, _ i: Int) -> (Range<Int>, Range<Int>) {
    let pos = i + seq.offset
    let hi = min(pos, seq.keyCount - 1)
    if hi < 0 { return (0..<0, 0..<0) }
    let s = min(sinks, hi + 1)
    let lo = max(sinks, pos - window + 1)
    return (0..<s, lo <= hi ? lo..<(hi + 1) : lo..<lo)
  }

  func prepare(_ queries: Tensor, _ keys: Tensor, _ values: Tensor, _ options: AttentionOptions) throws(SubqError) -> AttentionProblem {
    let p = try AttentionProblem.validate(op: Self.op, queries: queries, keys: keys, values: values, options: options)
    try Self.info.check(options)
    return p
  }

  public func attention(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions) throws(SubqError) -> AttentionResult {
    let p = try prepare(queries, keys, values, options)
    var out = Tensor(shape: p.outputShape) { _ in }
    var lse: Tensor? = p.returnLSE ? Tensor(shape: p.lseShape) { _ in } : nil
    queries.withUnsafeBufferPointer { q in
      keys.withUnsafeBufferPointer { k in
        values.withUnsafeBufferPointer { v in
          out.withUnsafeMutableBufferPointer { o in
            if lse != nil {
              lse!.withUnsafeMutableBufferPointer { l in
                forward(p, q: q.baseAddress!, k: k.baseAddress!, v: v.baseAddress!, out: o.baseAddress!, lse: l.baseAddress!)
              }
            } else {
              forward(p, q: q.baseAddress!, k: k.baseAddress!, v: v.baseAddress!, out: o.baseAddress!, lse: nil)
            }
          }
        }
      }
    }
    return AttentionResult(output: out, lse: lse)
  }

  func forward(_ p: AttentionProblem, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
               out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>?) {
    let bq = Self.blockQ, bk = Self.blockK
    var items: [(Int32, Int32, Int32)] = []
    for (si, seq) in p.sequences.enumerated() where seq.queryCount > 0 {
      for h in 0..<p.queryHeads {
        for i0 in stride(from: 0, to: seq.queryCount, by: bq) { items.append((Int32(si), Int32(h), Int32(i0))) }
      }
    }
    let list = items
    let floats = BlockSoftmax.scratchFloats(D: p.headDim, Dv: p.valueDim, blockQ: bq, blockK: bk)
    let workers = Parallel.workers(for: list.count, threads: p.threads)
    let scratch = AlignedBuffer<Float>(count: workers * floats)
    let sp = SendablePointer(scratch.pointer)
    let qp = SendablePointer(q), kp = SendablePointer(k), vp = SendablePointer(v), op = SendablePointer(out)
    let lp = lse.map { SendablePointer($0) }
    Parallel.forEach(list.count, threads: workers) { item, worker in
      let (si, h, i0) = (Int(list[item].0), Int(list[item].1), Int(list[item].2))
      let seq = p.sequences[si]
      let g = p.kvHead(h)
      let rows = min(bq, seq.queryCount - i0)
      let block = BlockSoftmax(scratch: sp.pointer + worker * floats, D: p.headDim, Dv: p.valueDim, blockQ: bq, blockK: bk,
                               softcap: p.softcap)
      let qr = p.queryRows, kr = p.keyRows, vr = p.valueRows, orows = p.outputRows
      block.load(q: qp.pointer + qr.offset(batch: seq.batch, head: h, row: seq.queryStart + i0), ldq: qr.rowStride,
                 rows: rows, scale: p.scale)
      let kBase = kp.pointer + kr.offset(batch: seq.batch, head: g, row: seq.keyStart)
      let vBase = vp.pointer + vr.offset(batch: seq.batch, head: g, row: seq.keyStart)
      let diagonal = i0 + seq.offset                 // key position of the block's first query
      let lastPos = diagonal + rows - 1
      let hi = min(lastPos, seq.keyCount - 1)        // last key any query of the block sees
      if hi >= 0 {
        let sinkEnd = min(self.sinks, hi + 1)
        if sinkEnd > 0 {
          block.attend(k: kBase, ldk: kr.rowStride, v: vBase, ldv: vr.rowStride, range: 0..<sinkEnd,
                       diagonal: diagonal, left: nil, right: 0)
        }
        let lo = max(self.sinks, diagonal - self.window + 1)
        if lo <= hi {
          block.attend(k: kBase, ldk: kr.rowStride, v: vBase, ldv: vr.rowStride, range: lo..<(hi + 1),
                       diagonal: diagonal, left: self.window - 1, right: 0)
        }
      }
      block.store(out: op.pointer + orows.offset(batch: seq.batch, head: h, row: seq.queryStart + i0), ldo: orows.rowStride,
                  rows: rows, lse: lp.map { $0.pointer + (seq.batch * p.queryHeads + h) * p.queryLength + seq.queryStart + i0 })
    }
    withExtendedLifetime(scratch) {}
  }

  public func attendedPairs(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions) throws(SubqError) -> Double {
    let p = try prepare(queries, keys, values, options)
    var total = 0
    for seq in p.sequences {
      for i in 0..<seq.queryCount {
        let (a, b) = ranges(seq, i)
        total += a.count + b.count
      }
    }
    return Double(total) * Double(p.queryHeads)
  }

  public func selectedKeys(queries: Tensor, keys: Tensor, values: Tensor, options: AttentionOptions, rows: [QueryRow]) throws(SubqError) -> [[Int]] {
    let p = try prepare(queries, keys, values, options)
    var out: [[Int]] = []
    for r in rows {
      guard r.head >= 0, r.head < p.queryHeads,
            let seq = p.sequences.first(where: { $0.batch == r.batch && r.row >= $0.queryStart && r.row < $0.queryStart + $0.queryCount })
      else {
        throw .argument(op: Self.op, name: "rows", value: "(\(r.batch), \(r.head), \(r.row))", reason: "not a query row of this call")
      }
      let (a, b) = ranges(seq, r.row - seq.queryStart)
      out.append((Array(a) + Array(b)).map { $0 + seq.keyStart })
    }
    return out
  }
}
