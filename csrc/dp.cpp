// The mean of clipped rows: the clip becomes a per-row coefficient of the weighted mean.
//
// A row's scale min(1, C / ||x_i||) is known only once the whole row has been read, so the
// column-blocked mean cannot apply it on the fly; clipping rows first (clip.cpp) and then
// averaging reads x, writes an [n, d] copy and reads that again. Here: one read of x for the
// norms (rows in parallel, no write), then mean.cpp's weighted mean with c_i = w_i * s_i (one
// more read): 2.1x the plain mean at n=64, d=1M on this 2-core EPYC, where the second pass
// alone (norms given) measured 1.08x. Two reads is the floor for rows whose norms nobody has
// computed yet.
//
// Tried and dropped: rows in groups of up to 12 MiB, norms then the mean of the group re-read
// from the L3 (one read of x from memory, one barrier per group): 2.0-2.4x the mean on one
// thread and 2.6-3.7x on two (barriers wait for threads that the other processes on these 2
// cores deschedule), against ~1.6x for the two passes here (n=64, d=1M, 2-core EPYC).
#include "dp.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

#include "common.h"
#include "mean.h"

namespace bcfl {

namespace {
// As clip.cpp: squares summed in float32 over chunks of 1024, then in float64; a row whose
// float32 partial sums overflowed or may have underflowed is summed again in float64.
constexpr int64_t kChunk = 1024;
constexpr double kRecheckBelow = 1e-20;

template <typename T>
double row_norm(const T* row, int64_t d) {
  double sq = 0.0;
  for (int64_t j0 = 0; j0 < d; j0 += kChunk) {
    const int64_t k = std::min(kChunk, d - j0);
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < k; ++j) s += load(row, j0 + j) * load(row, j0 + j);
    sq += s;
  }
  if (!std::isfinite(sq) || sq < kRecheckBelow) {
    sq = 0.0;
    for (int64_t j = 0; j < d; ++j) {
      const double v = static_cast<double>(load(row, j));
      sq += v * v;
    }
  }
  return std::sqrt(sq);
}
}  // namespace

void clipped_mean(int dtype, const void* x, int64_t n, int64_t d, const double* w,
                  double max_norm, double* norms, float* out) {
  with_dtype(dtype, x, [&](auto* p) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < n; ++i) norms[i] = row_norm(p + i * d, d);
  });
  std::vector<float> coef(static_cast<size_t>(n));
  std::vector<int64_t> tiny;  // rows whose coefficient is below float32's normal range
  std::vector<double> tiny_coef;
  for (int64_t i = 0; i < n; ++i) {
    const double norm = norms[i];
    const double scale = (norm > max_norm && std::isfinite(norm)) ? max_norm / norm : 1.0;
    const double c = w[i] * scale;
    if (c < FLT_MIN) {  // a subnormal float32 coefficient would keep 1 to 23 bits
      tiny.push_back(i);
      tiny_coef.push_back(c);
      coef[static_cast<size_t>(i)] = 0.0f;
    } else {
      coef[static_cast<size_t>(i)] = static_cast<float>(c);
    }
  }
  weighted_mean(dtype, x, n, d, coef.data(), out);
  // Such rows (norms near 1e38 and more) in float64, each product rounded once.
  with_dtype(dtype, x, [&](auto* p) {
    for (size_t k = 0; k < tiny.size(); ++k) {
      const auto* row = p + tiny[k] * d;
      for (int64_t j = 0; j < d; ++j)
        out[j] += static_cast<float>(static_cast<double>(load(row, j)) * tiny_coef[k]);
    }
  });
}

// ---- Gaussian noise ----
//
// Box-Muller: z0 = r cos(t), z1 = r sin(t), r = sqrt(-2 ln u), t = 2 pi v. One pair per three
// words, no rejection: coordinate j's value depends on its own words only, so any split of the
// columns between threads gives the same bits. u is uniform on (0, 1) with a 52-bit mantissa at
// every scale: P(u in [2^-(k+1), 2^-k)) = 2^-(k+1) from the k leading zeros of a word (k <= 64),
// so r's spacing is 2^-52 / r everywhere (a 53-bit fixed-point u gives r steps of ~0.1 past
// r = 8); |z| <= r < 9.5, and P(|z| > 9) < 1e-18 per coordinate.
//
// The transcendental functions are most of the cost (~30 ns a pair with glibc's scalar log and
// sincos). On x86-64 glibc, libmvec has vector log, sin and cos (at most 4 ulp, against 1 for the
// scalar ones: a relative error of 1e-15 in z, nothing next to float32's 6e-8 of the output);
// declaring them simd lets `#pragma omp simd` call them, as glibc's own headers do under
// -ffast-math. libm.so pulls libmvec in where it is needed. Elsewhere the scalar calls stay.
#if defined(__x86_64__) && defined(__GLIBC__) && defined(_OPENMP)
extern "C" {
double log(double) noexcept __attribute__((simd("notinbranch")));
double sin(double) noexcept __attribute__((simd("notinbranch")));
double cos(double) noexcept __attribute__((simd("notinbranch")));
}
#define BCFL_SIMD_MATH 1
#endif

namespace {
inline double fine_uniform(uint64_t mantissa, uint64_t exponent) {
  const int k = exponent ? __builtin_clzll(exponent) : 64;
  const uint64_t bits = (static_cast<uint64_t>(1023 - 1 - k) << 52) | (mantissa >> 12);
  double u;
  std::memcpy(&u, &bits, sizeof u);  // [1, 2) * 2^-(k+1)
  return u;
}

// Pairs per block: the uniforms of a block (8 KiB each array) stay in L1 between the scalar
// loop that builds them (the leading-zero count does not vectorize) and the vector loop.
constexpr int64_t kPairs = 1024;
}  // namespace

void add_gaussian(const uint64_t* words, int64_t d, double std, float* out) {
  const int64_t pairs = (d + 1) / 2;
  const int64_t blocks = (pairs + kPairs - 1) / kPairs;
  constexpr double kTwoPi = 6.283185307179586476925286766559;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t k0 = b * kPairs, m = std::min(kPairs, pairs - k0);
    double u[kPairs], v[kPairs], z0[kPairs], z1[kPairs];
    for (int64_t k = 0; k < m; ++k) {
      const uint64_t* w = words + 3 * (k0 + k);
      u[k] = fine_uniform(w[0], w[1]);
      v[k] = kTwoPi * (static_cast<double>(w[2] >> 11) * 0x1p-53);
    }
#if BCFL_SIMD_MATH
#pragma omp simd
#endif
    for (int64_t k = 0; k < m; ++k) {
      const double r = std::sqrt(-2.0 * log(u[k]));
      z0[k] = r * cos(v[k]);
      z1[k] = r * sin(v[k]);
    }
    for (int64_t k = 0; k < m; ++k) {
      const int64_t j = 2 * (k0 + k);
      out[j] = static_cast<float>(static_cast<double>(out[j]) + std * z0[k]);
      if (j + 1 < d) out[j + 1] = static_cast<float>(static_cast<double>(out[j + 1]) + std * z1[k]);
    }
  }
}

}  // namespace bcfl
