import Foundation
import SubqTestSupport
import Testing

/// `subq peak` through the CLI: the report's fields and `--sustain`'s slices (the rates themselves
/// are this machine's and not checked beyond being positive).
@Suite struct PeakCLITests {
  @Test func sustainedRateIsReportedPerSlice() throws {
    let r = try runSubq(["peak", "--threads", "1", "--sustain", "0.3", "--json"])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    struct Report: Decodable {
      struct Sustained: Decodable { var seconds: Double; var slices: [Double] }
      var flopsOneThread: Double
      var flopsAllThreads: Double
      var threads: Int
      var copyBandwidth: Double
      var sustained: Sustained?
    }
    let p = try JSONDecoder().decode(Report.self, from: Data(r.stdout.utf8))
    #expect(p.threads == 1 && p.flopsOneThread > 0 && p.flopsAllThreads > 0 && p.copyBandwidth > 0)
    #expect(p.sustained?.seconds == 0.3)
    #expect(p.sustained?.slices.count == 3)
    #expect(p.sustained?.slices.allSatisfy { $0 > 0 && $0.isFinite } == true)

    let plain = try runSubq(["peak", "--threads", "1"])
    #expect(plain.status == 0 && !plain.stdout.contains("held for"))
  }

  @Test func badOptionsExitTwo() throws {
    for (args, name) in [(["--sustain", "0"], "--sustain"), (["--sustain", "1000"], "--sustain"), (["--threads", "0"], "--threads")] {
      let r = try runSubq(["peak"] + args)
      #expect(r.status == 2, "\(args): \(r.stderr)")
      #expect(r.stderr.contains(name) && r.stderr.split(separator: "\n").count == 1, "\(args): \(r.stderr)")
    }
  }
}
