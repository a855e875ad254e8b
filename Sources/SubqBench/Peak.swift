import Foundation
import SubqCore
import SubqKernels

/// This machine's limits: the fp32 FMA rate and the memory bandwidth, measured.
public struct MachinePeak: Sendable, Codable, Equatable {
  /// GFLOP/s of independent FMA chains on one thread.
  public var flopsOneThread: Double
  /// GFLOP/s on all threads.
  public var flopsAllThreads: Double
  /// Threads used for the all-thread figures.
  public var threads: Int
  /// Copy bandwidth on all threads, GB/s counting bytes read + written.
  public var copyBandwidth: Double
  /// The all-thread FMA rate held over seconds (``measureSustained(threads:seconds:)``), when asked for.
  public var sustained: SustainedRate?

  /// The all-thread FMA rate measured in consecutive ~0.1 s slices: whether the short runs of
  /// ``flopsAllThreads`` reflect what a kernel running for seconds can get (turbo budgets, other
  /// tenants of the host).
  public struct SustainedRate: Sendable, Codable, Equatable {
    /// Seconds measured.
    public var seconds: Double
    /// GFLOP/s of each slice, in order.
    public var slices: [Double]
    public var median: Double { slices.sorted()[slices.count / 2] }
  }

  /// Measures the limits; takes about a second.
  public static func measure(threads: Int = Parallel.defaultThreads) -> MachinePeak {
    let one = (0..<5).map { _ in fmaRate(threads: 1) }.max()!
    let all = (0..<5).map { _ in fmaRate(threads: threads) }.max()!
    let bw = (0..<3).map { _ in copyRate(threads: threads) }.max()!
    return MachinePeak(flopsOneThread: one, flopsAllThreads: all, threads: threads, copyBandwidth: bw)
  }

  /// The FMA rate on `threads` threads over `seconds`, in slices of about 0.1 s.
  public static func measureSustained(threads: Int, seconds: Double) -> SustainedRate {
    // Calibrate the slice length on one short run.
    let probe = fmaRate(threads: threads)
    let perSlice = Swift.max(1, Int(0.1 * probe * 1e9 / (Double(threads) * 12 * 2 * Double(laneWidth))))
    let count = Swift.max(1, Int((seconds / 0.1).rounded()))
    return SustainedRate(seconds: seconds, slices: (0..<count).map { _ in fmaRate(threads: threads, iterations: perSlice) })
  }

  /// GFLOP/s of 12 independent chains of lane-wide FMAs per thread (enough to cover the FMA
  /// latency on two pipes); the default 4M iterations take about 10 ms on AVX-512.
  static func fmaRate(threads: Int, iterations: Int = 4_000_000) -> Double {
    let t0 = monotonicSeconds()
    let sink = AlignedBuffer<Float>(count: threads * 16)
    let s = SendablePointer(sink.pointer)
    Parallel.forEach(threads, threads: threads) { worker, _ in
      s.pointer[worker * 16] = fmaChains(iterations, seed: Float(worker))
    }
    let dt = monotonicSeconds() - t0
    let flops = Double(threads) * Double(iterations) * 12 * 2 * Double(laneWidth)
    withExtendedLifetime(sink) {}
    return flops / dt / 1e9
  }

  @inline(never)
  static func fmaChains(_ n: Int, seed: Float) -> Float {
    let b = Lane(repeating: 0.999_999), c = Lane(repeating: 1e-7)
    var a0 = Lane(repeating: seed), a1 = a0 + 1, a2 = a0 + 2, a3 = a0 + 3, a4 = a0 + 4, a5 = a0 + 5
    var a6 = a0 + 6, a7 = a0 + 7, a8 = a0 + 8, a9 = a0 + 9, a10 = a0 + 10, a11 = a0 + 11
    for _ in 0..<n {
      a0 = fmadd(c, a0, b); a1 = fmadd(c, a1, b); a2 = fmadd(c, a2, b); a3 = fmadd(c, a3, b)
      a4 = fmadd(c, a4, b); a5 = fmadd(c, a5, b); a6 = fmadd(c, a6, b); a7 = fmadd(c, a7, b)
      a8 = fmadd(c, a8, b); a9 = fmadd(c, a9, b); a10 = fmadd(c, a10, b); a11 = fmadd(c, a11, b)
    }
    return hsum(((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)) + ((a8 + a9) + (a10 + a11)))
  }

  /// GB/s copying 512 MiB (256 MiB each way) split across threads.
  static func copyRate(threads: Int) -> Double {
    let count = 64 << 20  // floats: 256 MiB per buffer
    let src = AlignedBuffer<Float>(count: count), dst = AlignedBuffer<Float>(count: count)
    let s = SendablePointer(src.pointer), d = SendablePointer(dst.pointer)
    let chunks = threads * 8
    let per = count / chunks
    // Touch both buffers first so page faults are not timed.
    Parallel.forEach(chunks, threads: threads) { c, _ in
      memcpy(d.pointer + c * per, s.pointer + c * per, per * 4)
    }
    let t0 = monotonicSeconds()
    Parallel.forEach(chunks, threads: threads) { c, _ in
      memcpy(d.pointer + c * per, s.pointer + c * per, per * 4)
    }
    let dt = monotonicSeconds() - t0
    withExtendedLifetime(src) {}
    withExtendedLifetime(dst) {}
    return Double(2 * count * 4) / dt / 1e9
  }
}
