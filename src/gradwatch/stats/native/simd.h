// gradwatch's float32 reductions in explicit vectors, for the kernels of kernels.cpp.
//
// The portable loops of kernels.cpp are compiled for the x86-64 baseline (SSE2): the build is
// cached per machine architecture, not per CPU model. On x86-64 these versions are compiled
// beside them for AVX-512F and for AVX2 with FMA (function target attributes), and the best
// one the CPU has is chosen once, when the module loads. They read memory at the rate the
// fused torch kernels do or better: 64 float lanes in independent accumulators (4 vectors of
// 16, or 8 of 8), so that the loads, not the adds, set the pace.
//
// Precision is the portable loops': each lane sums 64 elements of a block of 4096 in float
// (128 in AVX2's update norms, which keep 32 lanes for each of their two sums), and the
// blocks are added in double. NaN and Inf propagate into the sums as they do there;
// max |x| ignores NaN (the callers test the sum of squares for it).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GW_SIMD_X86 1
#include <immintrin.h>
#endif

namespace gw_simd {

enum Isa : int { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

constexpr int64_t kBlock = 4096;  // floats per block: 64 lanes of 64 elements
constexpr int64_t kStreamBytes = int64_t{2} << 20;  // copies this large bypass the cache

inline int best_isa() {
#ifdef GW_SIMD_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return kAvx2;
#endif
  return kPortable;
}

inline int& isa_slot() {
  static int isa = best_isa();
  return isa;
}

// The vector width in use (an Isa).
inline int isa() { return isa_slot(); }

// Use at most `want` (tests compare every version the CPU has); returns the one now in use.
inline int set_isa(int want) {
  isa_slot() = std::max(0, std::min(want, best_isa()));
  return isa_slot();
}

#ifdef GW_SIMD_X86

// ---- AVX-512F ------------------------------------------------------------------------------

__attribute__((target("avx512f"))) inline double sum512(__m512 v) {
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(
      _mm512_castps_pd(v), 1)));
  return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
}

__attribute__((target("avx512f"))) inline __mmask16 tail16(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF)
                    : static_cast<__mmask16>((1u << left) - 1u);
}

template <bool WithMax>
__attribute__((target("avx512f"))) void sumsq_max_512(const float* p, int64_t n, double& ss_out,
                                                       double& mx_out) {
  double ss = 0.0;
  __m512 mx = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += kBlock) {
    const int64_t m = std::min(kBlock, n - i);
    const float* q = p + i;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t j = 0;
    for (; j + 64 <= m; j += 64) {
      const __m512 v0 = _mm512_loadu_ps(q + j), v1 = _mm512_loadu_ps(q + j + 16);
      const __m512 v2 = _mm512_loadu_ps(q + j + 32), v3 = _mm512_loadu_ps(q + j + 48);
      a0 = _mm512_fmadd_ps(v0, v0, a0);
      a1 = _mm512_fmadd_ps(v1, v1, a1);
      a2 = _mm512_fmadd_ps(v2, v2, a2);
      a3 = _mm512_fmadd_ps(v3, v3, a3);
      if constexpr (WithMax) {
        mx = _mm512_max_ps(mx, _mm512_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)),
                                             _mm512_max_ps(_mm512_abs_ps(v2), _mm512_abs_ps(v3))));
      }
    }
    for (; j < m; j += 16) {  // the tail: masked loads (zeros elsewhere)
      const __m512 v = _mm512_maskz_loadu_ps(tail16(m - j), q + j);
      a0 = _mm512_fmadd_ps(v, v, a0);
      if constexpr (WithMax) mx = _mm512_max_ps(mx, _mm512_abs_ps(v));
    }
    ss += sum512(a0) + sum512(a1) + sum512(a2) + sum512(a3);
  }
  ss_out = ss;
  mx_out = WithMax ? static_cast<double>(_mm512_reduce_max_ps(mx)) : 0.0;
}

__attribute__((target("avx512f"))) void diff_512(const float* w, const float* s, int64_t n,
                                                  double& d_out, double& q_out) {
  double dsum = 0.0, qsum = 0.0;
  for (int64_t i = 0; i < n; i += kBlock) {
    const int64_t m = std::min(kBlock, n - i);
    const float* a = w + i;
    const float* b = s + i;
    __m512 d[4], q[4];
    for (int k = 0; k < 4; ++k) d[k] = q[k] = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 64 <= m; j += 64) {
      for (int k = 0; k < 4; ++k) {
        const __m512 x = _mm512_loadu_ps(a + j + 16 * k);
        const __m512 e = _mm512_sub_ps(_mm512_loadu_ps(b + j + 16 * k), x);
        d[k] = _mm512_fmadd_ps(e, e, d[k]);
        q[k] = _mm512_fmadd_ps(x, x, q[k]);
      }
    }
    for (; j < m; j += 16) {
      const __mmask16 t = tail16(m - j);
      const __m512 x = _mm512_maskz_loadu_ps(t, a + j);
      const __m512 e = _mm512_sub_ps(_mm512_maskz_loadu_ps(t, b + j), x);
      d[0] = _mm512_fmadd_ps(e, e, d[0]);
      q[0] = _mm512_fmadd_ps(x, x, q[0]);
    }
    for (int k = 0; k < 4; ++k) {
      dsum += sum512(d[k]);
      qsum += sum512(q[k]);
    }
  }
  d_out = dsum;
  q_out = qsum;
}

// sum, sum of squares and (with Sat) the count of |x - centre| > thr.
template <bool Sat>
__attribute__((target("avx512f"))) void sums_512(const float* p, int64_t n, float centre,
                                                  float thr, double* out) {
  double sum = 0.0, ss = 0.0, nsat = 0.0;
  const __m512 c = _mm512_set1_ps(centre), t = _mm512_set1_ps(thr), one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += kBlock) {
    const int64_t m = std::min(kBlock, n - i);
    const float* q = p + i;
    __m512 s[4], sq[4], k[4];
    for (int u = 0; u < 4; ++u) s[u] = sq[u] = k[u] = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 64 <= m; j += 64) {
      for (int u = 0; u < 4; ++u) {
        const __m512 v = _mm512_loadu_ps(q + j + 16 * u);
        s[u] = _mm512_add_ps(s[u], v);
        sq[u] = _mm512_fmadd_ps(v, v, sq[u]);
        if constexpr (Sat) {
          const __mmask16 hit =
              _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(v, c)), t, _CMP_GT_OQ);
          k[u] = _mm512_mask_add_ps(k[u], hit, k[u], one);
        }
      }
    }
    for (; j < m; j += 16) {
      const __mmask16 live = tail16(m - j);
      const __m512 v = _mm512_maskz_loadu_ps(live, q + j);
      s[0] = _mm512_add_ps(s[0], v);
      sq[0] = _mm512_fmadd_ps(v, v, sq[0]);
      if constexpr (Sat) {
        const __mmask16 hit = _mm512_mask_cmp_ps_mask(
            live, _mm512_abs_ps(_mm512_sub_ps(v, c)), t, _CMP_GT_OQ);
        k[0] = _mm512_mask_add_ps(k[0], hit, k[0], one);
      }
    }
    for (int u = 0; u < 4; ++u) {
      sum += sum512(s[u]);
      ss += sum512(sq[u]);
      if constexpr (Sat) nsat += sum512(k[u]);
    }
  }
  out[0] = sum;
  out[1] = ss;
  out[2] = nsat;
}

// Copy n floats; the stores bypass the cache (the copy is read once, much later).
__attribute__((target("avx512f"))) void stream_copy_512(float* d, const float* s, int64_t n) {
  int64_t j = 0;
  while (j < n && (reinterpret_cast<uintptr_t>(d + j) & 63) != 0) {
    d[j] = s[j];
    ++j;
  }
  for (; j + 16 <= n; j += 16) _mm512_stream_ps(d + j, _mm512_loadu_ps(s + j));
  for (; j < n; ++j) d[j] = s[j];
  _mm_sfence();
}

// ---- AVX2 with FMA -------------------------------------------------------------------------

__attribute__((target("avx2,fma"))) inline double sum256(__m256 v) {
  const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
  const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
  const __m256d t = _mm256_add_pd(lo, hi);
  const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(t), _mm256_extractf128_pd(t, 1));
  return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

template <bool WithMax>
__attribute__((target("avx2,fma"))) void sumsq_max_256(const float* p, int64_t n, double& ss_out,
                                                        double& mx_out) {
  double ss = 0.0;
  float mxs = 0.0f;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 mx = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += kBlock) {
    const int64_t m = std::min(kBlock, n - i);
    const float* q = p + i;
    __m256 a[8];
    for (int k = 0; k < 8; ++k) a[k] = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 64 <= m; j += 64) {
      for (int k = 0; k < 8; ++k) {
        const __m256 v = _mm256_loadu_ps(q + j + 8 * k);
        a[k] = _mm256_fmadd_ps(v, v, a[k]);
        if constexpr (WithMax) mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v));
      }
    }
    double s = 0.0;
    for (; j < m; ++j) {  // the tail, one by one
      const float v = q[j];
      s += static_cast<double>(v * v);
      if constexpr (WithMax) mxs = std::max(mxs, std::fabs(v));
    }
    for (int k = 0; k < 8; ++k) s += sum256(a[k]);
    ss += s;
  }
  if constexpr (WithMax) {
    float lanes[8];
    _mm256_storeu_ps(lanes, mx);
    for (float v : lanes) mxs = std::max(mxs, v);
  }
  ss_out = ss;
  mx_out = static_cast<double>(mxs);
}

__attribute__((target("avx2,fma"))) void diff_256(const float* w, const float* s, int64_t n,
                                                  double& d_out, double& q_out) {
  double dsum = 0.0, qsum = 0.0;
  for (int64_t i = 0; i < n; i += kBlock) {
    const int64_t m = std::min(kBlock, n - i);
    const float* a = w + i;
    const float* b = s + i;
    __m256 d[4], q[4];
    for (int k = 0; k < 4; ++k) d[k] = q[k] = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= m; j += 32) {
      for (int k = 0; k < 4; ++k) {
        const __m256 x = _mm256_loadu_ps(a + j + 8 * k);
        const __m256 e = _mm256_sub_ps(_mm256_loadu_ps(b + j + 8 * k), x);
        d[k] = _mm256_fmadd_ps(e, e, d[k]);
        q[k] = _mm256_fmadd_ps(x, x, q[k]);
      }
    }
    for (; j < m; ++j) {
      const float x = a[j], e = b[j] - a[j];
      dsum += static_cast<double>(e * e);
      qsum += static_cast<double>(x * x);
    }
    for (int k = 0; k < 4; ++k) {
      dsum += sum256(d[k]);
      qsum += sum256(q[k]);
    }
  }
  d_out = dsum;
  q_out = qsum;
}

// Copy n floats; the stores bypass the cache.
__attribute__((target("avx2"))) void stream_copy_256(float* d, const float* s, int64_t n) {
  int64_t j = 0;
  while (j < n && (reinterpret_cast<uintptr_t>(d + j) & 31) != 0) {
    d[j] = s[j];
    ++j;
  }
  for (; j + 8 <= n; j += 8) _mm256_stream_ps(d + j, _mm256_loadu_ps(s + j));
  for (; j < n; ++j) d[j] = s[j];
  _mm_sfence();
}

#endif  // GW_SIMD_X86

// ---- the entry points: false when no vector version runs here (the caller's loop runs) ---

inline bool sumsq_max(const float* p, int64_t n, bool with_max, double& ss, double& mx) {
#ifdef GW_SIMD_X86
  const int v = isa();
  if (v == kAvx512) {
    with_max ? sumsq_max_512<true>(p, n, ss, mx) : sumsq_max_512<false>(p, n, ss, mx);
    return true;
  }
  if (v == kAvx2) {
    with_max ? sumsq_max_256<true>(p, n, ss, mx) : sumsq_max_256<false>(p, n, ss, mx);
    return true;
  }
#endif
  return false;
}

inline bool diff(const float* w, const float* s, int64_t n, double& d, double& q) {
#ifdef GW_SIMD_X86
  const int v = isa();
  if (v == kAvx512) {
    diff_512(w, s, n, d, q);
    return true;
  }
  if (v == kAvx2) {
    diff_256(w, s, n, d, q);
    return true;
  }
#endif
  return false;
}

inline bool sums(const float* p, int64_t n, bool sat, float centre, float thr, double* out) {
#ifdef GW_SIMD_X86
  if (isa() == kAvx512) {
    sat ? sums_512<true>(p, n, centre, thr, out) : sums_512<false>(p, n, centre, thr, out);
    return true;
  }
#endif
  return false;
}

// Copy `bytes` bytes; `stream`: the destination is not read again soon (skip the cache).
inline void copy(void* dst, const void* src, int64_t bytes, bool stream) {
#ifdef GW_SIMD_X86
  if (stream && isa() != kPortable && bytes % 4 == 0) {
    auto* d = static_cast<float*>(dst);
    const auto* s = static_cast<const float*>(src);
    isa() == kAvx512 ? stream_copy_512(d, s, bytes / 4) : stream_copy_256(d, s, bytes / 4);
    return;
  }
#endif
  std::memcpy(dst, src, static_cast<size_t>(bytes));
}

}  // namespace gw_simd
