import Foundation

/// The result of running the `subq` executable.
public struct CommandResult: Sendable {
  public var status: Int32
  public var stdout: String
  public var stderr: String
}

/// The `subq` executable next to the test bundle (or `SUBQ_BIN`).
public func subqExecutable() -> URL {
  if let p = ProcessInfo.processInfo.environment["SUBQ_BIN"] { return URL(fileURLWithPath: p) }
  var dir = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
  for _ in 0..<4 {
    let candidate = dir.appendingPathComponent("subq")
    if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
    dir = dir.deletingLastPathComponent()
  }
  return URL(fileURLWithPath: "subq")
}

/// Runs `subq` with `arguments` and collects its exit status and output.
public func runSubq(_ arguments: [String], environment: [String: String] = [:]) throws -> CommandResult {
  let p = Process()
  p.executableURL = subqExecutable()
  p.arguments = arguments
  var env = ProcessInfo.processInfo.environment
  for (k, v) in environment { env[k] = v }
  p.environment = env
  let out = Pipe(), err = Pipe()
  p.standardOutput = out
  p.standardError = err
  try p.run()
  // Read both pipes before waiting, so a full pipe cannot deadlock the child.
  let o = out.fileHandleForReading.readDataToEndOfFile()
  let e = err.fileHandleForReading.readDataToEndOfFile()
  p.waitUntilExit()
  return CommandResult(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
}

/// A fresh temporary directory, removed by the caller (or left for inspection on failure).
public func temporaryDirectory(_ label: String = "subq-test") -> URL {
  let url = FileManager.default.temporaryDirectory.appendingPathComponent("\(label)-\(UUID().uuidString)")
  try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
  return url
}

/// Writes raw `.npy` bytes with the given header text and payload (for malformed-file tests).
public func writeRawNPY(_ url: URL, major: UInt8 = 1, header: String, payload: Data) throws {
  var h = header
  let pre = major == 1 ? 10 : 12
  let total = (pre + h.utf8.count + 1 + 63) / 64 * 64
  h += String(repeating: " ", count: total - pre - h.utf8.count - 1) + "\n"
  var d = Data([0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59, major, 0])
  let n = h.utf8.count
  if major == 1 { d.append(contentsOf: [UInt8(n & 0xFF), UInt8(n >> 8)]) } else {
    d.append(contentsOf: [UInt8(n & 0xFF), UInt8((n >> 8) & 0xFF), UInt8((n >> 16) & 0xFF), UInt8(n >> 24)])
  }
  d.append(contentsOf: Array(h.utf8))
  d.append(payload)
  try d.write(to: url)
}
