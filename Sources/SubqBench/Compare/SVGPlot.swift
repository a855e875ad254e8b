import Foundation

/// A log-log scatter/line plot drawn directly as SVG: axes, ticks, grid, legend, dashed guide
/// lines and an optional dashed front. Every series is one `<g class="series" data-name="…">`, so
/// readers (and tests) can find each method's marks; series without points still get a group and
/// a legend entry marked "no data".
public struct SVGPlot: Sendable {
  public struct Point: Sendable {
    public var x: Double
    public var y: Double
    /// Text drawn next to the marker.
    public var label: String?
    /// Drawn as an open circle (e.g. points other than the highlighted length).
    public var hollow: Bool
    public init(x: Double, y: Double, label: String? = nil, hollow: Bool = false) {
      self.x = x
      self.y = y
      self.label = label
      self.hollow = hollow
    }
  }

  public struct Series: Sendable {
    public var name: String
    public var color: String
    public var points: [Point]
    /// Join the points (sorted by x) with a line.
    public var connect: Bool
    public init(name: String, color: String, points: [Point], connect: Bool) {
      self.name = name
      self.color = color
      self.points = points
      self.connect = connect
    }
  }

  /// A dashed grey reference line through `points` (clipped to the plot).
  public struct Guide: Sendable {
    public var name: String
    public var points: [(x: Double, y: Double)]
    public init(name: String, points: [(x: Double, y: Double)]) {
      self.name = name
      self.points = points
    }
  }

  public var title: String
  public var xLabel: String
  public var yLabel: String
  public var series: [Series]
  public var guides: [Guide] = []
  /// A dashed polyline (e.g. the Pareto front) with its legend text.
  public var front: (label: String, points: [(x: Double, y: Double)])? = nil
  /// Fixed x ticks (value, label); nil for decades.
  public var xTicks: [(Double, String)]? = nil
  /// Formats y tick values.
  public var yFormat: @Sendable (Double) -> String = { SVGPlot.compactNumber($0) }
  /// Formats x tick values (when `xTicks` is nil).
  public var xFormat: @Sendable (Double) -> String = { SVGPlot.compactNumber($0) }
  /// Values below this are drawn on it (log axes cannot show 0); its tick is labelled "≤ floor".
  public var yFloor: Double? = nil
  /// Prefix for ids inside the SVG (clip paths), unique per page when several SVGs are inlined.
  public var idPrefix = "plot"

  public init(title: String, xLabel: String, yLabel: String, series: [Series]) {
    self.title = title
    self.xLabel = xLabel
    self.yLabel = yLabel
    self.series = series
  }

  // Geometry.
  static let width = 780.0, height = 460.0
  static let left = 78.0, right = 190.0, top = 44.0, bottom = 56.0
  var plotW: Double { Self.width - Self.left - Self.right }
  var plotH: Double { Self.height - Self.top - Self.bottom }

  /// A log-scale domain covering `values`, padded by a quarter decade (a factor 2 each way when
  /// all values are equal).
  static func domain(_ values: [Double]) -> (lo: Double, hi: Double) {
    let v = values.filter { $0 > 0 && $0.isFinite }
    guard let lo = v.min(), let hi = v.max() else { return (1, 10) }
    if lo == hi { return (lo / 2, hi * 2) }
    let pad = Foundation.pow(10, 0.12 * max(0.5, Foundation.log10(hi / lo)))
    return (lo / pad, hi * pad)
  }

  /// Ticks for a log axis: decades, plus 2× and 5× when the domain spans fewer than two decades.
  static func logTicks(_ d: (lo: Double, hi: Double)) -> [Double] {
    let a = Int(Foundation.floor(Foundation.log10(d.lo))), b = Int(Foundation.ceil(Foundation.log10(d.hi)))
    var t: [Double] = []
    let span = Foundation.log10(d.hi / d.lo)
    let mults: [Double] = span < 1.2 ? [1, 2, 5] : span < 2.5 ? [1, 3] : [1]
    for e in a...b {
      for m in mults {
        let x = m * Foundation.pow(10, Double(e))
        if x >= d.lo && x <= d.hi { t.append(x) }
      }
    }
    if t.count < 2 { t = [d.lo * 1.0001, Foundation.sqrt(d.lo * d.hi), d.hi / 1.0001] }
    return t
  }

  /// Tick labels for seconds: "100 µs", "3 ms", "1 s".
  public static func compactSeconds(_ s: Double) -> String {
    if s >= 1 { return compactNumber(s) + " s" }
    if s >= 1e-3 { return compactNumber((s * 1e3 * 1e6).rounded() / 1e6) + " ms" }
    if s >= 1e-6 { return compactNumber((s * 1e6 * 1e6).rounded() / 1e6) + " µs" }
    return compactNumber((s * 1e9 * 1e6).rounded() / 1e6) + " ns"
  }

  /// "1.5K", "20", "0.5", "1e-05" style labels.
  public static func compactNumber(_ x: Double) -> String {
    if x >= 1e4 || (x < 1e-2 && x > 0) { return String(format: "%.0e", x).replacingOccurrences(of: "e+0", with: "e").replacingOccurrences(of: "e-0", with: "e-") }
    if x == x.rounded() { return String(Int(x)) }
    return String(format: "%g", x)
  }

  /// The SVG document. `standalone` adds the XML declaration-free `xmlns` attribute a file needs;
  /// inline HTML leaves it out.
  public func render(standalone: Bool = true) -> String {
    let floor = yFloor
    func fy(_ y: Double) -> Double { floor.map { Swift.max(y, $0) } ?? y }
    let xs = series.flatMap { $0.points.map(\.x) } + (xTicks?.map(\.0) ?? [])
    var ys = series.flatMap { $0.points.map { fy($0.y) } }
    if let floor { ys.append(floor) }
    let xd = Self.domain(xs), yd = Self.domain(ys)
    let lx0 = Foundation.log10(xd.lo), lx1 = Foundation.log10(xd.hi)
    let ly0 = Foundation.log10(yd.lo), ly1 = Foundation.log10(yd.hi)
    func px(_ x: Double) -> Double { Self.left + (Foundation.log10(x) - lx0) / (lx1 - lx0) * plotW }
    func py(_ y: Double) -> Double { Self.top + plotH - (Foundation.log10(fy(y)) - ly0) / (ly1 - ly0) * plotH }
    func f(_ v: Double) -> String { String(format: "%.1f", v) }

    var s = ""
    let ns = standalone ? " xmlns=\"http://www.w3.org/2000/svg\"" : ""
    s += "<svg\(ns) width=\"\(Int(Self.width))\" height=\"\(Int(Self.height))\" viewBox=\"0 0 \(Int(Self.width)) \(Int(Self.height))\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\">\n"
    s += "<title>\(xmlEscape(title))</title>\n"
    s += "<rect x=\"0\" y=\"0\" width=\"\(Int(Self.width))\" height=\"\(Int(Self.height))\" fill=\"#ffffff\"/>\n"
    let clip = "\(idPrefix)-clip"
    s += "<defs><clipPath id=\"\(clip)\"><rect x=\"\(f(Self.left))\" y=\"\(f(Self.top))\" width=\"\(f(plotW))\" height=\"\(f(plotH))\"/></clipPath></defs>\n"
    s += "<text x=\"\(f(Self.left))\" y=\"24\" font-size=\"15\" font-weight=\"bold\">\(xmlEscape(title))</text>\n"

    // Grid, ticks and tick labels.
    s += "<g class=\"axes\" stroke=\"#000000\" fill=\"none\">\n"
    s += "<rect x=\"\(f(Self.left))\" y=\"\(f(Self.top))\" width=\"\(f(plotW))\" height=\"\(f(plotH))\" stroke=\"#444444\"/>\n"
    s += "</g>\n<g class=\"ticks\" font-size=\"11\">\n"
    let xt: [(Double, String)] = xTicks?.filter { $0.0 >= xd.lo && $0.0 <= xd.hi } ?? Self.logTicks(xd).map { ($0, xFormat($0)) }
    for (x, label) in xt {
      let X = px(x)
      s += "<line x1=\"\(f(X))\" y1=\"\(f(Self.top))\" x2=\"\(f(X))\" y2=\"\(f(Self.top + plotH))\" stroke=\"#e4e4e4\"/>\n"
      s += "<line x1=\"\(f(X))\" y1=\"\(f(Self.top + plotH))\" x2=\"\(f(X))\" y2=\"\(f(Self.top + plotH + 5))\" stroke=\"#444444\"/>\n"
      s += "<text x=\"\(f(X))\" y=\"\(f(Self.top + plotH + 18))\" text-anchor=\"middle\">\(xmlEscape(label))</text>\n"
    }
    var yt = Self.logTicks(yd)
    if let floor { yt = yt.filter { $0 > floor * 1.5 } + [floor] }
    for y in yt {
      let Y = py(y)
      let label = (floor == y) ? "≤ " + yFormat(y) : yFormat(y)
      s += "<line x1=\"\(f(Self.left))\" y1=\"\(f(Y))\" x2=\"\(f(Self.left + plotW))\" y2=\"\(f(Y))\" stroke=\"#e4e4e4\"/>\n"
      s += "<line x1=\"\(f(Self.left - 5))\" y1=\"\(f(Y))\" x2=\"\(f(Self.left))\" y2=\"\(f(Y))\" stroke=\"#444444\"/>\n"
      s += "<text x=\"\(f(Self.left - 8))\" y=\"\(f(Y + 4))\" text-anchor=\"end\">\(xmlEscape(label))</text>\n"
    }
    s += "</g>\n"
    s += "<text x=\"\(f(Self.left + plotW / 2))\" y=\"\(f(Self.height - 14))\" text-anchor=\"middle\">\(xmlEscape(xLabel))</text>\n"
    s += "<text x=\"18\" y=\"\(f(Self.top + plotH / 2))\" text-anchor=\"middle\" transform=\"rotate(-90 18 \(f(Self.top + plotH / 2)))\">\(xmlEscape(yLabel))</text>\n"

    // Guides and front, clipped.
    for g in guides where g.points.count >= 2 {
      let pts = g.points.map { "\(f(px($0.x))),\(f(py($0.y)))" }.joined(separator: " ")
      s += "<g class=\"guide\" data-name=\"\(xmlEscape(g.name))\" clip-path=\"url(#\(clip))\">"
      s += "<polyline points=\"\(pts)\" fill=\"none\" stroke=\"#999999\" stroke-width=\"1.2\" stroke-dasharray=\"6 4\"/>"
      if let last = g.points.last(where: { $0.x <= xd.hi && $0.y <= yd.hi && $0.y >= yd.lo }) ?? g.points.last {
        s += "<text x=\"\(f(min(px(last.x), Self.left + plotW) - 4))\" y=\"\(f(max(py(last.y), Self.top + 12) - 4))\" text-anchor=\"end\" fill=\"#777777\" font-size=\"11\">\(xmlEscape(g.name))</text>"
      }
      s += "</g>\n"
    }
    if let front, front.points.count >= 1 {
      let pts = front.points.sorted { $0.x < $1.x }.map { "\(f(px($0.x))),\(f(py($0.y)))" }.joined(separator: " ")
      s += "<g class=\"front\" clip-path=\"url(#\(clip))\"><polyline points=\"\(pts)\" fill=\"none\" stroke=\"#333333\" stroke-width=\"1.5\" stroke-dasharray=\"2 3\"/></g>\n"
    }

    // Series. Markers of one series that coincide share one label ("1K, 4K"); a label that would
    // sit on one already drawn is left out.
    var labelled: [(Double, Double)] = []
    for ser in series {
      s += "<g class=\"series\" data-name=\"\(xmlEscape(ser.name))\" data-points=\"\(ser.points.count)\" stroke=\"\(ser.color)\" fill=\"\(ser.color)\">\n"
      let pts = ser.points.sorted { $0.x < $1.x }
      if ser.connect && pts.count >= 2 {
        s += "<polyline points=\"\(pts.map { "\(f(px($0.x))),\(f(py($0.y)))" }.joined(separator: " "))\" fill=\"none\" stroke-width=\"2\"/>\n"
      }
      var groups: [(at: (Double, Double), labels: [String])] = []
      for p in pts {
        let fill = p.hollow ? "#ffffff" : ser.color
        s += "<circle cx=\"\(f(px(p.x)))\" cy=\"\(f(py(p.y)))\" r=\"4\" fill=\"\(fill)\" stroke-width=\"1.5\"><title>\(xmlEscape(ser.name)): \(xmlEscape(p.label ?? ""))</title></circle>\n"
        guard let l = p.label else { continue }
        let at = (px(p.x), py(p.y))
        if let g = groups.firstIndex(where: { abs($0.at.0 - at.0) < 10 && abs($0.at.1 - at.1) < 10 }) {
          groups[g].labels.append(l)
        } else {
          groups.append((at, [l]))
        }
      }
      for g in groups where !labelled.contains(where: { abs($0.0 - g.at.0) < 10 && abs($0.1 - g.at.1) < 10 }) {
        labelled.append(g.at)
        s += "<text x=\"\(f(g.at.0 + 6))\" y=\"\(f(g.at.1 - 6))\" font-size=\"10\" stroke=\"none\">\(xmlEscape(g.labels.joined(separator: ", ")))</text>\n"
      }
      s += "</g>\n"
    }

    // Legend.
    var ly = Self.top + 8
    let lx = Self.left + plotW + 16
    s += "<g class=\"legend\" font-size=\"12\">\n"
    for ser in series {
      s += "<rect x=\"\(f(lx))\" y=\"\(f(ly))\" width=\"14\" height=\"10\" fill=\"\(ser.color)\"/>"
      s += "<text x=\"\(f(lx + 20))\" y=\"\(f(ly + 9))\">\(xmlEscape(ser.name + (ser.points.isEmpty ? " (no data)" : "")))</text>\n"
      ly += 18
    }
    for g in guides {
      s += "<line x1=\"\(f(lx))\" y1=\"\(f(ly + 5))\" x2=\"\(f(lx + 14))\" y2=\"\(f(ly + 5))\" stroke=\"#999999\" stroke-dasharray=\"4 2\"/>"
      s += "<text x=\"\(f(lx + 20))\" y=\"\(f(ly + 9))\" fill=\"#555555\">\(xmlEscape(g.name))</text>\n"
      ly += 18
    }
    if let front {
      s += "<line x1=\"\(f(lx))\" y1=\"\(f(ly + 5))\" x2=\"\(f(lx + 14))\" y2=\"\(f(ly + 5))\" stroke=\"#333333\" stroke-dasharray=\"2 2\"/>"
      s += "<text x=\"\(f(lx + 20))\" y=\"\(f(ly + 9))\" fill=\"#333333\">\(xmlEscape(front.label))</text>\n"
    }
    s += "</g>\n</svg>\n"
    return s
  }
}

/// Escapes text for XML and HTML content and attribute values.
public func xmlEscape(_ s: String) -> String {
  var o = ""
  o.reserveCapacity(s.count)
  for c in s {
    switch c {
    case "&": o += "&amp;"
    case "<": o += "&lt;"
    case ">": o += "&gt;"
    case "\"": o += "&quot;"
    case "'": o += "&#39;"
    default: o.append(c)
    }
  }
  return o
}
