import SubqKernels

/// The elementwise feature maps φ of kernelized (linear) attention.
public enum FeatureMap: String, Sendable, CaseIterable, Codable {
  /// `elu(x) + 1`: x + 1 for x > 0, eˣ otherwise; strictly positive (Katharopoulos et al. 2020,
  /// TransNormer T2, LinFusion).
  case eluPlusOne = "elu+1"
  /// `max(x, 0)` (fast-transformers' alternative).
  case relu
  /// `elu(x)`: x for x > 0, eˣ − 1 otherwise; can be negative (TransNormer T1's NormAttention).
  case elu

  /// φ(x) in Double, for references.
  public func apply(_ x: Double) -> Double {
    switch self {
    case .eluPlusOne: return x > 0 ? x + 1 : _exp(x)
    case .relu: return Swift.max(x, 0)
    case .elu: return x > 0 ? x : _exp(x) - 1
    }
  }

  /// `dst[i] = φ(src[i])` for i in 0..<n, vectorized (e^x through `expLane`, relative error ≈ 1e-7).
  @inlinable
  func apply(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
    var i = 0
    let w = laneWidth
    let zero = Lane(), one = Lane(repeating: 1)
    switch self {
    case .eluPlusOne:
      while i + w <= n {
        let x = loadLane(src + i)
        let e = expLane(vmin(x, zero))
        storeLane(e.replacing(with: x + one, where: x .> zero), dst + i)
        i += w
      }
      while i < n { let x = src[i]; dst[i] = x > 0 ? x + 1 : exp2Scalar(x * 1.442_695_040_888_963_4); i += 1 }
    case .relu:
      while i + w <= n { storeLane(vmax(loadLane(src + i), zero), dst + i); i += w }
      while i < n { dst[i] = Swift.max(src[i], 0); i += 1 }
    case .elu:
      while i + w <= n {
        let x = loadLane(src + i)
        let e = expLane(vmin(x, zero)) - one
        storeLane(e.replacing(with: x, where: x .> zero), dst + i)
        i += w
      }
      while i < n { let x = src[i]; dst[i] = x > 0 ? x : exp2Scalar(x * 1.442_695_040_888_963_4) - 1; i += 1 }
    }
  }
}

import Foundation
@usableFromInline func _exp(_ x: Double) -> Double { Foundation.exp(x) }
