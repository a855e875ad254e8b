import Foundation
import SubqAttention
import SubqCore

/// Measures sequence-parallel attention on the ranks of a communicator: per rank, the time spent
/// computing and waiting and the bytes sent, for each variant; the transfer rate between
/// neighbouring ranks; and, from the measured compute and transfer rates, the speedup expected
/// on P machines.
///
/// On one machine the ranks share its cores and talk through shared memory, so the times show the
/// algorithms' overhead, not a speedup; ``Report/model`` turns the measured rates into the
/// expected time on P machines with links of a given bandwidth.
public struct SequenceParallelBench: Sendable {
  public struct Config: Sendable, Codable {
    public var length = 8192
    public var batch = 1
    public var heads = 8
    public var kvHeads = 8
    public var dim = 64
    public var causal = false
    public var variants: [SequenceParallelAttention.Variant] = SequenceParallelAttention.Variant.allCases
    public var repeats = 3
    public var seed: UInt64 = 1
    /// Threads per rank.
    public var threads = 1
    public init() {}
  }

  /// One variant's measurement: every rank's statistics from the run whose slowest rank had the
  /// median time, and the check against single-process flash.
  public struct VariantResult: Sendable, Codable {
    public var variant: SequenceParallelAttention.Variant
    public var ranks: [SequenceParallelStats]
    /// Relative Frobenius error of the first run's output against single-process flash.
    public var errorVsFlash: Double
    /// Wall time of the slowest rank's attention phase.
    public var seconds: Double { ranks.map(\.attentionSeconds).max() ?? 0 }
  }

  public struct Report: Sendable, Codable {
    public var config: Config
    public var ranks: Int
    public var results: [VariantResult]
    /// Bytes per second one rank sends to its neighbour while receiving from the other (ring
    /// exchange of one key/value chunk), nil with one rank.
    public var transferRate: Double?
    /// Bytes of that exchange.
    public var transferBytes: Int
  }

  public var config: Config
  public init(config: Config) { self.config = config }

  /// Runs the benchmark; collective. Returns the report on rank 0, nil on the others.
  public func run<C: Communicator>(communicator comm: C) throws(SubqError) -> Report? {
    let c = config
    let isRoot = comm.rank == 0
    var q: Tensor? = nil, k: Tensor? = nil, v: Tensor? = nil
    if isRoot {
      q = Tensor.randomNormal(shape: [c.batch, c.heads, c.length, c.dim], seed: c.seed)
      k = Tensor.randomNormal(shape: [c.batch, c.kvHeads, c.length, c.dim], seed: c.seed &+ 1)
      v = Tensor.randomNormal(shape: [c.batch, c.kvHeads, c.length, c.dim], seed: c.seed &+ 2)
    }
    let options = AttentionOptions(causal: c.causal, threads: c.threads)
    var reference: Tensor? = nil
    var results: [VariantResult] = []
    for variant in c.variants {
      let method = try SequenceParallelAttention(variant: variant)
      var runs: [[SequenceParallelStats]] = []
      var error = Double.nan
      for r in 0...max(1, c.repeats) {  // run 0 warms up and is checked
        let (result, stats) = try method.attention(queries: q, keys: k, values: v, options: options, communicator: comm)
        let all = gatherStats(stats, comm)
        if r == 0 {
          if let out = result?.output {
            if reference == nil {
              reference = try FlashAttention().attention(queries: q!, keys: k!, values: v!, options: options).output
            }
            error = relativeError(out, reference!)
          }
        } else if let all {
          runs.append(all)
        }
      }
      if isRoot {
        runs.sort { ($0.map(\.attentionSeconds).max() ?? 0) < ($1.map(\.attentionSeconds).max() ?? 0) }
        results.append(VariantResult(variant: variant, ranks: runs[runs.count / 2], errorVsFlash: error))
      }
    }
    // Transfer rate: exchange one ring step's key/value chunk with the neighbours, no compute.
    let chunkBytes = c.batch * c.kvHeads * (c.length / comm.size) * 2 * c.dim * 4
    var rate: Double? = nil
    if comm.size > 1 {
      let send = UnsafeMutableRawBufferPointer.allocate(byteCount: max(chunkBytes, 1), alignment: 64)
      let recv = UnsafeMutableRawBufferPointer.allocate(byteCount: max(chunkBytes, 1), alignment: 64)
      defer { send.deallocate(); recv.deallocate() }
      send.initializeMemory(as: UInt8.self, repeating: 1)
      // Samples of 8 back-to-back exchanges (the first sample warms up); the fastest sample counts,
      // since ranks that share cores are often descheduled, which is not transfer time.
      let exchanges = 8
      var times: [Double] = []
      for _ in 0..<4 {
        var flag: Int32 = 0
        withUnsafeMutableBytes(of: &flag) { comm.broadcast($0, root: 0) }  // start together
        let t0 = monotonicSeconds()
        for _ in 0..<exchanges {
          comm.wait(comm.start([
            .send(UnsafeRawBufferPointer(rebasing: send[0..<chunkBytes]), to: (comm.rank + 1) % comm.size, tag: RingTag.probe),
            .receive(into: UnsafeMutableRawBufferPointer(rebasing: recv[0..<chunkBytes]), from: (comm.rank - 1 + comm.size) % comm.size, tag: RingTag.probe),
          ]))
        }
        times.append((monotonicSeconds() - t0) / Double(exchanges))
      }
      times.removeFirst()
      rate = Double(chunkBytes) / (times.min() ?? 1)
    }
    return isRoot ? Report(config: c, ranks: comm.size, results: results, transferRate: rate, transferBytes: chunkBytes) : nil
  }

  /// Every rank's statistics on rank 0 (nil elsewhere).
  func gatherStats<C: Communicator>(_ s: SequenceParallelStats, _ comm: C) -> [SequenceParallelStats]? {
    func encode(_ s: SequenceParallelStats) -> [Double] {
      [Double(s.rank), Double(s.ranks), s.attentionSeconds, s.computeSeconds, s.waitSeconds, Double(s.bytesSent),
       Double(s.messagesSent), s.flops, Double(s.steps), s.distributionSeconds, Double(s.distributionBytesSent)]
    }
    func decode(_ d: ArraySlice<Double>) -> SequenceParallelStats {
      let d = Array(d)
      var s = SequenceParallelStats(rank: Int(d[0]), ranks: Int(d[1]))
      s.attentionSeconds = d[2]; s.computeSeconds = d[3]; s.waitSeconds = d[4]; s.bytesSent = Int(d[5])
      s.messagesSent = Int(d[6]); s.flops = d[7]; s.steps = Int(d[8]); s.distributionSeconds = d[9]
      s.distributionBytesSent = Int(d[10])
      return s
    }
    let width = 11
    let mine = encode(s)
    if comm.rank != 0 {
      mine.withUnsafeBytes { comm.wait(comm.start([.send($0, to: 0, tag: RingTag.stats)])) }
      return nil
    }
    var all = [Double](repeating: 0, count: width * comm.size)
    all.withUnsafeMutableBytes { buf in
      for (i, x) in mine.enumerated() { buf.storeBytes(of: x, toByteOffset: i * 8, as: Double.self) }
      let t = (1..<comm.size).map { r in
        Transfer.receive(into: UnsafeMutableRawBufferPointer(rebasing: buf[(r * width * 8)..<((r + 1) * width * 8)]), from: r, tag: RingTag.stats)
      }
      if !t.isEmpty { comm.wait(comm.start(t)) }
    }
    return (0..<comm.size).map { decode(all[($0 * width)..<(($0 + 1) * width)]) }
  }
}

/// ‖x − ref‖ / ‖ref‖ in Double.
func relativeError(_ x: Tensor, _ ref: Tensor) -> Double {
  x.withUnsafeBufferPointer { a in
    ref.withUnsafeBufferPointer { b in
      var num = 0.0, den = 0.0
      for i in 0..<min(a.count, b.count) {
        let d = Double(a[i]) - Double(b[i])
        num += d * d
        den += Double(b[i]) * Double(b[i])
      }
      return den > 0 ? (num / den).squareRoot() : num.squareRoot()
    }
  }
}

extension SequenceParallelBench.Report {
  /// Compute rate of one rank (FLOP/s while computing), from the ring variant if measured.
  public var computeRate: Double? {
    let r = results.first { $0.variant == .ring } ?? results.first
    guard let r else { return nil }
    let flops = r.ranks.map(\.flops).reduce(0, +), secs = r.ranks.map(\.computeSeconds).reduce(0, +)
    return secs > 0 ? flops / secs : nil
  }

  /// The expected time of `variant` on `P` machines with one rank each, compute rate `R` FLOP/s
  /// and link bandwidth `W` bytes/s per direction, for this report's shape:
  ///
  ///     F   = B·Hq·N²·(2D + 2Dv)·c                  (c = 1, or 1/2 when causal)
  ///     ring:       T = P · max(F/(P²R), B·Hkv·(N/P)·(D + Dv)·4 / W)
  ///     tokenring:  T = P · max(F/(P²R), B·Hq·(N/P)·max(D, Dv + 1)·4·q / W)   (q = 3/4 causal, else 1;
  ///                 queries and partials use opposite directions of a full-duplex link)
  ///     heads:      T = F/(P·R) + (P − 1)/P · B·(N/P)·(Hq·(D + Dv + 1) + Hkv·(D + Dv))·4 / W
  ///                 (the bytes a rank sends in the two all-to-alls, no overlap)
  ///
  /// The speedup over one machine is `F/R / T`; ring reaches P when compute hides the transfer,
  /// that is when `N/P ≥ 2R / (c·(Hq/Hkv)·W)`.
  public func modelSeconds(_ variant: SequenceParallelAttention.Variant, ranks P: Int, rate R: Double, bandwidth W: Double) -> Double {
    let c = config
    let B = Double(c.batch), Hq = Double(c.heads), Hkv = Double(c.kvHeads), D = Double(c.dim), Dv = Double(c.dim)
    let N = Double(c.length), p = Double(P)
    let F = B * Hq * N * N * (2 * D + 2 * Dv) * (c.causal ? 0.5 : 1)
    let tc = F / (p * p * R)
    switch variant {
    case .ring:
      return P == 1 ? F / R : p * max(tc, B * Hkv * (N / p) * (D + Dv) * 4 / W)
    case .tokenring:
      return P == 1 ? F / R : p * max(tc, B * Hq * (N / p) * max(D, Dv + 1) * 4 * (c.causal ? 0.75 : 1) / W)
    case .heads:
      return F / (p * R) + (p - 1) / p * B * (N / p) * (Hq * (D + Dv + 1) + Hkv * (D + Dv)) * 4 / W
    }
  }

  /// A text report: per variant and rank, the measured times and bytes; then the model, with the
  /// compute rate `rate` of one machine and the link bandwidth `bandwidth` when given (else this
  /// run's measured ones).
  public func render(rate: Double? = nil, bandwidth: Double? = nil) -> String {
    let c = config
    var lines: [String] = []
    lines.append("sequence-parallel attention: P=\(ranks) rank(s), \(c.threads) thread(s) per rank; B=\(c.batch) Hq=\(c.heads) Hkv=\(c.kvHeads) N=\(c.length) D=\(c.dim) \(c.causal ? "causal" : "non-causal")")
    lines.append(String(format: "%-9@ %4@ %10@ %10@ %10@ %12@ %5@ %9@ %9@", "variant", "rank", "time", "compute", "wait", "sent", "msgs", "GFLOP/s", "err"))
    for r in results {
      for s in r.ranks {
        lines.append(String(format: "%-9@ %4d %10@ %10@ %10@ %12@ %5d %9.1f %9@", r.variant.rawValue, s.rank, ms(s.attentionSeconds),
                            ms(s.computeSeconds), ms(s.waitSeconds), bytes(Double(s.bytesSent)), s.messagesSent,
                            s.computeSeconds > 0 ? s.flops / s.computeSeconds / 1e9 : 0, s.rank == 0 ? String(format: "%.1e", r.errorVsFlash) : ""))
      }
    }
    lines.append("time = attention phase (inputs already scattered); compute = flash + merges + packing; wait = blocked on transfers.")
    guard let R = rate ?? computeRate else { return lines.joined(separator: "\n") }
    let measuredW = bandwidth ?? transferRate
    lines.append("")
    lines.append(String(format: "measured: compute rate R = %.1f GFLOP/s %@", R / 1e9, rate == nil ? "per rank (\(c.threads) thread(s))" : "of one rank using the whole machine (P = 1)")
                 + (measuredW.map { String(format: ", transfer rate W = %.2f GB/s between ranks (%@ exchange, best of 3×8)", $0 / 1e9, bytes(Double(transferBytes))) } ?? ""))
    lines.append("This machine's ranks share its cores and memory: these times measure overhead, not speedup.")
    lines.append("Expected on P machines, one rank each (R per machine, W per link direction; c = \(c.causal ? "1/2" : "1"), G = Hq/Hkv = \(c.heads / max(1, c.kvHeads))):")
    lines.append("  F = B·Hq·N²·(2D+2Dv)·c;  speedup S(P) = (F/R) / T(P)")
    lines.append("  ring       T(P) = P·max(F/(P²R), B·Hkv·(N/P)·(D+Dv)·4/W)   → S = P·min(1, t_c/t_x), full when N/P ≥ 2R/(c·G·W)")
    lines.append("  tokenring  T(P) = P·max(F/(P²R), B·Hq·(N/P)·max(D,Dv+1)·4·q/W)   (q = 3/4 causal; both link directions busy)")
    lines.append("  heads      T(P) = F/(P·R) + (P−1)/P·B·(N/P)·(Hq·(D+Dv+1) + Hkv·(D+Dv))·4/W   (all-to-all, no overlap)")
    var bandwidths: [(String, Double)] = [("10 Gb/s", 1.25e9), ("100 Gb/s", 12.5e9)]
    if let W = measuredW { bandwidths.append((String(format: "W = %.1f GB/s (measured here)", W / 1e9), W)) }
    for (name, W) in bandwidths {
      let ps = [2, 4, 8, 16]
      let cells = c.variants.map { v in
        "\(v.rawValue) " + ps.map { String(format: "%.1f", modelSeconds(v, ranks: 1, rate: R, bandwidth: W) / modelSeconds(v, ranks: $0, rate: R, bandwidth: W)) }.joined(separator: "/")
      }
      let crossover = 2 * R / ((c.causal ? 0.5 : 1) * Double(c.heads / max(1, c.kvHeads)) * W)
      lines.append("  with R as measured, \(name): S(2/4/8/16) = " + cells.joined(separator: ", ")
                   + String(format: "; ring hides transfers when N/P ≥ %.0f", crossover))
    }
    return lines.joined(separator: "\n")
  }

  private func ms(_ s: Double) -> String { String(format: s < 1 ? "%.2f ms" : "%.3f s", s < 1 ? s * 1e3 : s) }
  private func bytes(_ b: Double) -> String {
    b < 1024 ? String(format: "%.0f B", b) : b < 1048576 ? String(format: "%.1f KiB", b / 1024) : String(format: "%.1f MiB", b / 1048576)
  }
}
