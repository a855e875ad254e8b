import SubqKernels

/// An element type keys and values may be stored in; kernels compute in Float either way.
protocol KVElement {
  /// `laneWidth` elements at `p` as Float lanes.
  static func lane(_ p: UnsafePointer<Self>) -> Lane
  /// Element `i` as Float.
  static func float(_ p: UnsafePointer<Self>, _ i: Int) -> Float
}

extension Float: KVElement {
  @inline(__always) static func lane(_ p: UnsafePointer<Float>) -> Lane { loadLane(p) }
  @inline(__always) static func float(_ p: UnsafePointer<Float>, _ i: Int) -> Float { p[i] }
}

extension Float16: KVElement {
  @inline(__always) static func lane(_ p: UnsafePointer<Float16>) -> Lane { loadLane(p) }
  @inline(__always) static func float(_ p: UnsafePointer<Float16>, _ i: Int) -> Float { Float(p[i]) }
}
