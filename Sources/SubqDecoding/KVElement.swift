import SubqKernels

/// An element type keys and values may be stored in; kernels compute in Float either way.
protocol KVElement {
  /// `2 · laneWidth` elements at `p` as two Float lanes, in order.
  static func lane2(_ p: UnsafePointer<Self>) -> (Lane, Lane)
  /// `laneWidth` elements at `p` as Float lanes, in order.
  static func lane(_ p: UnsafePointer<Self>) -> Lane
  /// Element `i` as Float.
  static func float(_ p: UnsafePointer<Self>, _ i: Int) -> Float
}

extension Float: KVElement {
  @inline(__always) static func lane2(_ p: UnsafePointer<Float>) -> (Lane, Lane) { (loadLane(p), loadLane(p + Lane.scalarCount)) }
  @inline(__always) static func lane(_ p: UnsafePointer<Float>) -> Lane { loadLane(p) }
  @inline(__always) static func float(_ p: UnsafePointer<Float>, _ i: Int) -> Float { p[i] }
}

extension Float16: KVElement {
  /// Widened with `vcvtph2ps` (see `loadLane(_: UnsafePointer<Float16>)` in SubqKernels).
  @inline(__always) static func lane2(_ p: UnsafePointer<Float16>) -> (Lane, Lane) { (loadLane(p), loadLane(p + Lane.scalarCount)) }
  @inline(__always) static func lane(_ p: UnsafePointer<Float16>) -> Lane { loadLane(p) }
  @inline(__always) static func float(_ p: UnsafePointer<Float16>, _ i: Int) -> Float { Float(p[i]) }
}
