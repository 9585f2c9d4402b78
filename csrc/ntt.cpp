// Negacyclic NTT (see ntt.h): the butterflies of bcfl_engine/he/ntt.py, one polynomial per
// OpenMP task. Residues stay fully reduced after every butterfly (q < 2^62: a + b < 2^63, no
// wrap), so the output equals the numpy reference bit for bit; Shoup's multiplication by the
// precomputed twiddle costs one 64x64->128 multiply-high and two low multiplies.
#include "ntt.h"

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

inline uint64_t sub_mod(uint64_t a, uint64_t b, uint64_t q) { return a >= b ? a - b : a + (q - b); }

void forward_one(uint64_t* a, int64_t N, uint64_t q, const uint64_t* w, const uint64_t* ws) {
  int64_t t = N;
  for (int64_t m = 1; m < N; m *= 2) {
    t /= 2;
    for (int64_t i = 0; i < m; ++i) {
      const uint64_t s = w[m + i], ss = ws[m + i];
      uint64_t* u = a + 2 * i * t;
      uint64_t* v = u + t;
      for (int64_t j = 0; j < t; ++j) {
        const uint64_t x = u[j], y = mul_shoup(v[j], s, ss, q);
        u[j] = add_mod(x, y, q);
        v[j] = sub_mod(x, y, q);
      }
    }
  }
}

void inverse_one(uint64_t* a, int64_t N, uint64_t q, const uint64_t* w, const uint64_t* ws,
                 uint64_t ninv, uint64_t ninvs) {
  int64_t t = 1;
  for (int64_t m = N; m > 1; m /= 2) {
    const int64_t h = m / 2;
    for (int64_t i = 0; i < h; ++i) {
      const uint64_t s = w[h + i], ss = ws[h + i];
      uint64_t* u = a + 2 * i * t;
      uint64_t* v = u + t;
      for (int64_t j = 0; j < t; ++j) {
        const uint64_t x = u[j], y = v[j];
        u[j] = add_mod(x, y, q);
        v[j] = mul_shoup(sub_mod(x, y, q), s, ss, q);
      }
    }
    t *= 2;
  }
  for (int64_t j = 0; j < N; ++j) a[j] = mul_shoup(a[j], ninv, ninvs, q);
}
}  // namespace

void ntt_forward(uint64_t* x, int64_t rows, int64_t N, uint64_t q, const uint64_t* w,
                 const uint64_t* ws) {
  // One polynomial of N = 8192 is ~50 us of work: a team pays off from a few rows on.
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
#pragma omp parallel for schedule(static) if (rows * N >= (1 << 17))
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
