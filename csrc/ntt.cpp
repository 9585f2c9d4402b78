// Negacyclic NTT (see ntt.h): the butterflies of bcfl_engine/he/ntt.py, lazily reduced, one
// polynomial per OpenMP task; the fully reduced output equals the numpy reference bit for bit.
// Shoup's multiplication by the precomputed twiddle costs one 64x64->128 multiply-high and two
// low multiplies.
#include "ntt.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace bcfl {

namespace {
inline uint64_t mul_shoup(uint64_t x, uint64_t w, uint64_t ws, uint64_t q) {
  const uint64_t hi = static_cast<uint64_t>((static_cast<unsigned __int128>(x) * ws) >> 64);
  const uint64_t r = x * w - hi * q;  // in [0, 2q) by Shoup's bound
  return r >= q ? r - q : r;
}

inline uint64_t add_mod(uint64_t a, uint64_t b, uint64_t q) {
  const uint64_t s = a + b;
  return s >= q ? s - q : s;
}

// Shoup's product without its final correction: in [0, 2q) for any x < 2^64 (w < q).
inline uint64_t mul_shoup_lazy(uint64_t x, uint64_t w, uint64_t ws, uint64_t q) {
  const uint64_t hi = static_cast<uint64_t>((static_cast<unsigned __int128>(x) * ws) >> 64);
  return x * w - hi * q;
}

#if defined(__AVX512F__) && defined(__AVX512DQ__)
// The high 64 bits of a 64 x 64-bit product in 8 lanes: four 32 x 32-bit products (AVX-512 has
// no 64-bit multiply-high).
inline __m512i mulhi64(__m512i a, __m512i b) {
  const __m512i lo32 = _mm512_set1_epi64(0xffffffffLL);
  const __m512i ah = _mm512_srli_epi64(a, 32), bh = _mm512_srli_epi64(b, 32);
  const __m512i ll = _mm512_mul_epu32(a, b), lh = _mm512_mul_epu32(a, bh);
  const __m512i hl = _mm512_mul_epu32(ah, b), hh = _mm512_mul_epu32(ah, bh);
  const __m512i mid = _mm512_add_epi64(_mm512_add_epi64(_mm512_srli_epi64(ll, 32), _mm512_and_si512(lh, lo32)),
                                       _mm512_and_si512(hl, lo32));
  return _mm512_add_epi64(_mm512_add_epi64(hh, _mm512_srli_epi64(lh, 32)),
                          _mm512_add_epi64(_mm512_srli_epi64(hl, 32), _mm512_srli_epi64(mid, 32)));
}

// One stage's butterflies over t >= 8 contiguous pairs, 8 at a time: the scalar loop below in
// lanes (x >= 2q ? x - 2q : x is an unsigned min, x - 2q wrapping past x when x < 2q). The lift
// and NTT of a lean aggregate (32 ciphertexts, N = 8192) went from 9.7 to 5.0 ms on one core.
inline void butterflies8(uint64_t* u, uint64_t* v, int64_t t, uint64_t q, uint64_t s, uint64_t ss) {
  const __m512i two_q = _mm512_set1_epi64(static_cast<long long>(2 * q)), vq = _mm512_set1_epi64(static_cast<long long>(q));
  const __m512i vs = _mm512_set1_epi64(static_cast<long long>(s)), vss = _mm512_set1_epi64(static_cast<long long>(ss));
  for (int64_t j = 0; j < t; j += 8) {
    __m512i x = _mm512_loadu_si512(u + j);
    x = _mm512_min_epu64(x, _mm512_sub_epi64(x, two_q));
    const __m512i b = _mm512_loadu_si512(v + j);
    const __m512i y = _mm512_sub_epi64(_mm512_mullo_epi64(b, vs), _mm512_mullo_epi64(mulhi64(b, vss), vq));
    _mm512_storeu_si512(u + j, _mm512_add_epi64(x, y));
    _mm512_storeu_si512(v + j, _mm512_add_epi64(_mm512_sub_epi64(x, y), two_q));
  }
}
#endif

// Harvey's lazy butterflies (Harvey 2014, "Faster arithmetic for number-theoretic transforms"):
// values stay in [0, 4q) (q < 2^62: no wrap) and are reduced once at the end, which saves two
// of the three conditional subtractions of a butterfly; the output equals the reduced one.
void forward_one(uint64_t* a, int64_t N, uint64_t q, const uint64_t* w, const uint64_t* ws) {
  const uint64_t two_q = 2 * q;
  int64_t t = N;
  for (int64_t m = 1; m < N; m *= 2) {
    t /= 2;
    for (int64_t i = 0; i < m; ++i) {
      const uint64_t s = w[m + i], ss = ws[m + i];
      uint64_t* u = a + 2 * i * t;
      uint64_t* v = u + t;
#if defined(__AVX512F__) && defined(__AVX512DQ__)
      if (t >= 8) {
        butterflies8(u, v, t, q, s, ss);
        continue;
      }
#endif
      for (int64_t j = 0; j < t; ++j) {
        uint64_t x = u[j];
        x = x >= two_q ? x - two_q : x;
        const uint64_t y = mul_shoup_lazy(v[j], s, ss, q);  // [0, 2q)
        u[j] = x + y;
        v[j] = x - y + two_q;
      }
    }
  }
  for (int64_t j = 0; j < N; ++j) {
    uint64_t x = a[j];
    x = x >= two_q ? x - two_q : x;
    a[j] = x >= q ? x - q : x;
  }
}

void inverse_one(uint64_t* a, int64_t N, uint64_t q, const uint64_t* w, const uint64_t* ws,
                 uint64_t ninv, uint64_t ninvs) {
  const uint64_t two_q = 2 * q;  // values stay in [0, 2q)
  int64_t t = 1;
  for (int64_t m = N; m > 1; m /= 2) {
    const int64_t h = m / 2;
    for (int64_t i = 0; i < h; ++i) {
      const uint64_t s = w[h + i], ss = ws[h + i];
      uint64_t* u = a + 2 * i * t;
      uint64_t* v = u + t;
      for (int64_t j = 0; j < t; ++j) {
        const uint64_t x = u[j], y = v[j];
        const uint64_t sum = x + y;
        u[j] = sum >= two_q ? sum - two_q : sum;
        v[j] = mul_shoup_lazy(x - y + two_q, s, ss, q);
      }
    }
    t *= 2;
  }
  for (int64_t j = 0; j < N; ++j) a[j] = mul_shoup(a[j], ninv, ninvs, q);
}
}  // namespace

void ntt_forward(uint64_t* x, int64_t rows, int64_t N, uint64_t q, const uint64_t* w,
                 const uint64_t* ws) {
  // One polynomial of N = 8192 is ~0.2 ms of work: a team pays off from a few rows on.
#pragma omp parallel for schedule(static) if (rows >= 4)
  for (int64_t r = 0; r < rows; ++r) forward_one(x + r * N, N, q, w, ws);
}

void ntt_inverse(uint64_t* x, int64_t rows, int64_t N, uint64_t q, const uint64_t* w,
                 const uint64_t* ws, uint64_t ninv, uint64_t ninvs) {
#pragma omp parallel for schedule(static) if (rows >= 4)
  for (int64_t r = 0; r < rows; ++r) inverse_one(x + r * N, N, q, w, ws, ninv, ninvs);
}

void mul_add_mod(const uint64_t* a, int64_t rows, int64_t N, uint64_t q, const uint64_t* b,
                 const uint64_t* bs, const uint64_t* c, uint64_t* out) {
  // Memory-bound: a team pays off only past ~8 MiB (at 1 MiB, two busy cores made it 15x slower).
#pragma omp parallel for schedule(static) if (rows * N >= (1 << 20))
  for (int64_t r = 0; r < rows; ++r) {
    const uint64_t* ar = a + r * N;
    uint64_t* o = out + r * N;
    if (c) {
      const uint64_t* cr = c + r * N;
      for (int64_t j = 0; j < N; ++j) o[j] = add_mod(mul_shoup(ar[j], b[j], bs[j], q), cr[j], q);
    } else {
      for (int64_t j = 0; j < N; ++j) o[j] = mul_shoup(ar[j], b[j], bs[j], q);
    }
  }
}

}  // namespace bcfl
