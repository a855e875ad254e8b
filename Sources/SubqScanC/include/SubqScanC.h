// AVX-512 block kernel of the selective scan, as a C header of static inline functions so that
// Swift code importing it gets them inlined. Swift cannot name the two instructions this needs
// (vscalefps for an 8-operation exponential, and two-source lane shuffles for a transposing
// reduction: LLVM turns Swift's element-by-element shuffles into long blend sequences), so this
// one block lives here. Defined only when the build targets AVX-512 (the Swift side checks
// SUBQ_AVX512); other builds use the Swift kernel.
#ifndef SUBQ_SCAN_C_H
#define SUBQ_SCAN_C_H

#if defined(__AVX512F__)
#include <immintrin.h>

/// 16 steps of h[t] = exp2(a2·Δ[t])·h[t−1] + B[t]·(Δ[t]·u[t]) for one channel with a state of
/// 16 floats (a2 = A·log2 e), writing y[t] = Σ_n C[t][n]·h[t][n] for the 16 steps.
///
/// - h: the state, 16 floats, read and updated.
/// - a2: 16 floats. sd, sdu: Δ and Δ·u of the 16 steps.
/// - bt, ct: B and C of the first step, 16 floats per step, `stride` floats apart.
/// - y: 16 outputs.
///
/// exp2 is 2^f·2^n with n = round(x), f = x − n ∈ [−½, ½], 2^f a degree-5 polynomial
/// (relative error 2.3e-7) and vscalefps applying 2^n: exact 0 far below, +inf far above, NaN
/// kept, with no clamping. The 16 outputs are summed by a transposing tree of two-source lane
/// shuffles (3 operations per step) and one final permutation.
static inline void subq_scan_block16(float *h, const float *a2, const float *sd, const float *sdu,
                                     const float *bt, const float *ct, long stride, float *y) {
  const __m512 c0 = _mm512_set1_ps(1.0000001f), c1 = _mm512_set1_ps(0.69314694f), c2 = _mm512_set1_ps(0.24022122f);
  const __m512 c3 = _mm512_set1_ps(0.055507425f), c4 = _mm512_set1_ps(0.0096754599f), c5 = _mm512_set1_ps(0.0013266971f);
  __m512 a = _mm512_loadu_ps(a2);
  __m512 s = _mm512_loadu_ps(h);
  __m512 p[16];
  for (int j = 0; j < 16; j++) {
    __m512 x = _mm512_mul_ps(a, _mm512_set1_ps(sd[j]));
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n);
    __m512 q = _mm512_fmadd_ps(c5, f, c4);
    q = _mm512_fmadd_ps(q, f, c3);
    q = _mm512_fmadd_ps(q, f, c2);
    q = _mm512_fmadd_ps(q, f, c1);
    q = _mm512_fmadd_ps(q, f, c0);
    __m512 dA = _mm512_scalef_ps(q, n);
    __m512 bu = _mm512_mul_ps(_mm512_loadu_ps(bt + j * stride), _mm512_set1_ps(sdu[j]));
    s = _mm512_fmadd_ps(dA, s, bu);
    p[j] = _mm512_mul_ps(s, _mm512_loadu_ps(ct + j * stride));
  }
  _mm512_storeu_ps(h, s);
  // Level 1: [x.lo256 + x.hi256 | y.lo256 + y.hi256].
  __m512 t[8];
  for (int i = 0; i < 8; i++)
    t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(p[2 * i], p[2 * i + 1], 0x44), _mm512_shuffle_f32x4(p[2 * i], p[2 * i + 1], 0xEE));
  // Level 2: 128-bit lanes [x.l0 + x.l1, x.l2 + x.l3, y.l0 + y.l1, y.l2 + y.l3].
  __m512 u[4];
  for (int i = 0; i < 4; i++)
    u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0x88), _mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0xDD));
  // Level 3: per 128-bit lane [x0 + x2, x1 + x3, y0 + y2, y1 + y3].
  __m512 v0 = _mm512_add_ps(_mm512_shuffle_ps(u[0], u[1], 0x44), _mm512_shuffle_ps(u[0], u[1], 0xEE));
  __m512 v1 = _mm512_add_ps(_mm512_shuffle_ps(u[2], u[3], 0x44), _mm512_shuffle_ps(u[2], u[3], 0xEE));
  // Level 4: per 128-bit lane [x0 + x1, x2 + x3, y0 + y1, y2 + y3].
  __m512 w = _mm512_add_ps(_mm512_shuffle_ps(v0, v1, 0x88), _mm512_shuffle_ps(v0, v1, 0xDD));
  // Output j sits in lane (j mod 4)·4 + j/4.
  const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
  _mm512_storeu_ps(y, _mm512_permutexvar_ps(order, w));
}

/// 2^x lane-wise for any x (see subq_scan_block16).
static inline __m512 subq_exp2_16(__m512 x) {
  __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_sub_ps(x, n);
  __m512 q = _mm512_fmadd_ps(_mm512_set1_ps(0.0013266971f), f, _mm512_set1_ps(0.0096754599f));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(0.055507425f));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(0.24022122f));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(0.69314694f));
  q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(1.0000001f));
  return _mm512_scalef_ps(q, n);
}

/// 1/d lane-wise: vrcp14ps and one Newton step (relative error ≈ 1e-8), no division.
static inline __m512 subq_recip16(__m512 d) {
  __m512 r = _mm512_rcp14_ps(d);
  return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
}

/// ln w lane-wise for positive normal w: w = m·2^k (getexp/getmant), m ∈ [√½, √2),
/// ln m = 2·atanh(s), s = (m − 1)/(m + 1), odd series to s⁹ (relative error ≈ 2e-7).
static inline __m512 subq_log16(__m512 w) {
  __m512 k = _mm512_getexp_ps(w);
  __m512 m = _mm512_getmant_ps(w, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
  __mmask16 big = _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.41421356f), _CMP_GT_OQ);
  m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5f));
  k = _mm512_mask_add_ps(k, big, k, _mm512_set1_ps(1.0f));
  __m512 s = _mm512_mul_ps(_mm512_sub_ps(m, _mm512_set1_ps(1.0f)), subq_recip16(_mm512_add_ps(m, _mm512_set1_ps(1.0f))));
  __m512 s2 = _mm512_mul_ps(s, s);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(2.0f / 9), s2, _mm512_set1_ps(2.0f / 7));
  p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(2.0f / 5));
  p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(2.0f / 3));
  p = _mm512_fmadd_ps(p, s2, _mm512_set1_ps(2.0f));
  return _mm512_fmadd_ps(k, _mm512_set1_ps(0.69314718f), _mm512_mul_ps(s, p));
}

/// The per-step scalars of a block of `count` ≤ 16 steps: Δ = softplus(δ + bias) (or δ + bias)
/// into sd, Δ·u into sdu, u into uo, and SiLU(z) into gate when z is not NULL; lanes at or past
/// `count` get zeros. nf (16 floats) accumulates (δ + u + z)·0, which turns NaN when any input is
/// not finite. softplus is x above 20 (PyTorch's threshold), else log1p(eˣ) computed as
/// ln(1 + t)·t / ((1 + t) − 1), exact to rounding even where 1 + t rounds to 1. Divisions are
/// reciprocal estimates refined by a Newton step.
static inline void subq_scan_prep16(const float *delta, const float *u, const float *z, long count, float bias,
                                    int softplus, float *sd, float *sdu, float *uo, float *gate, float *nf) {
  __mmask16 live = count >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << count) - 1u);
  __m512 dv = _mm512_maskz_loadu_ps(live, delta), uv = _mm512_maskz_loadu_ps(live, u);
  __m512 zv = z ? _mm512_maskz_loadu_ps(live, z) : _mm512_setzero_ps();
  __m512 acc = _mm512_add_ps(_mm512_add_ps(dv, uv), zv);
  _mm512_storeu_ps(nf, _mm512_fmadd_ps(acc, _mm512_setzero_ps(), _mm512_loadu_ps(nf)));
  __m512 x = _mm512_add_ps(dv, _mm512_set1_ps(bias));
  if (softplus) {
    __m512 e = subq_exp2_16(_mm512_mul_ps(_mm512_min_ps(x, _mm512_set1_ps(20.0f)), _mm512_set1_ps(1.44269504f)));
    __m512 w = _mm512_add_ps(_mm512_set1_ps(1.0f), e);
    __m512 d = _mm512_sub_ps(w, _mm512_set1_ps(1.0f));
    __m512 r = _mm512_mul_ps(_mm512_mul_ps(subq_log16(w), e), subq_recip16(d));
    r = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_EQ_OQ), r, e);
    x = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(20.0f), _CMP_GT_OQ), r, x);
  }
  x = _mm512_maskz_mov_ps(live, x);
  _mm512_storeu_ps(sd, x);
  _mm512_storeu_ps(sdu, _mm512_mul_ps(x, uv));
  _mm512_storeu_ps(uo, uv);
  if (z) {
    // σ(z) = 1/(1 + e^−z), with e^−z capped at e^80 so the reciprocal stays finite.
    __m512 t = subq_exp2_16(_mm512_mul_ps(_mm512_min_ps(_mm512_sub_ps(_mm512_setzero_ps(), zv), _mm512_set1_ps(80.0f)),
                                          _mm512_set1_ps(1.44269504f)));
    _mm512_storeu_ps(gate, _mm512_mul_ps(zv, subq_recip16(_mm512_add_ps(_mm512_set1_ps(1.0f), t))));
  }
}
#endif

#endif
