import SubqAttention
import SubqCore
import SubqKernels

/// Storage of the keys and values of past positions, per layer.
///
/// The model talks to its cache only through this interface, so the contiguous cache below can
/// be replaced by a paged one (and its decode step by split-KV decoding from SubqDecoding) without
/// touching the forward pass.
protocol KVCacheStorage: AnyObject {
  /// Positions stored (the same in every layer once a forward step is complete).
  var length: Int { get }
  /// Positions that fit.
  var capacity: Int { get }
  /// Writes `count` positions starting at `position` for `layer`: `k`, `v` are `[count, Hkv·D]`
  /// (row stride `ld`).
  func store(layer: Int, position: Int, count: Int, k: UnsafePointer<Float>, v: UnsafePointer<Float>, ld: Int)
  /// Marks positions `0..<length` as valid (after every layer has stored them).
  func commit(length: Int)
  /// Forgets every position.
  func reset()
  /// Keys and values of positions `0..<count` for `layer` as `[1, Hkv, count, D]` tensors.
  func tensors(layer: Int, count: Int) -> (keys: Tensor, values: Tensor)
  /// Exact attention of one query vector per query head over positions `0..<count`:
  /// `q` is `[Hq·D]`, `out` is `[Hq·D]`.
  func attendOne(layer: Int, count: Int, q: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, scale: Float, threads: Int)
}

/// Element type of a KV cache.
public enum KVCachePrecision: String, Sendable, CaseIterable {
  /// Float32: keys and values exactly as computed.
  case f32
  /// Float16 (as llama.cpp's default cache): half the memory and half the bytes read per decode
  /// step; every key and value is rounded to 11 significant bits (relative error ≤ 2⁻¹¹).
  case f16
}

/// A contiguous cache: for each layer, K and V as `[Hkv][capacity][D]` in Float32 or Float16, so
/// the keys of one head are one contiguous block.
///
/// Decode attention (`attendOne`) splits the keys of each key/value head into chunks processed on
/// all cores (split-KV, as flash-decoding): each chunk computes, for the `Hq/Hkv` query heads that
/// share the key/value head, its scores, its local maximum and sum and a partial output; the
/// partials are then merged with the usual log-sum-exp rescaling. A Float16 cache converts each
/// chunk to Float32 in per-worker scratch first. Memory: `2 · layers · Hkv · capacity · D` elements
/// (SmolLM2-135M at 8192 positions: 377 MB in Float32, 189 MB in Float16).
final class ContiguousKVCache: KVCacheStorage, @unchecked Sendable {
  let layers: Int
  let kvHeads: Int
  let queryHeads: Int
  let headDim: Int
  let capacity: Int
  let precision: KVCachePrecision
  private(set) var length = 0
  /// Raw storage of K and V (Float or Float16 elements).
  let k: AlignedBuffer<UInt8>
  let v: AlignedBuffer<UInt8>
  /// Elements per layer.
  let layerStride: Int
  let elementBytes: Int

  init(layers: Int, queryHeads: Int, kvHeads: Int, headDim: Int, capacity: Int, precision: KVCachePrecision = .f32) {
    self.layers = layers
    self.kvHeads = kvHeads
    self.queryHeads = queryHeads
    self.headDim = headDim
    self.capacity = capacity
    self.precision = precision
    elementBytes = precision == .f32 ? 4 : 2
    layerStride = kvHeads * capacity * headDim
    k = AlignedBuffer(count: layers * layerStride * elementBytes)
    v = AlignedBuffer(count: layers * layerStride * elementBytes)
  }

  /// Address of element `index` of layer `layer` in `buffer`.
  @inline(__always) func address(_ buffer: UnsafeMutablePointer<UInt8>, layer: Int, _ index: Int) -> UnsafeMutableRawPointer {
    UnsafeMutableRawPointer(buffer + (layer * layerStride + index) * elementBytes)
  }

  /// Copies `count` elements from the cache at `src` into Float32 `dst`.
  @inline(__always) func load(_ src: UnsafeRawPointer, into dst: UnsafeMutablePointer<Float>, count: Int) {
    if precision == .f32 {
      dst.update(from: src.assumingMemoryBound(to: Float.self), count: count)
    } else {
      halfToFloat(src.assumingMemoryBound(to: UInt16.self), dst, count)
    }
  }

  func store(layer: Int, position: Int, count: Int, k src: UnsafePointer<Float>, v vsrc: UnsafePointer<Float>, ld: Int) {
    let D = headDim
    for g in 0..<kvHeads {
      for i in 0..<count {
        let idx = (g * capacity + position + i) * D
        let kd = address(k.pointer, layer: layer, idx), vd = address(v.pointer, layer: layer, idx)
        if precision == .f32 {
          kd.assumingMemoryBound(to: Float.self).update(from: src + i * ld + g * D, count: D)
          vd.assumingMemoryBound(to: Float.self).update(from: vsrc + i * ld + g * D, count: D)
        } else {
          floatToHalf(src + i * ld + g * D, kd.assumingMemoryBound(to: UInt16.self), D)
          floatToHalf(vsrc + i * ld + g * D, vd.assumingMemoryBound(to: UInt16.self), D)
        }
      }
    }
  }

  func commit(length: Int) { self.length = length }
  func reset() { length = 0 }

  func tensors(layer: Int, count: Int) -> (keys: Tensor, values: Tensor) {
    let D = headDim
    func make(_ src: UnsafeMutablePointer<UInt8>) -> Tensor {
      Tensor(shape: [1, kvHeads, count, D]) { out in
        for g in 0..<kvHeads {
          load(address(src, layer: layer, g * capacity * D), into: out.baseAddress! + g * count * D, count: count * D)
        }
      }
    }
    return (make(k.pointer), make(v.pointer))
  }

  /// `out[h·outStride + c] = Σ_{j<count} p[h·stride + j] · v[j·64 + c]` for `heads` ≤ 4 heads and
  /// 64 value columns.
  static func weightedSum64(
    _ v: UnsafePointer<Float>, count: Int, probabilities p: UnsafePointer<Float>, stride: Int, heads: Int,
    out: UnsafeMutablePointer<Float>, outStride: Int
  ) {
    typealias V = SIMD16<Float>
    var a00 = V(), a01 = V(), a02 = V(), a03 = V()
    var a10 = V(), a11 = V(), a12 = V(), a13 = V()
    var a20 = V(), a21 = V(), a22 = V(), a23 = V()
    var a30 = V(), a31 = V(), a32 = V(), a33 = V()
    // Heads past `heads` read the first head's probabilities; their sums are not stored.
    let p0 = p, p1 = p + (heads > 1 ? stride : 0), p2 = p + (heads > 2 ? 2 * stride : 0), p3 = p + (heads > 3 ? 3 * stride : 0)
    for j in 0..<count {
      let row = v + j * 64
      let v0 = load16(row), v1 = load16(row + 16), v2 = load16(row + 32), v3 = load16(row + 48)
      let b0 = V(repeating: p0[j]), b1 = V(repeating: p1[j]), b2 = V(repeating: p2[j]), b3 = V(repeating: p3[j])
      a00 = fma16(a00, b0, v0); a01 = fma16(a01, b0, v1); a02 = fma16(a02, b0, v2); a03 = fma16(a03, b0, v3)
      a10 = fma16(a10, b1, v0); a11 = fma16(a11, b1, v1); a12 = fma16(a12, b1, v2); a13 = fma16(a13, b1, v3)
      a20 = fma16(a20, b2, v0); a21 = fma16(a21, b2, v1); a22 = fma16(a22, b2, v2); a23 = fma16(a23, b2, v3)
      a30 = fma16(a30, b3, v0); a31 = fma16(a31, b3, v1); a32 = fma16(a32, b3, v2); a33 = fma16(a33, b3, v3)
    }
    let sums = [(a00, a01, a02, a03), (a10, a11, a12, a13), (a20, a21, a22, a23), (a30, a31, a32, a33)]
    for h in 0..<heads {
      let o = out + h * outStride
      store16(sums[h].0, o); store16(sums[h].1, o + 16); store16(sums[h].2, o + 32); store16(sums[h].3, o + 48)
    }
  }

  /// Keys per split-KV chunk.
  static let chunk = 256

  func attendOne(layer: Int, count: Int, q: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, scale: Float, threads: Int) {
    let D = headDim, G = queryHeads / kvHeads
    let C = ContiguousKVCache.chunk
    let chunks = (count + C - 1) / C
    let items = kvHeads * chunks
    // Partials per (query head, chunk): max, sum, D outputs.
    let pStride = D + 2
    let partial = AlignedBuffer<Float>(count: queryHeads * chunks * pStride)
    let workers = Parallel.workers(for: items, threads: count * kvHeads < 2048 ? 1 : threads)
    let convert = precision != .f32
    // Per worker: scores [G][C], and for a Float16 cache the chunk's keys and values in Float32.
    let perWorker = G * C + (convert ? 2 * C * D : 0)
    let scratch = AlignedBuffer<Float>(count: workers * perWorker)
    let pp = SendablePointer(partial.pointer), sp = SendablePointer(scratch.pointer)
    let kBase = SendablePointer(address(k.pointer, layer: layer, 0).assumingMemoryBound(to: UInt8.self))
    let vBase = SendablePointer(address(v.pointer, layer: layer, 0).assumingMemoryBound(to: UInt8.self))
    let eb = elementBytes
    let qp = SendablePointer(q)
    let cap = capacity
    Parallel.forEach(items, threads: workers) { item, worker in
      let g = item / chunks, c = item % chunks
      let j0 = c * C, jn = Swift.min(C, count - j0)
      let s = sp.pointer + worker * perWorker
      let kRaw = UnsafeRawPointer(kBase.pointer + (g * cap + j0) * D * eb)
      let vRaw = UnsafeRawPointer(vBase.pointer + (g * cap + j0) * D * eb)
      let keys: UnsafePointer<Float>, vals: UnsafePointer<Float>
      if convert {
        let kf = s + G * C, vf = kf + C * D
        halfToFloat(kRaw.assumingMemoryBound(to: UInt16.self), kf, jn * D)
        halfToFloat(vRaw.assumingMemoryBound(to: UInt16.self), vf, jn * D)
        keys = UnsafePointer(kf)
        vals = UnsafePointer(vf)
      } else {
        keys = kRaw.assumingMemoryBound(to: Float.self)
        vals = vRaw.assumingMemoryBound(to: Float.self)
      }
      for hh in 0..<G {
        let h = g * G + hh
        let qh = qp.pointer + h * D
        let sh = s + hh * C
        for j in 0..<jn { sh[j] = dot(qh, keys + j * D, D) * scale }
        let m = maxElement(sh, jn)
        let l = expShiftSum(sh, shift: m, jn)
        let dst = pp.pointer + (h * chunks + c) * pStride
        dst[0] = m
        dst[1] = l
      }
      if D == 64 && G <= 4 {
        // Σ_j p_h[j]·v_j for up to four heads at once, accumulators in registers, each value row
        // loaded once.
        ContiguousKVCache.weightedSum64(vals, count: jn, probabilities: s, stride: C, heads: G,
                                        out: pp.pointer + (g * G * chunks + c) * pStride + 2, outStride: chunks * pStride)
      } else {
        for hh in 0..<G {
          let acc = pp.pointer + ((g * G + hh) * chunks + c) * pStride + 2
          for x in 0..<D { acc[x] = 0 }
          for j in 0..<jn { axpy(s[hh * C + j], vals + j * D, acc, D) }
        }
      }
    }
    // Merge the chunks of each query head.
    for h in 0..<queryHeads {
      var mMax = -Float.infinity
      for c in 0..<chunks { mMax = Swift.max(mMax, partial.pointer[(h * chunks + c) * pStride]) }
      var l: Float = 0
      let o = out + h * D
      for x in 0..<D { o[x] = 0 }
      for c in 0..<chunks {
        let p = partial.pointer + (h * chunks + c) * pStride
        let w = exp2Scalar((p[0] - mMax) * 1.442_695_040_888_963_4)
        l = fmadd(l, w, p[1])
        axpy(w, p + 2, o, D)
      }
      SubqKernels.scale(o, 1 / l, D)
    }
    withExtendedLifetime(partial) {}
    withExtendedLifetime(scratch) {}
  }
}

/// Float16 bits → Float32, 16 at a time (one `vcvtph2ps` with F16C).
@inline(__always)
func halfToFloat(_ src: UnsafePointer<UInt16>, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
  var i = 0
  while i + 16 <= n {
    let h = UnsafeRawPointer(src + i).loadUnaligned(as: SIMD16<UInt16>.self)
    var f = SIMD16<Float>()
    for l in 0..<16 { f[l] = Float(Float16(bitPattern: h[l])) }
    UnsafeMutableRawPointer(dst + i).storeBytes(of: f, as: SIMD16<Float>.self)
    i += 16
  }
  while i < n {
    dst[i] = Float(Float16(bitPattern: src[i]))
    i += 1
  }
}

/// Float32 → Float16 bits, rounding to nearest even.
@inline(__always)
func floatToHalf(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<UInt16>, _ n: Int) {
  for i in 0..<n { dst[i] = Float16(src[i]).bitPattern }
}
