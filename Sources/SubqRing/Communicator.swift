import SubqCore

/// One point-to-point message of a ``Communicator``: a send of a buffer to a peer rank, or a
/// receive of a buffer from one.
///
/// The buffer is borrowed: it must stay allocated, and a send buffer unchanged, until the handle
/// returned by ``Communicator/start(_:)`` has been waited for. Messages between the same two ranks
/// with the same tag arrive in the order they were started (MPI's non-overtaking rule), so a tag
/// names a kind of message, not one message.
public struct Transfer: @unchecked Sendable {
  public enum Direction: Sendable, Equatable { case send, receive }
  public var direction: Direction
  /// The other rank.
  public var peer: Int
  /// Matches a send with a receive (with the pair of ranks); 0...32767.
  public var tag: Int
  public var buffer: UnsafeMutableRawBufferPointer

  /// Sends `buffer` to `peer`.
  public static func send(_ buffer: UnsafeRawBufferPointer, to peer: Int, tag: Int) -> Transfer {
    Transfer(direction: .send, peer: peer, tag: tag, buffer: UnsafeMutableRawBufferPointer(mutating: buffer))
  }

  /// Receives exactly `buffer.count` bytes from `peer` into `buffer`.
  public static func receive(into buffer: UnsafeMutableRawBufferPointer, from peer: Int, tag: Int) -> Transfer {
    Transfer(direction: .receive, peer: peer, tag: tag, buffer: buffer)
  }
}

/// The message passing that sequence-parallel attention runs on: a fixed group of `size`
/// processes (ranks), each running the same program.
///
/// `SubqMPI.MPICommunicator` implements it over MPI (built when Open MPI is installed); the
/// algorithms in this module only use these four operations, so another transport (or an
/// in-process one for tests) can stand in. Every rank calls the algorithms with the same
/// arguments; calls are made from one thread per rank.
public protocol Communicator: AnyObject {
  /// This process's index in `0..<size`.
  var rank: Int { get }
  /// Number of ranks.
  var size: Int { get }
  /// Starts `transfers` without waiting for them (MPI_Isend / MPI_Irecv) and returns a handle
  /// for ``test(_:)`` and ``wait(_:)``.
  func start(_ transfers: [Transfer]) -> Int
  /// Lets the transfers of `handle` progress; true when all of them are complete. The handle
  /// must still be waited for.
  func test(_ handle: Int) -> Bool
  /// Blocks until every transfer of `handle` is complete, then forgets the handle.
  func wait(_ handle: Int)
  /// Copies `buffer` of rank `root` into `buffer` of every other rank (MPI_Bcast). Every rank
  /// passes a buffer of the same size.
  func broadcast(_ buffer: UnsafeMutableRawBufferPointer, root: Int)
}

/// Message tags of the sequence-parallel algorithms.
enum RingTag {
  static let scatter = 1
  static let gather = 2
  static let agree = 3
  static let stats = 4
  static let keyValues = 10
  static let queries = 11
  static let partials = 12
  static let toHeads = 13
  static let toSequence = 14
  static let probe = 15
}

extension Communicator {
  /// The status of the lowest rank whose status is not 0, or 0 when every rank passed 0, on every
  /// rank. Collective: every rank must call it.
  func agree(_ status: Int32) -> Int32 {
    var mine = status
    var worst = status
    if size > 1 {
      if rank == 0 {
        var others = [Int32](repeating: 0, count: size - 1)
        others.withUnsafeMutableBytes { buf in
          var t: [Transfer] = []
          for r in 1..<size {
            t.append(.receive(into: UnsafeMutableRawBufferPointer(rebasing: buf[(r - 1) * 4..<r * 4]), from: r, tag: RingTag.agree))
          }
          wait(start(t))
        }
        for s in others where worst == 0 && s != 0 { worst = s }
      } else {
        withUnsafeBytes(of: &mine) { wait(start([.send($0, to: 0, tag: RingTag.agree)])) }
      }
    }
    withUnsafeMutableBytes(of: &worst) { broadcast($0, root: 0) }
    return worst
  }
}
