import Foundation

/// A metadata value for ``GGUFWriter`` (the GGUF value types, written with their type codes).
public indirect enum GGUFTestValue {
  case u8(UInt8), i8(Int8), u16(UInt16), i16(Int16), u32(UInt32), i32(Int32), u64(UInt64), i64(Int64)
  case f32(Float), f64(Double), bool(Bool), string(String)
  /// An array with an element type code and elements (all of that type).
  case array(UInt32, [GGUFTestValue])

  var code: UInt32 {
    switch self {
    case .u8: return 0
    case .i8: return 1
    case .u16: return 2
    case .i16: return 3
    case .u32: return 4
    case .i32: return 5
    case .f32: return 6
    case .bool: return 7
    case .string: return 8
    case .array: return 9
    case .u64: return 10
    case .i64: return 11
    case .f64: return 12
    }
  }
}

/// Writes GGUF files for tests: any metadata, tensors of any type code given as raw bytes, with
/// a chosen version and alignment. Independent of the library's reader.
public struct GGUFWriter {
  public var version: UInt32 = 3
  public var alignment = 32
  public var metadata: [(String, GGUFTestValue)] = []
  public var tensors: [(name: String, dims: [Int], type: UInt32, data: [UInt8])] = []

  public init() {}

  public mutating func set(_ key: String, _ value: GGUFTestValue) { metadata.append((key, value)) }

  /// Adds a tensor: `dims` in GGUF order (`dims[0]` is the row length), `data` its bytes.
  public mutating func add(_ name: String, dims: [Int], type: UInt32, data: [UInt8]) {
    tensors.append((name, dims, type, data))
  }

  /// The file's bytes.
  public func bytes() -> [UInt8] {
    var out: [UInt8] = []
    func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
    func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
    func str(_ s: String) { u64(UInt64(s.utf8.count)); out.append(contentsOf: Array(s.utf8)) }
    func value(_ v: GGUFTestValue) {
      switch v {
      case let .u8(x): out.append(x)
      case let .i8(x): out.append(UInt8(bitPattern: x))
      case let .u16(x): withUnsafeBytes(of: x.littleEndian) { out.append(contentsOf: $0) }
      case let .i16(x): withUnsafeBytes(of: x.littleEndian) { out.append(contentsOf: $0) }
      case let .u32(x): u32(x)
      case let .i32(x): u32(UInt32(bitPattern: x))
      case let .u64(x): u64(x)
      case let .i64(x): u64(UInt64(bitPattern: x))
      case let .f32(x): u32(x.bitPattern)
      case let .f64(x): u64(x.bitPattern)
      case let .bool(x): out.append(x ? 1 : 0)
      case let .string(s): str(s)
      case let .array(t, items):
        u32(t)
        u64(UInt64(items.count))
        for i in items { value(i) }
      }
    }
    out.append(contentsOf: Array("GGUF".utf8))
    u32(version)
    u64(UInt64(tensors.count))
    u64(UInt64(metadata.count))
    for (k, v) in metadata {
      str(k)
      u32(v.code)
      value(v)
    }
    var offset = 0
    var offsets: [Int] = []
    for t in tensors {
      offsets.append(offset)
      offset += (t.data.count + alignment - 1) / alignment * alignment
    }
    for (t, off) in zip(tensors, offsets) {
      str(t.name)
      u32(UInt32(t.dims.count))
      for d in t.dims { u64(UInt64(d)) }
      u32(t.type)
      u64(UInt64(off))
    }
    while out.count % alignment != 0 { out.append(0) }
    for t in tensors {
      out.append(contentsOf: t.data)
      while out.count % alignment != 0 { out.append(0) }
    }
    return out
  }

  /// Writes the file.
  public func write(to url: URL) throws { try Data(bytes()).write(to: url) }
}

// MARK: - Quantizers (ggml's block layouts, written from the format description)

/// IEEE half-precision bits of `x` (round to nearest).
public func halfBits(_ x: Float) -> UInt16 { Float16(x).bitPattern }

private func appendHalf(_ out: inout [UInt8], _ x: Float) {
  let b = halfBits(x)
  out.append(UInt8(b & 0xFF))
  out.append(UInt8(b >> 8))
}

/// Float32 row-major data as bytes.
public func f32Bytes(_ x: [Float]) -> [UInt8] {
  var out: [UInt8] = []
  for v in x { withUnsafeBytes(of: v.bitPattern.littleEndian) { out.append(contentsOf: $0) } }
  return out
}

/// Float16 data as bytes.
public func f16Bytes(_ x: [Float]) -> [UInt8] {
  var out: [UInt8] = []
  for v in x { appendHalf(&out, v) }
  return out
}

/// Q8_0 blocks of `x` (count a multiple of 32): d = max|x|/127 (as f16), q = round(x/d).
public func q8_0Bytes(_ x: [Float]) -> [UInt8] {
  var out: [UInt8] = []
  for b in stride(from: 0, to: x.count, by: 32) {
    let blk = x[b..<(b + 32)]
    let amax = blk.map { abs($0) }.max()!
    let d = Float(Float16(amax / 127))
    appendHalf(&out, amax / 127)
    for v in blk {
      let q = d == 0 ? 0 : max(-127, min(127, (v / d).rounded()))
      out.append(UInt8(bitPattern: Int8(q)))
    }
  }
  return out
}

/// Q4_0 blocks: d = m/−8 where m is the value of largest magnitude; q = clamp(round(x/d) + 8).
public func q4_0Bytes(_ x: [Float]) -> [UInt8] {
  var out: [UInt8] = []
  for b in stride(from: 0, to: x.count, by: 32) {
    let blk = Array(x[b..<(b + 32)])
    let m = blk.max { abs($0) < abs($1) }!
    let d = Float(Float16(m / -8))
    appendHalf(&out, m / -8)
    func q(_ v: Float) -> UInt8 { d == 0 ? 8 : UInt8(max(0, min(15, (v / d).rounded() + 8))) }
    for j in 0..<16 { out.append(q(blk[j]) | q(blk[j + 16]) << 4) }
  }
  return out
}

/// Q4_1 blocks: m = min, d = (max − min)/15; q = clamp(round((x − m)/d)).
public func q4_1Bytes(_ x: [Float]) -> [UInt8] {
  var out: [UInt8] = []
  for b in stride(from: 0, to: x.count, by: 32) {
    let blk = Array(x[b..<(b + 32)])
    let lo = blk.min()!, hi = blk.max()!
    let d = Float(Float16((hi - lo) / 15)), m = Float(Float16(lo))
    appendHalf(&out, (hi - lo) / 15)
    appendHalf(&out, lo)
    func q(_ v: Float) -> UInt8 { d == 0 ? 0 : UInt8(max(0, min(15, ((v - m) / d).rounded()))) }
    for j in 0..<16 { out.append(q(blk[j]) | q(blk[j + 16]) << 4) }
  }
  return out
}

/// Reference dequantization of ggml blocks to Double, from the format description: Q4_0
/// w = d·(q − 8), Q4_1 w = d·q + m, Q8_0 w = d·q; byte j of a 4-bit block holds weight j (low
/// nibble) and j + 16 (high nibble). Type codes: 0 F32, 1 F16, 2 Q4_0, 3 Q4_1, 8 Q8_0.
public func referenceDequantize(type: UInt32, bytes: [UInt8], count: Int) -> [Double] {
  func half(_ i: Int) -> Double { Double(Float16(bitPattern: UInt16(bytes[i]) | UInt16(bytes[i + 1]) << 8)) }
  var out: [Double] = []
  switch type {
  case 0:
    for i in 0..<count {
      let bits = UInt32(bytes[4 * i]) | UInt32(bytes[4 * i + 1]) << 8 | UInt32(bytes[4 * i + 2]) << 16 | UInt32(bytes[4 * i + 3]) << 24
      out.append(Double(Float(bitPattern: bits)))
    }
  case 1:
    for i in 0..<count { out.append(half(2 * i)) }
  case 2:
    for b in 0..<(count / 32) {
      let o = b * 18, d = half(o)
      var w = [Double](repeating: 0, count: 32)
      for j in 0..<16 {
        w[j] = d * Double(Int(bytes[o + 2 + j] & 0xF) - 8)
        w[j + 16] = d * Double(Int(bytes[o + 2 + j] >> 4) - 8)
      }
      out += w
    }
  case 3:
    for b in 0..<(count / 32) {
      let o = b * 20, d = half(o), m = half(o + 2)
      var w = [Double](repeating: 0, count: 32)
      for j in 0..<16 {
        w[j] = d * Double(bytes[o + 4 + j] & 0xF) + m
        w[j + 16] = d * Double(bytes[o + 4 + j] >> 4) + m
      }
      out += w
    }
  case 8:
    for b in 0..<(count / 32) {
      let o = b * 34, d = half(o)
      for j in 0..<32 { out.append(d * Double(Int8(bitPattern: bytes[o + 2 + j]))) }
    }
  default:
    preconditionFailure("referenceDequantize: type \(type)")
  }
  return out
}

/// Bytes of `x` in type `type` (0 F32, 1 F16, 2 Q4_0, 3 Q4_1, 8 Q8_0).
public func encodeTensor(_ x: [Float], type: UInt32) -> [UInt8] {
  switch type {
  case 0: return f32Bytes(x)
  case 1: return f16Bytes(x)
  case 2: return q4_0Bytes(x)
  case 3: return q4_1Bytes(x)
  case 8: return q8_0Bytes(x)
  default: preconditionFailure("encodeTensor: type \(type)")
  }
}
