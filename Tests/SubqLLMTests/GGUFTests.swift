import Foundation
import Subquadratic
import SubqLLM
import SubqTestSupport
import Testing

/// The GGUF reader against files written by the test support's independent writer.
struct GGUFReaderTests {
  func write(_ w: GGUFWriter) throws -> (URL, URL) {
    let dir = temporaryDirectory("subq-gguf")
    let url = dir.appendingPathComponent("t.gguf")
    try w.write(to: url)
    return (url, dir)
  }

  func expectFileError(_ url: URL, containing text: String, sourceLocation: SourceLocation = #_sourceLocation) {
    do {
      _ = try GGUFFile(path: url.path)
      Issue.record("expected an error containing '\(text)'", sourceLocation: sourceLocation)
    } catch {
      guard case let .file(path, reason) = error else { Issue.record("wrong error \(error)", sourceLocation: sourceLocation); return }
      #expect(path == url.path, sourceLocation: sourceLocation)
      #expect(reason.contains(text), "\(reason)", sourceLocation: sourceLocation)
    }
  }

  @Test(arguments: [UInt32(2), 3])
  func metadataOfEveryTypeRoundTrips(version: UInt32) throws {
    var w = GGUFWriter()
    w.version = version
    w.set("a.u8", .u8(200)); w.set("a.i8", .i8(-100)); w.set("a.u16", .u16(60_000)); w.set("a.i16", .i16(-30_000))
    w.set("a.u32", .u32(4_000_000_000)); w.set("a.i32", .i32(-2_000_000_000)); w.set("a.u64", .u64(1 << 40))
    w.set("a.i64", .i64(-(1 << 40))); w.set("a.f32", .f32(1.5)); w.set("a.f64", .f64(-2.25)); w.set("a.bool", .bool(true))
    w.set("a.string", .string("héllo ✓")); w.set("a.ints", .array(5, [.i32(1), .i32(-2), .i32(3)]))
    w.set("a.nested", .array(9, [.array(8, [.string("x"), .string("yz")]), .array(8, [])]))
    w.add("t", dims: [32, 3], type: 0, data: f32Bytes((0..<96).map(Float.init)))
    let (url, dir) = try write(w)
    defer { try? FileManager.default.removeItem(at: dir) }
    let f = try GGUFFile(path: url.path)
    #expect(f.version == Int(version))
    #expect(f.metadata["a.u8"] == .uint8(200))
    #expect(f.metadata["a.i8"] == .int8(-100))
    #expect(f.metadata["a.u16"] == .uint16(60_000))
    #expect(f.metadata["a.i16"] == .int16(-30_000))
    #expect(f.metadata["a.u32"] == .uint32(4_000_000_000))
    #expect(f.metadata["a.i32"] == .int32(-2_000_000_000))
    #expect(f.metadata["a.u64"] == .uint64(1 << 40))
    #expect(f.metadata["a.i64"] == .int64(-(1 << 40)))
    #expect(f.metadata["a.f32"] == .float32(1.5))
    #expect(f.metadata["a.f64"] == .float64(-2.25))
    #expect(f.metadata["a.bool"] == .bool(true))
    #expect(try f.string("a.string") == "héllo ✓")
    #expect(try f.ints("a.ints") == [1, -2, 3])
    #expect(f.metadata["a.nested"] == .array(.array, [.array(.string, [.string("x"), .string("yz")]), .array(.string, [])]))
    #expect(f.metadataKeys.first == "a.u8" && f.metadataKeys.count == 14)
    #expect(try f.int("a.u32") == 4_000_000_000)
    #expect(throws: SubqError.self) { try f.string("a.u32") }
    #expect(throws: SubqError.self) { try f.int("missing.key") }
    let t = try f.dequantized("t")
    #expect(t.shape == [3, 32])
    #expect(t.scalars == (0..<96).map(Float.init))
  }

  @Test func customAlignmentPlacesTensorsOnItsBoundaries() throws {
    var w = GGUFWriter()
    w.alignment = 64
    w.set("general.alignment", .u32(64))
    w.add("a", dims: [3], type: 0, data: f32Bytes([1, 2, 3]))
    w.add("b", dims: [5], type: 0, data: f32Bytes([4, 5, 6, 7, 8]))
    let (url, dir) = try write(w)
    defer { try? FileManager.default.removeItem(at: dir) }
    let f = try GGUFFile(path: url.path)
    #expect(f.alignment == 64 && f.dataOffset % 64 == 0)
    #expect(f.tensorInfo("b")?.offset == 64)
    #expect(try f.dequantized("b").scalars == [4, 5, 6, 7, 8])
  }

  @Test func malformedFilesNameTheProblem() throws {
    var w = GGUFWriter()
    w.set("general.architecture", .string("llama"))
    w.set("tokenizer.ggml.tokens", .array(8, [.string("a"), .string("b")]))
    w.add("blk.0.weight", dims: [32, 2], type: 8, data: q8_0Bytes((0..<64).map { Float($0) / 10 }))
    let good = w.bytes()
    let dir = temporaryDirectory("subq-gguf")
    defer { try? FileManager.default.removeItem(at: dir) }
    let url = dir.appendingPathComponent("bad.gguf")

    try Data(good.prefix(good.count - 40)).write(to: url)
    expectFileError(url, containing: "tensor 'blk.0.weight'")
    // Cut inside the metadata: the message names the key being read.
    let keyAt = good.count - 200
    try Data(good.prefix(keyAt)).write(to: url)
    expectFileError(url, containing: "truncated file")
    try Data(good.prefix(60)).write(to: url)
    expectFileError(url, containing: "general.architecture")
    var bad = good
    bad[0] = UInt8(ascii: "X")
    try Data(bad).write(to: url)
    expectFileError(url, containing: "magic")
    bad = good
    bad[4] = 1
    try Data(bad).write(to: url)
    expectFileError(url, containing: "version 1")
    try Data().write(to: url)
    expectFileError(url, containing: "empty")
    expectFileError(dir.appendingPathComponent("none.gguf"), containing: "no such file")

    var w2 = GGUFWriter()
    w2.add("odd", dims: [32], type: 77, data: [UInt8](repeating: 0, count: 32))
    try w2.write(to: url)
    expectFileError(url, containing: "tensor 'odd' has unknown ggml type code 77")
    var w3 = GGUFWriter()
    w3.set("general.alignment", .u32(24))
    try w3.write(to: url)
    expectFileError(url, containing: "general.alignment")
    var w4 = GGUFWriter()
    w4.add("rows", dims: [20, 2], type: 8, data: [UInt8](repeating: 0, count: 68))
    try w4.write(to: url)
    expectFileError(url, containing: "tensor 'rows' of type Q8_0 has row length 20")
  }

  @Test func unsupportedTypesAreRejectedByName() throws {
    var w = GGUFWriter()
    w.add("blk.3.ffn_up.weight", dims: [32, 1], type: 6, data: [UInt8](repeating: 0, count: 22))  // Q5_0
    let (url, dir) = try write(w)
    defer { try? FileManager.default.removeItem(at: dir) }
    let f = try GGUFFile(path: url.path)
    #expect(f.tensorInfo("blk.3.ffn_up.weight")?.type.description == "Q5_0")
    #expect(throws: SubqError.unsupported(op: "gguf", feature: "tensor 'blk.3.ffn_up.weight' of type Q5_0",
                                          reason: "supported types are F32, F16, BF16, Q4_0, Q4_1 and Q8_0")) {
      try QuantizedMatrix(f, "blk.3.ffn_up.weight")
    }
    #expect(throws: SubqError.self) { try f.dequantized("blk.3.ffn_up.weight") }
  }
}
