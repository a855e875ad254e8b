import SubqCore
import SubqKernels

// ggml's block formats, as stored in GGUF files (32 weights per block, little-endian):
//
//   Q4_0  18 bytes: d (f16), 16 bytes of nibbles.  w[i] = d·(q[i] − 8)
//   Q4_1  20 bytes: d (f16), m (f16), 16 bytes.     w[i] = d·q[i] + m
//   Q8_0  34 bytes: d (f16), 32 int8.               w[i] = d·q[i]
//
// In the 4-bit formats byte j holds weight j in its low nibble and weight j + 16 in its high
// nibble.

/// The number of weights in one quantization block of the 4- and 8-bit formats.
public let quantBlock = 32

@inline(__always) func f16(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
  Float(Float16(bitPattern: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self)))
}

/// 16 bytes as 16 floats (0…255). A per-lane loop: LLVM turns it into one zero-extension and
/// one conversion, while the generic `SIMD16<UInt32>(truncatingIfNeeded:)` stays an
/// out-of-line call.
@inline(__always) func bytesToFloats(_ b: SIMD16<UInt8>) -> SIMD16<Float> {
  var r = SIMD16<Float>()
  for i in 0..<16 { r[i] = Float(b[i]) }
  return r
}

/// 16 signed bytes as 16 floats (−128…127).
@inline(__always) func signedBytesToFloats(_ b: SIMD16<Int8>) -> SIMD16<Float> {
  var r = SIMD16<Float>()
  for i in 0..<16 { r[i] = Float(b[i]) }
  return r
}

@inline(__always) func load16(_ p: UnsafePointer<Float>) -> SIMD16<Float> {
  UnsafeRawPointer(p).loadUnaligned(as: SIMD16<Float>.self)
}

@inline(__always) func store16(_ v: SIMD16<Float>, _ p: UnsafeMutablePointer<Float>) {
  UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD16<Float>.self)
}

@inline(__always) func fma16(_ a: SIMD16<Float>, _ b: SIMD16<Float>, _ c: SIMD16<Float>) -> SIMD16<Float> {
  #if SUBQ_FMA
  return a.addingProduct(b, c)
  #else
  return a + b * c
  #endif
}

@inline(__always) func hsum16(_ v: SIMD16<Float>) -> Float {
  let a = v.lowHalf + v.highHalf
  let b = a.lowHalf + a.highHalf
  let c = b.lowHalf + b.highHalf
  return c[0] + c[1]
}

/// Dequantization of rows of ggml tensors.
public enum Dequantize {
  /// Writes `count` Floats of a row of `type` starting at `src` (a multiple of the block size).
  public static func row(_ type: GGMLType, _ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, count: Int) {
    switch type {
    case .f32:
      dst.update(from: src.assumingMemoryBound(to: Float.self), count: count)
    case .f16:
      for i in 0..<count { dst[i] = f16(src, 2 * i) }
    case .bf16:
      for i in 0..<count {
        dst[i] = Float(bitPattern: UInt32(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) << 16)
      }
    case .q4_0:
      for b in 0..<count / quantBlock {
        let p = src + b * 18
        let d = SIMD16<Float>(repeating: f16(p, 0))
        let q = p.loadUnaligned(fromByteOffset: 2, as: SIMD16<UInt8>.self)
        let eight = SIMD16<Float>(repeating: 8)
        store16((bytesToFloats(q & 0x0F) - eight) * d, dst + b * 32)
        store16((bytesToFloats(q &>> 4) - eight) * d, dst + b * 32 + 16)
      }
    case .q4_1:
      for b in 0..<count / quantBlock {
        let p = src + b * 20
        let d = SIMD16<Float>(repeating: f16(p, 0)), m = SIMD16<Float>(repeating: f16(p, 2))
        let q = p.loadUnaligned(fromByteOffset: 4, as: SIMD16<UInt8>.self)
        store16(fma16(m, bytesToFloats(q & 0x0F), d), dst + b * 32)
        store16(fma16(m, bytesToFloats(q &>> 4), d), dst + b * 32 + 16)
      }
    case .q8_0:
      for b in 0..<count / quantBlock {
        let p = src + b * 34
        let d = SIMD16<Float>(repeating: f16(p, 0))
        store16(signedBytesToFloats(p.loadUnaligned(fromByteOffset: 2, as: SIMD16<Int8>.self)) * d, dst + b * 32)
        store16(signedBytesToFloats(p.loadUnaligned(fromByteOffset: 18, as: SIMD16<Int8>.self)) * d, dst + b * 32 + 16)
      }
    default:
      preconditionFailure("Dequantize.row: \(type) is not supported (checked by the caller)")
    }
  }
}

/// A weight matrix of shape `[rows, cols]` in one of ggml's formats, read in place (memory-mapped
/// or owned elsewhere): row `r` starts at `base + r · rowBytes`.
///
/// `y = W x` multiplies without dequantizing the matrix: each kernel decodes a block of 32 weights
/// into registers and multiplies it with the Float activations at once. The 4-bit formats factor
/// the block scale out of the dot product (`d·Σqᵢxᵢ + m·Σxᵢ` for Q4_1), so a block costs two
/// 16-lane conversions and three FMAs. Activations stay in Float32: unlike llama.cpp, which
/// quantizes them to 8 bits (Q8_0/Q8_1) for integer dot products, there is no activation
/// rounding, and results match a Float64 product of the dequantized weights to about 1e-6.
public struct QuantizedMatrix: @unchecked Sendable {
  public let type: GGMLType
  public let rows: Int
  public let cols: Int
  public let base: UnsafeRawPointer
  public let rowBytes: Int
  /// Name for error messages.
  public let name: String

  /// Throws unless `type` can be computed with.
  public static func checkSupported(_ type: GGMLType, tensor: String) throws(SubqError) {
    guard type.isSupported else {
      throw .unsupported(op: "gguf", feature: "tensor '\(tensor)' of type \(type)",
                         reason: "supported types are F32, F16, BF16, Q4_0, Q4_1 and Q8_0")
    }
  }

  /// A view of a 2-D GGUF tensor (`dims = [cols, rows]`).
  public init(_ file: GGUFFile, _ name: String) throws(SubqError) {
    guard let t = file.tensorInfo(name) else { throw .file(path: file.path, reason: "tensor '\(name)' is missing") }
    try Self.checkSupported(t.type, tensor: name)
    guard t.dims.count <= 2 else {
      throw .file(path: file.path, reason: "tensor '\(name)' has extents \(t.dims); a matrix needs 2")
    }
    self.init(type: t.type, rows: t.rows, cols: t.rowLength, base: file.data(t), name: name)
  }

  /// A view of raw memory (`cols` a multiple of 32 for quantized types).
  public init(type: GGMLType, rows: Int, cols: Int, base: UnsafeRawPointer, name: String) {
    self.type = type
    self.rows = rows
    self.cols = cols
    self.base = base
    self.rowBytes = cols / Swift.max(type.blockSize, 1) * type.blockBytes
    self.name = name
  }

  /// Row `r` dequantized into `dst` (`cols` floats).
  public func dequantizeRow(_ r: Int, into dst: UnsafeMutablePointer<Float>) {
    Dequantize.row(type, base + r * rowBytes, dst, count: cols)
  }

  /// `Σ_c W[r, c] · x[c]`. `xSums` holds the sums of `x` over each block of 32 (needed by Q4_1
  /// and Q4_0 only).
  @inline(__always)
  func dotRow(_ r: Int, _ x: UnsafePointer<Float>, _ xSums: UnsafePointer<Float>) -> Float {
    let p = base + r * rowBytes
    let nb = cols / quantBlock
    switch type {
    case .q4_1:
      var acc0 = SIMD16<Float>(), acc1 = SIMD16<Float>()
      var mAcc: Float = 0
      var b = 0
      while b + 1 < nb {
        let p0 = p + b * 20, p1 = p0 + 20
        let q0 = p0.loadUnaligned(fromByteOffset: 4, as: SIMD16<UInt8>.self)
        let q1 = p1.loadUnaligned(fromByteOffset: 4, as: SIMD16<UInt8>.self)
        let x0 = x + b * 32
        let s0 = fma16(bytesToFloats(q0 & 0x0F) * load16(x0), bytesToFloats(q0 &>> 4), load16(x0 + 16))
        let s1 = fma16(bytesToFloats(q1 & 0x0F) * load16(x0 + 32), bytesToFloats(q1 &>> 4), load16(x0 + 48))
        acc0 = fma16(acc0, SIMD16<Float>(repeating: f16(p0, 0)), s0)
        acc1 = fma16(acc1, SIMD16<Float>(repeating: f16(p1, 0)), s1)
        mAcc = fmadd(fmadd(mAcc, f16(p0, 2), xSums[b]), f16(p1, 2), xSums[b + 1])
        b += 2
      }
      if b < nb {
        let p0 = p + b * 20
        let q0 = p0.loadUnaligned(fromByteOffset: 4, as: SIMD16<UInt8>.self)
        let x0 = x + b * 32
        let s0 = fma16(bytesToFloats(q0 & 0x0F) * load16(x0), bytesToFloats(q0 &>> 4), load16(x0 + 16))
        acc0 = fma16(acc0, SIMD16<Float>(repeating: f16(p0, 0)), s0)
        mAcc = fmadd(mAcc, f16(p0, 2), xSums[b])
      }
      return hsum16(acc0 + acc1) + mAcc
    case .q4_0:
      var acc0 = SIMD16<Float>(), acc1 = SIMD16<Float>()
      var mAcc: Float = 0
      for b in 0..<nb {
        let p0 = p + b * 18
        let q0 = p0.loadUnaligned(fromByteOffset: 2, as: SIMD16<UInt8>.self)
        let x0 = x + b * 32
        let s0 = fma16(bytesToFloats(q0 & 0x0F) * load16(x0), bytesToFloats(q0 &>> 4), load16(x0 + 16))
        let d = f16(p0, 0)
        if b & 1 == 0 { acc0 = fma16(acc0, SIMD16<Float>(repeating: d), s0) } else {
          acc1 = fma16(acc1, SIMD16<Float>(repeating: d), s0)
        }
        mAcc = fmadd(mAcc, -8 * d, xSums[b])
      }
      return hsum16(acc0 + acc1) + mAcc
    case .q8_0:
      var acc0 = SIMD16<Float>(), acc1 = SIMD16<Float>()
      var b = 0
      while b + 1 < nb {
        let p0 = p + b * 34, p1 = p0 + 34
        let x0 = x + b * 32
        let s0 = fma16(signedBytesToFloats(p0.loadUnaligned(fromByteOffset: 2, as: SIMD16<Int8>.self)) * load16(x0),
                       signedBytesToFloats(p0.loadUnaligned(fromByteOffset: 18, as: SIMD16<Int8>.self)), load16(x0 + 16))
        let s1 = fma16(signedBytesToFloats(p1.loadUnaligned(fromByteOffset: 2, as: SIMD16<Int8>.self)) * load16(x0 + 32),
                       signedBytesToFloats(p1.loadUnaligned(fromByteOffset: 18, as: SIMD16<Int8>.self)), load16(x0 + 48))
        acc0 = fma16(acc0, SIMD16<Float>(repeating: f16(p0, 0)), s0)
        acc1 = fma16(acc1, SIMD16<Float>(repeating: f16(p1, 0)), s1)
        b += 2
      }
      if b < nb {
        let p0 = p + b * 34
        let x0 = x + b * 32
        let s0 = fma16(signedBytesToFloats(p0.loadUnaligned(fromByteOffset: 2, as: SIMD16<Int8>.self)) * load16(x0),
                       signedBytesToFloats(p0.loadUnaligned(fromByteOffset: 18, as: SIMD16<Int8>.self)), load16(x0 + 16))
        acc0 = fma16(acc0, SIMD16<Float>(repeating: f16(p0, 0)), s0)
      }
      return hsum16(acc0 + acc1)
    case .f32:
      return dot(p.assumingMemoryBound(to: Float.self), x, cols)
    default:
      // F16 and BF16: convert in chunks of 32 on the stack.
      var acc: Float = 0
      withUnsafeTemporaryAllocation(of: Float.self, capacity: 32) { tmp in
        var c = 0
        while c < cols {
          let n = Swift.min(32, cols - c)
          let src = p + c * 2
          for i in 0..<n {
            tmp[i] = type == .f16 ? f16(src, 2 * i)
              : Float(bitPattern: UInt32(src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) << 16)
          }
          acc += dot(tmp.baseAddress!, x + c, n)
          c += n
        }
      }
      return acc
    }
  }

  /// Whether the kernels need the per-block sums of the activations.
  var needsBlockSums: Bool { type == .q4_1 || type == .q4_0 }
}

/// Per-block sums of `x` (`count` a multiple of 32; a partial last block is summed too).
@inline(__always)
func blockSums(_ x: UnsafePointer<Float>, _ count: Int, into sums: UnsafeMutablePointer<Float>) {
  var b = 0
  while b * 32 + 32 <= count {
    sums[b] = hsum16(load16(x + b * 32) + load16(x + b * 32 + 16))
    b += 1
  }
  if b * 32 < count {
    var s: Float = 0
    for i in (b * 32)..<count { s += x[i] }
    sums[b] = s
  }
}

/// One `Y = X Wᵀ` product of a batched call: `x` is `[n, W.cols]` with row stride `ldx`, `y` is
/// `[n, W.rows]` with row stride `ldy`.
package struct MatmulJob: @unchecked Sendable {
  package var w: QuantizedMatrix
  package var x: UnsafePointer<Float>
  package var ldx: Int
  package var y: UnsafeMutablePointer<Float>
  package var ldy: Int
  package init(w: QuantizedMatrix, x: UnsafePointer<Float>, ldx: Int, y: UnsafeMutablePointer<Float>, ldy: Int) {
    self.w = w
    self.x = x
    self.ldx = ldx
    self.y = y
    self.ldy = ldy
  }
}

/// Quantized matrix products on all cores.
public enum QuantizedProducts {
  /// Rows of W per work item in a matrix–vector product.
  static let rowsPerItem = 32

  /// Below this many activation rows, products run row by row on the quantized blocks (each
  /// weight row, read once, is multiplied with every activation row while it is in L1); from it
  /// on, the panel kernel's dequantization pays for itself.
  package static let panelThreshold = 8

  /// `Y = X Wᵀ` for a few activation rows (`n` < `panelThreshold`), directly on the quantized
  /// blocks, every job in one parallel pass over chunks of `rowsPerItem` rows of W.
  package static func matvec(_ jobs: [MatmulJob], n: Int = 1, threads: Int) {
    let maxCols = jobs.map(\.w.cols).max() ?? 0
    let sumsCount = (maxCols + 31) / 32
    // Block sums of each activation row, computed once per job.
    let sums = AlignedBuffer<Float>(count: Swift.max(1, jobs.count * n * sumsCount))
    for (j, job) in jobs.enumerated() where job.w.needsBlockSums {
      for t in 0..<n { blockSums(job.x + t * job.ldx, job.w.cols, into: sums.pointer + (j * n + t) * sumsCount) }
    }
    var starts: [Int] = []
    var total = 0
    for job in jobs {
      starts.append(total)
      total += (job.w.rows + rowsPerItem - 1) / rowsPerItem
    }
    let s = SendablePointer(sums.pointer)
    let per = rowsPerItem
    let itemStarts = starts
    let work: @Sendable (Int, Int) -> Void = { item, _ in
      var j = jobs.count - 1
      while itemStarts[j] > item { j -= 1 }
      let job = jobs[j]
      let r0 = (item - itemStarts[j]) * per
      let r1 = Swift.min(job.w.rows, r0 + per)
      for r in r0..<r1 {
        for t in 0..<n {
          let xs = UnsafePointer(s.pointer + (j * n + t) * sumsCount)
          job.y[t * job.ldy + r] = job.w.dotRow(r, job.x + t * job.ldx, xs)
        }
      }
    }
    // Small products are not worth waking a second thread for.
    let flops = jobs.reduce(0) { $0 + $1.w.rows * $1.w.cols } * n
    Parallel.forEach(total, threads: flops < 200_000 ? 1 : threads, work)
    withExtendedLifetime(sums) {}
  }

  /// Rows of W per work item of the batched product (a multiple of the tile height 6).
  static let rowsPerBatchItem = 48

  /// `Y = X Wᵀ` for `n` activation rows, every job in one parallel pass.
  ///
  /// The activations are packed once, transposed, in blocks of `AttentionTiles.width` tokens
  /// (`Xᵀ[block][k][t]`, tokens along the SIMD lanes, zero past `n`; each block contiguous), one
  /// packed copy per distinct input. Work items are (block of
  /// `AttentionTiles.width` tokens, `rowsPerBatchItem` rows of W); each item dequantizes six rows
  /// of W at a time into L1-resident scratch (vector stores, no transposition) and runs the
  /// register-tiled outer-product kernel (`AttentionTiles.qkTile`: six W rows × one token block,
  /// the whole depth accumulated in registers), writing the 6 × width tile of Yᵀ back into Y.
  /// Below `panelThreshold` rows it falls back to the block-by-block products of `matvec`.
  package static func matmul(_ jobs: [MatmulJob], n: Int, threads: Int) {
    if n < panelThreshold { return matvec(jobs, n: n, threads: threads) }
    let P = AttentionTiles.width
    let TV = tileVectors
    let rowsPerTile = AttentionTiles.rows
    let blocks = (n + P - 1) / P
    let nPad = blocks * P
    // One packed Xᵀ per distinct input pointer.
    var inputs: [UnsafePointer<Float>] = []
    var inputOf: [Int] = []
    var packOffsets: [Int] = []
    var packTotal = 0
    for job in jobs {
      if let i = inputs.firstIndex(of: job.x) { inputOf.append(i); continue }
      inputOf.append(inputs.count)
      inputs.append(job.x)
      packOffsets.append(packTotal)
      packTotal += job.w.cols * nPad
    }
    let packed = AlignedBuffer<Float>(count: packTotal)
    let pk = SendablePointer(packed.pointer)
    // Pack: items are (input, token block).
    let firstJobOfInput = inputs.indices.map { i in jobs[inputOf.firstIndex(of: i)!] }
    let packOffs = packOffsets
    Parallel.forEach(inputs.count * blocks, threads: threads) { item, _ in
      let i = item / blocks, b = item % blocks
      let job = firstJobOfInput[i]
      let K = job.w.cols
      // Block b of input i: [K][P], contiguous.
      let dst = pk.pointer + packOffs[i] + b * K * P
      let t0 = b * P
      for k in 0..<K {
        let row = dst + k * P
        for tt in 0..<P {
          let t = t0 + tt
          row[tt] = t < n ? job.x[t * job.ldx + k] : 0
        }
      }
    }
    var starts: [Int] = []
    var total = 0
    let R = rowsPerBatchItem
    for job in jobs {
      starts.append(total)
      total += (job.w.rows + R - 1) / R * blocks
    }
    let maxCols = jobs.map(\.w.cols).max() ?? 0
    let workers = Parallel.workers(for: total, threads: threads)
    // Scratch per worker: six dequantized rows of W and one output tile.
    let perWorker = (rowsPerTile * maxCols + 15) / 16 * 16 + rowsPerTile * P + 64
    let scratch = AlignedBuffer<Float>(count: workers * perWorker)
    let sp = SendablePointer(scratch.pointer)
    let itemStarts = starts, inputIndex = inputOf
    Parallel.forEach(total, threads: workers) { item, worker in
      var j = jobs.count - 1
      while itemStarts[j] > item { j -= 1 }
      let job = jobs[j]
      let local = item - itemStarts[j]
      let b = local % blocks, chunk = local / blocks
      let K = job.w.cols
      let xt = UnsafeRawPointer(pk.pointer + packOffs[inputIndex[j]] + b * K * P).assumingMemoryBound(to: Lane.self)
      let qtStride = TV
      let wRows = sp.pointer + worker * perWorker
      let tile = wRows + (rowsPerTile * maxCols + 15) / 16 * 16
      let tileL = UnsafeMutableRawPointer(tile).assumingMemoryBound(to: Lane.self)
      let t0 = b * P
      let validT = Swift.min(P, n - t0)
      let r0 = chunk * R
      let r1 = Swift.min(job.w.rows, r0 + R)
      var dummyMax = [Lane](repeating: Lane(), count: TV)
      var r = r0
      while r < r1 {
        let rows = Swift.min(rowsPerTile, r1 - r)
        for i in 0..<rows { job.w.dequantizeRow(r + i, into: wRows + i * K) }
        let last = rows - 1
        dummyMax.withUnsafeMutableBufferPointer { m in
          AttentionTiles.qkTile(
            wRows, wRows + Swift.min(1, last) * K, wRows + Swift.min(2, last) * K, wRows + Swift.min(3, last) * K,
            wRows + Swift.min(4, last) * K, wRows + Swift.min(5, last) * K, depth: K, qt: xt, qtStride: qtStride,
            st: tileL, stStride: TV, rowMax: m.baseAddress!, updateMax: false)
        }
        for tt in 0..<validT {
          let dst = job.y + (t0 + tt) * job.ldy + r
          for i in 0..<rows { dst[i] = tile[i * P + tt] }
        }
        r += rowsPerTile
      }
    }
    withExtendedLifetime(scratch) {}
    withExtendedLifetime(packed) {}
  }
}
