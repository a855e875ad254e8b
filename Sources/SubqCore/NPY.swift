import Foundation

/// Reading and writing numpy's `.npy` files.
///
/// Reads format versions 1.0, 2.0 and 3.0 with little-endian `float16`, `float32` or `float64`
/// data in C order; the scalars are converted to `Float`. Writes `float32`, version 1.0 (2.0 when
/// the header needs more than 65535 bytes), atomically: the data goes to a temporary file in the
/// same directory that is renamed over the destination only when complete, so a failed write never
/// leaves a partial file.
///
/// Every problem — a missing file, a bad magic string, Fortran order, big-endian or object data,
/// an unsupported dtype, a truncated file, a shape that does not match the data length — throws
/// ``SubqError/file(path:reason:)`` naming the file and the problem.
public enum NPY {
  static let magic: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]  // "\x93NUMPY"

  /// Reads a `.npy` file.
  public static func read(_ path: String) throws(SubqError) -> Tensor {
    let data: Data
    do {
      data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped)
    } catch {
      let reason = FileManager.default.fileExists(atPath: path) ? "cannot be read" : "no such file"
      throw .file(path: path, reason: reason)
    }
    return try decode(data, name: path)
  }

  /// The parsed preamble and header of a `.npy` file.
  struct Header {
    var descr: String
    var shape: [Int]
    var dataStart: Int
    var count: Int { shape.reduce(1, *) }
  }

  static func parseHeader(_ data: Data, name: String) throws(SubqError) -> Header {
    func fail(_ reason: String) -> SubqError { .file(path: name, reason: "not a valid .npy file: " + reason) }
    guard data.count >= 10 else { throw fail("\(data.count) bytes is shorter than the 10-byte preamble") }
    let bytes = [UInt8](data.prefix(12))
    guard Array(bytes[0..<6]) == magic else { throw fail("missing the \\x93NUMPY magic string") }
    let major = bytes[6], minor = bytes[7]
    let headerLength: Int, headerStart: Int
    switch major {
    case 1:
      headerLength = Int(bytes[8]) | Int(bytes[9]) << 8
      headerStart = 10
    case 2, 3:
      guard data.count >= 12 else { throw fail("truncated preamble") }
      headerLength = Int(bytes[8]) | Int(bytes[9]) << 8 | Int(bytes[10]) << 16 | Int(bytes[11]) << 24
      headerStart = 12
    default:
      throw fail("format version \(major).\(minor) is not supported (1.0, 2.0 and 3.0 are)")
    }
    guard data.count >= headerStart + headerLength else {
      throw fail("truncated header (\(headerLength) bytes announced, \(data.count - headerStart) present)")
    }
    let headerBytes = data.subdata(in: data.startIndex + headerStart..<data.startIndex + headerStart + headerLength)
    guard let header = String(data: headerBytes, encoding: major == 3 ? .utf8 : .isoLatin1) else {
      throw fail("header is not text")
    }
    let dict: [String: HeaderValue]
    do throws(ParseError) {
      var parser = HeaderParser(header)
      dict = try parser.parseDict()
    } catch {
      throw fail("header cannot be parsed (\(error.message))")
    }
    guard case .string(let descr)? = dict["descr"] else { throw fail("header has no 'descr'") }
    guard case .bool(let fortran)? = dict["fortran_order"] else { throw fail("header has no 'fortran_order'") }
    guard case .tuple(let shape)? = dict["shape"] else { throw fail("header has no 'shape'") }
    if fortran { throw .file(path: name, reason: "Fortran-order arrays are not supported; save the array in C order (np.ascontiguousarray)") }
    if shape.contains(where: { $0 < 0 }) { throw fail("negative extent in shape \(shape)") }
    let order = descr.first, kind = descr.dropFirst()
    if descr == "O" || kind.hasPrefix("O") {
      throw .file(path: name, reason: "object arrays are not supported (dtype \(descr))")
    }
    if order == ">" { throw .file(path: name, reason: "big-endian data (dtype \(descr)) is not supported; use little-endian") }
    guard order == "<" || order == "=" || order == "|" else { throw fail("dtype \(descr) has no byte order") }
    return Header(descr: descr, shape: shape, dataStart: headerStart + headerLength)
  }

  /// Checks that the data after the header is exactly `count · width` bytes.
  static func checkLength(_ data: Data, _ h: Header, width: Int, name: String) throws(SubqError) {
    let available = data.count - h.dataStart
    let needed = h.count * width
    if available < needed {
      throw .file(path: name, reason: "truncated: shape \(h.shape) of \(h.descr) needs \(needed) data bytes, the file has \(available)")
    }
    if available > needed {
      throw .file(path: name, reason: "shape \(h.shape) of \(h.descr) needs \(needed) data bytes, the file has \(available)")
    }
  }

  /// Decodes the bytes of a `.npy` file; `name` is used in error messages.
  public static func decode(_ data: Data, name: String) throws(SubqError) -> Tensor {
    let h = try parseHeader(data, name: name)
    let width: Int
    switch h.descr.dropFirst() {
    case "f2": width = 2
    case "f4": width = 4
    case "f8": width = 8
    default:
      throw .file(path: name, reason: "dtype \(h.descr) is not supported (float16, float32 and float64 are)")
    }
    try checkLength(data, h, width: width, name: name)
    let count = h.count
    return data.withUnsafeBytes { raw in
      let src = raw.baseAddress! + h.dataStart
      return Tensor(shape: h.shape) { dst in
        switch width {
        case 2:
          for i in 0..<count { dst[i] = Float(Float16(bitPattern: UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))) }
        case 4:
          for i in 0..<count { dst[i] = Float(bitPattern: UInt32(littleEndian: src.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
        default:
          for i in 0..<count { dst[i] = Float(Double(bitPattern: UInt64(littleEndian: src.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self)))) }
        }
      }
    }
  }

  /// Reads a one-dimensional `.npy` array of integers — int8…int64, uint8…uint64, or floats
  /// holding whole numbers — such as cumulative sequence lengths or key lengths.
  public static func readIntegers(_ path: String) throws(SubqError) -> [Int] {
    let data: Data
    do {
      data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped)
    } catch {
      throw .file(path: path, reason: FileManager.default.fileExists(atPath: path) ? "cannot be read" : "no such file")
    }
    let h = try parseHeader(data, name: path)
    guard h.shape.count == 1 else {
      throw .file(path: path, reason: "expected a one-dimensional array of integers, got shape \(h.shape)")
    }
    let kind = String(h.descr.dropFirst())
    let widths = ["i1": 1, "i2": 2, "i4": 4, "i8": 8, "u1": 1, "u2": 2, "u4": 4, "u8": 8, "f2": 2, "f4": 4, "f8": 8]
    guard let width = widths[kind] else {
      throw .file(path: path, reason: "dtype \(h.descr) is not an integer or float type")
    }
    try checkLength(data, h, width: width, name: path)
    var out: [Int] = []
    out.reserveCapacity(h.count)
    let badEntry: Int? = data.withUnsafeBytes { raw -> Int? in
      let src = raw.baseAddress! + h.dataStart
      for i in 0..<h.count {
        let o = i * width
        let value: Int?
        switch kind {
        case "i1": value = Int(src.load(fromByteOffset: o, as: Int8.self))
        case "i2": value = Int(Int16(littleEndian: src.loadUnaligned(fromByteOffset: o, as: Int16.self)))
        case "i4": value = Int(Int32(littleEndian: src.loadUnaligned(fromByteOffset: o, as: Int32.self)))
        case "i8": value = Int(Int64(littleEndian: src.loadUnaligned(fromByteOffset: o, as: Int64.self)))
        case "u1": value = Int(src.load(fromByteOffset: o, as: UInt8.self))
        case "u2": value = Int(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: o, as: UInt16.self)))
        case "u4": value = Int(UInt32(littleEndian: src.loadUnaligned(fromByteOffset: o, as: UInt32.self)))
        case "u8": value = Int(exactly: UInt64(littleEndian: src.loadUnaligned(fromByteOffset: o, as: UInt64.self)))
        case "f2": value = Int(exactly: Float(Float16(bitPattern: UInt16(littleEndian: src.loadUnaligned(fromByteOffset: o, as: UInt16.self)))))
        case "f4": value = Int(exactly: Float(bitPattern: UInt32(littleEndian: src.loadUnaligned(fromByteOffset: o, as: UInt32.self))))
        default: value = Int(exactly: Double(bitPattern: UInt64(littleEndian: src.loadUnaligned(fromByteOffset: o, as: UInt64.self))))
        }
        guard let value else { return i }
        out.append(value)
      }
      return nil
    }
    if let badEntry { throw .file(path: path, reason: "entry \(badEntry) is not a whole number") }
    return out
  }

  /// The bytes of a `.npy` file holding `tensor` as little-endian float32 in C order.
  public static func encode(_ tensor: Tensor) -> Data {
    let shapeText: String
    switch tensor.rank {
    case 0: shapeText = "()"
    case 1: shapeText = "(\(tensor.shape[0]),)"
    default: shapeText = "(" + tensor.shape.map(String.init).joined(separator: ", ") + ")"
    }
    var header = "{'descr': '<f4', 'fortran_order': False, 'shape': \(shapeText), }"
    var preamble = 10
    if header.utf8.count + 1 + preamble > 65535 { preamble = 12 }
    let total = (preamble + header.utf8.count + 1 + 63) / 64 * 64
    header += String(repeating: " ", count: total - preamble - header.utf8.count - 1) + "\n"
    var data = Data(magic)
    let hl = header.utf8.count
    if preamble == 10 {
      data.append(contentsOf: [1, 0, UInt8(hl & 0xFF), UInt8(hl >> 8)])
    } else {
      data.append(contentsOf: [2, 0, UInt8(hl & 0xFF), UInt8((hl >> 8) & 0xFF), UInt8((hl >> 16) & 0xFF), UInt8(hl >> 24)])
    }
    data.append(contentsOf: Array(header.utf8))
    tensor.withUnsafeBufferPointer { p in
      #if _endian(little)
      data.append(UnsafeBufferPointer(start: UnsafeRawPointer(p.baseAddress!).assumingMemoryBound(to: UInt8.self), count: p.count * 4))
      #else
      for x in p { withUnsafeBytes(of: x.bitPattern.littleEndian) { data.append(contentsOf: $0) } }
      #endif
    }
    return data
  }

  /// Writes `tensor` as a float32 `.npy` file, atomically.
  public static func write(_ tensor: Tensor, to path: String) throws(SubqError) {
    try AtomicFile.write(encode(tensor), to: path)
  }

  // MARK: - Header parsing

  enum HeaderValue { case string(String), bool(Bool), tuple([Int]), int(Int), none }
  struct ParseError: Error { let message: String }

  /// A parser for the Python literal dictionary in a `.npy` header.
  struct HeaderParser {
    let chars: [Character]
    var i = 0
    init(_ s: String) { chars = Array(s) }

    mutating func skipSpace() { while i < chars.count, chars[i].isWhitespace { i += 1 } }
    mutating func expect(_ c: Character) throws(ParseError) {
      skipSpace()
      guard i < chars.count, chars[i] == c else { throw ParseError(message: "expected '\(c)' at offset \(i)") }
      i += 1
    }
    mutating func peek() -> Character? { skipSpace(); return i < chars.count ? chars[i] : nil }

    mutating func parseDict() throws(ParseError) -> [String: HeaderValue] {
      try expect("{")
      var out: [String: HeaderValue] = [:]
      while true {
        if peek() == "}" { i += 1; break }
        let key = try parseString()
        try expect(":")
        out[key] = try parseValue()
        if peek() == "," { i += 1 }
      }
      return out
    }

    mutating func parseString() throws(ParseError) -> String {
      skipSpace()
      guard i < chars.count, chars[i] == "'" || chars[i] == "\"" else { throw ParseError(message: "expected a string at offset \(i)") }
      let q = chars[i]
      i += 1
      var s = ""
      while i < chars.count, chars[i] != q { s.append(chars[i]); i += 1 }
      guard i < chars.count else { throw ParseError(message: "unterminated string") }
      i += 1
      return s
    }

    mutating func parseValue() throws(ParseError) -> HeaderValue {
      guard let c = peek() else { throw ParseError(message: "unexpected end") }
      if c == "'" || c == "\"" { return .string(try parseString()) }
      if c == "(" {
        i += 1
        var items: [Int] = []
        while true {
          if peek() == ")" { i += 1; break }
          guard case .int(let n) = try parseValue() else { throw ParseError(message: "shape entries must be integers") }
          items.append(n)
          if peek() == "," { i += 1 }
        }
        return .tuple(items)
      }
      var word = ""
      while i < chars.count, chars[i].isLetter || chars[i].isNumber || chars[i] == "-" || chars[i] == "_" {
        word.append(chars[i]); i += 1
      }
      switch word {
      case "True": return .bool(true)
      case "False": return .bool(false)
      case "None": return .none
      default:
        // numpy writes shape entries as Python ints, sometimes with an 'L' suffix (Python 2).
        let digits = word.hasSuffix("L") ? String(word.dropLast()) : word
        if let n = Int(digits) { return .int(n) }
        throw ParseError(message: "unexpected '\(word)' at offset \(i)")
      }
    }
  }
}

/// Writes files so that readers never see a partial file: the bytes go to a temporary file in the
/// destination's directory, which is renamed over the destination when complete.
public enum AtomicFile {
  public static func write(_ data: Data, to path: String) throws(SubqError) {
    let url = URL(fileURLWithPath: path)
    let dir = url.deletingLastPathComponent()
    let tmp = dir.appendingPathComponent(".\(url.lastPathComponent).\(ProcessInfo.processInfo.processIdentifier).tmp")
    do {
      try data.write(to: tmp)
    } catch {
      throw .file(path: path, reason: "cannot be written (\(FileManager.default.fileExists(atPath: dir.path) ? "permission or disk problem" : "no such directory"))")
    }
    if rename(tmp.path, url.path) != 0 {
      try? FileManager.default.removeItem(at: tmp)
      throw .file(path: path, reason: "cannot be written (rename failed)")
    }
  }
}
