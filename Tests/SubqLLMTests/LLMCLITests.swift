import Foundation
import Subquadratic
import SubqTestSupport
import Testing

/// `subq generate`, `perplexity` and `needle` on the tiny model.
@Suite(.serialized)
struct LLMCLITests {
  @Test func generateStreamsAndReports() throws {
    let (_, url, dir) = try writeTinyModel(seed: testSeed(21))
    defer { try? FileManager.default.removeItem(at: dir) }
    let r = try runSubq(["generate", "--model", url.path, "--prompt", "the low", "--max-tokens", "12", "--threads", "2"])
    #expect(r.status == 0, "\(r.stderr)")
    // 12 tokens: the first comes from the prefill, 11 from decode steps — unless the random tiny
    // model samples its end-of-text token first, which the report must then say.
    #expect(r.stderr.contains("prefill: 4 tokens"), "\(r.stderr)")
    #expect(r.stderr.contains("decode:  11 tokens") && r.stderr.contains("stopped: max tokens")
              || r.stderr.contains("stopped: end of text"), "\(r.stderr)")
    // The context is prompt + max tokens = 16 positions: 6 pages of 3.
    let paged = try runSubq(["generate", "--model", url.path, "--prompt", "the low", "--max-tokens", "12", "--threads", "2", "--kv-page-size", "3"])
    #expect(paged.status == 0 && paged.stderr.contains("(6 pages of 3 positions)"), "\(paged.stderr)")
    #expect(paged.stdout == r.stdout, "the page size changed the greedy text")
    let sampled = try runSubq(["generate", "--model", url.path, "--prompt", "the low", "--max-tokens", "12", "--temperature", "0.8",
                               "--seed", "3", "--attention", "naive", "--quiet"])
    #expect(sampled.status == 0 && sampled.stderr.isEmpty, "\(sampled.stderr)")
  }

  @Test func perplexityComparesMethodsAgainstExact() throws {
    let (_, url, dir) = try writeTinyModel(seed: testSeed(22))
    defer { try? FileManager.default.removeItem(at: dir) }
    let text = dir.appendingPathComponent("t.txt")
    try String(repeating: "the lower ring was on the sand. ", count: 12).write(to: text, atomically: true, encoding: .utf8)
    let r = try runSubq(["perplexity", "--model", url.path, "--text", text.path, "--context", "128", "--attention", "naive,flash"])
    #expect(r.status == 0, "\(r.stderr)")
    let lines = r.stdout.split(separator: "\n").map(String.init)
    let flash = try #require(lines.first { $0.hasPrefix("flash ") }), naive = try #require(lines.first { $0.hasPrefix("naive ") })
    #expect(lines.firstIndex(of: flash)! < lines.firstIndex(of: naive)!, "exact first")
    // naive and flash are both exact: perplexities equal to Float32 rounding (relative 1e-5).
    let pf = try #require(Double(flash.split(separator: " ")[1])), pn = try #require(Double(naive.split(separator: " ")[1]))
    #expect(abs(pf - pn) / pf < 1e-5, "\(flash) / \(naive)")
  }

  @Test func needlePrintsAGridPerMethod() throws {
    let (_, url, dir) = try writeTinyModel(seed: testSeed(23))
    defer { try? FileManager.default.removeItem(at: dir) }
    let r = try runSubq(["needle", "--model", url.path, "--context", "400,500", "--depths", "0,1", "--attention", "flash,naive"])
    #expect(r.status == 0, "\(r.stderr)")
    #expect(r.stdout.contains("method flash") && r.stdout.contains("method naive"))
    #expect(r.stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { $0.hasPrefix("400 ") || $0.hasPrefix("500 ") }.count == 4, "\(r.stdout)")
  }

  @Test func errorsAreOneLineWithStatus2() throws {
    let (_, url, dir) = try writeTinyModel(seed: testSeed(24))
    defer { try? FileManager.default.removeItem(at: dir) }
    let text = dir.appendingPathComponent("t.txt")
    try "some text".write(to: text, atomically: true, encoding: .utf8)
    let cases: [([String], String)] = [
      (["generate", "--model", dir.appendingPathComponent("none.gguf").path, "--prompt", "x"], "no such file"),
      (["generate", "--model", url.path, "--prompt", "x", "--attention", "nope"], "unknown method"),
      (["generate", "--model", url.path, "--prompt", "x", "--param", "hyper.bucket=3"], "--param"),
      (["generate", "--model", url.path, "--prompt", "x", "--param", "block-q=7"], "block-q"),
      (["generate", "--model", url.path, "--prompt", "x", "--temperature", "-1"], "temperature"),
      (["generate", "--model", url.path, "--prompt", "x", "--kv-page-size", "0"], "--kv-page-size"),
      (["perplexity", "--model", url.path, "--text", url.path + ".missing", "--context", "64"], "no such file"),
      (["perplexity", "--model", url.path, "--text", text.path, "--context", "100000"], "--context"),
      (["needle", "--model", url.path, "--context", "64", "--depths", "0.5"], "too short"),
      (["needle", "--model", url.path, "--context", "400", "--depths", "1.5"], "--depths"),
    ]
    for (args, text) in cases {
      let r = try runSubq(args)
      #expect(r.status == 2, "\(args): \(r.stderr)")
      #expect(r.stderr.hasPrefix("subq: error:") && r.stderr.split(separator: "\n").count == 1 && r.stderr.contains(text), "\(args): \(r.stderr)")
    }
  }
}
