import Foundation
import SubqCore
import SubqTestSupport
import Testing

/// `subq decode-bench --method tokenselect|retrieval` end to end on small problems (the numbers are
/// checked for sanity, not speed).
struct DecodeBenchSelectionCLITests {
  func reports(_ r: CommandResult) throws -> [[String: Any]] {
    let top = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
    return try #require(top?["reports"] as? [[String: Any]])
  }

  @Test func tokenSelectRuns() throws {
    let r = try runSubq(["decode-bench", "--method", "tokenselect", "--context", "3000", "--steps", "3", "--warmup", "1", "--heads", "4",
                         "--kv-heads", "2", "--dim", "32", "--param", "top-k=64", "--param", "local=32", "--param", "init=8", "--json"])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    let rep = try #require(try reports(r).first)
    #expect(rep["method"] as? String == "tokenselect")
    #expect(rep["steps"] as? Int == 3 && rep["warmup"] as? Int == 1 && rep["heads"] as? Int == 4)
    let recall = try #require(rep["recallAttended"] as? Double)
    #expect(recall > 0 && recall <= 1)
    #expect((rep["attendedPerRow"] as? Double) == 104)
    #expect((rep["selectionCacheHitRate"] as? Double).map { $0 >= 0 && $0 <= 1 } == true)
    #expect((rep["methodCPUMedianSeconds"] as? Double).map { $0 > 0 } == true)
    #expect((rep["exactCPUMedianSeconds"] as? Double).map { $0 > 0 } == true)
  }

  @Test func retrievalRuns() throws {
    let r = try runSubq(["decode-bench", "--method", "retrieval", "--context", "4K,2000", "--steps", "2", "--heads", "4", "--kv-heads", "2",
                         "--dim", "32", "--prefill-queries", "64", "--kv-dtype", "f16", "--param", "top-k=20", "--param", "width=40",
                         "--recall-k", "20", "--json"])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    let all = try reports(r)
    #expect(all.map { $0["context"] as? Int } == [4096, 2000])
    let rep = try #require(all.first)
    #expect(rep["storage"] as? String == "f16")
    #expect((rep["buildSeconds"] as? Double).map { $0 > 0 } == true)
    #expect((rep["indexBytes"] as? Int).map { $0 > 0 } == true)
    let scanned = try #require(rep["scannedFraction"] as? Double)
    #expect(scanned > 0 && scanned < 1)
    #expect((rep["recallSearch"] as? Double).map { $0 > 0.5 } == true, "recall \(String(describing: rep["recallSearch"]))")
  }

  /// The default method is still exact split-KV decoding, and `--param splits=N` reaches it.
  @Test func splitKVTakesSplitsAsParameter() throws {
    let r = try runSubq(["decode-bench", "--context", "300", "--heads", "2", "--kv-heads", "1", "--dim", "16", "--repeat", "1",
                         "--peak-bandwidth", "10", "--param", "splits=3", "--json"])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    let top = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
    #expect(top["method"] as? String == "splitkv")
    #expect((top["rows"] as? [[String: Any]])?.count == 1)
  }

  /// Bad input: exit status 2 and one line on stderr naming the problem.
  @Test func badInputsExitTwo() throws {
    let cases: [([String], String)] = [
      (["--method", "hnsw"], "hnsw"),
      (["--method", "retrieval", "--param", "widht=4"], "widht"),
      (["--method", "tokenselect", "--param", "threshold=2"], "threshold"),
      (["--method", "tokenselect", "--heads", "5", "--kv-heads", "2"], "--heads"),
      (["--method", "tokenselect", "--kv-dtype", "bf16"], "bf16"),
      (["--method", "tokenselect", "--context", "0"], "--context"),
      (["--method", "tokenselect", "--context", "1000,0"], "--context"),
      (["--method", "tokenselect", "--data", "needles"], "needles"),
      (["--method", "retrieval", "--drift", "1.5"], "--drift"),
      // Options of the other mode are errors, not silently ignored.
      (["--method", "retrieval", "--splits", "4"], "--splits"),
      (["--method", "tokenselect", "--queries", "2"], "--queries"),
      (["--method", "retrieval", "--repeat", "3"], "--repeat"),
      (["--steps", "3"], "--steps"),
      (["--data", "gaussian"], "--data"),
      (["--recall-k", "10"], "--recall-k"),
      (["--param", "top-k=10"], "top-k"),
      (["--param", "splits=2", "--splits", "2"], "--splits"),
    ]
    for (args, needle) in cases {
      let context = args.contains("--context") ? [] : ["--context", "1000"]
      // splitkv cases get a given bandwidth (no measurement); the option is an error for the others.
      let bandwidth = args.contains("--method") ? [] : ["--peak-bandwidth", "1"]
      let r = try runSubq(["decode-bench"] + bandwidth + context + args)
      #expect(r.status == 2, "\(args): status \(r.status)")
      let lines = r.stderr.split(separator: "\n")
      #expect(lines.count == 1 && r.stderr.contains(needle), "\(args): stderr \(r.stderr)")
    }
  }
}
