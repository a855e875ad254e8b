/// A fast, seedable random number generator (xoshiro256**, seeded through SplitMix64).
///
/// Every random choice in Subquadratic — test data, sampled keys, hash projections — goes through
/// this generator, so a run is reproducible from its seed on every platform.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
  private var s0, s1, s2, s3: UInt64

  public init(seed: UInt64) {
    var x = seed
    func splitMix(_ x: inout UInt64) -> UInt64 {
      x &+= 0x9E37_79B9_7F4A_7C15
      var z = x
      z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
      z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
      return z ^ (z >> 31)
    }
    s0 = splitMix(&x); s1 = splitMix(&x); s2 = splitMix(&x); s3 = splitMix(&x)
  }

  @inlinable static func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 &- k)) }

  public mutating func next() -> UInt64 {
    let result = SeededGenerator.rotl(s1 &* 5, 7) &* 9
    let t = s1 << 17
    s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3
    s2 ^= t
    s3 = SeededGenerator.rotl(s3, 45)
    return result
  }

  /// A uniform `Double` in [0, 1).
  public mutating func nextUnit() -> Double { Double(next() >> 11) * 0x1.0p-53 }

  /// A standard normal sample (Box–Muller).
  public mutating func nextNormal() -> Double {
    var u1 = nextUnit()
    while u1 <= 0 { u1 = nextUnit() }
    let u2 = nextUnit()
    return (-2 * _log(u1)).squareRoot() * _cos(2 * Double.pi * u2)
  }
}

import Foundation
@usableFromInline func _log(_ x: Double) -> Double { Foundation.log(x) }
@usableFromInline func _cos(_ x: Double) -> Double { Foundation.cos(x) }

extension Tensor {
  /// A tensor of independent normal samples with the given mean and standard deviation.
  public static func randomNormal(shape: [Int], seed: UInt64, mean: Float = 0, std: Float = 1) -> Tensor {
    var g = SeededGenerator(seed: seed)
    return Tensor(shape: shape) { p in
      for i in p.indices { p[i] = mean + std * Float(g.nextNormal()) }
    }
  }

  /// A tensor of independent uniform samples in `range`.
  public static func randomUniform(shape: [Int], seed: UInt64, in range: ClosedRange<Float> = -1...1) -> Tensor {
    var g = SeededGenerator(seed: seed)
    let lo = Double(range.lowerBound), w = Double(range.upperBound - range.lowerBound)
    return Tensor(shape: shape) { p in
      for i in p.indices { p[i] = Float(lo + w * g.nextUnit()) }
    }
  }
}
