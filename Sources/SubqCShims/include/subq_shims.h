// Small C helpers for what Swift cannot express. Everything here is `static inline`: Swift
// imports the bodies and the optimizer inlines them into the calling kernels.
#ifndef SUBQ_SHIMS_H
#define SUBQ_SHIMS_H

#include <string.h>

/// Hints the hardware to bring the cache line holding `p` into all cache levels (a read that will
/// come soon). Never faults, whatever `p` is. Swift has no prefetch intrinsic; kernels that stream
/// several separate memory regions (such as a paged KV cache's key and value pages) use it to keep
/// enough loads in flight.
static inline __attribute__((always_inline)) void subq_prefetch(const void *p) {
  __builtin_prefetch(p, 0, 3);
}

/// 8 and 16 floats; Swift imports these as SIMD8<Float> and SIMD16<Float>.
typedef float subq_float8 __attribute__((ext_vector_type(8)));
typedef float subq_float16 __attribute__((ext_vector_type(16)));
typedef _Float16 subq_half8 __attribute__((ext_vector_type(8)));
typedef _Float16 subq_half16 __attribute__((ext_vector_type(16)));

/// Loads 8 (16) IEEE half-precision values from `p` (any alignment) and widens them to float: one
/// `vcvtph2ps` with F16C or AVX-512, `fcvtl` pairs on arm64. (Swift's own vector conversion stays
/// out of line inside large kernels, and an element loop becomes scalar conversions.)
static inline __attribute__((always_inline)) subq_float8 subq_load_half8(const void *p) {
  subq_half8 h;
  memcpy(&h, p, sizeof h);
  return __builtin_convertvector(h, subq_float8);
}

static inline __attribute__((always_inline)) subq_float16 subq_load_half16(const void *p) {
  subq_half16 h;
  memcpy(&h, p, sizeof h);
  return __builtin_convertvector(h, subq_float16);
}

/// Whether some lane of `a` is greater than the same lane of `b` (NaN lanes are not): one compare
/// and a mask test. Swift's `any(a .> b)` on 8-lane vectors calls `SIMD8<Int32>.min()` out of line
/// inside the flash score tile on AVX2 builds.
static inline __attribute__((always_inline)) int subq_any_greater16(subq_float16 a, subq_float16 b) {
  return __builtin_reduce_or(a > b) != 0;
}
static inline __attribute__((always_inline)) int subq_any_greater8(subq_float8 a, subq_float8 b) {
  return __builtin_reduce_or(a > b) != 0;
}

/// Elements n ..< n + 16 of the concatenation a ++ b (a 16-float window starting n floats into
/// `a`): one two-source permute on AVX-512 (LLVM emits `vpermt2ps`). The neighborhood score tiles build the key vectors shifted by
/// 1 … 15 columns from aligned loads with these instead of loading each shifted vector, which
/// straddles two cache lines (such split loads cost a load port about 2.5 times an aligned load
/// on this machine).
#define SUBQ_ALIGN16(n) \
  static inline __attribute__((always_inline)) subq_float16 subq_align16_##n(subq_float16 a, subq_float16 b) { \
    return __builtin_shufflevector(a, b, n, n + 1, n + 2, n + 3, n + 4, n + 5, n + 6, n + 7, n + 8, n + 9, n + 10, \
                                   n + 11, n + 12, n + 13, n + 14, n + 15); \
  }
SUBQ_ALIGN16(1)
SUBQ_ALIGN16(2)
SUBQ_ALIGN16(3)
SUBQ_ALIGN16(4)
SUBQ_ALIGN16(5)
SUBQ_ALIGN16(6)
SUBQ_ALIGN16(7)
SUBQ_ALIGN16(8)
SUBQ_ALIGN16(9)
SUBQ_ALIGN16(10)
SUBQ_ALIGN16(11)
SUBQ_ALIGN16(12)
SUBQ_ALIGN16(13)
SUBQ_ALIGN16(14)
SUBQ_ALIGN16(15)
#undef SUBQ_ALIGN16

#if defined(__AVX512F__)
/// `v`, through an empty `asm` the optimizer cannot see into. Applied to loaded vectors before
/// `subq_align16_n`: otherwise LLVM folds the shift of two adjacent aligned loads back into one
/// load at the shifted address (a split load again).
static inline __attribute__((always_inline)) subq_float16 subq_opaque16(subq_float16 v) {
  __asm__("" : "+v"(v));
  return v;
}
#endif

/// Stores `v` at `p` (aligned to the vector's size) bypassing the caches (`vmovntps`): for output
/// rows written whole and not read again soon, so their lines are neither read from memory first
/// nor kept in the caches. Call `subq_store_fence` before other threads read them.
static inline __attribute__((always_inline)) void subq_stream16(float *p, subq_float16 v) {
  __builtin_nontemporal_store(v, (subq_float16 *)p);
}
static inline __attribute__((always_inline)) void subq_stream8(float *p, subq_float8 v) {
  __builtin_nontemporal_store(v, (subq_float8 *)p);
}
/// Orders the non-temporal stores before it ahead of every later store (`sfence` on x86-64).
static inline __attribute__((always_inline)) void subq_store_fence(void) {
#if defined(__x86_64__)
  __builtin_ia32_sfence();
#else
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

/// The even (odd) elements of the concatenation a ++ b: one two-source permute (`vpermt2ps` on
/// AVX-512; `uzp1`/`uzp2` pairs on arm64). On AVX-512 builds Swift's `SIMD32.evenHalf`/`oddHalf`
/// stay out of line in optimized kernels: a call per use, with the pair stored to memory and
/// reloaded (they took 13% of the neighborhood kernel's time in its register transposes). The
/// 8-lane versions keep the AVX2/arm64 transposes on the same code path.
static inline __attribute__((always_inline)) subq_float16 subq_even16(subq_float16 a, subq_float16 b) {
  return __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
}
static inline __attribute__((always_inline)) subq_float16 subq_odd16(subq_float16 a, subq_float16 b) {
  return __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}
static inline __attribute__((always_inline)) subq_float8 subq_even8(subq_float8 a, subq_float8 b) {
  return __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14);
}
static inline __attribute__((always_inline)) subq_float8 subq_odd8(subq_float8 a, subq_float8 b) {
  return __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15);
}

#if defined(__AVX512F__) && defined(__AVX512DQ__)
#include <immintrin.h>

/// 2^x for 16 floats in 7 instructions: f = x − ⌊x⌋ ∈ [0, 1) (vreduceps), 2^f by a degree-5
/// polynomial with 2^0 = 1 exactly (relative error 1.4e-7 in Float32, fitted here by iterated
/// weighted least squares), and vscalefps, which multiplies by 2^⌊x⌋ itself. No clamping and no
/// exponent-bit arithmetic: −∞ gives exactly 0 (vreduceps gives f = 0 there), results below the
/// smallest subnormal round to 0, results above Float's range are +∞, NaN stays NaN. Swift has no
/// names for these instructions, so `exp2Lane` calls this on AVX-512 builds.
static inline __attribute__((always_inline)) subq_float16 subq_exp2_16(subq_float16 v) {
  const __m512 x = (__m512)v;
  const __m512 f = _mm512_reduce_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(0.0018671307f), f, _mm512_set1_ps(0.0090170288f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.055799916f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.24016444f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.69315129f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return (subq_float16)_mm512_scalef_ps(p, x);
}
#endif

#endif
