import Foundation
import Subquadratic
import SubqTestSupport
import Testing

/// `subq compare` end to end on tiny sizes.
@Suite struct CompareCLITests {
  let dir = temporaryDirectory("subq-compare")

  func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

  func json(_ path: String) throws -> [String: Any] {
    let data = try Data(contentsOf: URL(fileURLWithPath: path))
    return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
  }

  @Test func tinyRunWritesEveryOutput() throws {
    let r = try runSubq(["compare", "--lengths", "64,96", "--heads", "2", "--dim", "16", "--methods", "flash,naive", "--mixers", "none", "--sample-rows", "8",
                         "--budget", "0.01", "--json", path("r.json"), "--csv", path("r.csv"), "--svg", path("svg"),
                         "--html", path("r.html")])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    for kind in ["gaussian", "structured", "needles"] {
      for mode in ["non-causal", "causal"] { #expect(r.stdout.contains("\(kind) · N=64 · \(mode)")) }
    }
    // Plain progress lines (stderr is a pipe), one per measurement: 3 kinds × 2 lengths × 2 modes × 2 methods.
    #expect(r.stderr.split(separator: "\n").filter { $0.hasPrefix("[") }.count == 24)
    let j = try json(path("r.json"))
    #expect(j["schema"] as? String == "subq.compare/1")
    #expect(j["status"] as? String == "complete")
    #expect((j["results"] as? [Any])?.count == 24)
    let meta = try #require(j["metadata"] as? [String: Any])
    #expect((meta["command"] as? [String])?.contains("--methods") == true)
    let svgs = try FileManager.default.contentsOfDirectory(atPath: path("svg")).sorted()
    #expect(svgs.count == 12 && svgs.contains("time-needles-causal.svg") && svgs.contains("pareto-gaussian-noncausal.svg"))
    let csv = try String(contentsOfFile: path("r.csv"), encoding: .utf8)
    #expect(csv.split(separator: "\n").count == 25)
    let html = try String(contentsOfFile: path("r.html"), encoding: .utf8)
    #expect(html.contains("<svg") && !html.contains("http"))
    // No temporary files left next to the outputs.
    #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasPrefix(".") }.isEmpty)
  }

  /// Every registered attention method appears in the comparison (measured or n/a with a reason).
  @Test func everyRegisteredMethodAppears() throws {
    let r = try runSubq(["compare", "--methods", "all", "--mixers", "none", "--lengths", "64", "--kinds", "gaussian",
                         "--heads", "2", "--dim", "16", "--budget", "0.01", "--sample-rows", "4", "--json", path("all.json")])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    let results = try #require(try json(path("all.json"))["results"] as? [[String: Any]])
    let seen = Set(results.compactMap { $0["method"] as? String })
    for m in AttentionMethods.all.map({ $0.info.name }) {
      #expect(seen.contains(m), "\(m) missing from compare")
    }
  }

  /// Extra memory in a process of its own (tests in this process would disturb the RSS): naive
  /// holds an N×N Float64 matrix per worker, flash a few tiles. The second problem runs after the
  /// first freed its memory, which a peak measurement must still see.
  @Test func extraMemoryIsMeasuredEveryTime() throws {
    let n = 512
    let r = try runSubq(["compare", "--methods", "flash,naive", "--lengths", "\(n)", "--heads", "1", "--dim", "16", "--kinds", "gaussian,structured",
                         "--budget", "0.01", "--sample-rows", "4", "--threads", "1", "--json", path("m.json")])
    #expect(r.status == 0, "stderr: \(r.stderr)")
    let results = try #require(try json(path("m.json"))["results"] as? [[String: Any]])
    #expect(results.count == 8)
    for x in results {
      let extra = try #require(x["extraBytes"] as? Double, "\(x)")
      if x["method"] as? String == "naive" {
        // One worker: the 512×512 Float64 scores (2 MiB), less the kernel's counter slack.
        #expect(extra >= Double(n * n * 8) * 0.85, "naive extra \(extra) on \(x["problem"]!)")
      } else {
        // Flash keeps O(block) tiles: far below one N×N Float32 matrix (1 MiB).
        #expect(extra < Double(n * n * 4), "flash extra \(extra) on \(x["problem"]!)")
      }
    }
  }

  /// Bad `--data` files: exactly the error `subq attention` gives for the same files, status 2,
  /// one line, and no output file.
  @Test func badDataGivesTheSameErrorsAsAttention() throws {
    func make(_ name: String, q: Tensor?, k: Tensor?, v: Tensor?) throws -> String {
      let d = dir.appendingPathComponent(name)
      try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
      for (t, f) in [(q, "q.npy"), (k, "k.npy"), (v, "v.npy")] {
        if let t { try NPY.write(t, to: d.appendingPathComponent(f).path) }
      }
      return d.path
    }
    let q = Tensor.randomNormal(shape: [2, 8, 16], seed: 1), k = Tensor.randomNormal(shape: [2, 8, 16], seed: 2)
    var nanK = k
    nanK[flat: 21] = .nan
    var cases = [
      try make("headdim", q: q, k: Tensor.randomNormal(shape: [2, 8, 15], seed: 2), v: k),
      try make("heads", q: q, k: Tensor.randomNormal(shape: [3, 8, 16], seed: 2), v: Tensor.randomNormal(shape: [3, 8, 16], seed: 3)),
      try make("nan", q: q, k: nanK, v: k),
      try make("empty", q: Tensor(shape: [2, 0, 16]), k: k, v: k),
      try make("vlength", q: q, k: k, v: Tensor.randomNormal(shape: [2, 9, 16], seed: 3)),
      try make("rank5", q: Tensor.randomNormal(shape: [1, 1, 2, 8, 16], seed: 1), k: k, v: k),
      try make("missing", q: q, k: nil, v: k),
    ]
    let fortran = try make("fortran", q: nil, k: k, v: k)
    try writeRawNPY(URL(fileURLWithPath: fortran).appendingPathComponent("q.npy"),
                    header: "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 8, 16), }", payload: Data(count: 2 * 8 * 16 * 4))
    let garbage = try make("garbage", q: q, k: k, v: nil)
    try Data("not an npy file".utf8).write(to: URL(fileURLWithPath: garbage).appendingPathComponent("v.npy"))
    cases += [fortran, garbage]
    for d in cases {
      let a = try runSubq(["attention", "--q", "\(d)/q.npy", "--k", "\(d)/k.npy", "--v", "\(d)/v.npy", "--out", path("o.npy")])
      let c = try runSubq(["compare", "--data", d, "--json", path("c.json"), "--html", path("c.html")])
      #expect(a.status == 2 && c.status == 2, "\(d): attention \(a.status), compare \(c.status): \(c.stderr)")
      #expect(c.stderr.split(separator: "\n").count == 1, "\(d): \(c.stderr)")
      #expect(c.stderr == a.stderr, "\(d):\n attention: \(a.stderr) compare:   \(c.stderr)")
      for f in ["o.npy", "c.json", "c.html"] { #expect(!FileManager.default.fileExists(atPath: path(f)), "\(d): \(f) left behind") }
    }
  }

  @Test func userDataRunsWholeAndAsPrefixes() throws {
    let d = dir.appendingPathComponent("good")
    try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
    // [N, H, D] arrays in bshd layout, grouped heads.
    try NPY.write(Tensor.randomNormal(shape: [200, 4, 16], seed: 1), to: d.appendingPathComponent("q.npy").path)
    try NPY.write(Tensor.randomNormal(shape: [200, 2, 16], seed: 2), to: d.appendingPathComponent("k.npy").path)
    try NPY.write(Tensor.randomNormal(shape: [200, 2, 16], seed: 3), to: d.appendingPathComponent("v.npy").path)
    let whole = try runSubq(["compare", "--data", d.path, "--layout", "bshd", "--causal", "--budget", "0.01", "--json", path("w.json")])
    #expect(whole.status == 0, "stderr: \(whole.stderr)")
    let w = try json(path("w.json"))
    let problems = try #require(w["problems"] as? [[String: Any]])
    #expect(problems.map { $0["id"] as? String } == ["file-200-causal"])
    #expect(problems[0]["heads"] as? Int == 4 && problems[0]["kvHeads"] as? Int == 2)
    #expect((w["suite"] as? [String: Any])?["dataDirectory"] as? String == d.path)
    let pre = try runSubq(["compare", "--data", d.path, "--layout", "bshd", "--lengths", "50,100", "--budget", "0.01", "--json", path("p.json")])
    #expect(pre.status == 0, "stderr: \(pre.stderr)")
    let p = try #require(try json(path("p.json"))["problems"] as? [[String: Any]])
    #expect(p.compactMap { $0["id"] as? String } == ["file-50-noncausal", "file-50-causal", "file-100-noncausal", "file-100-causal"])
    let long = try runSubq(["compare", "--data", d.path, "--layout", "bshd", "--lengths", "300"])
    #expect(long.status == 2 && long.stderr.contains("longer than the --data arrays"))
  }

  /// Option errors: status 2, one line naming the option, no output file.
  @Test func badOptionsFailBeforeRunning() throws {
    let cases: [(args: [String], message: String)] = [
      (["--causal", "--non-causal"], "at most one"),
      (["--kinds", "gaussian,zipf"], "unknown data kind"),
      (["--methods", "flash,nonsense"], "unknown method"),
      (["--methods", ""], "empty list"),
      (["--param", "block-k=8"], "method.name=value"),
      (["--param", "flash.bogus=1"], "unknown parameter"),
      (["--param", "flash.block-k=0"], "block-k"),
      (["--methods", "flash", "--param", "naive.x=1"], "not being compared"),
      (["--lengths", "1K,0"], "--lengths"),
      (["--lengths", "64,64"], "repeat"),
      (["--heads", "6", "--kv-heads", "4"], "multiple of key/value heads"),
      (["--repeats", "0"], "--repeats"),
      (["--budget", "-1"], "--budget"),
      (["--top-k", "0"], "--top-k"),
      (["--data", "/nonexistent-dir"], "no such directory"),
      (["--data", "/tmp", "--heads", "4"], "--heads"),
      (["--data", "/tmp", "--full"], "--full"),
      (["--layout", "bshd"], "--data only"),
      (["--mixers", "mamba"], "mixers"),
      (["--json", "/nonexistent-dir/r.json"], "no such directory"),
      (["--svg", "/nonexistent-dir/svg"], "cannot be created"),
    ]
    for c in cases {
      let out = path("out-\(UUID().uuidString).json")
      let r = try runSubq(["compare"] + c.args + ["--lengths", "64", "--json", out].filter { _ in !c.args.contains("--lengths") && !c.args.contains("--json") })
      #expect(r.status == 2, "\(c.args): status \(r.status), stderr \(r.stderr)")
      #expect(r.stderr.split(separator: "\n").count == 1, "\(c.args): \(r.stderr)")
      #expect(r.stderr.contains(c.message), "\(c.args): stderr lacks '\(c.message)': \(r.stderr)")
      #expect(!FileManager.default.fileExists(atPath: out))
    }
  }

  /// Ctrl-C: exit status 130 at once (the measurement in progress is abandoned, not awaited), the
  /// finished measurements written, the report marked interrupted.
  @Test func interruptWritesWhatFinished() throws {
    let p = Process()
    p.executableURL = subqExecutable()
    // Steps: flash and naive at N = 128 (non-causal, causal), then flash and naive at 2048. naive at
    // 2048 with 8 heads takes many seconds (14 s on a 2-core machine): the interrupt lands in it.
    p.arguments = ["compare", "--methods", "flash,naive", "--mixers", "none", "--kinds", "gaussian", "--lengths", "128,2048", "--budget", "0.01",
                   "--json", path("i.json"), "--html", path("i.html"), "--svg", path("isvg")]
    let err = Pipe()
    p.standardError = err
    _ = FileManager.default.createFile(atPath: path("i.out"), contents: nil)
    p.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: path("i.out")))
    try p.run()
    var seen = ""
    let reader = err.fileHandleForReading
    while !seen.contains("[5/8] flash") {
      let chunk = reader.availableData
      if chunk.isEmpty { break }
      seen += String(decoding: chunk, as: UTF8.self)
    }
    let sent = Date()
    p.interrupt()
    seen += String(decoding: reader.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    let waited = Date().timeIntervalSince(sent)
    #expect(p.terminationStatus == 130, "stderr: \(seen)")
    #expect(waited < 3, "exit took \(waited) s after Ctrl-C")
    #expect(seen.contains("interrupted"))
    let j = try json(path("i.json"))
    #expect(j["status"] as? String == "interrupted")
    let results = try #require(j["results"] as? [[String: Any]])
    #expect(results.count == 5, "\(results.count) results")
    #expect(!results.contains { $0["method"] as? String == "naive" && ($0["problem"] as? String)?.hasPrefix("gaussian-2048") == true })
    #expect(FileManager.default.fileExists(atPath: path("i.html")))
    // Non-causal has two lengths (time and error plots), causal only N = 128 (error plot).
    #expect(try FileManager.default.contentsOfDirectory(atPath: path("isvg")).sorted()
      == ["pareto-gaussian-causal.svg", "pareto-gaussian-noncausal.svg", "time-gaussian-noncausal.svg"])
    let stdout = try String(contentsOfFile: path("i.out"), encoding: .utf8)
    #expect(stdout.contains("INTERRUPTED"))
  }
}
