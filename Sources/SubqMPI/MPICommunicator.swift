import CMPI
import SubqCore
import SubqRing

/// A ``Communicator`` over MPI's world communicator: `MPI_Isend`/`MPI_Irecv` for transfers,
/// `MPI_Testall`/`MPI_Waitall` for progress, `MPI_Bcast` for broadcasts.
///
/// MPI is started by the first `MPICommunicator.world()` and stopped by ``finalize()``; a process
/// can start MPI only once. Run the program under `mpirun -np P` (Open MPI) for P ranks; started
/// on its own it is one rank. Transfers larger than 1 GiB are split into several messages (MPI
/// counts are 32-bit). MPI errors abort every rank (MPI's default error handler).
public final class MPICommunicator: Communicator {
  public let rank: Int
  public let size: Int
  /// Ranks on this machine (`MPI_Comm_split_type` shared memory), for dividing the cores.
  public let localSize: Int
  /// The machine's name as MPI reports it.
  public let processorName: String

  private var pending: [Int: [MPI_Request?]] = [:]
  private var nextHandle = 0
  private static let maxMessage = 1 << 30

  nonisolated(unsafe) private static var shared: MPICommunicator? = nil
  nonisolated(unsafe) private static var finalized = false

  /// The world communicator, starting MPI on first use.
  /// - Throws: ``SubqError/unsupported(op:feature:reason:)`` after ``finalize()`` (MPI cannot
  ///   restart).
  public static func world() throws(SubqError) -> MPICommunicator {
    if let shared { return shared }
    if finalized { throw .unsupported(op: "mpi", feature: "restart", reason: "MPI was finalized and cannot start again") }
    var provided: Int32 = 0
    _ = MPI_Init_thread(nil, nil, Int32(subq_mpi_thread_funneled()), &provided)
    let c = MPICommunicator()
    shared = c
    return c
  }

  private init() {
    let world = subq_mpi_comm_world()
    var r: Int32 = 0, s: Int32 = 0
    MPI_Comm_rank(world, &r)
    MPI_Comm_size(world, &s)
    rank = Int(r)
    size = Int(s)
    var local: MPI_Comm? = subq_mpi_comm_null()
    MPI_Comm_split_type(world, Int32(subq_mpi_comm_type_shared()), r, subq_mpi_info_null(), &local)
    var ls: Int32 = 1
    MPI_Comm_size(local, &ls)
    MPI_Comm_free(&local)
    localSize = Int(ls)
    var name = [CChar](repeating: 0, count: Int(subq_mpi_max_processor_name()) + 1)
    var len: Int32 = 0
    MPI_Get_processor_name(&name, &len)
    processorName = String(decoding: name.prefix(Int(len)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
  }

  /// Whether MPI is running (started and not finalized).
  public static var isRunning: Bool { shared != nil }

  /// Stops MPI (collective: every rank must call it). Further use of the communicator is an error.
  public func finalize() {
    precondition(pending.isEmpty, "MPICommunicator: finalize with \(pending.count) transfer set(s) pending")
    MPI_Finalize()
    Self.shared = nil
    Self.finalized = true
  }

  /// Ends every rank with `status` (MPI_Abort), for errors that leave the ranks out of step.
  public func abort(_ status: Int32) -> Never {
    MPI_Abort(subq_mpi_comm_world(), status)
    fatalError("MPI_Abort returned")
  }

  public func start(_ transfers: [Transfer]) -> Int {
    let world = subq_mpi_comm_world()
    var requests: [MPI_Request?] = []
    for t in transfers {
      precondition(t.peer >= 0 && t.peer < size, "MPICommunicator: peer \(t.peer) outside 0..<\(size)")
      var offset = 0
      repeat {
        let n = min(Self.maxMessage, t.buffer.count - offset)
        let p = t.buffer.baseAddress.map { $0 + offset }
        var req: MPI_Request? = subq_mpi_request_null()
        switch t.direction {
        case .send: MPI_Isend(p, Int32(n), subq_mpi_byte(), Int32(t.peer), Int32(t.tag), world, &req)
        case .receive: MPI_Irecv(p, Int32(n), subq_mpi_byte(), Int32(t.peer), Int32(t.tag), world, &req)
        }
        requests.append(req)
        offset += n
      } while offset < t.buffer.count
    }
    nextHandle += 1
    pending[nextHandle] = requests
    return nextHandle
  }

  public func test(_ handle: Int) -> Bool {
    guard var requests = pending[handle] else { preconditionFailure("MPICommunicator: unknown handle \(handle)") }
    var flag: Int32 = 0
    MPI_Testall(Int32(requests.count), &requests, &flag, subq_mpi_statuses_ignore())
    pending[handle] = requests
    return flag != 0
  }

  public func wait(_ handle: Int) {
    guard var requests = pending.removeValue(forKey: handle) else { preconditionFailure("MPICommunicator: unknown handle \(handle)") }
    MPI_Waitall(Int32(requests.count), &requests, subq_mpi_statuses_ignore())
  }

  public func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int) {
    var offset = 0
    repeat {
      let n = min(Self.maxMessage, buffer.count - offset)
      MPI_Bcast(buffer.baseAddress.map { $0 + offset }, Int32(n), subq_mpi_byte(), Int32(root), subq_mpi_comm_world())
      offset += n
    } while offset < buffer.count
  }

  /// Blocks until every rank has called it.
  public func barrier() { MPI_Barrier(subq_mpi_comm_world()) }
}
