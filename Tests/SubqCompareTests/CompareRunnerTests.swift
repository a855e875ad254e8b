import Foundation
import SubqBench
import Subquadratic
import SubqTestSupport
import Testing

/// The comparison on tiny sizes, with test methods whose figures are known in advance.
@Suite struct CompareRunnerTests {
  static func method<M: AttentionMethod>(_ t: M.Type, _ params: [String: String] = [:]) -> any AttentionMethod {
    try! M(parameters: MethodParameters(params))
  }

  /// gaussian and needles, N = 64 and 150, both causal modes; H = 4 over 2 KV heads, D = 16.
  static func config(seed: UInt64) -> CompareConfig {
    var c = CompareConfig(methods: [
      method(FlashAttention.self), method(NaiveAttention.self), method(TopKTestMethod.self, ["k": "8"]),
      method(WindowTestMethod.self, ["w": "16"]), method(PickyTestMethod.self), method(BrokenTestMethod.self),
    ])
    c.source = .synthetic([.gaussian, .needles])
    c.lengths = [64, 150]
    c.heads = 4
    c.kvHeads = 2
    c.dim = 16
    c.sampleRows = 24
    c.topK = 8
    c.needlesPerHead = 3
    c.repeats = 2
    c.budgetSeconds = 0.05
    c.seed = seed
    c.mixers = [RunningMeanMixer()]
    return c
  }

  static let shared: (report: CompareReport, events: [CompareEvent], seed: UInt64) = {
    let seed = testSeed()
    var events: [CompareEvent] = []
    let runner = try! CompareRunner(config: config(seed: seed))
    let report = runner.run { events.append($0) }
    return (report, events, seed)
  }()

  func result(_ r: CompareReport, _ method: String, _ problem: String) throws -> CompareResult {
    try #require(r.results.first { $0.method == method && $0.problem == problem }, "\(method) on \(problem)")
  }

  @Test func everyMethodOnEveryProblem() throws {
    let (r, events, seed) = Self.shared
    #expect(r.status == "complete")
    #expect(r.schema == "subq.compare/1")
    #expect(r.problems.count == 8, "seed \(seed)")
    #expect(r.results.count == 8 * 6)
    #expect(r.methods.map(\.name) == ["flash", "naive", "test-topk", "test-window", "test-picky", "test-broken"])
    #expect(r.methods.filter(\.baseline).map(\.name) == ["flash"])
    #expect(r.methods.filter(\.keySelecting).map(\.name) == ["test-topk", "test-window"])
    // One started and one finished event per step, numbered 1...total.
    let finished = events.compactMap { if case .finished(let s, _) = $0 { return s.index } else { return nil } }
    #expect(finished == Array(1...(8 * 6 + 2)))
    for x in r.results where x.status != .notApplicable {
      // Speedup is the baseline's median over the method's, on the same problem; the median
      // leaves out the first (probed) run only when there are at least 3.
      let flash = try result(r, "flash", x.problem)
      let median = try #require(x.medianSeconds)
      #expect(abs(x.speedup! - flash.medianSeconds! / median) <= 1e-12 * x.speedup!, "\(x.method) on \(x.problem)")
      let sorted = x.samples.sorted()
      #expect(x.samples.count < 3 ? median == (sorted.count == 1 ? sorted[0] : (sorted[0] + sorted[1]) / 2) : true)
      #expect(x.minSeconds! >= sorted[0] && median >= x.minSeconds!)
    }
    for p in r.problems {
      #expect(p.baselineCheckError.map { $0 <= 1e-5 } == true, "\(p.id): flash vs Float64 \(String(describing: p.baselineCheckError)) seed \(seed)")
      #expect(p.mass90Fraction > 0 && p.mass90Fraction <= 1)
      #expect(p.sampledRows == 24)
    }
  }

  @Test func baselineAndExactMethods() throws {
    let (r, _, seed) = Self.shared
    for p in r.problems {
      let f = try result(r, "flash", p.id)
      #expect(f.status == .ok && f.speedup == 1 && f.relativeError == 0 && f.worstRowError == 0)
      #expect(f.gflops.map { $0 > 0 } == true)
      #expect(f.samples.count >= 1 && f.samples.count <= 2)
      let n = try result(r, "naive", p.id)
      #expect(n.status == .ok)
      // Float32 flash against the Float64 reference rounded to Float32: ≤ 1e-5 as in the flash tests.
      #expect(n.relativeError.map { $0 <= 1e-5 } == true, "\(p.id) seed \(seed)")
      #expect(n.gflops != nil && n.extraBytes != nil)
      #expect(n.topKRecall == nil && n.needleKeyRecall == nil)
    }
  }

  @Test func keySelectingMethodsRecall() throws {
    let (r, _, seed) = Self.shared
    for p in r.problems {
      let t = try result(r, "test-topk", p.id)
      #expect(t.status == .ok)
      // It selects exactly the true top-8, so recall is 1 by construction.
      #expect(t.topKRecall == 1, "\(p.id) seed \(seed)")
      #expect(t.gflops == nil)  // approximate: no exact-attention GFLOP/s
      let w = try result(r, "test-window", p.id)
      #expect(w.status == .ok)
      if p.kind == "gaussian" {
        // 8 of 64+ keys carry Gaussian attention only partly: a real error.
        #expect(t.relativeError.map { $0 > 1e-2 } == true, "\(p.id) seed \(seed)")
        // A 16-key window holds few of the true top-8 of 64 or 150 keys.
        #expect(w.topKRecall.map { $0 < 0.9 } == true, "\(p.id): window recall \(String(describing: w.topKRecall)) seed \(seed)")
        #expect(t.needleRecall == nil)
      } else {
        #expect(p.needlesPlanted == 12 && p.needlesValid == 12, "\(p.id) seed \(seed)")
        #expect(t.needleRecall == 1 && t.needleKeyRecall == 1, "\(p.id) seed \(seed)")
        // Needles sit at least a quarter of the sequence before their query: a 16-key window at
        // N = 64 and 150 sees none of them.
        #expect(w.needleRecall == 0 && w.needleKeyRecall == 0, "\(p.id) seed \(seed)")
      }
    }
  }

  @Test func methodsThatCannotRunShowNotApplicable() throws {
    let (r, _, _) = Self.shared
    for p in r.problems {
      let m = try result(r, "test-picky", p.id)
      if p.causal {
        #expect(m.status == .notApplicable && m.reason?.contains("causal") == true, "\(p.id): \(String(describing: m.reason))")
      } else if p.length > 100 {
        #expect(m.status == .notApplicable && m.reason?.contains("at most 100") == true, "\(p.id): \(String(describing: m.reason))")
      } else {
        #expect(m.status == .ok && m.relativeError.map { $0 <= 1e-6 } == true)
      }
      #expect(m.status == .ok || (m.medianSeconds == nil && m.samples.isEmpty))
      let b = try result(r, "test-broken", p.id)
      #expect(b.status == .invalid && b.reason?.contains("NaN") == true && b.relativeError == nil)
    }
  }

  @Test func speedOnlyTable() throws {
    let (r, _, seed) = Self.shared
    #expect(r.speedOnly.map(\.length) == [64, 150])
    for x in r.speedOnly {
      #expect(x.mixer == "test-running-mean" && x.causal && x.status == .ok)
      let flash = try result(r, "flash", "gaussian-\(x.length)-causal")
      #expect(x.flashMedianSeconds == flash.medianSeconds)
      let speedup = try #require(x.speedupVsFlash)
      #expect(abs(speedup - flash.medianSeconds! / x.medianSeconds!) <= 1e-12 * speedup, "seed \(seed)")
      #expect(x.gflops != nil)
    }
    #expect(r.scaling.contains { $0.method == "flash" && $0.kind == "gaussian" && $0.lengths == [64, 150] })
  }

  /// A window as long as the sequence is exact attention: error at rounding level, full recall.
  @Test func fullWindowIsExact() throws {
    var c = Self.config(seed: testSeed())
    c.methods = [Self.method(WindowTestMethod.self, ["w": "200"])]
    c.lengths = [150]
    c.mixers = []
    let r = try CompareRunner(config: c).run()
    #expect(r.methods.map(\.name) == ["flash", "test-window"])  // flash added as the baseline
    for p in r.problems {
      let w = try result(r, "test-window", p.id)
      #expect(w.relativeError.map { $0 <= 1e-6 } == true && w.topKRecall == 1)
      if p.kind == "needles" { #expect(w.needleRecall == 1 && w.needleKeyRecall == 1) }
    }
  }

  /// Mixers that reject a size are n/a; flash's time for a length the suite did not run is measured.
  @Test func speedOnlyNotApplicable() throws {
    var c = Self.config(seed: 5)
    c.methods = [Self.method(FlashAttention.self)]
    c.source = .synthetic([.structured])
    c.lengths = [4100]
    c.heads = 1
    c.kvHeads = 1
    c.causalModes = [false]
    c.sampleRows = 4
    let r = try CompareRunner(config: c).run()
    #expect(r.speedOnly.count == 1)
    #expect(r.speedOnly[0].status == .notApplicable && r.speedOnly[0].reason?.contains("at most 4096") == true)
    #expect(r.speedOnly[0].flashMedianSeconds != nil)
  }

  /// Cancelling stops at the next boundary and reports only what finished.
  @Test func cancellationKeepsFinishedMeasurements() throws {
    let cancel = CompareCancellation()
    let runner = try CompareRunner(config: Self.config(seed: 1), cancellation: cancel)
    var finished = 0
    let r = runner.run { e in
      if case .finished = e {
        finished += 1
        if finished == 3 { cancel.cancel() }
      }
    }
    #expect(r.status == "interrupted")
    #expect(r.results.count == 3)
    #expect(r.speedOnly.isEmpty)
  }

  @Test func badSettingsAreRejected() {
    func rejects(_ change: (inout CompareConfig) -> Void, _ text: String) {
      var c = Self.config(seed: 1)
      change(&c)
      #expect(throws: SubqError.self) { try CompareRunner(config: c) }
      do { _ = try CompareRunner(config: c) } catch { #expect(error.description.contains(text), "\(error)") }
    }
    rejects({ $0.kvHeads = 3 }, "multiple of key/value heads")
    rejects({ $0.lengths = [64, 64] }, "lengths repeat")
    rejects({ $0.lengths = [0] }, "at least 1")
    rejects({ $0.repeats = 0 }, "--repeats")
    rejects({ $0.budgetSeconds = 0 }, "--budget")
    rejects({ $0.source = .synthetic([]) }, "data kind")
    rejects({ $0.methods.append(Self.method(NaiveAttention.self)) }, "listed twice")
  }

  /// naive is skipped where its N×N matrices would pass the limit, with the reason.
  @Test func naiveLimit() throws {
    var c = Self.config(seed: 2)
    c.methods = [Self.method(NaiveAttention.self)]
    c.source = .synthetic([.gaussian])
    c.lengths = [150]
    c.causalModes = [false]
    c.mixers = []
    c.naiveMaxBytes = 100_000  // < 150·150·8
    let r = try CompareRunner(config: c).run()
    let n = try result(r, "naive", "gaussian-150-noncausal")
    #expect(n.status == .notApplicable && n.reason?.contains("limit") == true)
  }
}
