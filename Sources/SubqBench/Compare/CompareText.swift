import Foundation
import SubqCore

/// The plain-text and CSV forms of a ``CompareReport``.
public enum CompareText {
  /// The aligned tables printed on stdout: a header, one table per problem, the scaling table and
  /// the speed-only table.
  public static func render(_ r: CompareReport) -> String {
    var out: [String] = []
    let m = r.metadata
    out.append("subquadratic \(m.version) \(m.configuration) [\(m.flags)] \(m.simd)")
    out.append("\(m.cpu), \(m.cores) cores, \(m.threads) threads; seed \(m.seed)")
    let s = r.suite
    let data = s.dataDirectory.map { "data \($0)" } ?? "data \(s.kinds.joined(separator: ", "))"
    out.append("\(data); B=\(s.batch) H=\(s.heads) Hkv=\(s.kvHeads) D=\(s.dim); up to \(s.repeats) runs or \(trim(s.budgetSeconds)) s per measurement")
    for meth in r.methods {
      var tags = [meth.exact ? "exact" : "approximate"]
      if meth.baseline { tags.insert("baseline", at: 0) }
      if meth.keySelecting { tags.append("selects keys") }
      let params = meth.parameters.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
      out.append("  \(meth.name) (\(tags.joined(separator: ", ")))\(params.isEmpty ? "" : ": " + params)")
    }
    if r.status != "complete" { out.append("INTERRUPTED: only the measurements finished before the stop are shown.") }

    for p in r.problems {
      let rows = r.results.filter { $0.problem == p.id }
      guard !rows.isEmpty else { continue }
      out.append("")
      var title = "\(p.kind) · N=\(formatLength(p.length))\(p.keyLength != p.length ? " Nk=\(formatLength(p.keyLength))" : "") · \(p.causal ? "causal" : "non-causal")"
      title += String(format: " — exact weight: 90%% in %.1f%% of keys (median %.0f keys)", p.mass90Fraction * 100, p.mass90Keys)
      if p.needlesPlanted > 0 { title += "; \(p.needlesValid)/\(p.needlesPlanted) needles valid" }
      out.append(title)
      out.append(problemTable(rows, topK: s.topK).render())
    }

    if !r.scaling.isEmpty {
      out.append("")
      out.append("Scaling: slope of log(time) against log(N) (2 = quadratic, 1 = linear; fixed costs lower it at small N)")
      var groups: [String] = []
      for sc in r.scaling {
        let g = "\(sc.kind) \(sc.causal ? "causal" : "non-causal")"
        if !groups.contains(g) { groups.append(g) }
      }
      var t = TextTable(header: ["method"] + groups, rightAligned: Set(1...groups.count))
      var methods: [String] = []
      for sc in r.scaling where !methods.contains(sc.method) { methods.append(sc.method) }
      for meth in methods {
        t.add([meth] + groups.map { g in
          r.scaling.first { $0.method == meth && "\($0.kind) \($0.causal ? "causal" : "non-causal")" == g }
            .map { String(format: "%.2f", $0.exponent) } ?? "—"
        })
      }
      out.append(t.render())
    }

    out.append("")
    if r.speedOnly.isEmpty {
      out.append("Speed-only mixers (linear attention, scans): none were run; none are registered in this build.")
    } else {
      out.append("Speed-only mixers: other functions than attention, timed against exact flash (Gaussian data, same H and D)")
      var t = TextTable(header: ["mixer", "N", "causal", "median", "flash", "speedup", "GFLOP/s", "extra mem", "note"],
                        rightAligned: [1, 3, 4, 5, 6, 7])
      for x in r.speedOnly {
        t.add([x.mixer, formatLength(x.length), x.causal ? "yes" : "no", x.medianSeconds.map(formatSeconds) ?? "n/a",
               x.flashMedianSeconds.map(formatSeconds) ?? "—", x.speedupVsFlash.map { String(format: "%.2f×", $0) } ?? "—",
               x.gflops.map { String(format: "%.1f", $0) } ?? "—", x.extraBytes.map(formatBytes) ?? "—", x.reason ?? ""])
      }
      out.append(t.render())
    }
    return out.joined(separator: "\n")
  }

  /// One problem's table; columns that no row fills are left out.
  static func problemTable(_ rows: [CompareResult], topK: Int) -> TextTable {
    let header = ["method", "median", "speedup", "GFLOP/s", "extra mem", "rel err", "worst row", "top-\(topK)", "needles", "needle keys", "note"]
    var cells: [[String]] = []
    for x in rows {
      if x.status != .ok {
        cells.append([x.method, x.status.rawValue, "", "", "", "", "", "", "", "", x.reason ?? ""])
        continue
      }
      cells.append([
        x.method, x.medianSeconds.map(formatSeconds) ?? "—", x.speedup.map { String(format: "%.2f×", $0) } ?? "—",
        x.gflops.map { String(format: "%.1f", $0) } ?? "—", x.extraBytes.map(formatBytes) ?? "—",
        x.relativeError.map(formatError) ?? "—", x.worstRowError.map(formatError) ?? "—",
        x.topKRecall.map { String(format: "%.3f", $0) } ?? "—", x.needleRecall.map { String(format: "%.0f%%", $0 * 100) } ?? "—",
        x.needleKeyRecall.map { String(format: "%.0f%%", $0 * 100) } ?? "—", x.reason ?? "",
      ])
    }
    // Keep method, median and note; drop other columns that hold nothing.
    let keep = header.indices.filter { c in
      c <= 1 || (c == header.count - 1 ? cells.contains { !$0[c].isEmpty } : cells.contains { $0[c] != "—" && !$0[c].isEmpty })
    }
    var t = TextTable(header: keep.map { header[$0] },
                      rightAligned: Set(keep.enumerated().filter { $0.element >= 1 && $0.element <= 9 }.map(\.offset)))
    for row in cells { t.add(keep.map { row[$0] }) }
    return t
  }

  /// An error figure: "0" for exact zero, else two significant digits in exponent form.
  public static func formatError(_ e: Double) -> String { e == 0 ? "0" : String(format: "%.1e", e) }

  static func trim(_ x: Double) -> String {
    x == x.rounded() ? String(Int(x)) : String(format: "%g", x)
  }

  // MARK: - CSV

  /// Column names of ``csv(_:)``, in order (documented in docs/compare-schema.md).
  public static let csvColumns = [
    "schema", "status", "version", "flags", "cpu", "threads", "seed", "table", "problem", "kind", "length", "key_length",
    "causal", "batch", "heads", "kv_heads", "dim", "method", "parameters", "result", "reason", "median_s", "min_s",
    "samples", "speedup", "gflops", "extra_bytes", "rel_error", "worst_row_error", "worst_row", "topk_recall",
    "needle_recall", "needle_key_recall", "flash_median_s", "mass90_fraction", "baseline_check_error",
  ]

  /// One row per result (`table` = `attention`) and per speed-only measurement (`speed-only`),
  /// with the run's metadata repeated on every row; RFC 4180 quoting.
  public static func csv(_ r: CompareReport) -> String {
    var lines = [csvColumns.joined(separator: ",")]
    let m = r.metadata
    func num(_ x: Double?) -> String { x.map { String(format: "%.6g", $0) } ?? "" }
    let meta = [r.schema, r.status, m.version, m.flags, m.cpu, String(m.threads), String(m.seed)]
    let params = Dictionary(r.methods.map { ($0.name, $0.parameters.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ";")) },
                            uniquingKeysWith: { a, _ in a })
    for x in r.results {
      guard let p = r.problem(x.problem) else { continue }
      let flash = r.results.first { $0.problem == x.problem && r.methods.first(where: { $0.baseline })?.name == $0.method }?.medianSeconds
      let row = meta + [
        "attention", p.id, p.kind, String(p.length), String(p.keyLength), String(p.causal), String(p.batch), String(p.heads),
        String(p.kvHeads), String(p.dim), x.method, params[x.method] ?? "", x.status.rawValue, x.reason ?? "",
        num(x.medianSeconds), num(x.minSeconds), x.samples.map { String(format: "%.6g", $0) }.joined(separator: ";"),
        num(x.speedup), num(x.gflops), num(x.extraBytes), num(x.relativeError), num(x.worstRowError),
        x.worstRow.map { "\($0.batch):\($0.head):\($0.row)" } ?? "", num(x.topKRecall), num(x.needleRecall),
        num(x.needleKeyRecall), num(flash), num(p.mass90Fraction), num(p.baselineCheckError),
      ]
      lines.append(row.map(quote).joined(separator: ","))
    }
    for x in r.speedOnly {
      let row = meta + [
        "speed-only", "", "gaussian", String(x.length), String(x.length), String(x.causal), "1", String(r.suite.heads),
        String(r.suite.heads), String(r.suite.dim), x.mixer, "", x.status.rawValue, x.reason ?? "", num(x.medianSeconds),
        num(x.samples.min()), x.samples.map { String(format: "%.6g", $0) }.joined(separator: ";"), num(x.speedupVsFlash),
        num(x.gflops), num(x.extraBytes), "", "", "", "", "", "", num(x.flashMedianSeconds), "", "",
      ]
      lines.append(row.map(quote).joined(separator: ","))
    }
    return lines.joined(separator: "\n") + "\n"
  }

  static func quote(_ s: String) -> String {
    guard s.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) else { return s }
    return "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\""
  }
}
