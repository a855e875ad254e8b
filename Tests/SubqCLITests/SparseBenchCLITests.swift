import Foundation
import SubqTestSupport
import Testing

/// `subq bench-sparse` through the CLI on a small problem: the comparison's alternating rounds, the
/// scaling rows, and one-line errors with exit status 2 for bad options. (Times and rates are this
/// machine's and are only checked to be positive and consistent with each other.)
@Suite struct SparseBenchCLITests {
  struct Report: Decodable {
    struct Comparison: Decodable {
      var grid: [Int], kernel: Int, n: Int
      var neighborhoodSeconds: Double, neighborhoodGflops: Double
      var flashSeconds: Double, flashGflops: Double
      var ratio: Double, roundRatios: [Double], checkError: Double
    }
    struct Row: Decodable { var method: String; var n: Int; var medianSeconds: Double; var growth: Double?; var checkError: Double? }
    var heads: Int, dim: Int
    var comparison: Comparison?
    var scaling: [Row]
  }

  @Test func comparisonAlternatesRoundsAndReportsTheirMedian() throws {
    let r = try runSubq(["bench-sparse", "--n", "1K,2K", "--grid", "24x40", "--kernel", "5", "--heads", "2", "--dim", "16",
                         "--window", "64", "--repeat", "2", "--flash-repeat", "3", "--threads", "1", "--json"])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    let report = try JSONDecoder().decode(Report.self, from: Data(r.stdout.utf8))
    let c = try #require(report.comparison)
    #expect(c.grid == [24, 40] && c.kernel == 5 && c.n == 960)
    #expect(c.checkError < 1e-5)
    // One ratio per round; the reported ratio is their median (3 rounds: the middle one).
    #expect(c.roundRatios.count == 3)
    #expect(c.roundRatios.allSatisfy { $0 > 0 && $0.isFinite })
    #expect(c.ratio == c.roundRatios.sorted()[1])
    // The rates follow from the times: 4·D FLOPs per attended pair (each of the 960 queries of
    // 2 heads sees 5×5 keys) and 4·N²·D·H for flash.
    let pairs = 2.0 * 960 * 25
    #expect(abs(c.neighborhoodGflops - pairs * 4 * 16 / c.neighborhoodSeconds / 1e9) <= 1e-9 * c.neighborhoodGflops)
    #expect(abs(c.flashGflops - 4 * 960 * 960 * 16 * 2 / c.flashSeconds / 1e9) <= 1e-9 * c.flashGflops)
    // Scaling: five methods at two lengths, growth from the second length on.
    #expect(report.scaling.count == 10)
    for row in report.scaling {
      #expect(row.medianSeconds > 0)
      #expect((row.growth == nil) == (row.n == 1024), "\(row.method) N=\(row.n)")
    }
    #expect(report.scaling.filter { $0.method == "neighborhood" }.allSatisfy { ($0.checkError ?? 1) < 1e-5 })

    let plain = try runSubq(["bench-sparse", "--n", "1K", "--grid", "16x16", "--kernel", "3", "--heads", "1", "--dim", "8",
                             "--window", "32", "--repeat", "1", "--flash-repeat", "2", "--threads", "1"])
    #expect(plain.status == 0, "stderr: \(plain.stderr)")
    #expect(plain.stdout.contains("median of 2 alternating rounds"), "\(plain.stdout)")
  }

  @Test func badOptionsExitTwo() throws {
    for (args, name) in [(["--repeat", "0"], "--repeat"), (["--flash-repeat", "0"], "--flash-repeat"),
                         (["--grid", "4x4"], "--grid"), (["--threads", "0"], "--threads"), (["--n", "0"], "--n")] {
      let r = try runSubq(["bench-sparse"] + args)
      #expect(r.status == 2, "\(args): \(r.stderr)")
      #expect(r.stderr.contains(name) && r.stderr.split(separator: "\n").count == 1, "\(args): \(r.stderr)")
    }
  }
}
