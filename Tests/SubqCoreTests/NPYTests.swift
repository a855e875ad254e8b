import Foundation
import SubqCore
import SubqTestSupport
import Testing

@Suite struct NPYTests {
  let dir = temporaryDirectory("npy")
  func url(_ n: String) -> URL { dir.appendingPathComponent(n) }

  @Test("float32 round trip for ranks 0–5", arguments: [[], [7], [3, 5], [2, 3, 4], [1, 2, 3, 5], [2, 1, 1, 3, 2]])
  func roundTrip(shape: [Int]) throws {
    let t = Tensor.randomNormal(shape: shape, seed: 3)
    try NPY.write(t, to: url("t.npy").path)
    let r = try NPY.read(url("t.npy").path)
    #expect(r == t)
    #expect(r.shape == shape)
  }

  @Test func headerIsPaddedTo64Bytes() throws {
    let data = NPY.encode(Tensor.randomNormal(shape: [3, 4], seed: 1))
    let headerLength = Int(data[8]) | Int(data[9]) << 8
    #expect((10 + headerLength) % 64 == 0)
    let header = String(decoding: data[10..<(10 + headerLength)], as: UTF8.self)
    #expect(header.hasPrefix("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }"))
    #expect(header.hasSuffix("\n"))
  }

  /// numpy's own encodings of float16/float32/float64 and versions 1.0, 2.0 and 3.0.
  @Test("dtypes and versions", arguments: [("<f2", 2), ("<f4", 4), ("<f8", 8)], [UInt8(1), 2, 3])
  func dtypesAndVersions(dtype: (String, Int), major: UInt8) throws {
    let values: [Double] = [0, 1, -2.5, 0.125, 1024, -0.0009765625]
    var payload = Data()
    for v in values {
      switch dtype.1 {
      case 2: withUnsafeBytes(of: Float16(v).bitPattern.littleEndian) { payload.append(contentsOf: $0) }
      case 4: withUnsafeBytes(of: Float(v).bitPattern.littleEndian) { payload.append(contentsOf: $0) }
      default: withUnsafeBytes(of: v.bitPattern.littleEndian) { payload.append(contentsOf: $0) }
      }
    }
    try writeRawNPY(url("x.npy"), major: major, header: "{'descr': '\(dtype.0)', 'fortran_order': False, 'shape': (2, 3), }", payload: payload)
    let t = try NPY.read(url("x.npy").path)
    #expect(t.shape == [2, 3])
    #expect(t.scalars == values.map(Float.init))
  }

  func expectFileError(_ header: String, payloadBytes: Int, major: UInt8 = 1, _ fragment: String) throws {
    let u = url("bad-\(UUID().uuidString).npy")
    try writeRawNPY(u, major: major, header: header, payload: Data(count: payloadBytes))
    do {
      _ = try NPY.read(u.path)
      Issue.record("no error for \(header)")
    } catch {
      guard case .file(let path, let reason) = error else { Issue.record("wrong error \(error)"); return }
      #expect(path == u.path)
      #expect(reason.contains(fragment), "\(reason) lacks \(fragment)")
    }
  }

  @Test func malformedFiles() throws {
    try expectFileError("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", payloadBytes: 24, "Fortran")
    try expectFileError("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", payloadBytes: 24, "big-endian")
    try expectFileError("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", payloadBytes: 16, "object")
    try expectFileError("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }", payloadBytes: 24, "not supported")
    try expectFileError("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", payloadBytes: 20, "truncated")
    try expectFileError("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", payloadBytes: 28, "needs 24 data bytes")
    try expectFileError("{'descr': '<f4', 'fortran_order': False, }", payloadBytes: 4, "no 'shape'")
    try expectFileError("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", payloadBytes: 24, major: 4, "version 4.0")
    try expectFileError("{'descr': '<f4' 'fortran_order'", payloadBytes: 0, "cannot be parsed")
    // Not an npy at all, and a file cut inside the header.
    try Data("hello world, not numpy".utf8).write(to: url("text.npy"))
    #expect(throws: SubqError.file(path: url("text.npy").path, reason: "not a valid .npy file: missing the \\x93NUMPY magic string")) {
      try NPY.read(url("text.npy").path)
    }
    let full = NPY.encode(Tensor(shape: [4], repeating: 1))
    try full.prefix(40).write(to: url("cut.npy"))
    #expect(throws: SubqError.self) { try NPY.read(url("cut.npy").path) }
    #expect(throws: SubqError.file(path: url("nope.npy").path, reason: "no such file")) { try NPY.read(url("nope.npy").path) }
  }

  @Test func integerArrays() throws {
    var payload = Data()
    for v: Int32 in [0, 5, 9, 12] { withUnsafeBytes(of: v.littleEndian) { payload.append(contentsOf: $0) } }
    try writeRawNPY(url("cu.npy"), header: "{'descr': '<i4', 'fortran_order': False, 'shape': (4,), }", payload: payload)
    #expect(try NPY.readIntegers(url("cu.npy").path) == [0, 5, 9, 12])
    try NPY.write(Tensor(shape: [3], scalars: [1, 2, 3.5]), to: url("f.npy").path)
    #expect(throws: SubqError.file(path: url("f.npy").path, reason: "entry 2 is not a whole number")) {
      try NPY.readIntegers(url("f.npy").path)
    }
  }

  @Test func atomicWriteLeavesNothingOnFailure() throws {
    let target = dir.appendingPathComponent("no-such-dir/out.npy").path
    #expect(throws: SubqError.self) { try NPY.write(Tensor(shape: [2], repeating: 1), to: target) }
    #expect(!FileManager.default.fileExists(atPath: target))
    let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".tmp") }
    #expect(leftovers.isEmpty)
  }
}

@Suite struct TensorTests {
  @Test func copyOnWrite() throws {
    let a = Tensor(shape: [2, 2], repeating: 1)
    var b = a
    b[0, 1] = 5
    #expect(a[0, 1] == 1)
    #expect(b[0, 1] == 5)
  }

  @Test func reshapeChecksCount() throws {
    let t = Tensor(shape: [2, 3])
    #expect(try t.reshaped([3, 2]).shape == [3, 2])
    #expect(throws: SubqError.self) { try t.reshaped([4, 2]) }
  }

  @Test func scalarsInitChecksCount() {
    #expect(throws: SubqError.self) { try Tensor(shape: [2, 2], scalars: [1, 2, 3]) }
  }

  @Test func firstNonFinite() {
    var t = Tensor(shape: [100], repeating: 1)
    #expect(t.firstNonFinite() == nil)
    t[flat: 77] = .infinity
    #expect(t.firstNonFinite() == 77)
    t[flat: 3] = .nan
    #expect(t.firstNonFinite() == 3)
  }

  @Test func seededGeneratorIsDeterministic() {
    #expect(Tensor.randomNormal(shape: [50], seed: 9) == Tensor.randomNormal(shape: [50], seed: 9))
    #expect(Tensor.randomNormal(shape: [50], seed: 9) != Tensor.randomNormal(shape: [50], seed: 10))
    let t = Tensor.randomNormal(shape: [100_000], seed: 1)
    let mean = t.scalars.reduce(0, +) / 100_000
    let variance = t.scalars.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / 100_000
    #expect(abs(mean) < 0.02)
    #expect(abs(variance - 1) < 0.02)
  }

  @Test func parallelVisitsEveryItemOnce() {
    let buffer = AlignedBuffer<Int>(count: 1000)
    let hits = SendablePointer(buffer.pointer)
    Parallel.forEach(1000, threads: 4) { i, worker in
      precondition(worker < 4)
      hits.pointer[i] += 1
    }
    #expect((0..<1000).allSatisfy { buffer.pointer[$0] == 1 })
  }
}
