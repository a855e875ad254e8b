import Foundation
import Subquadratic

/// One exact-attention test case: shapes and every option the exact kernels share (masking,
/// softcap, ALiBi, key lengths, packed sequences, layout). The forward, backward and split-KV
/// suites check their kernels on the same kinds of cases against the Float64 reference.
public struct AttentionCase: CustomStringConvertible, Sendable {
  public var b: Int, hq: Int, hkv: Int, nq: Int, nk: Int, d: Int, dv: Int
  public var causal: Bool
  public var align: CausalAlignment
  public var window: AttentionWindow
  public var softcap: Float?
  public var alibi: Bool
  public var keyLengths: [Int]?
  public var varlen: ([Int], [Int])?
  public var layout: AttentionLayout

  public init(
    b: Int = 1, hq: Int = 2, hkv: Int = 2, nq: Int = 65, nk: Int = 65, d: Int = 64, dv: Int = 64,
    causal: Bool = false, align: CausalAlignment = .bottomRight, window: AttentionWindow = .unbounded,
    softcap: Float? = nil, alibi: Bool = false, keyLengths: [Int]? = nil, varlen: ([Int], [Int])? = nil,
    layout: AttentionLayout = .bhsd
  ) {
    self.b = b; self.hq = hq; self.hkv = hkv; self.nq = nq; self.nk = nk; self.d = d; self.dv = dv
    self.causal = causal; self.align = align; self.window = window; self.softcap = softcap; self.alibi = alibi
    self.keyLengths = keyLengths; self.varlen = varlen; self.layout = layout
  }

  public var description: String {
    var s = "B\(b) H\(hq):\(hkv) Nq\(nq) Nk\(nk) D\(d) Dv\(dv) \(layout)"
    if causal { s += " causal(\(align.rawValue))" }
    if window != .unbounded { s += " window(\(window.left.map(String.init) ?? "∞"),\(window.right.map(String.init) ?? "∞"))" }
    if let softcap { s += " softcap \(softcap)" }
    if alibi { s += " alibi" }
    if let keyLengths { s += " keylens \(keyLengths)" }
    if let varlen { s += " varlen \(varlen.0) \(varlen.1)" }
    return s
  }

  /// The shape of a tensor with `h` heads, `n` rows of width `x` in the case's layout.
  public func shape(_ h: Int, _ n: Int, _ x: Int) -> [Int] { layout == .bhsd ? [b, h, n, x] : [b, n, h, x] }

  /// The options of the case (ALiBi slopes 2^(−8(h+1)/Hq), as ALiBi's paper).
  public var options: AttentionOptions {
    var o = AttentionOptions(causal: causal, alignment: align, window: window, softcap: softcap, keyLengths: keyLengths, layout: layout)
    if alibi {
      o.alibiSlopes = Tensor(shape: [hq]) { p in for h in p.indices { p[h] = Float(pow(2.0, -8.0 * Double(h + 1) / Double(hq))) } }
    }
    if let (cq, ck) = varlen {
      o.cuSeqlensQ = cq
      o.cuSeqlensK = ck
    }
    return o
  }

  /// Fresh N(0, 1) Q, K and V (seeds `seed`, `seed + 1`, `seed + 2`) and the case's options. Keys
  /// and values past a sequence's key length hold huge values (3e4 and 1e30), so a kernel that
  /// reads them gives a loudly wrong result.
  public func inputs(seed: UInt64) -> (q: Tensor, k: Tensor, v: Tensor, options: AttentionOptions) {
    let q = Tensor.randomNormal(shape: shape(hq, nq, d), seed: seed)
    var k = Tensor.randomNormal(shape: shape(hkv, nk, d), seed: seed + 1)
    var v = Tensor.randomNormal(shape: shape(hkv, nk, dv), seed: seed + 2)
    if let kl = keyLengths {
      fillRows(&k, layout: layout, from: kl, value: 3e4)
      fillRows(&v, layout: layout, from: kl, value: 1e30)
    }
    return (q, k, v, options)
  }
}
