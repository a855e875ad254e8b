import Foundation
import Subquadratic
import SubqTestSupport
import Testing

/// `subq decode-bench`, `subq bench --backward` and the `splitkv` method through the CLI, on tiny
/// sizes (the timings themselves are not checked: speed targets live in the benchmarks).
@Suite struct DecodeCLITests {
  @Test("decode-bench reports every context and passes its check", arguments: ["f32", "f16"])
  func decodeBench(dtype: String) throws {
    let r = try runSubq(["decode-bench", "--context", "100,300", "--heads", "4", "--kv-heads", "2", "--dim", "32", "--queries", "3",
                         "--kv-dtype", dtype, "--page-size", "16", "--repeat", "2", "--peak-bandwidth", "10", "--json"])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    struct Report: Decodable {
      struct Row: Decodable { var context: Int; var cacheBytes: Double; var checkError: Double; var fractionOfPeak: Double }
      var kvDtype: String
      var copyBandwidth: Double
      var rows: [Row]
    }
    let report = try JSONDecoder().decode(Report.self, from: Data(r.stdout.utf8))
    #expect(report.kvDtype == dtype && report.copyBandwidth == 10)
    #expect(report.rows.map(\.context) == [100, 300])
    let bytes = dtype == "f32" ? 4.0 : 2.0
    for row in report.rows {
      #expect(row.cacheBytes == Double(2 * row.context * 2 * 32) * bytes)
      // f16 pages are compared with the Float64 reference over the stored (rounded) values.
      #expect(row.checkError <= 1e-5, "check error \(row.checkError)")
      #expect(row.fractionOfPeak > 0)
    }
  }

  @Test func decodeBenchRejectsBadOptions() throws {
    for (args, message) in [(["--heads", "6", "--kv-heads", "4"], "multiple of --kv-heads"), (["--queries", "17"], "--queries"),
                            (["--kv-dtype", "bf16"], "kv-dtype"), (["--context", "0"], "--context")] {
      let r = try runSubq(["decode-bench", "--repeat", "1", "--peak-bandwidth", "1"] + args)
      #expect(r.status == 2, "\(args): \(r.stderr)")
      #expect(r.stderr.contains(message) && r.stderr.split(separator: "\n").count == 1, "\(args): \(r.stderr)")
    }
  }

  @Test func benchBackward() throws {
    let r = try runSubq(["bench", "--backward", "--n", "130", "--heads", "2", "--kv-heads", "1", "--dim", "32", "--causal", "--repeat", "1", "--json"])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    struct Report: Decodable {
      struct Row: Decodable { var n: Int; var forwardFlops: Double; var backwardFlops: Double; var checkError: Double }
      var rows: [Row]
    }
    let report = try JSONDecoder().decode(Report.self, from: Data(r.stdout.utf8))
    let row = try #require(report.rows.first)
    #expect(row.n == 130 && row.backwardFlops == 2.5 * row.forwardFlops)
    #expect(row.checkError <= 1e-4)
    let bad = try runSubq(["bench", "--backward", "--method", "naive", "--n", "64", "--repeat", "1"])
    #expect(bad.status == 2 && bad.stderr.contains("only flash"))
  }

  @Test func benchVsPeak() throws {
    let r = try runSubq(["bench", "--n", "200", "--heads", "2", "--dim", "32", "--repeat", "3", "--vs-peak", "--json"])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    struct Report: Decodable {
      struct Row: Decodable { var gflops: Double; var peakGFlops: Double?; var peakFraction: Double? }
      var rows: [Row]
    }
    let row = try #require(try JSONDecoder().decode(Report.self, from: Data(r.stdout.utf8)).rows.first)
    let peak = try #require(row.peakGFlops), fraction = try #require(row.peakFraction)
    #expect(peak > 0 && fraction > 0, "peak \(peak), fraction \(fraction)")
    // The median of per-run ratios and the ratio of medians agree within the run-to-run spread.
    let ratio = row.gflops / peak
    #expect(fraction > ratio / 3 && fraction < ratio * 3, "fraction \(fraction) vs \(ratio)")
    let plain = try runSubq(["bench", "--n", "64", "--heads", "1", "--repeat", "1", "--json"])
    #expect(!plain.stdout.contains("peakFraction"), "no peak unless asked: \(plain.stdout)")
    let bad = try runSubq(["bench", "--backward", "--vs-peak", "--n", "64", "--repeat", "1"])
    #expect(bad.status == 2 && bad.stderr.contains("--vs-peak"), "\(bad.stderr)")
  }

  @Test func splitkvThroughAttentionCommand() throws {
    let dir = temporaryDirectory()
    let q = Tensor.randomNormal(shape: [8, 2, 32], seed: 1), k = Tensor.randomNormal(shape: [2, 500, 32], seed: 2)
    let v = Tensor.randomNormal(shape: [2, 500, 32], seed: 3)
    for (t, n) in [(q, "q"), (k, "k"), (v, "v")] { try NPY.write(t, to: dir.appendingPathComponent("\(n).npy").path) }
    let out = dir.appendingPathComponent("o.npy").path
    let r = try runSubq(["attention", "--method", "splitkv", "--param", "splits=4", "--causal",
                         "--q", dir.appendingPathComponent("q.npy").path, "--k", dir.appendingPathComponent("k.npy").path,
                         "--v", dir.appendingPathComponent("v.npy").path, "--out", out])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    let ref = try NaiveAttention.reference(queries: q.reshaped([1, 8, 2, 32]), keys: k.reshaped([1, 2, 500, 32]),
                                           values: v.reshaped([1, 2, 500, 32]), options: AttentionOptions(causal: true))
    #expect(relativeError(try NPY.read(out), ref.output) <= 1e-5)
    let m = try runSubq(["methods"])
    #expect(m.stdout.contains("splitkv"))
  }
}
