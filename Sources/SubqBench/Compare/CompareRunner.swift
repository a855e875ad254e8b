import Foundation
import Synchronization
import SubqAttention
import SubqCore

/// A flag that stops a comparison: set it (from any thread) and the runner abandons the current
/// measurement at its next run boundary and finishes with what it has.
public final class CompareCancellation: Sendable {
  private let flag = Atomic<Bool>(false)
  public init() {}
  public func cancel() { flag.store(true, ordering: .relaxed) }
  public var isCancelled: Bool { flag.load(ordering: .relaxed) }
}

/// One unit of progress: a method (or mixer) on a problem.
public struct CompareStep: Sendable, Equatable {
  /// 1-based position and total.
  public var index: Int
  public var total: Int
  /// Method or mixer name.
  public var method: String
  /// Data kind (`gaussian`, …, `file`, or `speed-only`).
  public var kind: String
  public var length: Int
  public var causal: Bool
  /// Relative cost used for the ETA (∝ visible query/key pairs).
  public var weight: Double

  /// "structured N=16K causal".
  public var problemLabel: String { "\(kind) N=\(formatLength(length)) \(causal ? "causal" : "non-causal")" }
}

/// What the runner reports while it works.
public enum CompareEvent: Sendable {
  /// A step starts.
  case started(CompareStep)
  /// A step finished with a one-line summary.
  case finished(CompareStep, summary: String)
}

/// Collects finished measurements; safe to read from any thread (a Ctrl-C handler writes a
/// report from a snapshot while the runner may still be working).
public final class CompareRecorder: Sendable {
  struct State {
    var methods: [CompareMethodRecord] = []
    var problems: [CompareProblemRecord] = []
    var results: [CompareResult] = []
    var speedOnly: [SpeedOnlyResult] = []
  }
  private let state = Mutex(State())
  let suite: CompareSuiteRecord
  let seed: UInt64
  let threads: Int
  let command: [String]
  let started: Double
  let startedAt: String

  init(suite: CompareSuiteRecord, seed: UInt64, threads: Int, command: [String]) {
    self.suite = suite
    self.seed = seed
    self.threads = threads
    self.command = command
    started = monotonicSeconds()
    let f = ISO8601DateFormatter()
    f.timeZone = TimeZone(identifier: "UTC")
    startedAt = f.string(from: Date())
  }

  func setMethods(_ m: [CompareMethodRecord]) { state.withLock { $0.methods = m } }
  func add(_ p: CompareProblemRecord) { state.withLock { $0.problems.append(p) } }
  func add(_ r: CompareResult) { state.withLock { $0.results.append(r) } }
  func add(_ r: SpeedOnlyResult) { state.withLock { $0.speedOnly.append(r) } }
  func results() -> [CompareResult] { state.withLock { $0.results } }
  func problems() -> [CompareProblemRecord] { state.withLock { $0.problems } }

  /// The report of everything finished so far.
  public func snapshot(status: String) -> CompareReport {
    let s = state.withLock { $0 }
    let meta = CompareMetadata(threads: threads, seed: seed, startedAt: startedAt,
                               wallSeconds: monotonicSeconds() - started, command: command)
    return CompareReport(status: status, metadata: meta, suite: suite, methods: s.methods, problems: s.problems,
                         results: s.results, scaling: Self.scaling(s.results, s.problems), speedOnly: s.speedOnly)
  }

  static func scaling(_ results: [CompareResult], _ problems: [CompareProblemRecord]) -> [CompareScaling] {
    let byId = Dictionary(problems.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
    var groups: [String: (method: String, kind: String, causal: Bool, points: [(x: Double, y: Double)])] = [:]
    var order: [String] = []
    for r in results {
      guard let t = r.medianSeconds, let p = byId[r.problem] else { continue }
      let key = "\(r.method)|\(p.kind)|\(p.causal)"
      if groups[key] == nil { groups[key] = (r.method, p.kind, p.causal, []); order.append(key) }
      groups[key]!.points.append((Double(p.length), t))
    }
    return order.compactMap { key in
      let g = groups[key]!
      guard let slope = logLogSlope(g.points), slope.isFinite else { return nil }
      return CompareScaling(method: g.method, kind: g.kind, causal: g.causal,
                            lengths: g.points.map { Int($0.x) }.sorted(), exponent: slope)
    }
  }
}

/// Runs `subq compare`: every method on every problem, measured against exact flash.
///
/// For each problem (data kind × length × causal mode) it generates the inputs once, computes a
/// few sampled rows exactly in Float64 (true top-k keys, output rows, weight concentration), runs
/// the baseline, then each method: one probed run (memory, and the output the accuracy measures
/// use), then more timed runs while the measurement's time budget lasts. A method that throws is
/// recorded as n/a with the error's text; the run goes on.
public final class CompareRunner: Sendable {
  public let config: CompareConfig
  public let recorder: CompareRecorder
  public let cancellation: CompareCancellation
  /// The baseline (exact flash) and the other methods, in run order.
  let baseline: FlashAttention
  let others: [any AttentionMethod]

  /// - Throws: what ``CompareConfig/validate()`` throws.
  public init(config: CompareConfig, cancellation: CompareCancellation = CompareCancellation()) throws(SubqError) {
    try config.validate()
    self.config = config
    self.cancellation = cancellation
    if let i = config.methods.firstIndex(where: { $0 is FlashAttention }) {
      baseline = config.methods[i] as! FlashAttention
      others = config.methods.enumerated().filter { $0.offset != i }.map(\.element)
    } else {
      baseline = try FlashAttention()
      others = config.methods
    }
    let kinds: [String]
    var dataDirectory: String? = nil
    switch config.source {
    case .synthetic(let k): kinds = k.map(\.rawValue)
    case .files(let f): kinds = ["file"]; dataDirectory = f.directory
    }
    let isFiles = dataDirectory != nil
    let suite = CompareSuiteRecord(
      lengths: config.lengths, kinds: kinds, causal: config.causalModes, batch: isFiles ? Self.filesShape(config).b : config.batch,
      heads: isFiles ? Self.filesShape(config).h : config.heads, kvHeads: isFiles ? Self.filesShape(config).hkv : config.kvHeads,
      dim: isFiles ? Self.filesShape(config).d : config.dim, dataDirectory: dataDirectory, repeats: config.repeats,
      budgetSeconds: config.budgetSeconds, topK: config.topK, sampleRows: config.sampleRows, needlesPerHead: config.needlesPerHead)
    recorder = CompareRecorder(suite: suite, seed: config.seed, threads: config.threads, command: config.command)
    let all: [any AttentionMethod] = [baseline] + others
    recorder.setMethods(all.enumerated().map { index, m in
      let i = type(of: m).info
      return CompareMethodRecord(name: i.name, summary: i.summary, paper: i.paper, complexity: i.complexity, exact: i.isExact,
                                 keySelecting: m is any KeySelectingMethod, baseline: index == 0, parameters: m.parameterValues)
    })
  }

  static func filesShape(_ c: CompareConfig) -> (b: Int, h: Int, hkv: Int, d: Int) {
    guard case .files(let f) = c.source else { return (c.batch, c.heads, c.kvHeads, c.dim) }
    return (f.queries.shape[0], f.queries.shape[1], f.keys.shape[1], f.queries.shape[3])
  }

  /// Names of the baseline and the other methods, in run order.
  public var methodNames: [String] { ([baseline] + others).map { type(of: $0).info.name } }

  /// The (data, length) pairs, in run order.
  struct DataItem { var kind: String; var dataKind: DataKind?; var length: Int; var keyLength: Int }

  var dataItems: [DataItem] {
    switch config.source {
    case .synthetic(let kinds):
      return kinds.flatMap { k in config.lengths.sorted().map { DataItem(kind: k.rawValue, dataKind: k, length: $0, keyLength: $0) } }
    case .files(let f):
      if config.lengths.isEmpty { return [DataItem(kind: "file", dataKind: nil, length: f.queries.shape[2], keyLength: f.keys.shape[2])] }
      return config.lengths.sorted().map { DataItem(kind: "file", dataKind: nil, length: $0, keyLength: $0) }
    }
  }

  /// Speed-only lengths: the suite's lengths (or the files' query length).
  var mixerLengths: [Int] {
    if config.lengths.isEmpty, case .files(let f) = config.source { return [f.queries.shape[2]] }
    return config.lengths.sorted()
  }

  /// Every step, in run order (for progress and ETA).
  public func plan() -> [CompareStep] {
    var steps: [CompareStep] = []
    let names = methodNames
    for item in dataItems {
      for causal in config.causalModes {
        let w = Double(item.length) * Double(item.keyLength) * (causal ? 0.5 : 1)
        for name in names {
          steps.append(CompareStep(index: 0, total: 0, method: name, kind: item.kind, length: item.length, causal: causal, weight: w))
        }
      }
    }
    for m in config.mixers {
      for n in mixerLengths {
        steps.append(CompareStep(index: 0, total: 0, method: m.name, kind: "speed-only", length: n, causal: m.isCausal,
                                 weight: Double(n) * Double(n) * 0.25))
      }
    }
    for i in steps.indices {
      steps[i].index = i + 1
      steps[i].total = steps.count
    }
    return steps
  }

  /// Runs the comparison and returns the report (status `interrupted` when cancelled).
  public func run(events: (CompareEvent) -> Void = { _ in }) -> CompareReport {
    var steps = plan()[...]
    outer: for item in dataItems {
      if cancellation.isCancelled { break }
      let (q, k, v, needles) = inputs(item)
      for causal in config.causalModes {
        if cancellation.isCancelled { break outer }
        let count = methodNames.count
        let mine = Array(steps.prefix(count))
        steps = steps.dropFirst(count)
        runProblem(item: item, causal: causal, q: q, k: k, v: v, needles: needles, steps: mine, events: events)
      }
    }
    if !cancellation.isCancelled { runMixers(steps: Array(steps), events: events) }
    return recorder.snapshot(status: cancellation.isCancelled ? "interrupted" : "complete")
  }

  func inputs(_ item: DataItem) -> (Tensor, Tensor, Tensor, [ProblemData.Needle]) {
    switch config.source {
    case .synthetic:
      let kindIndex = UInt64(DataKind.allCases.firstIndex(of: item.dataKind!)!)
      let seed = config.seed &* 0x9E37_79B9_7F4A_7C15 &+ kindIndex &* 1_000_003 &+ UInt64(item.length)
      // Needles are placed before their queries, so the same data serves both causal modes.
      let d = ProblemData.make(kind: item.dataKind!, batch: config.batch, heads: config.heads, kvHeads: config.kvHeads,
                               queries: item.length, keys: item.keyLength, dim: config.dim, causal: true, seed: seed,
                               needleCount: config.needlesPerHead)
      return (d.queries, d.keys, d.values, d.needles)
    case .files(let f):
      if config.lengths.isEmpty { return (f.queries, f.keys, f.values, []) }
      let (q, k, v) = f.prefix(item.length)
      return (q, k, v, [])
    }
  }

  /// The outcome of timing one method.
  enum Measurement {
    case measured(output: Tensor, samples: [Double], extraBytes: Double?)
    case failed(String)
    case cancelled
  }

  /// One probed run, then timed runs while `repeats` and the budget allow.
  func measure(_ body: () throws(SubqError) -> Tensor, outputBytes: (Tensor) -> Double) -> Measurement {
    if cancellation.isCancelled { return .cancelled }
    let t0 = monotonicSeconds()
    let output: Tensor, growth: Int?
    do { (output, growth) = try MemoryProbe.measure(body) } catch { return .failed(error.description) }
    var samples = [monotonicSeconds() - t0]
    let extra = growth.map { max(0, Double($0) - outputBytes(output)) }
    var spent = samples[0]
    while samples.count < config.repeats && spent < config.budgetSeconds {
      if cancellation.isCancelled { return .cancelled }
      let t = monotonicSeconds()
      do { blackHole(try body()) } catch { return .failed(error.description) }
      samples.append(monotonicSeconds() - t)
      spent += samples.last!
    }
    if cancellation.isCancelled { return .cancelled }
    return .measured(output: output, samples: samples, extraBytes: extra)
  }

  /// The median of a measurement: the first (probed, coldest) run is left out when there are at
  /// least 3 runs.
  static func summarize(_ samples: [Double]) -> (median: Double, min: Double) {
    let timed = samples.count >= 3 ? Array(samples.dropFirst()) : samples
    return (median(timed), timed.min()!)
  }

  func runProblem(item: DataItem, causal: Bool, q: Tensor, k: Tensor, v: Tensor, needles: [ProblemData.Needle],
                  steps: [CompareStep], events: (CompareEvent) -> Void) {
    let id = "\(item.kind)-\(item.length)-\(causal ? "causal" : "noncausal")"
    let opts = AttentionOptions(causal: causal, threads: config.threads)
    let problem: AttentionProblem
    do {
      problem = try AttentionProblem.validate(op: "attention.flash", queries: q, keys: k, values: v, options: opts)
    } catch {
      // Inputs were validated up front; a failure here is a bug worth seeing, not hiding.
      preconditionFailure("compare: inputs failed validation after the up-front check: \(error)")
    }
    let rowSeed = config.seed &+ UInt64(item.length) &* 31 &+ (causal ? 7 : 0)
    let rows = CompareMetrics.sampleRows(count: config.sampleRows, batch: problem.batch, heads: problem.queryHeads,
                                         length: problem.queryLength, seed: rowSeed)
    let exact = ExactRows(problem: problem, queries: q, keys: k, values: v, rows: rows, k: config.topK)

    // The baseline first: its output is the reference of every error.
    var stepIterator = steps.makeIterator()
    let baseStep = stepIterator.next()!
    events(.started(baseStep))
    let base = measure({ () throws(SubqError) -> Tensor in
      try baseline.attention(queries: q, keys: k, values: v, options: opts).output
    }, outputBytes: { Double($0.count) * 4 })
    let reference: Tensor, baseSamples: [Double], baseExtra: Double?
    switch base {
    case .cancelled: return
    case .failed(let reason):
      // Without an exact output there is nothing to measure against; every method is n/a.
      recorder.add(CompareResult(method: "flash", problem: id, status: .notApplicable, reason: reason))
      events(.finished(baseStep, summary: "n/a: \(reason)"))
      for step in stepIterator {
        recorder.add(CompareResult(method: step.method, problem: id, status: .notApplicable, reason: "the baseline could not run: \(reason)"))
      }
      return
    case .measured(let o, let s, let e):
      reference = o
      baseSamples = s
      baseExtra = e
    }
    let groupSize = problem.queryHeads / problem.keyValueHeads
    let valid = needles.filter { CompareMetrics.needleFound(output: reference, values: v, needle: $0, groupSize: groupSize) }
    let mass = zip(exact.mass90Keys, exact.visibleCounts).filter { $0.1 > 0 }
    recorder.add(CompareProblemRecord(
      id: id, kind: item.kind, causal: causal, batch: problem.batch, heads: problem.queryHeads, kvHeads: problem.keyValueHeads,
      length: problem.queryLength, keyLength: problem.keyLength, dim: problem.headDim, valueDim: problem.valueDim,
      flops: problem.flops, needlesPlanted: needles.count, needlesValid: valid.count, sampledRows: rows.count,
      baselineCheckError: finite(exact.relativeError(of: reference)),
      mass90Fraction: finiteOr(median(mass.map { Double($0.0) / Double($0.1) }), 0),
      mass90Keys: finiteOr(median(mass.map { Double($0.0) }), 0)))
    let baseTimes = Self.summarize(baseSamples)
    let baseResult = evaluate(method: baseline, problemId: id, problem: problem, output: reference, samples: baseSamples,
                              extra: baseExtra, reference: reference, baselineMedian: baseTimes.median, exact: exact,
                              needles: valid, q: q, k: k, v: v, opts: opts)
    recorder.add(baseResult)
    events(.finished(baseStep, summary: Self.summary(baseResult)))

    for m in others {
      guard let step = stepIterator.next() else { break }
      if cancellation.isCancelled { return }
      events(.started(step))
      if let reason = naiveLimit(m, problem) {
        let r = CompareResult(method: step.method, problem: id, status: .notApplicable, reason: reason)
        recorder.add(r)
        events(.finished(step, summary: Self.summary(r)))
        continue
      }
      let outcome = measure({ () throws(SubqError) -> Tensor in
        try m.attention(queries: q, keys: k, values: v, options: opts).output
      }, outputBytes: { Double($0.count) * 4 })
      let r: CompareResult
      switch outcome {
      case .cancelled: return
      case .failed(let reason):
        r = CompareResult(method: step.method, problem: id, status: .notApplicable, reason: reason)
      case .measured(let o, let s, let e):
        r = evaluate(method: m, problemId: id, problem: problem, output: o, samples: s, extra: e, reference: reference,
                     baselineMedian: baseTimes.median, exact: exact, needles: valid, q: q, k: k, v: v, opts: opts)
      }
      if cancellation.isCancelled { return }
      recorder.add(r)
      events(.finished(step, summary: Self.summary(r)))
    }
  }

  /// Why `naive` cannot run this problem, if it cannot.
  func naiveLimit(_ m: any AttentionMethod, _ p: AttentionProblem) -> String? {
    guard m is NaiveAttention else { return nil }
    let workers = Parallel.workers(for: p.sequences.count * p.queryHeads, threads: p.threads)
    let bytes = Double(workers) * Double(p.queryLength) * Double(p.keyLength) * 8
    guard bytes > Double(config.naiveMaxBytes) else { return nil }
    return "naive materializes \(workers) Nq×Nk Float64 score matrices (\(formatBytes(bytes))), over the \(formatBytes(Double(config.naiveMaxBytes))) limit"
  }

  /// Every figure of one finished measurement.
  func evaluate(method m: any AttentionMethod, problemId: String, problem: AttentionProblem, output: Tensor, samples: [Double],
                extra: Double?, reference: Tensor, baselineMedian: Double, exact: ExactRows, needles: [ProblemData.Needle],
                q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions) -> CompareResult {
    let info = type(of: m).info
    let (med, mn) = Self.summarize(samples)
    var r = CompareResult(method: info.name, problem: problemId, status: .ok, samples: samples, medianSeconds: med, minSeconds: mn,
                          speedup: finite(baselineMedian / med), gflops: info.isExact ? finite(problem.flops / med / 1e9) : nil,
                          extraBytes: extra)
    guard output.shape == reference.shape else {
      r.status = .invalid
      r.reason = "output has shape \(output.shape), exact attention \(reference.shape)"
      return r
    }
    if let bad = output.firstNonFinite() {
      r.status = .invalid
      r.reason = "output holds \(SubqError.describe(output[flat: bad])) at \(output.index(ofFlat: bad))"
      return r
    }
    let err = CompareMetrics.outputError(output, reference: reference)
    r.relativeError = finite(err.relative)
    r.worstRowError = finite(err.worstRow)
    r.worstRow = err.worstIndex
    let groupSize = problem.queryHeads / problem.keyValueHeads
    if !needles.isEmpty {
      let found = needles.filter { CompareMetrics.needleFound(output: output, values: v, needle: $0, groupSize: groupSize) }.count
      r.needleRecall = Double(found) / Double(needles.count)
    }
    if let ks = m as? any KeySelectingMethod {
      let needleRows = needles.map { QueryRow(batch: $0.batch, head: $0.head, row: $0.query) }
      do {
        let selected = try ks.selectedKeys(queries: q, keys: k, values: v, options: opts, rows: exact.rows + needleRows)
        guard selected.count == exact.rows.count + needleRows.count else {
          throw SubqError.argument(op: "compare", name: "selectedKeys", value: "\(selected.count) rows",
                                   reason: "asked for \(exact.rows.count + needleRows.count)")
        }
        r.topKRecall = CompareMetrics.recall(selected: Array(selected.prefix(exact.rows.count)), truth: exact.topKeys)
        if !needles.isEmpty {
          let hits = zip(needles, selected.suffix(needles.count)).filter { n, s in s.contains(n.key) }.count
          r.needleKeyRecall = Double(hits) / Double(needles.count)
        }
      } catch {
        r.reason = "selected keys unavailable: \(error)"
      }
    }
    return r
  }

  /// The one-line summary of a result for progress lines.
  static func summary(_ r: CompareResult) -> String {
    switch r.status {
    case .notApplicable: return "n/a: \(r.reason ?? "")"
    case .invalid: return "invalid: \(r.reason ?? "")"
    case .ok:
      var parts = [formatSeconds(r.medianSeconds ?? .nan)]
      if let s = r.speedup { parts.append(String(format: "%.2f× flash", s)) }
      if let e = r.relativeError { parts.append("err " + CompareText.formatError(e)) }
      if let t = r.topKRecall { parts.append(String(format: "top-k %.2f", t)) }
      if let n = r.needleRecall { parts.append(String(format: "needles %.2f", n)) }
      return parts.joined(separator: ", ")
    }
  }

  // MARK: - Speed-only mixers

  func runMixers(steps: [CompareStep], events: (CompareEvent) -> Void) {
    var stepIterator = steps.makeIterator()
    var flashCache: [String: Double] = [:]
    for mixer in config.mixers {
      for n in mixerLengths {
        guard let step = stepIterator.next() else { return }
        if cancellation.isCancelled { return }
        events(.started(step))
        let flash = flashMedian(length: n, causal: mixer.isCausal, cache: &flashCache)
        var r = SpeedOnlyResult(mixer: mixer.name, length: n, causal: mixer.isCausal, status: .ok, flashMedianSeconds: flash)
        do {
          let w = try mixer.prepare(length: n, heads: suiteHeads, dim: suiteDim, seed: config.seed &+ UInt64(n), threads: config.threads)
          let outcome = measure({ () throws(SubqError) -> Tensor in
            try w.run()
            return Tensor(shape: [0])
          }, outputBytes: { _ in w.outputBytes })
          switch outcome {
          case .cancelled: return
          case .failed(let reason): r.status = .notApplicable; r.reason = reason
          case .measured(_, let s, let e):
            let (med, _) = Self.summarize(s)
            r.samples = s
            r.medianSeconds = med
            r.extraBytes = e
            r.speedupVsFlash = flash.flatMap { finite($0 / med) }
            r.gflops = w.flops.flatMap { finite($0 / med / 1e9) }
          }
        } catch {
          r.status = .notApplicable
          r.reason = error.description
        }
        recorder.add(r)
        events(.finished(step, summary: r.medianSeconds.map {
          formatSeconds($0) + (r.speedupVsFlash.map { String(format: ", %.2f× flash", $0) } ?? "")
        } ?? "n/a: \(r.reason ?? "")"))
      }
    }
  }

  var suiteHeads: Int { Self.filesShape(config).h }
  var suiteDim: Int { Self.filesShape(config).d }

  /// Flash's median at `length` on Gaussian data with the suite's heads and dim: from this run's
  /// results when it has them, else measured now.
  func flashMedian(length: Int, causal: Bool, cache: inout [String: Double]) -> Double? {
    let id = "gaussian-\(length)-\(causal ? "causal" : "noncausal")"
    if case .synthetic = config.source, config.batch == 1,
       let r = recorder.results().first(where: { $0.problem == id && $0.method == "flash" }), let t = r.medianSeconds {
      return t
    }
    if let t = cache[id] { return t }
    let (h, hkv, d) = (suiteHeads, Self.filesShape(config).hkv, suiteDim)
    let data = ProblemData.make(kind: .gaussian, batch: 1, heads: h, kvHeads: hkv, queries: length, keys: length, dim: d,
                                seed: config.seed &+ UInt64(length))
    let opts = AttentionOptions(causal: causal, threads: config.threads)
    let m = measure({ () throws(SubqError) -> Tensor in
      try baseline.attention(queries: data.queries, keys: data.keys, values: data.values, options: opts).output
    }, outputBytes: { Double($0.count) * 4 })
    guard case .measured(_, let s, _) = m else { return nil }
    let t = Self.summarize(s).median
    cache[id] = t
    return t
  }
}

/// `x` when finite, else nil.
func finite(_ x: Double) -> Double? { x.isFinite ? x : nil }
func finiteOr(_ x: Double, _ fallback: Double) -> Double { x.isFinite ? x : fallback }

/// "16K" for multiples of 1024, else the number.
public func formatLength(_ n: Int) -> String {
  n >= 1024 && n % 1024 == 0 ? "\(n / 1024)K" : "\(n)"
}
