import Foundation
import SubqCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A value of a GGUF metadata key.
public indirect enum GGUFValue: Sendable, Equatable {
  case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
  case uint64(UInt64), int64(Int64), float32(Float), float64(Double), bool(Bool), string(String)
  /// An array: the element type code and the elements.
  case array(GGUFValueType, [GGUFValue])

  /// The value as an integer, when it is one of the integer types (or a Boolean).
  public var intValue: Int? {
    switch self {
    case let .uint8(v): return Int(v)
    case let .int8(v): return Int(v)
    case let .uint16(v): return Int(v)
    case let .int16(v): return Int(v)
    case let .uint32(v): return Int(v)
    case let .int32(v): return Int(v)
    case let .uint64(v): return v <= UInt64(Int.max) ? Int(v) : nil
    case let .int64(v): return Int(v)
    default: return nil
    }
  }

  /// The value as a floating-point number, when it is a float or an integer.
  public var doubleValue: Double? {
    switch self {
    case let .float32(v): return Double(v)
    case let .float64(v): return v
    default: return intValue.map(Double.init)
    }
  }

  /// The type name used in GGUF's specification (`uint32`, `string`, `array[string]`, …).
  public var typeName: String {
    switch self {
    case .uint8: return "uint8"
    case .int8: return "int8"
    case .uint16: return "uint16"
    case .int16: return "int16"
    case .uint32: return "uint32"
    case .int32: return "int32"
    case .uint64: return "uint64"
    case .int64: return "int64"
    case .float32: return "float32"
    case .float64: return "float64"
    case .bool: return "bool"
    case .string: return "string"
    case let .array(t, _): return "array[\(t)]"
    }
  }
}

/// GGUF metadata value type codes (the `gguf_type` enumeration of the format).
public enum GGUFValueType: UInt32, Sendable, CustomStringConvertible {
  case uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6, bool = 7
  case string = 8, array = 9, uint64 = 10, int64 = 11, float64 = 12

  public var description: String {
    switch self {
    case .uint8: return "uint8"
    case .int8: return "int8"
    case .uint16: return "uint16"
    case .int16: return "int16"
    case .uint32: return "uint32"
    case .int32: return "int32"
    case .float32: return "float32"
    case .bool: return "bool"
    case .string: return "string"
    case .array: return "array"
    case .uint64: return "uint64"
    case .int64: return "int64"
    case .float64: return "float64"
    }
  }
}

/// A tensor element type of ggml (the `ggml_type` code stored in a GGUF tensor info).
///
/// Every type's block geometry is known, so any GGUF file can be parsed and its tensor extents
/// checked; ``isSupported`` says which ones this library can compute with (dequantize and
/// multiply): F32, F16, BF16, Q4_0, Q4_1 and Q8_0.
public struct GGMLType: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
  public let rawValue: UInt32
  public init(rawValue: UInt32) { self.rawValue = rawValue }

  public static let f32 = GGMLType(rawValue: 0)
  public static let f16 = GGMLType(rawValue: 1)
  public static let q4_0 = GGMLType(rawValue: 2)
  public static let q4_1 = GGMLType(rawValue: 3)
  public static let q5_0 = GGMLType(rawValue: 6)
  public static let q5_1 = GGMLType(rawValue: 7)
  public static let q8_0 = GGMLType(rawValue: 8)
  public static let q8_1 = GGMLType(rawValue: 9)
  public static let bf16 = GGMLType(rawValue: 30)

  /// (name, elements per block, bytes per block) for every type ggml defines.
  static let table: [UInt32: (String, Int, Int)] = [
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
  ]

  /// Whether ggml defines this type code.
  public var isKnown: Bool { Self.table[rawValue] != nil }
  /// ggml's name for the type (`Q4_1`), or `type <code>` for an unknown code.
  public var description: String { Self.table[rawValue]?.0 ?? "type \(rawValue)" }
  /// Elements per quantization block (1 for plain types).
  public var blockSize: Int { Self.table[rawValue]?.1 ?? 0 }
  /// Bytes per block.
  public var blockBytes: Int { Self.table[rawValue]?.2 ?? 0 }
  /// Whether this library dequantizes and multiplies this type.
  public var isSupported: Bool { [Self.f32, .f16, .bf16, .q4_0, .q4_1, .q8_0].contains(self) }
}

/// Where one tensor lives in a GGUF file.
public struct GGUFTensorInfo: Sendable, Equatable {
  public var name: String
  /// Extents as GGUF stores them: `dims[0]` is the contiguous (row) length, ggml's `ne[0]`.
  public var dims: [Int]
  public var type: GGMLType
  /// Byte offset from the start of the data section.
  public var offset: Int
  /// Number of elements.
  public var count: Int { dims.reduce(1, *) }
  /// Elements per row (`dims[0]`) and number of rows (the product of the other extents).
  public var rowLength: Int { dims.first ?? 1 }
  public var rows: Int { dims.dropFirst().reduce(1, *) }
  /// Bytes of one row and of the whole tensor.
  public var rowBytes: Int { rowLength / Swift.max(type.blockSize, 1) * type.blockBytes }
  public var byteCount: Int { rowBytes * rows }
}

/// A read-only memory map of a whole file.
final class MappedFile: @unchecked Sendable {
  let base: UnsafeRawPointer
  let size: Int

  init(path: String) throws(SubqError) {
    let fd = open(path, O_RDONLY)
    if fd < 0 {
      throw .file(path: path, reason: FileManager.default.fileExists(atPath: path) ? "cannot be opened" : "no such file")
    }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw .file(path: path, reason: "cannot be read (fstat failed)") }
    if (st.st_mode & S_IFMT) == S_IFDIR { throw .file(path: path, reason: "is a directory, not a GGUF file") }
    size = Int(st.st_size)
    if size == 0 { throw .file(path: path, reason: "not a GGUF file: the file is empty") }
    guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
      throw .file(path: path, reason: "cannot be memory-mapped")
    }
    base = UnsafeRawPointer(p)
  }

  deinit { munmap(UnsafeMutableRawPointer(mutating: base), size) }
}

/// A GGUF model file (format versions 2 and 3): metadata, tensor infos and memory-mapped tensor
/// data.
///
/// Layout (all little-endian): the magic `GGUF`, a `uint32` version, `uint64` tensor and key/value
/// counts, the key/value pairs (a length-prefixed UTF-8 key, a `uint32` type code and the value;
/// arrays carry an element type and a `uint64` count), the tensor infos (name, `uint32` rank,
/// `uint64` extents, `uint32` ggml type, `uint64` offset), padding to `general.alignment` (32 by
/// default), then the tensor data, each tensor at its offset from the start of that section.
///
/// The file is mapped, not read: opening a 100 MB model costs the parse of its header only, and
/// tensor bytes are paged in when first used. Every malformed or truncated structure throws
/// ``SubqError/file(path:reason:)`` naming the key or tensor where parsing stopped.
public final class GGUFFile: @unchecked Sendable {
  /// The path it was opened from.
  public let path: String
  /// Format version (2 or 3).
  public let version: Int
  /// Metadata key/value pairs.
  public let metadata: [String: GGUFValue]
  /// Metadata keys in file order.
  public let metadataKeys: [String]
  /// Tensor infos in file order.
  public let tensors: [GGUFTensorInfo]
  /// Data alignment in bytes.
  public let alignment: Int
  /// Byte offset of the data section in the file.
  public let dataOffset: Int
  let file: MappedFile
  let tensorIndex: [String: Int]

  /// Opens and parses `path`.
  /// - Throws: ``SubqError/file(path:reason:)`` for a missing, unreadable, malformed or truncated
  ///   file, an unsupported version, a bad alignment, or a tensor whose data lies outside the file.
  public init(path: String) throws(SubqError) {
    self.path = path
    file = try MappedFile(path: path)
    var r = ByteReader(base: file.base, size: file.size, path: path)
    let magic = try r.bytes(4, what: "the magic number")
    guard magic == Array("GGUF".utf8) else {
      throw .file(path: path, reason: "not a GGUF file: the magic number is \(magic.map { String(format: "%02x", $0) }.joined()), expected 47475546 (\"GGUF\")")
    }
    let v = try r.u32(what: "the version")
    guard v == 2 || v == 3 else {
      throw .file(path: path, reason: "GGUF version \(v) is not supported (versions 2 and 3 are)")
    }
    version = Int(v)
    let tensorCount = try r.u64(what: "the tensor count")
    let kvCount = try r.u64(what: "the metadata count")
    // Each key/value needs at least 12 bytes and each tensor info at least 24: reject counts the
    // file cannot hold before allocating anything for them.
    guard kvCount <= UInt64(file.size / 12), tensorCount <= UInt64(file.size / 24) else {
      throw .file(path: path, reason: "malformed GGUF header: \(kvCount) metadata entries and \(tensorCount) tensors cannot fit in \(file.size) bytes")
    }
    var meta: [String: GGUFValue] = [:]
    var keys: [String] = []
    for i in 0..<Int(kvCount) {
      let key = try r.string(what: "metadata key #\(i)")
      let code = try r.u32(what: "the type of metadata key '\(key)'")
      guard let type = GGUFValueType(rawValue: code) else {
        throw .file(path: path, reason: "metadata key '\(key)' has unknown value type \(code)")
      }
      let value = try r.value(type, what: "metadata key '\(key)'", depth: 0)
      if meta[key] != nil { throw .file(path: path, reason: "metadata key '\(key)' appears twice") }
      meta[key] = value
      keys.append(key)
    }
    metadata = meta
    metadataKeys = keys

    var align = 32
    if let a = meta["general.alignment"] {
      guard let n = a.intValue, n > 0, n & (n - 1) == 0 else {
        throw .file(path: path, reason: "metadata key 'general.alignment' = \(a) must be a power of two")
      }
      align = n
    }
    alignment = align

    var infos: [GGUFTensorInfo] = []
    var index: [String: Int] = [:]
    for i in 0..<Int(tensorCount) {
      let name = try r.string(what: "the name of tensor #\(i)")
      let rank = try r.u32(what: "the rank of tensor '\(name)'")
      guard rank >= 1 && rank <= 4 else { throw .file(path: path, reason: "tensor '\(name)' has rank \(rank) (1 to 4 allowed)") }
      var dims: [Int] = []
      var total: UInt64 = 1
      for a in 0..<Int(rank) {
        let d = try r.u64(what: "extent \(a) of tensor '\(name)'")
        let (m, overflow) = total.multipliedReportingOverflow(by: d)
        guard d > 0, !overflow, m <= UInt64(Int32.max) * 64 else {
          throw .file(path: path, reason: "tensor '\(name)' has an invalid extent \(d) on axis \(a)")
        }
        total = m
        dims.append(Int(d))
      }
      let t = GGMLType(rawValue: try r.u32(what: "the type of tensor '\(name)'"))
      guard t.isKnown else { throw .file(path: path, reason: "tensor '\(name)' has unknown ggml type code \(t.rawValue)") }
      guard dims[0] % t.blockSize == 0 else {
        throw .file(path: path, reason: "tensor '\(name)' of type \(t) has row length \(dims[0]), not a multiple of its block size \(t.blockSize)")
      }
      let off = try r.u64(what: "the offset of tensor '\(name)'")
      guard off % UInt64(align) == 0, off < UInt64(file.size) else {
        throw .file(path: path, reason: "tensor '\(name)' has offset \(off), not a multiple of the alignment \(align) inside the file")
      }
      if index[name] != nil { throw .file(path: path, reason: "tensor '\(name)' appears twice") }
      index[name] = infos.count
      infos.append(GGUFTensorInfo(name: name, dims: dims, type: t, offset: Int(off)))
    }
    let start = (r.position + align - 1) / align * align
    dataOffset = start
    for t in infos where start + t.offset + t.byteCount > file.size {
      throw .file(path: path, reason: "truncated file: tensor '\(t.name)' (\(t.type), \(t.dims)) needs bytes up to \(start + t.offset + t.byteCount), the file has \(file.size)")
    }
    tensors = infos
    tensorIndex = index
  }

  /// The info of tensor `name`, or nil.
  public func tensorInfo(_ name: String) -> GGUFTensorInfo? { tensorIndex[name].map { tensors[$0] } }

  /// Pointer to the first byte of tensor `name`'s data (valid while this object lives).
  /// - Throws: ``SubqError/file(path:reason:)`` when there is no such tensor.
  public func data(_ name: String) throws(SubqError) -> UnsafeRawPointer {
    guard let t = tensorInfo(name) else { throw .file(path: path, reason: "tensor '\(name)' is missing") }
    return data(t)
  }

  /// Pointer to the first byte of `info`'s data.
  public func data(_ info: GGUFTensorInfo) -> UnsafeRawPointer { file.base + dataOffset + info.offset }

  /// The tensor `name` dequantized to Float, as a `Tensor` whose shape is the GGUF extents
  /// reversed (row-major: `[rows…, rowLength]`).
  /// - Throws: ``SubqError/file(path:reason:)`` for a missing tensor,
  ///   ``SubqError/unsupported(op:feature:reason:)`` for a type this library cannot dequantize.
  public func dequantized(_ name: String) throws(SubqError) -> Tensor {
    guard let t = tensorInfo(name) else { throw .file(path: path, reason: "tensor '\(name)' is missing") }
    try QuantizedMatrix.checkSupported(t.type, tensor: name)
    let src = data(t)
    return Tensor(shape: t.dims.reversed()) { out in
      for r in 0..<t.rows {
        Dequantize.row(t.type, src + r * t.rowBytes, out.baseAddress! + r * t.rowLength, count: t.rowLength)
      }
    }
  }

  // MARK: - Typed metadata access

  func missing(_ key: String) -> SubqError { .file(path: path, reason: "metadata key '\(key)' is missing") }
  func wrongType(_ key: String, _ v: GGUFValue, _ expected: String) -> SubqError {
    .file(path: path, reason: "metadata key '\(key)' has type \(v.typeName), expected \(expected)")
  }

  /// An integer metadata value (any integer type).
  public func int(_ key: String) throws(SubqError) -> Int {
    guard let v = metadata[key] else { throw missing(key) }
    guard let n = v.intValue else { throw wrongType(key, v, "an integer") }
    return n
  }

  /// A floating-point metadata value (float or integer types).
  public func double(_ key: String) throws(SubqError) -> Double {
    guard let v = metadata[key] else { throw missing(key) }
    guard let x = v.doubleValue else { throw wrongType(key, v, "a number") }
    return x
  }

  /// A string metadata value.
  public func string(_ key: String) throws(SubqError) -> String {
    guard let v = metadata[key] else { throw missing(key) }
    guard case let .string(s) = v else { throw wrongType(key, v, "string") }
    return s
  }

  /// A Boolean metadata value.
  public func bool(_ key: String) throws(SubqError) -> Bool {
    guard let v = metadata[key] else { throw missing(key) }
    guard case let .bool(b) = v else { throw wrongType(key, v, "bool") }
    return b
  }

  /// An array of strings.
  public func strings(_ key: String) throws(SubqError) -> [String] {
    guard let v = metadata[key] else { throw missing(key) }
    guard case let .array(.string, items) = v else { throw wrongType(key, v, "array[string]") }
    return items.map { if case let .string(s) = $0 { return s } else { return "" } }
  }

  /// An array of integers.
  public func ints(_ key: String) throws(SubqError) -> [Int] {
    guard let v = metadata[key] else { throw missing(key) }
    guard case let .array(_, items) = v else { throw wrongType(key, v, "an integer array") }
    var out: [Int] = []
    out.reserveCapacity(items.count)
    for x in items {
      guard let n = x.intValue else { throw wrongType(key, v, "an integer array") }
      out.append(n)
    }
    return out
  }
}

/// Bounds-checked little-endian reads over the mapped header.
struct ByteReader {
  let base: UnsafeRawPointer
  let size: Int
  let path: String
  var position = 0

  func truncated(_ what: String, _ need: Int) -> SubqError {
    .file(path: path, reason: "truncated file: \(what) needs \(need) bytes at offset \(position), the file has \(size)")
  }

  mutating func bytes(_ n: Int, what: String) throws(SubqError) -> [UInt8] {
    guard n >= 0, position <= size - n else { throw truncated(what, n) }
    let out = Array(UnsafeRawBufferPointer(start: base + position, count: n))
    position += n
    return out
  }

  mutating func load<T: FixedWidthInteger>(_: T.Type, what: String) throws(SubqError) -> T {
    let n = MemoryLayout<T>.size
    guard position <= size - n else { throw truncated(what, n) }
    let v = T(littleEndian: base.loadUnaligned(fromByteOffset: position, as: T.self))
    position += n
    return v
  }

  mutating func u32(what: String) throws(SubqError) -> UInt32 { try load(UInt32.self, what: what) }
  mutating func u64(what: String) throws(SubqError) -> UInt64 { try load(UInt64.self, what: what) }

  mutating func string(what: String) throws(SubqError) -> String {
    let n = try u64(what: what)
    guard n <= UInt64(size - position) else { throw truncated(what, Int(clamping: n)) }
    let s = String(decoding: UnsafeRawBufferPointer(start: base + position, count: Int(n)), as: UTF8.self)
    position += Int(n)
    return s
  }

  mutating func value(_ type: GGUFValueType, what: String, depth: Int) throws(SubqError) -> GGUFValue {
    switch type {
    case .uint8: return .uint8(try load(UInt8.self, what: what))
    case .int8: return .int8(try load(Int8.self, what: what))
    case .uint16: return .uint16(try load(UInt16.self, what: what))
    case .int16: return .int16(try load(Int16.self, what: what))
    case .uint32: return .uint32(try load(UInt32.self, what: what))
    case .int32: return .int32(try load(Int32.self, what: what))
    case .uint64: return .uint64(try load(UInt64.self, what: what))
    case .int64: return .int64(try load(Int64.self, what: what))
    case .float32: return .float32(Float(bitPattern: try load(UInt32.self, what: what)))
    case .float64: return .float64(Double(bitPattern: try load(UInt64.self, what: what)))
    case .bool:
      let b = try load(UInt8.self, what: what)
      guard b <= 1 else { throw .file(path: path, reason: "\(what): bool value \(b) is neither 0 nor 1") }
      return .bool(b == 1)
    case .string: return .string(try string(what: what))
    case .array:
      guard depth < 4 else { throw .file(path: path, reason: "\(what): arrays nested deeper than 4 levels") }
      let code = try u32(what: what)
      guard let et = GGUFValueType(rawValue: code) else {
        throw .file(path: path, reason: "\(what): array of unknown value type \(code)")
      }
      let n = try u64(what: what)
      // Every element takes at least one byte: a count the rest of the file cannot hold is corrupt.
      guard n <= UInt64(size - position) else { throw truncated("\(what) (\(n) array elements)", Int(clamping: n)) }
      var items: [GGUFValue] = []
      items.reserveCapacity(Int(n))
      for _ in 0..<Int(n) { items.append(try value(et, what: what, depth: depth + 1)) }
      return .array(et, items)
    }
  }
}
