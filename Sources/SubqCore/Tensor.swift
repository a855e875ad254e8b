import Foundation

/// A dense, contiguous, row-major (C order) array of `Float` with a shape.
///
/// `Tensor` is a value type with copy-on-write storage: copies are cheap until one of them is
/// mutated. Storage is aligned to 64 bytes so SIMD kernels can load whole cache lines.
///
/// Attention tensors use the layout `[B, H, N, D]` (batch, heads, sequence, head dimension).
public struct Tensor: Sendable {
  /// The extent of each axis, outermost first.
  public internal(set) var shape: [Int]
  @usableFromInline var storage: TensorStorage

  /// Number of scalars (the product of `shape`; 1 for a rank-0 tensor).
  @inlinable public var count: Int { storage.count }
  /// Number of axes.
  @inlinable public var rank: Int { shape.count }

  /// A tensor of the given shape with every scalar equal to `value`.
  public init(shape: [Int], repeating value: Float = 0) {
    precondition(shape.allSatisfy { $0 >= 0 }, "Tensor: negative extent in shape \(shape)")
    self.shape = shape
    self.storage = TensorStorage(count: shape.reduce(1, *))
    storage.pointer.initialize(repeating: value, count: storage.count)
  }

  /// A tensor holding `scalars` in row-major order.
  /// - Throws: ``SubqError/shape(op:tensor:shape:reason:)`` when the count does not match the shape.
  public init(shape: [Int], scalars: some Collection<Float>) throws(SubqError) {
    guard shape.allSatisfy({ $0 >= 0 }) else {
      throw .shape(op: "tensor", tensor: "shape", shape: shape, reason: "extents must not be negative")
    }
    let n = shape.reduce(1, *)
    guard scalars.count == n else {
      throw .shape(op: "tensor", tensor: "scalars", shape: shape,
                   reason: "\(scalars.count) scalars given, the shape needs \(n)")
    }
    self.shape = shape
    self.storage = TensorStorage(count: n)
    _ = UnsafeMutableBufferPointer(start: storage.pointer, count: n).initialize(from: scalars)
  }

  /// A tensor whose scalars are written by `body` (which must write every one of them).
  public init(shape: [Int], initializingWith body: (UnsafeMutableBufferPointer<Float>) throws -> Void) rethrows {
    self.shape = shape
    self.storage = TensorStorage(count: shape.reduce(1, *))
    try body(UnsafeMutableBufferPointer(start: storage.pointer, count: storage.count))
  }

  /// The scalars in row-major order.
  public var scalars: [Float] { withUnsafeBufferPointer { Array($0) } }

  /// Read access to the scalars.
  @inlinable
  public func withUnsafeBufferPointer<R, E: Error>(_ body: (UnsafeBufferPointer<Float>) throws(E) -> R) throws(E) -> R {
    try body(UnsafeBufferPointer(start: storage.pointer, count: storage.count))
  }

  /// Write access to the scalars; copies the storage first if it is shared.
  @inlinable
  public mutating func withUnsafeMutableBufferPointer<R, E: Error>(
    _ body: (UnsafeMutableBufferPointer<Float>) throws(E) -> R
  ) throws(E) -> R {
    if !isKnownUniquelyReferenced(&storage) { storage = storage.copy() }
    return try body(UnsafeMutableBufferPointer(start: storage.pointer, count: storage.count))
  }

  /// The scalar at a flat (row-major) index.
  @inlinable
  public subscript(flat index: Int) -> Float {
    get {
      precondition(index >= 0 && index < count, "Tensor: flat index \(index) out of range 0..<\(count)")
      return storage.pointer[index]
    }
    set {
      precondition(index >= 0 && index < count, "Tensor: flat index \(index) out of range 0..<\(count)")
      if !isKnownUniquelyReferenced(&storage) { storage = storage.copy() }
      storage.pointer[index] = newValue
    }
  }

  /// The scalar at a multi-dimensional index.
  public subscript(_ index: Int...) -> Float {
    get { self[flat: flatIndex(index)] }
    set { self[flat: flatIndex(index)] = newValue }
  }

  /// Row-major flat offset of a multi-dimensional index.
  public func flatIndex(_ index: [Int]) -> Int {
    precondition(index.count == shape.count, "Tensor: index \(index) has rank \(index.count), tensor has rank \(rank)")
    var flat = 0
    for (i, n) in zip(index, shape) {
      precondition(i >= 0 && i < n, "Tensor: index \(index) out of range for shape \(shape)")
      flat = flat * n + i
    }
    return flat
  }

  /// The same scalars viewed with another shape of equal element count.
  /// - Throws: ``SubqError/shape(op:tensor:shape:reason:)`` when the counts differ.
  public func reshaped(_ newShape: [Int]) throws(SubqError) -> Tensor {
    guard newShape.allSatisfy({ $0 >= 0 }), newShape.reduce(1, *) == count else {
      throw .shape(op: "tensor.reshape", tensor: "tensor", shape: shape,
                   reason: "cannot view \(count) scalars as \(newShape)")
    }
    var t = self
    t.shape = newShape
    return t
  }

  /// The first index of a non-finite scalar (NaN or ±∞), if any.
  public func firstNonFinite() -> Int? {
    withUnsafeBufferPointer { p in
      // Vector scan: x - x is NaN exactly for NaN and ±∞.
      var i = 0
      let n = p.count
      let base = p.baseAddress!
      while i + 16 <= n {
        let v = UnsafeRawPointer(base + i).loadUnaligned(as: SIMD16<Float>.self)
        let z = v - v
        if any(z .!= z) { break }
        i += 16
      }
      while i < n {
        if !base[i].isFinite { return i }
        i += 1
      }
      return nil
    }
  }

  /// Multi-dimensional index of a flat offset.
  public func index(ofFlat flat: Int) -> [Int] {
    var r = flat
    var idx = [Int](repeating: 0, count: rank)
    for a in stride(from: rank - 1, through: 0, by: -1) where shape[a] > 0 {
      idx[a] = r % shape[a]
      r /= shape[a]
    }
    return idx
  }
}

extension Tensor: Equatable {
  /// Two tensors are equal when their shapes and every scalar are equal (NaN ≠ NaN).
  public static func == (a: Tensor, b: Tensor) -> Bool {
    guard a.shape == b.shape else { return false }
    if a.storage === b.storage { return a.withUnsafeBufferPointer { !$0.contains { $0.isNaN } } }
    return a.withUnsafeBufferPointer { pa in b.withUnsafeBufferPointer { pb in pa.elementsEqual(pb) } }
  }
}

extension Tensor: CustomStringConvertible {
  public var description: String {
    let head = withUnsafeBufferPointer { $0.prefix(8).map { String($0) }.joined(separator: ", ") }
    return "Tensor(shape: \(shape), [\(head)\(count > 8 ? ", …" : "")])"
  }
}

/// 64-byte aligned storage for `Tensor`, from ``TensorBufferCache/shared`` (large buffers are
/// reused from earlier tensors instead of faulting in fresh pages).
@usableFromInline
final class TensorStorage: @unchecked Sendable {
  @usableFromInline let pointer: UnsafeMutablePointer<Float>
  @usableFromInline let count: Int
  let capacity: Int

  @usableFromInline init(count: Int) {
    self.count = count
    let (raw, capacity) = TensorBufferCache.shared.allocate(byteCount: count * MemoryLayout<Float>.stride)
    self.capacity = capacity
    pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
  }

  @usableFromInline func copy() -> TensorStorage {
    let c = TensorStorage(count: count)
    c.pointer.initialize(from: pointer, count: count)
    return c
  }

  deinit { TensorBufferCache.shared.release(UnsafeMutableRawPointer(pointer), capacity: capacity) }
}
