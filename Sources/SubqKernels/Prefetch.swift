import SubqCShims

/// Prefetches the cache line holding `p` for reading (`prefetcht0` on x86, `prfm pldl1keep` on
/// arm64). A hint only: it never faults and may be ignored.
@inlinable @inline(__always)
package func prefetch(_ p: UnsafeRawPointer) {
  subq_prefetch(p)
}

/// Prefetches the `bytes` bytes from `p`, one cache line (64 bytes) at a time.
@inlinable @inline(__always)
package func prefetch(_ p: UnsafeRawPointer, bytes: Int) {
  var o = 0
  while o < bytes {
    subq_prefetch(p + o)
    o += 64
  }
}
