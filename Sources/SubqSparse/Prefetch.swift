// Software prefetch. Swift has no prefetch function; LLVM's `llvm.prefetch` intrinsic is reached
// by declaring it under its LLVM name (it becomes `prefetcht0`/`prefetchw` on x86-64, `prfm` on
// arm64, and a no-op where the target has none). Prefetches never fault and never block: they let
// the neighborhood kernel start fetching the next tile's queries and the next band's key rows from
// memory while it computes the current one.

@_silgen_name("llvm.prefetch.p0")
func _llvmPrefetch(_ address: UnsafeRawPointer, _ write: Int32, _ locality: Int32, _ dataCache: Int32)

/// Prefetches the cache line holding `p` for reading.
@inline(__always) func prefetchRead(_ p: UnsafeRawPointer) { _llvmPrefetch(p, 0, 3, 1) }

/// Prefetches the cache line holding `p` for writing.
@inline(__always) func prefetchWrite(_ p: UnsafeRawPointer) { _llvmPrefetch(p, 1, 3, 1) }

/// Prefetches the cache line holding `p` into the second-level cache only (`prefetcht1` on
/// x86-64): for data needed a while later, without evicting what the current loop reads from L1.
@inline(__always) func prefetchL2(_ p: UnsafeRawPointer) { _llvmPrefetch(p, 0, 2, 1) }
