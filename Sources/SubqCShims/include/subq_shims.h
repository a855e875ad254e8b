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

#endif
