import Foundation
import SubqAttention
import SubqCore
import SubqDecoding

/// `subq decode-bench`: the latency of one decode step of split-KV attention over a paged cache.
///
/// For each context length it fills a ``PagedKVCache`` (one sequence per batch entry), then times
/// ``SplitKVAttention`` for `queries` new tokens per sequence against the whole cache (causal,
/// bottom-right). A decode step is memory bound: it reads every cached key and value once, so the
/// report gives the bytes of cache read per step and the achieved read bandwidth next to the
/// machine's measured copy bandwidth (`subq peak`).
public struct DecodeBench {
  public struct Config: Sendable {
    public var contexts: [Int]
    public var batch = 1
    public var heads = 32
    public var kvHeads = 8
    public var dim = 128
    public var queries = 1
    public var storage = KVStorageType.float32
    public var pageSize = 64
    public var splits = 0
    public var repeats = 20
    public var seed: UInt64 = 1
    public var threads = Parallel.defaultThreads
    /// The copy bandwidth to compare with (GB/s, read + write); measured when nil.
    public var peakBandwidth: Double? = nil

    public init(contexts: [Int]) { self.contexts = contexts }
  }

  /// One measured context length.
  public struct Row: Sendable, Codable {
    public var context: Int
    public var medianSeconds: Double
    public var minSeconds: Double
    /// New tokens per second over the batch (batch · queries / median step time).
    public var tokensPerSecond: Double
    /// Bytes of cached keys and values read per step.
    public var cacheBytes: Double
    /// cacheBytes / median step time, GB/s.
    public var gbPerSecond: Double
    /// gbPerSecond / the machine's copy bandwidth.
    public var fractionOfPeak: Double
    /// Median step time per 1024 tokens of context (flat when time grows linearly).
    public var microsecondsPer1K: Double
    /// Processor time of all threads per step. On a loaded machine the wall-clock step time
    /// includes waiting for a core; this does not.
    public var cpuSecondsPerStep: Double
    /// Relative Frobenius error of the first key/value head's query heads against the Float64
    /// reference over the same keys and values (as stored).
    public var checkError: Double
  }

  public let config: Config
  public init(config: Config) { self.config = config }

  /// The copy bandwidth the report compares with.
  public func peakBandwidth() -> Double {
    config.peakBandwidth ?? (0..<3).map { _ in MachinePeak.copyRate(threads: config.threads) }.max()!
  }

  /// Runs every context length; `progress` gets each finished row.
  public func run(peak: Double, progress: (Row) -> Void = { _ in }) throws(SubqError) -> [Row] {
    let c = config
    let method = try SplitKVAttention(splits: c.splits)
    var rows: [Row] = []
    // One random block of tokens, appended repeatedly (the content does not change the timing).
    let chunk = min(4096, c.contexts.max() ?? 1)
    let kBlock = Tensor.randomNormal(shape: [c.kvHeads, chunk, c.dim], seed: c.seed)
    let vBlock = Tensor.randomNormal(shape: [c.kvHeads, chunk, c.dim], seed: c.seed &+ 1)
    for n in c.contexts {
      let pagesPerSequence = (n + c.pageSize - 1) / c.pageSize
      let cache = try PagedKVCache(.init(kvHeads: c.kvHeads, headDim: c.dim, pageSize: c.pageSize,
                                         pageCount: c.batch * pagesPerSequence, storage: c.storage))
      var sequences: [PagedKVCache.SequenceID] = []
      for _ in 0..<c.batch {
        let s = cache.createSequence()
        var filled = 0
        while filled < n {
          let m = min(chunk, n - filled)
          let range = try cache.extend(s, by: m)
          let k = m == chunk ? kBlock : slice(kBlock, m), v = m == chunk ? vBlock : slice(vBlock, m)
          try cache.write(s, layer: 0, at: range.lowerBound, keys: k, values: v)
          filled += m
        }
        sequences.append(s)
      }
      let q = Tensor.randomNormal(shape: [c.batch, c.heads, c.queries, c.dim], seed: c.seed &+ 2 &+ UInt64(n))
      let opts = AttentionOptions(causal: true, threads: c.threads)

      // Check: query heads of the first key/value head of sequence 0 against the Float64
      // reference over that head's keys and values read back from the cache.
      let first = try method.attention(queries: q, cache: cache, layer: 0, sequences: sequences, options: opts)
      let group = c.heads / c.kvHeads
      let view = try cache.view(sequences[0], layer: 0)
      let kRef = Tensor(shape: [1, 1, n, c.dim]) { p in for t in 0..<n { view.readRow(view.keyRow(t, head: 0), count: c.dim, into: p.baseAddress! + t * c.dim) } }
      let vRef = Tensor(shape: [1, 1, n, c.dim]) { p in for t in 0..<n { view.readRow(view.valueRow(t, head: 0), count: c.dim, into: p.baseAddress! + t * c.dim) } }
      let qRef = Tensor(shape: [1, group, c.queries, c.dim]) { p in for i in p.indices { p[i] = q[flat: i] } }
      let ref = try NaiveAttention.reference(queries: qRef, keys: kRef, values: vRef, options: opts)
      let got = Tensor(shape: [1, group, c.queries, c.dim]) { p in for i in p.indices { p[i] = first.output[flat: i] } }
      let checkError = relativeError(got, ref.output)

      var failure: SubqError? = nil
      let cpu0 = processCPUSeconds()
      let timing = Timing.measure(repeats: c.repeats, warmup: 1) {
        do {
          blackHole(try method.attention(queries: q, cache: cache, layer: 0, sequences: sequences, options: opts).output)
        } catch { failure = error as? SubqError }
      }
      if let failure { throw failure }
      let cpu = (processCPUSeconds() - cpu0) / Double(c.repeats + 1)
      let bytes = Double(c.batch * c.kvHeads * n * 2 * c.dim * c.storage.bytes)
      let gbs = bytes / timing.median / 1e9
      let row = Row(context: n, medianSeconds: timing.median, minSeconds: timing.min,
                    tokensPerSecond: Double(c.batch * c.queries) / timing.median, cacheBytes: bytes, gbPerSecond: gbs,
                    fractionOfPeak: gbs / peak, microsecondsPer1K: timing.median * 1e6 / (Double(n) / 1024), cpuSecondsPerStep: cpu,
                    checkError: checkError)
      rows.append(row)
      progress(row)
    }
    return rows
  }

  private func slice(_ t: Tensor, _ m: Int) -> Tensor {
    let (H, N, X) = (t.shape[0], t.shape[1], t.shape[2])
    return Tensor(shape: [H, m, X]) { p in
      for h in 0..<H { for i in 0..<m { for x in 0..<X { p[(h * m + i) * X + x] = t[flat: (h * N + i) * X + x] } } }
    }
  }
}
