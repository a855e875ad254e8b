import Foundation
import SubqCore
import SubqKernels

/// How a KV cache stores keys and values.
public enum KVStorageType: String, Sendable, CaseIterable, Codable {
  /// IEEE single precision: 4 bytes per element, exact.
  case float32 = "f32"
  /// IEEE half precision: 2 bytes per element (half the bytes a memory-bound decode step reads),
  /// converted to Float32 inside the attention kernels. Values are rounded to nearest on write
  /// (relative error ≤ 2⁻¹¹); magnitudes above 65504 are rejected.
  case float16 = "f16"

  /// Bytes per stored element.
  public var bytes: Int { self == .float32 ? 4 : 2 }
}

/// A paged key/value cache for autoregressive decoding (vLLM's PagedAttention memory layout).
///
/// Keys and values of many sequences live in one pool of fixed-size **pages** of `pageSize`
/// tokens. Each sequence owns a **page table** — the pages holding its positions `0..<length`,
/// in order — so sequences grow one token at a time without copying, and memory is reserved a
/// page at a time instead of for the longest possible context.
///
/// - **Layers.** A page holds its tokens for every layer; one page table serves all layers (as in
///   vLLM). A step appends a position with ``extend(_:by:)`` and then each layer writes its keys
///   and values there with ``write(_:layer:at:keys:values:)``.
/// - **Sharing.** ``fork(_:)`` makes a new sequence that shares every page of its parent
///   (reference counted). The first write into a shared page copies it (copy on write), so a
///   shared prompt prefix is stored once for many continuations (beam search, parallel sampling).
/// - **Freeing.** ``free(_:)`` releases a sequence's pages; pages nobody references return to the
///   pool. A page is zeroed whenever it is handed out, so positions reserved but not yet written
///   read as zeros, never as another sequence's data.
///
/// **Memory layout.** For each layer, keys are `[pageCount][Hkv][pageSize][D]` and values
/// `[pageCount][Hkv][pageSize][Dv]`: the keys of one head within a page are contiguous rows, so
/// attention streams them straight from the pages (see ``PagedSequenceView``). Storage is
/// ``KVStorageType/float32`` or ``KVStorageType/float16``; the pool is allocated once, up front,
/// and untouched pages cost no physical memory on systems with lazy allocation.
///
/// **Threads.** Mutating methods must not run concurrently with each other or with attention
/// reading the cache; any number of attention calls may read it at once.
///
/// - Complexity: ``extend(_:by:)`` O(new pages · page bytes) for zeroing; ``write(_:layer:at:keys:values:)``
///   O(written elements) plus a page copy per shared page written; ``fork(_:)`` O(pages of the
///   sequence); ``free(_:)`` O(pages of the sequence).
public final class PagedKVCache {
  /// Shape and capacity of a cache.
  public struct Configuration: Sendable, Equatable {
    /// Transformer layers sharing the page tables.
    public var layers: Int
    /// Key/value heads per layer.
    public var kvHeads: Int
    /// Key width D and value width Dv.
    public var headDim: Int
    public var valueDim: Int
    /// Tokens per page.
    public var pageSize: Int
    /// Pages in the pool (the capacity is `pageCount · pageSize` tokens over all sequences).
    public var pageCount: Int
    /// Element type of the stored keys and values.
    public var storage: KVStorageType

    public init(
      layers: Int = 1, kvHeads: Int, headDim: Int, valueDim: Int? = nil, pageSize: Int = 64, pageCount: Int,
      storage: KVStorageType = .float32
    ) {
      self.layers = layers
      self.kvHeads = kvHeads
      self.headDim = headDim
      self.valueDim = valueDim ?? headDim
      self.pageSize = pageSize
      self.pageCount = pageCount
      self.storage = storage
    }

    /// Bytes one page occupies over all layers (keys and values).
    public var pageBytes: Int { layers * kvHeads * pageSize * (headDim + valueDim) * storage.bytes }
  }

  /// Identifies a sequence in a cache.
  public struct SequenceID: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    public var description: String { "sequence \(rawValue)" }
  }

  public let configuration: Configuration

  // Storage: per layer, one key region and one value region (raw bytes).
  private let keyStorage: [UnsafeMutableRawPointer]
  private let valueStorage: [UnsafeMutableRawPointer]
  /// Bytes between consecutive pages / heads / tokens in a layer's key (value) region.
  private let keyPageBytes: Int, keyHeadBytes: Int, keyRowBytes: Int
  private let valuePageBytes: Int, valueHeadBytes: Int, valueRowBytes: Int

  private var refCounts: [Int32]
  private var freeList: [Int32]
  private var tables: [Int: [Int32]] = [:]
  private var lengths: [Int: Int] = [:]
  private var nextID = 0

  /// Creates an empty cache and reserves its page pool.
  /// - Throws: ``SubqError/argument(op:name:value:reason:)`` for a non-positive dimension or page
  ///   count, or a pool too large to address.
  public init(_ configuration: Configuration) throws(SubqError) {
    let c = configuration
    let op = "kvcache"
    for (name, value) in [("layers", c.layers), ("kv heads", c.kvHeads), ("head dim", c.headDim), ("value dim", c.valueDim),
                          ("page size", c.pageSize), ("page count", c.pageCount)] where value < 1 {
      throw .argument(op: op, name: name, value: "\(value)", reason: "must be at least 1")
    }
    if c.pageCount > Int(Int32.max) {
      throw .argument(op: op, name: "page count", value: "\(c.pageCount)", reason: "must be below 2³¹")
    }
    let e = c.storage.bytes
    keyRowBytes = c.headDim * e
    keyHeadBytes = c.pageSize * keyRowBytes
    keyPageBytes = c.kvHeads * keyHeadBytes
    valueRowBytes = c.valueDim * e
    valueHeadBytes = c.pageSize * valueRowBytes
    valuePageBytes = c.kvHeads * valueHeadBytes
    let (kTotal, kOverflow) = keyPageBytes.multipliedReportingOverflow(by: c.pageCount)
    let (vTotal, vOverflow) = valuePageBytes.multipliedReportingOverflow(by: c.pageCount)
    if kOverflow || vOverflow {
      throw .argument(op: op, name: "page count", value: "\(c.pageCount)", reason: "the pool is too large to address")
    }
    self.configuration = c
    keyStorage = (0..<c.layers).map { _ in UnsafeMutableRawPointer.allocate(byteCount: kTotal, alignment: 64) }
    valueStorage = (0..<c.layers).map { _ in UnsafeMutableRawPointer.allocate(byteCount: vTotal, alignment: 64) }
    refCounts = [Int32](repeating: 0, count: c.pageCount)
    // Hand out low page numbers first.
    freeList = (0..<Int32(c.pageCount)).reversed()
  }

  deinit {
    for p in keyStorage { p.deallocate() }
    for p in valueStorage { p.deallocate() }
  }

  // MARK: - Inspection

  /// Pages not referenced by any sequence.
  public var freePageCount: Int { freeList.count }
  /// Pages referenced by at least one sequence.
  public var usedPageCount: Int { configuration.pageCount - freeList.count }
  /// The live sequences, in creation order.
  public var sequenceIDs: [SequenceID] { tables.keys.sorted().map(SequenceID.init) }

  /// Number of positions of `sequence`.
  public func length(of sequence: SequenceID) throws(SubqError) -> Int {
    try check(sequence, op: "kvcache.length")
    return lengths[sequence.rawValue]!
  }

  /// The pages holding `sequence`'s positions, in order (position t is in page `t / pageSize`).
  public func pageTable(of sequence: SequenceID) throws(SubqError) -> [Int] {
    try check(sequence, op: "kvcache.pageTable")
    return tables[sequence.rawValue]!.map(Int.init)
  }

  /// How many sequences reference `page` (0 when it is free).
  public func referenceCount(ofPage page: Int) -> Int {
    page >= 0 && page < refCounts.count ? Int(refCounts[page]) : 0
  }

  // MARK: - Sequences

  /// Starts an empty sequence.
  public func createSequence() -> SequenceID {
    let id = nextID
    nextID += 1
    tables[id] = []
    lengths[id] = 0
    return SequenceID(rawValue: id)
  }

  /// Appends `count` positions to `sequence` (allocating pages as needed) and returns them.
  /// Their keys and values read as zero until written with ``write(_:layer:at:keys:values:)``.
  /// - Throws: for an unknown sequence, a negative count, or too few free pages (nothing changes).
  @discardableResult
  public func extend(_ sequence: SequenceID, by count: Int) throws(SubqError) -> Range<Int> {
    let op = "kvcache.extend"
    try check(sequence, op: op)
    if count < 0 { throw .argument(op: op, name: "count", value: "\(count)", reason: "must be ≥ 0") }
    let n = lengths[sequence.rawValue]!
    let P = configuration.pageSize
    let have = tables[sequence.rawValue]!.count
    let need = max(0, (n + count + P - 1) / P - have)
    // New positions inside a shared, partly filled last page: copy it now, so the reserved
    // positions read as zeros (not as what a sibling sequence wrote there).
    let copyLast = count > 0 && n % P != 0 && refCounts[Int(tables[sequence.rawValue]![n / P])] > 1
    let pages = need + (copyLast ? 1 : 0)
    if pages > freeList.count {
      throw .argument(op: op, name: "pages", value: "\(pages) more needed", reason: "the cache is full (\(freeList.count) of \(configuration.pageCount) pages free)")
    }
    if copyLast { unshare(sequence, page: n / P) }
    for _ in 0..<need { tables[sequence.rawValue]!.append(allocatePage()) }
    lengths[sequence.rawValue] = n + count
    return n..<(n + count)
  }

  /// Writes the keys and values of positions `start..<start + n` of one layer.
  ///
  /// - Parameters:
  ///   - keys: `[Hkv, n, D]` (or `[1, Hkv, n, D]`).
  ///   - values: `[Hkv, n, Dv]` (or `[1, Hkv, n, Dv]`).
  /// - Throws: for an unknown sequence or layer, positions past the sequence's length (reserve
  ///   them with ``extend(_:by:)`` first), shapes that do not match, NaN or ±∞, or (Float16
  ///   storage) magnitudes above 65504. Nothing is written when it throws.
  public func write(_ sequence: SequenceID, layer: Int, at start: Int, keys: Tensor, values: Tensor) throws(SubqError) {
    let op = "kvcache.write"
    try check(sequence, op: op)
    let n = try checkTokens(op: op, layer: layer, keys: keys, values: values)
    let length = lengths[sequence.rawValue]!
    if start < 0 || start + n > length {
      throw .argument(op: op, name: "positions", value: "\(start)..<\(start + n)",
                      reason: "must lie within the sequence's \(length) positions (extend it first)")
    }
    if n == 0 { return }
    // Copy on write: unshare the pages this write touches (checking first that there is room).
    let P = configuration.pageSize
    let touched = (start / P)...((start + n - 1) / P)
    let shared = touched.filter { refCounts[Int(tables[sequence.rawValue]![$0])] > 1 }.count
    if shared > freeList.count {
      throw .argument(op: op, name: "pages", value: "\(shared) needed for copy on write",
                      reason: "the cache is full (\(freeList.count) of \(configuration.pageCount) pages free)")
    }
    for page in touched { unshare(sequence, page: page) }
    copyIn(sequence, layer: layer, at: start, count: n, keys: keys, values: values)
  }

  /// Appends tokens to a single-layer cache: ``extend(_:by:)`` then ``write(_:layer:at:keys:values:)``
  /// for layer 0. Returns the new positions.
  /// - Throws: as those two, and when the cache has more than one layer. Nothing changes when it
  ///   throws.
  @discardableResult
  public func append(_ sequence: SequenceID, keys: Tensor, values: Tensor) throws(SubqError) -> Range<Int> {
    let op = "kvcache.append"
    if configuration.layers != 1 {
      throw .unsupported(op: op, feature: "append with \(configuration.layers) layers", reason: "extend the sequence, then write each layer")
    }
    try check(sequence, op: op)
    let n = try checkTokens(op: op, layer: 0, keys: keys, values: values)
    // extend copies a shared last page and allocates fresh ones, so the new positions are unshared.
    let range = try extend(sequence, by: n)
    copyIn(sequence, layer: 0, at: range.lowerBound, count: n, keys: keys, values: values)
    return range
  }

  /// Validates tokens to write; returns their count.
  private func checkTokens(op: String, layer: Int, keys: Tensor, values: Tensor) throws(SubqError) -> Int {
    let c = configuration
    if layer < 0 || layer >= c.layers {
      throw .argument(op: op, name: "layer", value: "\(layer)", reason: "must be in 0..<\(c.layers)")
    }
    func dims(_ t: Tensor, _ name: String, _ width: Int) throws(SubqError) -> Int {
      let s = t.shape
      let ok = (s.count == 3 && s[0] == c.kvHeads && s[2] == width) || (s.count == 4 && s[0] == 1 && s[1] == c.kvHeads && s[3] == width)
      if !ok { throw .shape(op: op, tensor: name, shape: s, reason: "expected [\(c.kvHeads), n, \(width)] (kv heads, tokens, width)") }
      return s[s.count - 2]
    }
    let n = try dims(keys, "keys", c.headDim)
    let nv = try dims(values, "values", c.valueDim)
    if nv != n { throw .shape(op: op, tensor: "values", shape: values.shape, reason: "\(nv) tokens, keys have \(n)") }
    for (t, name) in [(keys, "keys"), (values, "values")] {
      if let bad = t.firstNonFinite() {
        throw .nonFinite(op: op, tensor: name, index: t.index(ofFlat: bad), value: SubqError.describe(t[flat: bad]))
      }
      if c.storage == .float16, let big = t.withUnsafeBufferPointer({ $0.firstIndex { abs($0) > 65504 } }) {
        throw .argument(op: op, name: name, value: "\(t[flat: big]) at \(t.index(ofFlat: big))", reason: "exceeds the float16 range (65504)")
      }
    }
    return n
  }

  /// Stores validated tokens into pages this sequence owns alone.
  private func copyIn(_ sequence: SequenceID, layer: Int, at start: Int, count n: Int, keys: Tensor, values: Tensor) {
    let c = configuration
    let P = c.pageSize
    let table = tables[sequence.rawValue]!
    keys.withUnsafeBufferPointer { kb in
      values.withUnsafeBufferPointer { vb in
        for h in 0..<c.kvHeads {
          for i in 0..<n {
            let t = start + i
            let page = Int(table[t / P]), slot = t % P
            let kDst = keyStorage[layer] + page * keyPageBytes + h * keyHeadBytes + slot * keyRowBytes
            let vDst = valueStorage[layer] + page * valuePageBytes + h * valueHeadBytes + slot * valueRowBytes
            store(kb.baseAddress! + (h * n + i) * c.headDim, to: kDst, count: c.headDim)
            store(vb.baseAddress! + (h * n + i) * c.valueDim, to: vDst, count: c.valueDim)
          }
        }
      }
    }
  }

  /// A new sequence with the same positions as `sequence`, sharing all of its pages until one of
  /// the two writes into a shared page (copy on write).
  public func fork(_ sequence: SequenceID) throws(SubqError) -> SequenceID {
    try check(sequence, op: "kvcache.fork")
    let table = tables[sequence.rawValue]!
    for page in table { refCounts[Int(page)] += 1 }
    let id = createSequence()
    tables[id.rawValue] = table
    lengths[id.rawValue] = lengths[sequence.rawValue]!
    return id
  }

  /// Shortens `sequence` to `length` positions, releasing pages it no longer needs.
  public func truncate(_ sequence: SequenceID, to length: Int) throws(SubqError) {
    let op = "kvcache.truncate"
    try check(sequence, op: op)
    let n = lengths[sequence.rawValue]!
    if length < 0 || length > n {
      throw .argument(op: op, name: "length", value: "\(length)", reason: "must be in 0...\(n)")
    }
    let P = configuration.pageSize
    let keep = (length + P - 1) / P
    var table = tables[sequence.rawValue]!
    for page in table[keep...] { release(page) }
    table.removeLast(table.count - keep)
    tables[sequence.rawValue] = table
    lengths[sequence.rawValue] = length
    // Zero the dropped tail of the last page when nobody else sees it.
    if length % P != 0, let last = table.last, refCounts[Int(last)] == 1 {
      zero(page: Int(last), from: length % P)
    }
  }

  /// Ends `sequence` and releases its pages; pages no other sequence references become free.
  public func free(_ sequence: SequenceID) throws(SubqError) {
    try check(sequence, op: "kvcache.free")
    for page in tables[sequence.rawValue]! { release(page) }
    tables[sequence.rawValue] = nil
    lengths[sequence.rawValue] = nil
  }

  // MARK: - Reading

  /// Raw read access to one layer of `sequence`, for attention kernels (valid until the cache is
  /// next mutated).
  public func view(_ sequence: SequenceID, layer: Int) throws(SubqError) -> PagedSequenceView {
    let op = "kvcache.view"
    try check(sequence, op: op)
    if layer < 0 || layer >= configuration.layers {
      throw .argument(op: op, name: "layer", value: "\(layer)", reason: "must be in 0..<\(configuration.layers)")
    }
    return PagedSequenceView(
      length: lengths[sequence.rawValue]!, pageSize: configuration.pageSize, pages: tables[sequence.rawValue]!,
      storage: configuration.storage, headDim: configuration.headDim, valueDim: configuration.valueDim,
      keyBase: UnsafeRawPointer(keyStorage[layer]), keyPageBytes: keyPageBytes, keyHeadBytes: keyHeadBytes,
      valueBase: UnsafeRawPointer(valueStorage[layer]), valuePageBytes: valuePageBytes, valueHeadBytes: valueHeadBytes)
  }

  /// The keys of `positions` of one layer as Float32 `[Hkv, n, D]`, gathered from the pages.
  public func keys(_ sequence: SequenceID, layer: Int, positions: [Int]) throws(SubqError) -> Tensor {
    try gather(sequence, layer: layer, positions: positions, keys: true)
  }

  /// The values of `positions` of one layer as Float32 `[Hkv, n, Dv]`, gathered from the pages.
  public func values(_ sequence: SequenceID, layer: Int, positions: [Int]) throws(SubqError) -> Tensor {
    try gather(sequence, layer: layer, positions: positions, keys: false)
  }

  private func gather(_ sequence: SequenceID, layer: Int, positions: [Int], keys: Bool) throws(SubqError) -> Tensor {
    let op = keys ? "kvcache.keys" : "kvcache.values"
    let v = try view(sequence, layer: layer)
    for t in positions where t < 0 || t >= v.length {
      throw .argument(op: op, name: "position", value: "\(t)", reason: "must be in 0..<\(v.length)")
    }
    let H = configuration.kvHeads, w = keys ? configuration.headDim : configuration.valueDim
    return Tensor(shape: [H, positions.count, w]) { out in
      for h in 0..<H {
        for (i, t) in positions.enumerated() {
          let dst = out.baseAddress! + (h * positions.count + i) * w
          v.readRow(keys ? v.keyRow(t, head: h) : v.valueRow(t, head: h), count: w, into: dst)
        }
      }
    }
  }

  // MARK: - Internals

  private func check(_ sequence: SequenceID, op: String) throws(SubqError) {
    if tables[sequence.rawValue] == nil {
      throw .argument(op: op, name: "sequence", value: "\(sequence.rawValue)", reason: "no such sequence in this cache (never created, or freed)")
    }
  }

  private func allocatePage() -> Int32 {
    let page = freeList.removeLast()
    refCounts[Int(page)] = 1
    zero(page: Int(page), from: 0)
    return page
  }

  private func release(_ page: Int32) {
    refCounts[Int(page)] -= 1
    if refCounts[Int(page)] == 0 { freeList.append(page) }
  }

  /// Zeroes slots `from..<pageSize` of every head and layer of `page`.
  private func zero(page: Int, from slot: Int) {
    let c = configuration
    for l in 0..<c.layers {
      for h in 0..<c.kvHeads {
        (keyStorage[l] + page * keyPageBytes + h * keyHeadBytes + slot * keyRowBytes)
          .initializeMemory(as: UInt8.self, repeating: 0, count: (c.pageSize - slot) * keyRowBytes)
        (valueStorage[l] + page * valuePageBytes + h * valueHeadBytes + slot * valueRowBytes)
          .initializeMemory(as: UInt8.self, repeating: 0, count: (c.pageSize - slot) * valueRowBytes)
      }
    }
  }

  /// Gives `sequence` its own copy of its page number `index` if that page is shared.
  private func unshare(_ sequence: SequenceID, page index: Int) {
    let old = Int(tables[sequence.rawValue]![index])
    guard refCounts[old] > 1 else { return }
    let new = Int(allocatePage())
    // Copy the positions this sequence has in the page (the rest stays zero).
    let P = configuration.pageSize
    let valid = min(P, lengths[sequence.rawValue]! - index * P)
    let c = configuration
    for l in 0..<c.layers {
      for h in 0..<c.kvHeads {
        (keyStorage[l] + new * keyPageBytes + h * keyHeadBytes)
          .copyMemory(from: keyStorage[l] + old * keyPageBytes + h * keyHeadBytes, byteCount: valid * keyRowBytes)
        (valueStorage[l] + new * valuePageBytes + h * valueHeadBytes)
          .copyMemory(from: valueStorage[l] + old * valuePageBytes + h * valueHeadBytes, byteCount: valid * valueRowBytes)
      }
    }
    refCounts[old] -= 1
    tables[sequence.rawValue]![index] = Int32(new)
  }

  private func store(_ src: UnsafePointer<Float>, to dst: UnsafeMutableRawPointer, count: Int) {
    switch configuration.storage {
    case .float32:
      dst.copyMemory(from: src, byteCount: count * 4)
    case .float16:
      let d = dst.assumingMemoryBound(to: Float16.self)
      for i in 0..<count { d[i] = Float16(src[i]) }
    }
  }
}

/// Read access to one layer of one sequence of a ``PagedKVCache``: its length, page table and
/// where each key and value row lives. Attention kernels (split-KV decoding, and methods that
/// gather selected keys) read the pages through it without copying.
///
/// The key row of position t and head h starts at
/// `keyBase + pages[t / pageSize] · keyPageBytes + h · keyHeadBytes + (t % pageSize) · D · bytes`,
/// and the rows of one head within a page are contiguous. A view stays valid until its cache is
/// next mutated.
public struct PagedSequenceView: @unchecked Sendable {
  /// Number of positions.
  public let length: Int
  public let pageSize: Int
  /// Page numbers, in position order.
  public let pages: [Int32]
  public let storage: KVStorageType
  public let headDim: Int
  public let valueDim: Int
  public let keyBase: UnsafeRawPointer
  public let keyPageBytes: Int
  public let keyHeadBytes: Int
  public let valueBase: UnsafeRawPointer
  public let valuePageBytes: Int
  public let valueHeadBytes: Int

  /// Start of the key row of position `t` (0 ≤ t < length) of key/value head `head`.
  @inlinable public func keyRow(_ t: Int, head: Int) -> UnsafeRawPointer {
    keyBase + Int(pages[t / pageSize]) * keyPageBytes + head * keyHeadBytes + (t % pageSize) * headDim * storage.bytes
  }

  /// Start of the value row of position `t` of key/value head `head`.
  @inlinable public func valueRow(_ t: Int, head: Int) -> UnsafeRawPointer {
    valueBase + Int(pages[t / pageSize]) * valuePageBytes + head * valueHeadBytes + (t % pageSize) * valueDim * storage.bytes
  }

  /// Converts `count` stored elements at `row` to Float32.
  public func readRow(_ row: UnsafeRawPointer, count: Int, into dst: UnsafeMutablePointer<Float>) {
    switch storage {
    case .float32: dst.update(from: row.assumingMemoryBound(to: Float.self), count: count)
    case .float16:
      let h = row.assumingMemoryBound(to: Float16.self)
      for i in 0..<count { dst[i] = Float(h[i]) }
    }
  }
}
