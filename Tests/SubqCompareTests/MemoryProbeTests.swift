import SubqBench
import SubqCore
import Testing

/// `MemoryProbe.measure` runs its work with the shared tensor cache purged and bypassed, so a
/// buffer the cache holds cannot hide the work's allocations and buffers the work frees are not
/// kept. (The resident-size figures themselves are process-wide and change with the tests running
/// beside this one, so they are not checked here.)
@Suite struct MemoryProbeTests {
  @Test func measureBypassesTheTensorCache() {
    let cache = TensorBufferCache.shared
    // Leave a cached buffer behind (other tests may take it or add more: only "> 0" would be
    // racy, so nothing is expected before the probe).
    do { _ = Tensor(shape: [1 << 20], repeating: 1) }
    let (sum, _) = MemoryProbe.measure { () -> Float in
      // Purged on entry and bypassed until the end, whatever other threads allocate or free.
      #expect(cache.cachedBytes == 0)
      let t = Tensor(shape: [1 << 20], repeating: 2)  // 4 MiB: cached size
      let s = t.withUnsafeBufferPointer { $0.reduce(0, +) }
      _ = consume t
      #expect(cache.cachedBytes == 0)
      return s
    }
    #expect(sum == Float(2 << 20))
  }
}
