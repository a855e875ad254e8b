import Dispatch
import SubqAttention
import SubqCore

/// One rank's part of one sequence-parallel attention call: its communicator, the geometry, the
/// partition, the flash driver and the statistics.
final class ShardRun<C: Communicator> {
  let comm: C
  let g: ShardGeometry
  let partition: SequencePartition
  let blocks: BlockAttention
  var stats: SequenceParallelStats

  init(comm: C, geometry: ShardGeometry, partition: SequencePartition, flash: FlashAttention, op: String) {
    self.comm = comm
    self.g = geometry
    self.partition = partition
    self.blocks = BlockAttention(geometry: geometry, flash: flash, op: op)
    self.stats = SequenceParallelStats(rank: comm.rank, ranks: comm.size)
  }

  var rank: Int { comm.rank }
  var size: Int { comm.size }

  /// Starts `transfers` (nil when there are none), counting the bytes this rank sends.
  func start(_ transfers: [Transfer]) -> Int? {
    if transfers.isEmpty { return nil }
    for t in transfers where t.direction == .send {
      stats.bytesSent += t.buffer.count
      stats.messagesSent += 1
    }
    return comm.start(transfers)
  }

  /// Waits for `handle`, counting the time blocked as communication.
  func wait(_ handle: Int?) {
    guard let handle else { return }
    let t0 = monotonicSeconds()
    comm.wait(handle)
    stats.waitSeconds += monotonicSeconds() - t0
  }

  /// Runs `body` counting its time as compute.
  func compute<R>(_ body: () -> R) -> R {
    let t0 = monotonicSeconds()
    let r = body()
    stats.computeSeconds += monotonicSeconds() - t0
    return r
  }

  /// Number of slices a block of `rows` query rows is cut into while transfers are in flight, so
  /// that the transfers progress between them (MPI moves large messages only inside MPI calls).
  func slices(_ rows: Int, inFlight: Bool) -> Int { inFlight ? max(1, min(8, rows / 256)) : 1 }

  /// Runs the variant on this rank's shard: queries `[B, Hq, n, D]`, keys `[B, Hkv, n, D]`, values
  /// `[B, Hkv, n, Dv]` (n = this rank's local length), writing the outputs and log-sum-exp of the
  /// rank's rows into `out` (`[B·Hq, n]` rows of `Dv`).
  func run(_ variant: SequenceParallelAttention.Variant, q: UnsafePointer<Float>, k: UnsafePointer<Float>,
           v: UnsafePointer<Float>, out: PartialRows) {
    let t0 = monotonicSeconds()
    switch variant {
    case .ring: ring(q: q, k: k, v: v, out: out)
    case .tokenring: tokenRing(q: q, k: k, v: v, out: out)
    case .heads: heads(q: q, k: k, v: v, out: out)
    }
    stats.attentionSeconds += monotonicSeconds() - t0
  }
}

/// Seconds from an arbitrary origin (monotonic).
