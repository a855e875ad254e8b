import SubqCore
import Testing

/// The cache's policy, on private instances (the shared one is used by every test running in
/// parallel, so its contents are not predictable here).
@Suite struct TensorBufferCacheTests {
  let mib = 1 << 20

  @Test("a freed large buffer is reused by the next request of about its size")
  func reuse() {
    let cache = TensorBufferCache(limitBytes: 64 * mib)
    let a = cache.allocate(byteCount: 3 * mib + 100)
    #expect(a.capacity >= 3 * mib + 100 && a.capacity % (64 << 10) == 0)
    #expect(Int(bitPattern: a.pointer) % TensorBufferCache.alignment == 0)
    cache.release(a.pointer, capacity: a.capacity)
    #expect(cache.cachedBytes == a.capacity)
    // A slightly smaller request (same 64 KiB granule) takes the same buffer.
    let b = cache.allocate(byteCount: 3 * mib + 1)
    #expect(b.pointer == a.pointer && b.capacity == a.capacity)
    #expect(cache.cachedBytes == 0)
    #expect(cache.statistics == .init(hits: 1, misses: 1, evictions: 0))
    cache.release(b.pointer, capacity: b.capacity)
  }

  @Test("a request never takes a buffer more than 1/8 larger, and takes the smallest that fits")
  func bestFit() {
    let cache = TensorBufferCache(limitBytes: 64 * mib)
    let big = cache.allocate(byteCount: 8 * mib)
    let fit = cache.allocate(byteCount: 4 * mib + mib / 4)
    let snug = cache.allocate(byteCount: 4 * mib)
    cache.release(big.pointer, capacity: big.capacity)
    cache.release(fit.pointer, capacity: fit.capacity)
    cache.release(snug.pointer, capacity: snug.capacity)
    // 4 MiB: both 4 MiB and 4.25 MiB are within 1/8; the smaller wins. 8 MiB is too large.
    let x = cache.allocate(byteCount: 4 * mib)
    #expect(x.pointer == snug.pointer)
    let y = cache.allocate(byteCount: 4 * mib)
    #expect(y.pointer == fit.pointer)
    let z = cache.allocate(byteCount: 4 * mib)
    #expect(z.pointer != big.pointer && z.capacity == 4 * mib)
    #expect(cache.cachedBytes == 8 * mib)
    for p in [x, y, z] { cache.release(p.pointer, capacity: p.capacity) }
  }

  @Test("the limit holds: the least recently freed buffers go first, oversized ones are released")
  func limitAndEviction() {
    let cache = TensorBufferCache(limitBytes: 10 * mib)
    let bufs = (0..<3).map { _ in cache.allocate(byteCount: 4 * mib) }
    for b in bufs { cache.release(b.pointer, capacity: b.capacity) }
    // Only two fit: the first freed was evicted when the third came back.
    #expect(cache.cachedBytes == 8 * mib)
    #expect(cache.statistics.evictions == 1)
    let again = cache.allocate(byteCount: 4 * mib)
    #expect(again.pointer == bufs[1].pointer || again.pointer == bufs[2].pointer)
    cache.release(again.pointer, capacity: again.capacity)
    let huge = cache.allocate(byteCount: 11 * mib)
    cache.release(huge.pointer, capacity: huge.capacity)
    #expect(cache.cachedBytes == 8 * mib)
    // Lowering the limit releases at once; 0 disables caching.
    cache.limitBytes = 4 * mib
    #expect(cache.cachedBytes == 4 * mib)
    cache.limitBytes = 0
    #expect(cache.cachedBytes == 0)
    let c = cache.allocate(byteCount: 2 * mib)
    cache.release(c.pointer, capacity: c.capacity)
    #expect(cache.cachedBytes == 0)
  }

  @Test("buffers of 4 MiB or more that may be cached are aligned for huge pages, and stay so when reused")
  func hugePageAlignment() {
    let cache = TensorBufferCache(limitBytes: 64 * mib)
    let big = cache.allocate(byteCount: TensorBufferCache.hugePageMinimum + 100)
    #expect(Int(bitPattern: big.pointer) % TensorBufferCache.hugePageBytes == 0)
    // Writable over the whole capacity (the huge-page hint covers only whole 2 MiB pages).
    big.pointer.initializeMemory(as: UInt8.self, repeating: 7, count: big.capacity)
    cache.release(big.pointer, capacity: big.capacity)
    // A cached buffer keeps its alignment when reused.
    let again = cache.allocate(byteCount: TensorBufferCache.hugePageMinimum + 100)
    #expect(again.pointer == big.pointer)
    cache.release(again.pointer, capacity: again.capacity)
  }

  @Test("small buffers are never cached")
  func small() {
    let cache = TensorBufferCache(limitBytes: 64 * mib)
    let a = cache.allocate(byteCount: TensorBufferCache.minimumBytes - 4)
    #expect(a.capacity == TensorBufferCache.minimumBytes - 4)
    cache.release(a.pointer, capacity: a.capacity)
    #expect(cache.cachedBytes == 0 && cache.statistics == .init())
  }

  @Test("purge releases everything; suspension bypasses the cache and nests")
  func purgeAndSuspend() {
    let cache = TensorBufferCache(limitBytes: 64 * mib)
    let a = cache.allocate(byteCount: 2 * mib)
    cache.release(a.pointer, capacity: a.capacity)
    cache.purge()
    #expect(cache.cachedBytes == 0)
    let b = cache.allocate(byteCount: 2 * mib)
    cache.release(b.pointer, capacity: b.capacity)
    cache.withCachingSuspended {
      #expect(cache.cachedBytes == 0)  // purged on entry
      cache.withCachingSuspended {}
      let c = cache.allocate(byteCount: 2 * mib)
      cache.release(c.pointer, capacity: c.capacity)
      #expect(cache.cachedBytes == 0)  // still suspended after the inner scope
    }
    let d = cache.allocate(byteCount: 2 * mib)
    cache.release(d.pointer, capacity: d.capacity)
    #expect(cache.cachedBytes == d.capacity)
  }

  @Test("SUBQ_TENSOR_CACHE_MB sets the limit; bad values are errors naming the variable")
  func environment() throws {
    let cache = TensorBufferCache(limitBytes: 64 * mib)
    try cache.applyEnvironment([:])
    #expect(cache.limitBytes == 64 * mib)
    try cache.applyEnvironment(["SUBQ_TENSOR_CACHE_MB": "12"])
    #expect(cache.limitBytes == 12 * mib)
    try cache.applyEnvironment(["SUBQ_TENSOR_CACHE_MB": "0"])
    #expect(cache.limitBytes == 0)
    for bad in ["-1", "1.5", "lots"] {
      #expect(throws: SubqError.argument(op: "tensor cache", name: "SUBQ_TENSOR_CACHE_MB", value: bad,
                                         reason: "must be a whole number of MiB (0 disables the cache)")) {
        try cache.applyEnvironment(["SUBQ_TENSOR_CACHE_MB": bad])
      }
    }
  }

  @Test("tensors keep their values through the shared cache and copies stay independent")
  func tensorsThroughSharedCache() throws {
    // Large enough to be cached: 2^19 floats = 2 MiB.
    let n = 1 << 19
    var a = try Tensor(shape: [n], scalars: (0..<n).map { Float($0 % 977) })
    let b = a
    a[flat: 5] = -1  // copy on write: b keeps its storage
    #expect(b[flat: 5] == 5 && a[flat: 5] == -1)
    #expect(a[flat: n - 1] == Float((n - 1) % 977) && b[flat: n - 1] == a[flat: n - 1])
  }
}
