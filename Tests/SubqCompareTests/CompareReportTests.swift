import Foundation
import SubqBench
import Subquadratic
import SubqTestSupport
import Testing

#if canImport(FoundationXML)
import FoundationXML
#endif

/// The documented schema `subq.compare/1` (docs/compare-schema.md), written independently of the
/// library's types: decoding fails if a required key is missing or has the wrong type.
struct SchemaV1: Decodable {
  struct Metadata: Decodable {
    var version: String, configuration: String, tuning: String, flags: String, simd: String, cpu: String
    var cores: Int, threads: Int, seed: UInt64, startedAt: String, wallSeconds: Double, command: [String]
  }
  struct Suite: Decodable {
    var lengths: [Int], kinds: [String], causal: [Bool], batch: Int, heads: Int, kvHeads: Int, dim: Int
    var dataDirectory: String?, repeats: Int, budgetSeconds: Double, topK: Int, sampleRows: Int, needlesPerHead: Int
  }
  struct Method: Decodable {
    var name: String, summary: String, paper: String, complexity: String, exact: Bool, keySelecting: Bool, baseline: Bool
    var parameters: [String: String]
  }
  struct Problem: Decodable {
    var id: String, kind: String, causal: Bool, batch: Int, heads: Int, kvHeads: Int, length: Int, keyLength: Int
    var dim: Int, valueDim: Int, flops: Double, needlesPlanted: Int, needlesValid: Int, sampledRows: Int
    var baselineCheckError: Double?, mass90Fraction: Double, mass90Keys: Double
  }
  struct Row: Decodable { var batch: Int, head: Int, row: Int }
  struct Result: Decodable {
    var method: String, problem: String, status: String, reason: String?, samples: [Double]
    var medianSeconds: Double?, minSeconds: Double?, speedup: Double?, gflops: Double?, extraBytes: Double?
    var relativeError: Double?, worstRowError: Double?, worstRow: Row?, topKRecall: Double?, needleRecall: Double?
    var needleKeyRecall: Double?
  }
  struct Scaling: Decodable { var method: String, kind: String, causal: Bool, lengths: [Int], exponent: Double }
  struct SpeedOnly: Decodable {
    var mixer: String, length: Int, causal: Bool, status: String, reason: String?, samples: [Double]
    var medianSeconds: Double?, flashMedianSeconds: Double?, speedupVsFlash: Double?, gflops: Double?, extraBytes: Double?
  }
  var schema: String, status: String, metadata: Metadata, suite: Suite, methods: [Method], problems: [Problem]
  var results: [Result], scaling: [Scaling], speedOnly: [SpeedOnly]

  /// Every key each object must carry (nullable ones included): the Decodable structs above accept
  /// a missing key for an optional, the documented schema does not.
  static let requiredKeys: [String: [String]] = [
    "top": ["schema", "status", "metadata", "suite", "methods", "problems", "results", "scaling", "speedOnly"],
    "suite": ["lengths", "kinds", "causal", "batch", "heads", "kvHeads", "dim", "dataDirectory", "repeats", "budgetSeconds",
              "topK", "sampleRows", "needlesPerHead"],
    "problem": ["id", "kind", "causal", "batch", "heads", "kvHeads", "length", "keyLength", "dim", "valueDim", "flops",
                "needlesPlanted", "needlesValid", "sampledRows", "baselineCheckError", "mass90Fraction", "mass90Keys"],
    "result": ["method", "problem", "status", "reason", "samples", "medianSeconds", "minSeconds", "speedup", "gflops",
               "extraBytes", "relativeError", "worstRowError", "worstRow", "topKRecall", "needleRecall", "needleKeyRecall"],
    "speedOnly": ["mixer", "length", "causal", "status", "reason", "samples", "medianSeconds", "flashMedianSeconds",
                  "speedupVsFlash", "gflops", "extraBytes"],
  ]

  /// Checks `data` against the schema: the problems found (empty when it conforms) and the
  /// decoded report.
  static func check(_ data: Data) -> (problems: [String], report: SchemaV1?) {
    var problems: [String] = []
    let decoded: SchemaV1
    do {
      decoded = try JSONDecoder().decode(SchemaV1.self, from: data)
    } catch {
      return (["does not decode: \(error)"], nil)
    }
    if decoded.schema != "subq.compare/1" { problems.append("schema is \(decoded.schema)") }
    if !["complete", "interrupted"].contains(decoded.status) { problems.append("status is \(decoded.status)") }
    guard let top = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else { return (["not an object"], decoded) }
    func keys(_ o: Any?, _ kind: String) {
      guard let d = o as? [String: Any] else { problems.append("\(kind) is not an object"); return }
      for k in requiredKeys[kind]! where d.index(forKey: k) == nil { problems.append("\(kind) lacks required key \(k)") }
    }
    keys(top, "top")
    keys(top["suite"], "suite")
    for p in top["problems"] as? [Any] ?? [] { keys(p, "problem") }
    for r in top["results"] as? [Any] ?? [] { keys(r, "result") }
    for s in top["speedOnly"] as? [Any] ?? [] { keys(s, "speedOnly") }
    let ids = Set(decoded.problems.map(\.id))
    if ids.count != decoded.problems.count { problems.append("problem ids repeat") }
    for r in decoded.results {
      if !ids.contains(r.problem) { problems.append("result for unknown problem \(r.problem)") }
      if !["ok", "n/a", "invalid"].contains(r.status) { problems.append("result status \(r.status)") }
      // n/a results have no timings; ok and invalid ones do.
      if (r.status == "n/a") != (r.medianSeconds == nil) { problems.append("\(r.method) on \(r.problem): status \(r.status) with median \(String(describing: r.medianSeconds))") }
    }
    return (problems, decoded)
  }
}

@Suite struct CompareReportTests {
  var report: CompareReport { CompareRunnerTests.shared.report }

  @Test func jsonFollowsTheDocumentedSchema() throws {
    let data = try report.jsonData()
    let (problems, decoded) = SchemaV1.check(data)
    #expect(problems.isEmpty, "\(problems)")
    let s = try #require(decoded)
    #expect(s.results.count == report.results.count)
    #expect(s.speedOnly.count == 2)
    #expect(s.suite.kinds == ["gaussian", "needles"])
    // A n/a result keeps every key, as null.
    let text = String(decoding: data, as: UTF8.self)
    #expect(text.contains("\"topKRecall\" : null"))
  }

  @Test func schemaCheckCatchesMissingKeys() throws {
    // The check itself must fail on a report without a required key, or with a wrong type.
    var obj = try #require(try JSONSerialization.jsonObject(with: report.jsonData()) as? [String: Any])
    var results = obj["results"] as! [[String: Any]]
    results[0].removeValue(forKey: "reason")
    obj["results"] = results
    #expect(SchemaV1.check(try JSONSerialization.data(withJSONObject: obj)).problems == ["result lacks required key reason"])
    obj["schema"] = 1
    #expect(SchemaV1.check(try JSONSerialization.data(withJSONObject: obj)).report == nil)
  }

  @Test func csvHasOneRowPerMeasurement() throws {
    let csv = CompareText.csv(report)
    let lines = csv.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
    #expect(lines.first.map(String.init) == CompareText.csvColumns.joined(separator: ","))
    #expect(lines.count == 1 + report.results.count + report.speedOnly.count)
    // Fields with commas are quoted, so a plain split works on rows without quotes.
    let flash = try #require(lines.first { $0.contains(",flash,") && $0.contains("gaussian-64-noncausal") })
    let fields = flash.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
    if !flash.contains("\"") {
      #expect(fields.count == CompareText.csvColumns.count)
      #expect(fields[CompareText.csvColumns.firstIndex(of: "speedup")!] == "1")
    }
  }

  @Test func textTablesShowEveryProblem() {
    let text = CompareText.render(report)
    for p in report.problems {
      #expect(text.contains("\(p.kind) · N=\(formatLength(p.length)) · \(p.causal ? "causal" : "non-causal")"))
    }
    #expect(text.contains("n/a"))
    #expect(text.contains("test-running-mean"))
    #expect(text.contains("Scaling"))
  }

  /// Collects `<g class="series" data-name=…>` and guide groups, and fails on malformed XML.
  final class SVGScan: NSObject, XMLParserDelegate {
    var series: [String] = []
    var guides: [String] = []
    var root: String?
    func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                attributes: [String: String] = [:]) {
      if root == nil { root = name }
      if name == "g", attributes["class"] == "series", let n = attributes["data-name"] { series.append(n) }
      if name == "g", attributes["class"] == "guide", let n = attributes["data-name"] { guides.append(n) }
    }
  }

  func scan(_ svg: String) throws -> SVGScan {
    let parser = XMLParser(data: Data(svg.utf8))
    let s = SVGScan()
    parser.delegate = s
    #expect(parser.parse(), "SVG does not parse: \(String(describing: parser.parserError))")
    return s
  }

  @Test func svgParsesWithOneSeriesPerMethod() throws {
    let figs = CompareFigures.figures(report)
    // Time and error plots for 2 kinds × 2 modes, and the speed-only plot.
    #expect(figs.count == 9)
    #expect(Set(figs.map(\.fileName)).count == figs.count)
    let methods = report.methods.map(\.name)
    for f in figs where f.fileName != "speed-only.svg" {
      let s = try scan(f.plot.render())
      #expect(s.root == "svg")
      #expect(s.series.sorted() == methods.sorted(), "\(f.fileName): \(s.series)")
      if f.fileName.hasPrefix("time-") { #expect(s.guides == ["O(N²)", "O(N)"], "\(f.fileName)") }
      let text = f.plot.render()
      #expect(!text.lowercased().contains("nan") && !text.contains("inf"), "\(f.fileName) has a non-finite coordinate")
    }
    let speed = try #require(figs.first { $0.fileName == "speed-only.svg" })
    #expect(try scan(speed.plot.render()).series == ["test-running-mean", "flash (causal)"])
  }

  @Test func svgEscapesText() throws {
    var plot = SVGPlot(title: "a < b & \"c\"", xLabel: "x", yLabel: "y",
                       series: [SVGPlot.Series(name: "m<1>&'2'", color: "#000000", points: [.init(x: 1, y: 1), .init(x: 10, y: 3)], connect: true)])
    plot.guides = [SVGPlot.Guide(name: "O(N)", points: [(1, 1), (10, 10)])]
    let s = try scan(plot.render())
    #expect(s.series == ["m<1>&'2'"])
  }

  @Test func htmlIsSelfContained() throws {
    let html = CompareFigures.html(report)
    // Nothing the browser would fetch: no linked files, scripts, images, frames, imports or URLs.
    // (SVG clip paths use url(#id), a reference inside the page.)
    #expect(html.range(of: #"url\((?!#)"#, options: .regularExpression) == nil, "HTML has a url() outside the page")
    for banned in ["src=", "href=", "@import", "<link", "<script", "<img", "<iframe", "<object", "<embed", "http://", "https://"] {
      #expect(!html.lowercased().contains(banned), "HTML contains \(banned)")
    }
    #expect(html.hasPrefix("<!DOCTYPE html>"))
    #expect(html.components(separatedBy: "<svg").count - 1 == CompareFigures.figures(report).count)
    #expect(html.contains("<style>"))
    for p in report.problems { #expect(html.contains("N=\(formatLength(p.length))")) }
  }
}
