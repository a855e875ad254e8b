import SubqCore
import SubqKernels

/// An owning, 64-byte aligned buffer of floats (rank-local tensors and message buffers).
///
/// New buffers hold NaN, so a row the algorithms forget to write or receive shows up in the
/// result instead of passing silently (filling costs O(size), small next to the attention).
final class FloatBuffer: @unchecked Sendable {
  let pointer: UnsafeMutablePointer<Float>
  let count: Int

  init(count: Int, repeating value: Float = .nan) {
    self.count = count
    let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * MemoryLayout<Float>.stride, alignment: 64)
    pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
    pointer.initialize(repeating: value, count: count)
  }

  /// Floats `range` as raw bytes (for messages).
  func bytes(_ range: Range<Int>) -> UnsafeMutableRawBufferPointer {
    precondition(range.lowerBound >= 0 && range.upperBound <= count, "FloatBuffer: \(range) outside 0..<\(count)")
    return UnsafeMutableRawBufferPointer(start: pointer + range.lowerBound, count: range.count * MemoryLayout<Float>.stride)
  }

  deinit { UnsafeMutableRawPointer(pointer).deallocate() }
}

/// Rows of a `[G, rows, width]` array (G = B·H groups), as a pointer and its extents.
struct RowArray {
  var base: UnsafeMutablePointer<Float>
  var groups: Int
  var rows: Int
  var width: Int
  @inline(__always) func row(_ g: Int, _ t: Int) -> UnsafeMutablePointer<Float> { base + (g * rows + t) * width }
  var count: Int { groups * rows * width }
}

/// Copies, for every group, `count` rows starting at `from` in `src` to rows starting at `to` in `dst`.
func copyRows(_ src: RowArray, from: Int, _ dst: RowArray, to: Int, count: Int) {
  precondition(src.groups == dst.groups && src.width == dst.width, "copyRows: shapes differ")
  if count == 0 { return }
  for g in 0..<src.groups {
    dst.row(g, to).update(from: src.row(g, from), count: count * src.width)
  }
}

/// Partial attention results of `[G, rows]` query rows: outputs `[G, rows, width]` and their
/// log-sum-exp `[G, rows]`, contiguous in one buffer (so one message carries both).
struct PartialRows {
  var o: RowArray
  var lse: UnsafeMutablePointer<Float>
  var groups: Int { o.groups }
  var rows: Int { o.rows }
  var width: Int { o.width }

  /// Floats needed for `groups × rows` rows of `width`.
  static func floats(groups: Int, rows: Int, width: Int) -> Int { groups * rows * (width + 1) }

  init(_ base: UnsafeMutablePointer<Float>, groups: Int, rows: Int, width: Int) {
    o = RowArray(base: base, groups: groups, rows: rows, width: width)
    lse = base + groups * rows * width
  }

  /// Sets every row to the empty state: output 0, log-sum-exp −∞.
  func clear() {
    o.base.update(repeating: 0, count: o.count)
    lse.update(repeating: -.infinity, count: groups * rows)
  }

  /// The final convention for rows that saw no key: log-sum-exp +∞ (their outputs are 0).
  func finalizeEmptyRows() {
    for i in 0..<(groups * rows) where lse[i] == -.infinity { lse[i] = .infinity }
  }
}

/// Merges partial attention results into an accumulator with the exact log-sum-exp rule.
///
/// This is the merge of partial softmax states (algorithms-exact-and-sparse.md §0) in the
/// sigmoid form that TokenRing uses, which cannot overflow:
///
///     w    = σ(lse_b − lse)
///     o'   = o − w·(o − o_b)
///     lse' = max(lse, lse_b) + log(1 + e^{−|lse − lse_b|})
///
/// A part with log-sum-exp −∞ (no visible key) is skipped; an accumulator row at −∞ takes the part
/// as it is. The rule is associative and commutative, so parts may arrive in any order. (A
/// library-wide merge helper is planned; this one is local to sequence parallelism.)
enum ShardMerge {
  /// Merges rows `from..<from+count` of `part` into rows `to..<to+count` of `acc`, every group.
  static func merge(_ part: PartialRows, from: Int, into acc: PartialRows, to: Int, count: Int, threads: Int) {
    precondition(part.groups == acc.groups && part.width == acc.width, "ShardMerge: shapes differ")
    if count == 0 { return }
    let width = acc.width
    let groups = acc.groups
    let p = SendableRows(part), a = SendableRows(acc)
    let work = groups * count * width
    let workers = work >= 1 << 16 ? Parallel.workers(for: groups, threads: threads) : 1
    Parallel.forEach(groups, threads: workers) { g, _ in
      let part = p.rows, acc = a.rows
      for t in 0..<count {
        let pi = g * part.rows + from + t
        let ai = g * acc.rows + to + t
        let lb = part.lse[pi]
        if lb == -.infinity { continue }
        let la = acc.lse[ai]
        let ob = part.o.row(g, from + t), oa = acc.o.row(g, to + t)
        if la == -.infinity {
          oa.update(from: ob, count: width)
          acc.lse[ai] = lb
          continue
        }
        let d = Double(lb) - Double(la)
        let w = Float(1 / (1 + exp(-d)))
        acc.lse[ai] = Float(max(Double(la), Double(lb)) + log1p(exp(-abs(d))))
        mergeRow(oa, ob, w, width)
      }
    }
  }

  /// oa ← oa + w·(ob − oa).
  @inline(__always)
  static func mergeRow(_ oa: UnsafeMutablePointer<Float>, _ ob: UnsafePointer<Float>, _ w: Float, _ n: Int) {
    let wl = Lane(repeating: w)
    var c = 0
    while c + laneWidth <= n {
      let x = loadLane(oa + c)
      storeLane(fmadd(x, wl, loadLane(ob + c) - x), oa + c)
      c += laneWidth
    }
    while c < n {
      oa[c] = fmadd(oa[c], w, ob[c] - oa[c])
      c += 1
    }
  }
}

/// `PartialRows` carried into worker closures.
struct SendableRows: @unchecked Sendable {
  let rows: PartialRows
  init(_ rows: PartialRows) { self.rows = rows }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
