import SubqAttention
import SubqCore

/// The raw memory of one validated attention call: inputs, the output being built, and a
/// log-sum-exp per query row (natural log, `[B, Hq, Nq]`, −∞ while a row has seen no key).
///
/// Row accessors take sequence-local positions, so methods work on `AttentionSequence`s and never
/// on layouts.
struct RawAttention: @unchecked Sendable {
  let p: AttentionProblem
  let q: UnsafePointer<Float>
  let k: UnsafePointer<Float>
  let v: UnsafePointer<Float>
  let out: UnsafeMutablePointer<Float>
  let lse: UnsafeMutablePointer<Float>
  let qRows: RowAddressing, kRows: RowAddressing, vRows: RowAddressing, oRows: RowAddressing

  init(_ p: AttentionProblem, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
       out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>) {
    self.p = p
    self.q = q
    self.k = k
    self.v = v
    self.out = out
    self.lse = lse
    qRows = p.queryRows
    kRows = p.keyRows
    vRows = p.valueRows
    oRows = p.outputRows
  }

  /// Query row `i` of query head `h` in `seq`.
  @inline(__always) func query(_ seq: AttentionSequence, _ h: Int, _ i: Int) -> UnsafePointer<Float> {
    q + qRows.offset(batch: seq.batch, head: h, row: seq.queryStart + i)
  }
  /// Key row `j` of key/value head `g` in `seq`.
  @inline(__always) func key(_ seq: AttentionSequence, _ g: Int, _ j: Int) -> UnsafePointer<Float> {
    k + kRows.offset(batch: seq.batch, head: g, row: seq.keyStart + j)
  }
  /// Value row `j` of key/value head `g` in `seq`.
  @inline(__always) func value(_ seq: AttentionSequence, _ g: Int, _ j: Int) -> UnsafePointer<Float> {
    v + vRows.offset(batch: seq.batch, head: g, row: seq.keyStart + j)
  }
  /// Output row `i` of query head `h` in `seq`.
  @inline(__always) func output(_ seq: AttentionSequence, _ h: Int, _ i: Int) -> UnsafeMutablePointer<Float> {
    out + oRows.offset(batch: seq.batch, head: h, row: seq.queryStart + i)
  }
  /// Log-sum-exp slot of query row `i` of head `h` in `seq`.
  @inline(__always) func lseSlot(_ seq: AttentionSequence, _ h: Int, _ i: Int) -> UnsafeMutablePointer<Float> {
    lse + (seq.batch * p.queryHeads + h) * p.queryLength + seq.queryStart + i
  }

  /// Key stride between consecutive key rows, and value stride.
  var ldk: Int { kRows.rowStride }
  var ldv: Int { vRows.rowStride }

  /// Allocates the output (zeros) and log-sum-exp (−∞), runs `body` on the raw memory, turns rows
  /// that saw no key into +∞, and returns the result (the log-sum-exp only if requested).
  static func run(
    _ p: AttentionProblem, queries: Tensor, keys: Tensor, values: Tensor, _ body: (RawAttention) -> Void
  ) -> AttentionResult {
    var out = Tensor(shape: p.outputShape, repeating: 0)
    var lse = Tensor(shape: p.lseShape, repeating: -.infinity)
    queries.withUnsafeBufferPointer { qb in
      keys.withUnsafeBufferPointer { kb in
        values.withUnsafeBufferPointer { vb in
          out.withUnsafeMutableBufferPointer { ob in
            lse.withUnsafeMutableBufferPointer { lb in
              body(RawAttention(p, q: qb.baseAddress!, k: kb.baseAddress!, v: vb.baseAddress!,
                                out: ob.baseAddress!, lse: lb.baseAddress!))
              LSEMerge.finalize(lb.baseAddress!, count: lb.count)
            }
          }
        }
      }
    }
    return AttentionResult(output: out, lse: p.returnLSE ? lse : nil)
  }
}

/// A deterministic 64-bit mix of a seed and indices, for independent random streams per part of
/// a computation (the same stream whatever the thread count).
@inline(__always)
func mixSeed(_ seed: UInt64, _ a: Int, _ b: Int = 0, _ c: Int = 0) -> UInt64 {
  var x = seed
  for v in [UInt64(bitPattern: Int64(a)), UInt64(bitPattern: Int64(b)), UInt64(bitPattern: Int64(c))] {
    x = (x ^ v) &+ 0x9E37_79B9_7F4A_7C15
    x = (x ^ (x >> 30)) &* 0xBF58_476D_1CE4_E5B9
    x = (x ^ (x >> 27)) &* 0x94D0_49BB_1331_11EB
    x ^= x >> 31
  }
  return x
}

/// A uniform integer in `0..<n` (n > 0) from `g`, without modulo bias worth measuring (n < 2³²).
@inline(__always)
func uniformIndex(_ n: Int, _ g: inout SeededGenerator) -> Int {
  Int(((g.next() >> 32) &* UInt64(n)) >> 32)
}

/// Index of the first element of sorted `a[0..<n]` that is ≥ `x`.
@inline(__always)
func lowerBound(_ a: UnsafePointer<Int32>, _ n: Int, _ x: Int) -> Int {
  var lo = 0, hi = n
  while lo < hi {
    let mid = (lo + hi) >> 1
    if Int(a[mid]) < x { lo = mid + 1 } else { hi = mid }
  }
  return lo
}

extension RawAttention {
  /// Answers a ``KeySelectingMethod/selectedKeys`` request: checks every row, then, in one scope
  /// over the raw inputs, asks `make(raw)` for a function of (sequence, head, sequence-local row)
  /// and applies it to each row (rows outside every sequence select nothing).
  static func selection(
    _ p: AttentionProblem, queries: Tensor, keys: Tensor, values: Tensor, rows: [QueryRow],
    _ make: (RawAttention) -> (Int, Int, Int) -> [Int]
  ) throws(SubqError) -> [[Int]] {
    for r in rows where !(r.batch >= 0 && r.batch < p.batch && r.head >= 0 && r.head < p.queryHeads && r.row >= 0 && r.row < p.queryLength) {
      throw .argument(op: p.op, name: "row", value: "(batch \(r.batch), head \(r.head), row \(r.row))",
                      reason: "outside the queries [\(p.batch), \(p.queryHeads), \(p.queryLength)]")
    }
    return queries.withUnsafeBufferPointer { qb in
      keys.withUnsafeBufferPointer { kb in
        values.withUnsafeBufferPointer { vb in
          let none = AlignedBuffer<Float>(count: 2)  // selection writes no output
          let raw = RawAttention(p, q: qb.baseAddress!, k: kb.baseAddress!, v: vb.baseAddress!, out: none.pointer, lse: none.pointer + 1)
          let select = make(raw)
          return rows.map { r in
            guard let si = p.sequenceIndex(batch: r.batch, row: r.row) else { return [] }
            return select(si, r.head, r.row - p.sequences[si].queryStart)
          }
        }
      }
    }
  }
}

extension AttentionProblem {
  /// The sequence holding query row `row` of batch entry `batch` (a tensor row), if any.
  func sequenceIndex(batch: Int, row: Int) -> Int? {
    sequences.firstIndex { $0.batch == batch && row >= $0.queryStart && row < $0.queryStart + $0.queryCount }
  }
}
