import Foundation

/// The plots of a comparison, and the self-contained HTML report.
public enum CompareFigures {
  /// One figure: a file name for `--svg DIR`, a caption, and the plot.
  public struct Figure: Sendable {
    public var fileName: String
    public var caption: String
    public var plot: SVGPlot
  }

  /// Method colours, by position in the report's method list (the same in every plot).
  static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                        "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#843c39", "#7b4173"]

  static func color(_ i: Int) -> String { palette[i % palette.count] }

  /// Errors below this are drawn on the floor of error plots (Float32 exact methods sit near 1e-7).
  public static let errorFloor = 1e-7

  /// Every figure of `r`: for each data kind and causal mode, time against length (when there are
  /// at least two lengths) and error against speedup; and the speed-only mixers against flash.
  public static func figures(_ r: CompareReport) -> [Figure] {
    var out: [Figure] = []
    var groups: [(kind: String, causal: Bool)] = []
    for p in r.problems where !groups.contains(where: { $0.kind == p.kind && $0.causal == p.causal }) {
      groups.append((p.kind, p.causal))
    }
    let baseline = r.methods.first { $0.baseline }?.name ?? "flash"
    for g in groups {
      let problems = r.problems.filter { $0.kind == g.kind && $0.causal == g.causal }.sorted { $0.length < $1.length }
      let mode = g.causal ? "causal" : "noncausal"
      let lengths = problems.map(\.length)
      if Set(lengths).count >= 2 { out.append(timeFigure(r, g.kind, g.causal, problems, baseline: baseline, mode: mode)) }
      out.append(paretoFigure(r, g.kind, g.causal, problems, mode: mode))
    }
    if !r.speedOnly.isEmpty { out.append(speedOnlyFigure(r, baseline: baseline)) }
    return out
  }

  static func modeText(_ causal: Bool) -> String { causal ? "causal" : "non-causal" }

  static func timeFigure(_ r: CompareReport, _ kind: String, _ causal: Bool, _ problems: [CompareProblemRecord],
                         baseline: String, mode: String) -> Figure {
    let series = r.methods.enumerated().map { i, m in
      SVGPlot.Series(name: m.name, color: color(i), points: problems.compactMap { p in
        r.results.first { $0.problem == p.id && $0.method == m.name }?.medianSeconds.map {
          SVGPlot.Point(x: Double(p.length), y: $0, label: nil)
        }
      }, connect: true)
    }
    var plot = SVGPlot(title: "Time vs length — \(kind), \(modeText(causal))", xLabel: "sequence length N",
                       yLabel: "median time", series: series)
    plot.xTicks = problems.map { (Double($0.length), formatLength($0.length)) }
    plot.yFormat = { SVGPlot.compactSeconds($0) }
    plot.idPrefix = "time-\(kind)-\(mode)"
    // Guides through the baseline's time at the shortest length.
    if let first = problems.first, let t0 = r.results.first(where: { $0.problem == first.id && $0.method == baseline })?.medianSeconds,
       let last = problems.last {
      let n0 = Double(first.length), n1 = Double(last.length)
      let ns = stride(from: 0.0, through: 1.0, by: 0.25).map { n0 * Foundation.pow(n1 / n0, $0) }
      plot.guides = [
        SVGPlot.Guide(name: "O(N²)", points: ns.map { ($0, t0 * ($0 / n0) * ($0 / n0)) }),
        SVGPlot.Guide(name: "O(N)", points: ns.map { ($0, t0 * ($0 / n0)) }),
      ]
    }
    return Figure(fileName: "time-\(kind)-\(mode).svg",
                  caption: "Median time against length, \(kind) data, \(modeText(causal)); dashed guides grow as N² and N from \(baseline)'s time at the shortest length.",
                  plot: plot)
  }

  static func paretoFigure(_ r: CompareReport, _ kind: String, _ causal: Bool, _ problems: [CompareProblemRecord], mode: String) -> Figure {
    let longest = problems.map(\.length).max() ?? 0
    var frontCandidates: [(x: Double, y: Double)] = []
    let series = r.methods.enumerated().map { i, m in
      SVGPlot.Series(name: m.name, color: color(i), points: problems.compactMap { p -> SVGPlot.Point? in
        guard let res = r.results.first(where: { $0.problem == p.id && $0.method == m.name }),
              let s = res.speedup, let e = res.relativeError else { return nil }
        if p.length == longest { frontCandidates.append((s, max(e, errorFloor))) }
        return SVGPlot.Point(x: s, y: e, label: formatLength(p.length), hollow: p.length != longest)
      }, connect: false)
    }
    var plot = SVGPlot(title: "Error vs speedup — \(kind), \(modeText(causal))", xLabel: "speedup over exact flash (same inputs)",
                       yLabel: "relative Frobenius error vs flash", series: series)
    plot.yFloor = errorFloor
    plot.xFormat = { SVGPlot.compactNumber($0) + "×" }
    plot.idPrefix = "pareto-\(kind)-\(mode)"
    let front = paretoFront(frontCandidates)
    if !front.isEmpty { plot.front = ("Pareto front, N=\(formatLength(longest))", front) }
    return Figure(fileName: "pareto-\(kind)-\(mode).svg",
                  caption: "Relative error against speedup, \(kind) data, \(modeText(causal)); filled markers at N=\(formatLength(longest)), open markers at shorter lengths; the dashed line joins the methods no other method beats on both at N=\(formatLength(longest)). Errors below \(errorFloor) are drawn on the floor.",
                  plot: plot)
  }

  /// The points no other point beats on both axes (higher x and lower y are better), by x.
  public static func paretoFront(_ points: [(x: Double, y: Double)]) -> [(x: Double, y: Double)] {
    let sorted = points.sorted { $0.x != $1.x ? $0.x > $1.x : $0.y < $1.y }
    var front: [(x: Double, y: Double)] = []
    var best = Double.infinity
    for p in sorted where p.y < best {
      front.append(p)
      best = p.y
    }
    return front.reversed()
  }

  static func speedOnlyFigure(_ r: CompareReport, baseline: String) -> Figure {
    var series: [SVGPlot.Series] = []
    var names: [String] = []
    for x in r.speedOnly where !names.contains(x.mixer) { names.append(x.mixer) }
    for (i, name) in names.enumerated() {
      let rows = r.speedOnly.filter { $0.mixer == name }
      series.append(SVGPlot.Series(name: name, color: color(r.methods.count + i),
                                   points: rows.compactMap { x in x.medianSeconds.map { SVGPlot.Point(x: Double(x.length), y: $0) } },
                                   connect: true))
    }
    for causal in [false, true] {
      let rows = r.speedOnly.filter { $0.causal == causal }
      guard !rows.isEmpty else { continue }
      var seen = Set<Int>()
      let pts = rows.compactMap { x -> SVGPlot.Point? in
        guard seen.insert(x.length).inserted, let t = x.flashMedianSeconds else { return nil }
        return SVGPlot.Point(x: Double(x.length), y: t)
      }
      series.append(SVGPlot.Series(name: "\(baseline) (\(modeText(causal)))", color: causal ? "#000000" : "#555555",
                                   points: pts, connect: true))
    }
    var plot = SVGPlot(title: "Speed-only mixers vs exact flash", xLabel: "sequence length N", yLabel: "median time", series: series)
    let lengths = Array(Set(r.speedOnly.map(\.length))).sorted()
    plot.xTicks = lengths.map { (Double($0), formatLength($0)) }
    plot.yFormat = { SVGPlot.compactSeconds($0) }
    plot.idPrefix = "speed-only"
    return Figure(fileName: "speed-only.svg", caption: "Median time of the speed-only mixers and of exact flash on Gaussian data of the same length, heads and head dimension.", plot: plot)
  }

  // MARK: - HTML

  /// A self-contained HTML page: inline CSS, inline SVG plots, every table; no external resource.
  public static func html(_ r: CompareReport) -> String {
    let m = r.metadata
    var h = """
      <!DOCTYPE html>
      <html lang="en">
      <head>
      <meta charset="utf-8">
      <title>subq compare</title>
      <style>
      body { font-family: Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
      h1 { font-size: 1.6em; } h2 { font-size: 1.3em; margin-top: 1.6em; border-bottom: 1px solid #ddd; } h3 { font-size: 1.05em; }
      table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
      th, td { padding: 3px 9px; border-bottom: 1px solid #e6e6e6; text-align: right; }
      th:first-child, td:first-child, td.note { text-align: left; }
      td.note { color: #666; }
      tr.na td { color: #999; }
      figure { margin: 1em 0; } figcaption { font-size: 0.85em; color: #555; max-width: 780px; }
      .meta td { text-align: left; } .warn { color: #b00; font-weight: bold; }
      dt { font-weight: bold; margin-top: 0.4em; }
      </style>
      </head>
      <body>
      <h1>subq compare</h1>

      """
    if r.status != "complete" {
      h += "<p class=\"warn\">Interrupted: this report holds only the measurements finished before the stop.</p>\n"
    }
    h += "<table class=\"meta\">\n"
    let s = r.suite
    let rows: [(String, String)] = [
      ("version", "subquadratic \(m.version) \(m.configuration)"), ("flags", m.flags), ("SIMD", m.simd),
      ("machine", "\(m.cpu), \(m.cores) cores"), ("threads", String(m.threads)), ("seed", String(m.seed)),
      ("started", m.startedAt), ("wall time", formatSeconds(m.wallSeconds)),
      ("data", s.dataDirectory ?? s.kinds.joined(separator: ", ")),
      ("shape", "B=\(s.batch) H=\(s.heads) Hkv=\(s.kvHeads) D=\(s.dim)"),
      ("measurement", "up to \(s.repeats) runs or \(s.budgetSeconds) s; top-\(s.topK) recall over \(s.sampleRows) sampled rows"),
      ("command", m.command.joined(separator: " ")),
    ]
    for (k, v) in rows { h += "<tr><td>\(xmlEscape(k))</td><td>\(xmlEscape(v))</td></tr>\n" }
    h += "</table>\n"

    h += "<h2>Methods</h2>\n<table><tr><th>method</th><th>kind</th><th>complexity</th><th>parameters</th><th>paper</th></tr>\n"
    for meth in r.methods {
      let kind = (meth.baseline ? "baseline, " : "") + (meth.exact ? "exact" : "approximate") + (meth.keySelecting ? ", selects keys" : "")
      let params = meth.parameters.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
      h += "<tr><td>\(xmlEscape(meth.name))</td><td class=\"note\">\(xmlEscape(kind))</td><td class=\"note\">\(xmlEscape(meth.complexity))</td>"
      h += "<td class=\"note\">\(xmlEscape(params))</td><td class=\"note\">\(xmlEscape(meth.paper))</td></tr>\n"
    }
    h += "</table>\n"

    let figs = figures(r)
    if !figs.isEmpty { h += "<h2>Plots</h2>\n" }
    for fig in figs {
      h += "<figure>\n" + fig.plot.render(standalone: false) + "<figcaption>\(xmlEscape(fig.caption))</figcaption>\n</figure>\n"
    }

    h += "<h2>Results</h2>\n"
    for p in r.problems {
      let res = r.results.filter { $0.problem == p.id }
      guard !res.isEmpty else { continue }
      var title = "\(p.kind) · N=\(formatLength(p.length)) · \(modeText(p.causal))"
      title += String(format: " — exact weight: 90%% in %.1f%% of keys", p.mass90Fraction * 100)
      if p.needlesPlanted > 0 { title += "; \(p.needlesValid)/\(p.needlesPlanted) needles valid" }
      h += "<h3>\(xmlEscape(title))</h3>\n" + htmlTable(CompareText.problemTable(res, topK: s.topK), naRows: res.map { $0.status != .ok })
    }
    if !r.scaling.isEmpty {
      h += "<h2>Scaling</h2>\n<p>Slope of log(time) against log(N): 2 is quadratic, 1 linear; fixed costs lower it at small N.</p>\n"
      h += "<table><tr><th>method</th><th>data</th><th>mode</th><th>lengths</th><th>exponent</th></tr>\n"
      for sc in r.scaling {
        h += "<tr><td>\(xmlEscape(sc.method))</td><td>\(xmlEscape(sc.kind))</td><td>\(modeText(sc.causal))</td>"
        h += "<td>\(sc.lengths.map(formatLength).joined(separator: ", "))</td><td>\(String(format: "%.2f", sc.exponent))</td></tr>\n"
      }
      h += "</table>\n"
    }
    h += "<h2>Speed-only mixers</h2>\n"
    if r.speedOnly.isEmpty {
      h += "<p>None were run: no linear mixers or scans are registered in this build.</p>\n"
    } else {
      h += "<table><tr><th>mixer</th><th>N</th><th>causal</th><th>median</th><th>flash</th><th>speedup</th><th>extra mem</th><th>note</th></tr>\n"
      for x in r.speedOnly {
        h += "<tr><td>\(xmlEscape(x.mixer))</td><td>\(formatLength(x.length))</td><td>\(x.causal ? "yes" : "no")</td>"
        h += "<td>\(x.medianSeconds.map(formatSeconds) ?? "n/a")</td><td>\(x.flashMedianSeconds.map(formatSeconds) ?? "—")</td>"
        h += "<td>\(x.speedupVsFlash.map { String(format: "%.2f×", $0) } ?? "—")</td><td>\(x.extraBytes.map(formatBytes) ?? "—")</td>"
        h += "<td class=\"note\">\(xmlEscape(x.reason ?? ""))</td></tr>\n"
      }
      h += "</table>\n"
    }
    h += """
      <h2>Definitions</h2>
      <dl>
      <dt>speedup</dt><dd>the baseline's median time divided by the method's, on the same inputs.</dd>
      <dt>GFLOP/s</dt><dd>exact attention's FLOPs on the visible pairs (4·N²·D·H non-causal, about half causal) per second; for exact methods only.</dd>
      <dt>extra mem</dt><dd>resident memory the method added at its peak beyond its output (heap trimmed and peak reset before the run; resolution a few hundred KiB).</dd>
      <dt>rel err</dt><dd>‖O − O<sub>flash</sub>‖<sub>F</sub> / ‖O<sub>flash</sub>‖<sub>F</sub>; worst row: the largest per-row relative error.</dd>
      <dt>top-\(s.topK)</dt><dd>for methods that select keys: the mean fraction of each sampled row's \(s.topK) highest-scoring keys (exact q·k in Float64) that the method selects.</dd>
      <dt>needles</dt><dd>the fraction of valid planted needles whose query's output row has cosine ≥ \(CompareMetrics.needleCosine) with the needle's value row; needle keys: the fraction whose key the method selects. A needle is valid when exact attention retrieves it.</dd>
      </dl>
      </body>
      </html>

      """
    return h
  }

  static func htmlTable(_ t: TextTable, naRows: [Bool]) -> String {
    var h = "<table><tr>" + t.header.map { "<th>\(xmlEscape($0))</th>" }.joined() + "</tr>\n"
    for (i, row) in t.rows.enumerated() {
      h += (i < naRows.count && naRows[i] ? "<tr class=\"na\">" : "<tr>")
      for (c, cell) in row.enumerated() {
        let cls = c == row.count - 1 && t.header.last == "note" ? " class=\"note\"" : ""
        h += "<td\(cls)>\(xmlEscape(cell))</td>"
      }
      h += "</tr>\n"
    }
    return h + "</table>\n"
  }
}
