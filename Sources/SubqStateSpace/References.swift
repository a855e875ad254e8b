import Foundation
import SubqCore

/// Plain Float64 loops that state what the fast scans compute. They are the specification the
/// tests check against; they run on one thread and are meant for small inputs.
public enum StateSpaceReference {
  /// mamba's `selective_scan_ref`, step by step in Double.
  ///
  /// Returns the output `[B, D, L]` and the last state `[B, D, N]`, flattened row-major.
  public static func selectiveScan(_ x: SelectiveScanInputs) throws(SubqError) -> (output: [Double], lastState: [Double]) {
    let s = try ScanShape.validate(x, op: "selective-scan.reference")
    let (nb, nd, nl, nn) = (s.batch, s.channels, s.length, s.state)
    let u = x.u.scalars.map(Double.init), dl = x.delta.scalars.map(Double.init)
    let a = x.A.scalars.map(Double.init), bm = x.B.scalars.map(Double.init), cm = x.C.scalars.map(Double.init)
    let skip = x.D?.scalars.map(Double.init), z = x.z?.scalars.map(Double.init)
    let bias = x.deltaBias?.scalars.map(Double.init), h0 = x.initialState?.scalars.map(Double.init)
    var out = [Double](repeating: 0, count: nb * nd * nl)
    var last = [Double](repeating: 0, count: nb * nd * nn)
    for b in 0..<nb {
      for d in 0..<nd {
        let gb = d / (nd / s.groupsB), gc = d / (nd / s.groupsC)
        var h = (0..<nn).map { h0?[(b * nd + d) * nn + $0] ?? 0 }
        for t in 0..<nl {
          let i = (b * nd + d) * nl + t
          var dt = dl[i] + (bias?[d] ?? 0)
          if x.deltaSoftplus { dt = softplus(dt) }
          var y = 0.0
          for n in 0..<nn {
            let bv = bm[((b * s.groupsB + gb) * nn + n) * nl + t]
            let cv = cm[((b * s.groupsC + gc) * nn + n) * nl + t]
            h[n] = Foundation.exp(dt * a[d * nn + n]) * h[n] + dt * bv * u[i]
            y += cv * h[n]
          }
          if let skip { y += skip[d] * u[i] }
          if let z { y *= silu(z[i]) }
          out[i] = y
        }
        for n in 0..<nn { last[(b * nd + d) * nn + n] = h[n] }
      }
    }
    return (out, last)
  }
}
