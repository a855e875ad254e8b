import Foundation
import SubqCore
import SubqTestSupport
import Testing

/// `subq select-bench` end to end on small problems (the numbers are checked for sanity, not speed).
struct SelectBenchCLITests {
  func json(_ r: CommandResult) throws -> [String: Any] {
    let top = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
    return try #require(top?["report"] as? [String: Any])
  }

  @Test func tokenSelectRuns() throws {
    let r = try runSubq(["select-bench", "--method", "tokenselect", "--context", "3000", "--steps", "3", "--warmup", "1", "--heads", "4",
                         "--kv-heads", "2", "--dim", "32", "--param", "top-k=64", "--param", "local=32", "--param", "init=8", "--json"])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    let rep = try json(r)
    #expect(rep["method"] as? String == "tokenselect")
    let recall = try #require(rep["recallAttended"] as? Double)
    #expect(recall > 0 && recall <= 1)
    #expect((rep["attendedPerRow"] as? Double) == 104)
    #expect((rep["selectionCacheHitRate"] as? Double).map { $0 >= 0 && $0 <= 1 } == true)
  }

  @Test func retrievalRuns() throws {
    let r = try runSubq(["select-bench", "--method", "retrieval", "--context", "4K", "--steps", "2", "--heads", "4", "--kv-heads", "2",
                         "--dim", "32", "--prefill-queries", "64", "--storage", "f16", "--param", "top-k=20", "--param", "width=40", "--recall-k", "20", "--json"])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    let rep = try json(r)
    #expect(rep["storage"] as? String == "f16")
    #expect((rep["buildSeconds"] as? Double).map { $0 > 0 } == true)
    #expect((rep["indexBytes"] as? Int).map { $0 > 0 } == true)
    let scanned = try #require(rep["scannedFraction"] as? Double)
    #expect(scanned > 0 && scanned < 1)
    #expect((rep["recallSearch"] as? Double).map { $0 > 0.5 } == true, "recall \(String(describing: rep["recallSearch"]))")
  }

  /// Bad input: exit status 2 and one line on stderr naming the problem.
  @Test func badInputsExitTwo() throws {
    let cases: [([String], String)] = [
      (["--method", "hnsw"], "hnsw"),
      (["--method", "retrieval", "--param", "widht=4"], "widht"),
      (["--method", "tokenselect", "--param", "threshold=2"], "threshold"),
      (["--method", "tokenselect", "--heads", "5", "--kv-heads", "2"], "--heads"),
      (["--method", "tokenselect", "--storage", "bf16"], "bf16"),
    ]
    for (args, needle) in cases + [(["--method", "tokenselect", "--context", "0"], "--context")] {
      let context = args.contains("--context") ? [] : ["--context", "1000"]
      let r = try runSubq(["select-bench", "--steps", "1"] + context + args)
      #expect(r.status == 2, "\(args): status \(r.status)")
      let lines = r.stderr.split(separator: "\n")
      #expect(lines.count == 1 && r.stderr.contains(needle), "\(args): stderr \(r.stderr)")
    }
  }
}
