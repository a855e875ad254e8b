import Foundation
import SubqCore

/// The files `subq compare` writes: `--json`, `--csv`, `--svg DIR`, `--html`.
///
/// ``check()`` runs before the comparison, so a bad path fails in a second rather than after the
/// run. ``write(_:)`` renders every file in memory first and then writes each atomically
/// (``AtomicFile``): a reader never sees a partial file.
public struct CompareOutputs: Sendable {
  public var json: String?
  public var csv: String?
  public var svgDirectory: String?
  public var html: String?

  public init(json: String? = nil, csv: String? = nil, svgDirectory: String? = nil, html: String? = nil) {
    self.json = json
    self.csv = csv
    self.svgDirectory = svgDirectory
    self.html = html
  }

  /// Throws ``SubqError/file(path:reason:)`` when a file's directory does not exist or is not
  /// writable, or when the SVG directory exists as a file or cannot be created under its parent.
  public func check() throws(SubqError) {
    let fm = FileManager.default
    for path in [json, csv, html].compactMap({ $0 }) {
      let dir = URL(fileURLWithPath: path).deletingLastPathComponent().path
      var isDir: ObjCBool = false
      if fm.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue {
        throw .file(path: path, reason: "is a directory")
      }
      guard fm.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
        throw .file(path: path, reason: "cannot be written (no such directory \(dir))")
      }
      guard fm.isWritableFile(atPath: dir) else { throw .file(path: path, reason: "cannot be written (directory not writable)") }
    }
    if let svg = svgDirectory {
      var isDir: ObjCBool = false
      if fm.fileExists(atPath: svg, isDirectory: &isDir) {
        guard isDir.boolValue else { throw .file(path: svg, reason: "exists and is not a directory (--svg takes a directory)") }
        guard fm.isWritableFile(atPath: svg) else { throw .file(path: svg, reason: "directory not writable") }
      } else {
        let parent = URL(fileURLWithPath: svg).deletingLastPathComponent().path
        guard fm.fileExists(atPath: parent, isDirectory: &isDir), isDir.boolValue, fm.isWritableFile(atPath: parent) else {
          throw .file(path: svg, reason: "cannot be created (no writable directory \(parent))")
        }
      }
    }
  }

  /// Renders and writes every requested file; returns the paths written.
  @discardableResult
  public func write(_ report: CompareReport) throws(SubqError) -> [String] {
    var files: [(String, Data)] = []
    if let json { files.append((json, try report.jsonData())) }
    if let csv { files.append((csv, Data(CompareText.csv(report).utf8))) }
    if let html { files.append((html, Data(CompareFigures.html(report).utf8))) }
    if let svg = svgDirectory {
      let dir = URL(fileURLWithPath: svg)
      for fig in CompareFigures.figures(report) {
        files.append((dir.appendingPathComponent(fig.fileName).path, Data(fig.plot.render(standalone: true).utf8)))
      }
      if !FileManager.default.fileExists(atPath: svg) {
        do {
          try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: false)
        } catch {
          throw .file(path: svg, reason: "cannot be created")
        }
      }
    }
    for (path, data) in files { try AtomicFile.write(data, to: path) }
    return files.map(\.0)
  }
}
