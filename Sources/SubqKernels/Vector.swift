// Basic vector primitives over Float arrays, each an unrolled SIMD main loop with independent
// accumulators, a single-lane loop, and a scalar tail (ggml's `vec.h` shape).

/// Σ a[i]·b[i] for i in 0..<n.
@inlinable
package func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
  var s0 = Lane(), s1 = Lane(), s2 = Lane(), s3 = Lane()
  var i = 0
  let w = laneWidth
  while i + 4 * w <= n {
    s0 = fmadd(s0, loadLane(a + i), loadLane(b + i))
    s1 = fmadd(s1, loadLane(a + i + w), loadLane(b + i + w))
    s2 = fmadd(s2, loadLane(a + i + 2 * w), loadLane(b + i + 2 * w))
    s3 = fmadd(s3, loadLane(a + i + 3 * w), loadLane(b + i + 3 * w))
    i += 4 * w
  }
  while i + w <= n {
    s0 = fmadd(s0, loadLane(a + i), loadLane(b + i))
    i += w
  }
  var s = hsum((s0 + s1) + (s2 + s3))
  while i < n {
    s = fmadd(s, a[i], b[i])
    i += 1
  }
  return s
}

/// y[i] += alpha · x[i] for i in 0..<n.
@inlinable
package func axpy(_ alpha: Float, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
  let a = Lane(repeating: alpha)
  var i = 0
  let w = laneWidth
  while i + 2 * w <= n {
    storeLane(fmadd(loadLane(y + i), a, loadLane(x + i)), y + i)
    storeLane(fmadd(loadLane(y + i + w), a, loadLane(x + i + w)), y + i + w)
    i += 2 * w
  }
  while i + w <= n {
    storeLane(fmadd(loadLane(y + i), a, loadLane(x + i)), y + i)
    i += w
  }
  while i < n {
    y[i] = fmadd(y[i], alpha, x[i])
    i += 1
  }
}

/// x[i] *= alpha for i in 0..<n.
@inlinable
package func scale(_ x: UnsafeMutablePointer<Float>, _ alpha: Float, _ n: Int) {
  let a = Lane(repeating: alpha)
  var i = 0
  let w = laneWidth
  while i + w <= n {
    storeLane(loadLane(x + i) * a, x + i)
    i += w
  }
  while i < n {
    x[i] *= alpha
    i += 1
  }
}

/// max x[i] for i in 0..<n (-∞ when n == 0).
@inlinable
package func maxElement(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
  var m0 = Lane(repeating: -.infinity), m1 = m0
  var i = 0
  let w = laneWidth
  while i + 2 * w <= n {
    m0 = vmax(m0, loadLane(x + i))
    m1 = vmax(m1, loadLane(x + i + w))
    i += 2 * w
  }
  while i + w <= n {
    m0 = vmax(m0, loadLane(x + i))
    i += w
  }
  var m = hmax(vmax(m0, m1))
  while i < n {
    if x[i] > m { m = x[i] }
    i += 1
  }
  return m
}

/// x[i] = e^{x[i] - shift}, returning Σ of the results (the softmax numerator and its sum).
@inlinable
package func expShiftSum(_ x: UnsafeMutablePointer<Float>, shift: Float, _ n: Int) -> Float {
  let s = Lane(repeating: shift)
  var acc = Lane()
  var i = 0
  let w = laneWidth
  while i + w <= n {
    let e = expLane(loadLane(x + i) - s)
    storeLane(e, x + i)
    acc += e
    i += w
  }
  var total = hsum(acc)
  while i < n {
    let e = exp2Scalar((x[i] - shift) * 1.442_695_040_888_963_4)
    x[i] = e
    total += e
    i += 1
  }
  return total
}
