import Dispatch
import Foundation
import SubqCore
import Synchronization

/// Progress of a comparison on stderr: on a terminal, one bar redrawn in place (current method,
/// problem, elapsed time and ETA, refreshed every second); otherwise one plain line per finished
/// measurement.
///
/// The ETA assumes the remaining steps take as long per unit of weight (visible query/key pairs)
/// as the finished ones did; approximate methods are faster than that, so it errs long.
public final class CompareProgress: @unchecked Sendable {
  struct State {
    var doneWeight = 0.0
    var current: CompareStep? = nil
    var currentStart = 0.0
    var lastLineLength = 0
    var closed = false
  }
  private let state = Mutex(State())
  private let totalWeight: Double
  private let interactive: Bool
  private let write: @Sendable (String) -> Void
  private let start = monotonicSeconds()
  /// Set once in init; DispatchSource objects are thread-safe (hence @unchecked Sendable).
  private let timer: DispatchSourceTimer?

  /// - Parameters:
  ///   - steps: the plan, for the total weight.
  ///   - interactive: draw a bar (stderr is a terminal) instead of lines.
  ///   - write: where text goes (stderr).
  public init(steps: [CompareStep], interactive: Bool, write: @escaping @Sendable (String) -> Void) {
    totalWeight = steps.reduce(0) { $0 + $1.weight }
    self.interactive = interactive
    self.write = write
    if interactive {
      let t = DispatchSource.makeTimerSource(queue: .global())
      t.schedule(deadline: .now() + 1, repeating: 1)
      timer = t
    } else {
      timer = nil
    }
    timer?.setEventHandler { [weak self] in self?.redraw() }
    timer?.resume()
  }

  deinit { timer?.cancel() }

  /// Handles a runner event.
  public func handle(_ event: CompareEvent) {
    switch event {
    case .started(let step):
      state.withLock {
        $0.current = step
        $0.currentStart = monotonicSeconds()
      }
      if interactive { redraw() }
    case .finished(let step, let summary):
      let eta = state.withLock { s -> String in
        s.doneWeight += step.weight
        s.current = nil
        return etaText(s)
      }
      if interactive {
        redraw()
      } else {
        write("[\(step.index)/\(step.total)] \(step.method) \(step.problemLabel): \(summary)\(eta.isEmpty ? "" : "  (ETA \(eta))")\n")
      }
    }
  }

  /// Clears the bar (before the tables are printed or when stopping).
  public func close() {
    timer?.cancel()
    let clear = state.withLock { s -> Bool in
      defer { s.closed = true }
      return !s.closed && interactive
    }
    if clear { write("\r\u{1B}[2K") }
  }

  func etaText(_ s: State) -> String {
    let elapsed = monotonicSeconds() - start
    guard s.doneWeight > 0, totalWeight > s.doneWeight else { return "" }
    return formatDuration(elapsed / s.doneWeight * (totalWeight - s.doneWeight))
  }

  func redraw() {
    let line: String? = state.withLock { s in
      guard !s.closed else { return nil }
      let fraction = totalWeight > 0 ? min(1, s.doneWeight / totalWeight) : 0
      let cells = 24
      let filled = Int((fraction * Double(cells)).rounded())
      var text = "[" + String(repeating: "█", count: filled) + String(repeating: "░", count: cells - filled) + "]"
      if let c = s.current {
        text += " \(c.index)/\(c.total) \(c.method) · \(c.problemLabel) · \(formatDuration(monotonicSeconds() - s.currentStart))"
      }
      text += " · elapsed \(formatDuration(monotonicSeconds() - start))"
      let eta = etaText(s)
      if !eta.isEmpty { text += " · ETA \(eta)" }
      return "\r\u{1B}[2K" + text
    }
    if let line { write(line) }
  }
}

/// "42s", "3m05s", "1h02m".
public func formatDuration(_ s: Double) -> String {
  guard s.isFinite, s >= 0 else { return "—" }
  let t = Int(s.rounded())
  if t < 60 { return "\(t)s" }
  if t < 3600 { return String(format: "%dm%02ds", t / 60, t % 60) }
  return String(format: "%dh%02dm", t / 3600, (t % 3600) / 60)
}
