import SubqAttention
import SubqCore
import SubqKernels

/// A bfloat16 copy of the keys of every sequence, `[B][Hkv][Nk][D]`, for searches that score
/// many scattered key rows: half the bytes per row halves the cache misses that bound them.
///
/// bfloat16 keeps Float32's exponent and 8 significant bits (round to nearest even), so a score
/// `q·k` is off by about 2⁻⁹·|q|·|k|: enough to rank candidates, never used for attention itself.
/// Small integers are exact.
final class BF16Keys: @unchecked Sendable {
  let pointer: UnsafeMutablePointer<UInt16>
  let count: Int
  let keyValueHeads: Int, keyLength: Int, dim: Int

  /// Converts the key rows of every sequence of `p` (rows past a sequence's keys are not read).
  init(_ raw: RawAttention) {
    let p = raw.p
    keyValueHeads = p.keyValueHeads
    keyLength = p.keyLength
    dim = p.headDim
    count = p.batch * p.keyValueHeads * p.keyLength * p.headDim
    pointer = UnsafeMutablePointer<UInt16>.allocate(capacity: max(count, 1))
    let chunk = 4096
    var tasks: [(seq: Int, head: Int, start: Int)] = []
    for (si, seq) in p.sequences.enumerated() {
      for g in 0..<p.keyValueHeads { for s in stride(from: 0, to: seq.keyCount, by: chunk) { tasks.append((si, g, s)) } }
    }
    let work = tasks
    let out = SendablePointer(pointer)
    let D = dim, Hkv = keyValueHeads, Nk = keyLength
    Parallel.forEach(work.count, threads: p.threads) { t, _ in
      let (si, g, s) = work[t]
      let seq = p.sequences[si]
      for j in s..<min(s + chunk, seq.keyCount) {
        let src = raw.key(seq, g, j)
        let dst = out.pointer + ((seq.batch * Hkv + g) * Nk + seq.keyStart + j) * D
        for d in 0..<D { dst[d] = bf16(src[d]) }
      }
    }
  }

  deinit { pointer.deallocate() }

  /// Key row `j` of key/value head `g` in `seq`.
  @inline(__always) func row(_ seq: AttentionSequence, _ g: Int, _ j: Int) -> UnsafePointer<UInt16> {
    UnsafePointer(pointer + ((seq.batch * keyValueHeads + g) * keyLength + seq.keyStart + j) * dim)
  }
}

/// Float32 → bfloat16 bits, rounding to nearest even.
@inline(__always)
func bf16(_ x: Float) -> UInt16 {
  let b = x.bitPattern
  return UInt16(truncatingIfNeeded: (b &+ 0x7FFF &+ ((b >> 16) & 1)) >> 16)
}

/// bfloat16 bits → Float32.
@inline(__always)
func float(bf16 h: UInt16) -> Float { Float(bitPattern: UInt32(h) << 16) }

/// Prefetches every cache line of a bfloat16 row of `count` values.
@inline(__always)
func prefetchRow(_ r: UnsafePointer<UInt16>, _ count: Int) {
  var i = 0
  while i < count {
    prefetch(UnsafeRawPointer(r + i))
    i += 32
  }
  prefetch(UnsafeRawPointer(r + count - 1))
}

/// Widens `count` bfloat16 values to Float32, eight at a time.
@inline(__always)
func widenRow(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<UInt16>, _ count: Int) {
  var i = 0
  while i + 8 <= count {
    let h = UnsafeRawPointer(src + i).loadUnaligned(as: SIMD8<UInt16>.self)
    let w = SIMD8<UInt32>(truncatingIfNeeded: h) &<< 16
    UnsafeMutableRawPointer(dst + i).storeBytes(of: unsafeBitCast(w, to: SIMD8<Float>.self), as: SIMD8<Float>.self)
    i += 8
  }
  while i < count {
    dst[i] = float(bf16: src[i])
    i += 1
  }
}
