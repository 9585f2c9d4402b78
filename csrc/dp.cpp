// The mean of clipped rows: the clip becomes a per-row coefficient of the weighted mean
// (mean_block.h, the same products in the same order as the plain mean), and the noise is added
// in the sum's final write.
//
// A row's scale min(1, C / ||x_i||) is known only once the whole row has been read, so x is read
// twice: the norms (rows in parallel), then the weighted mean in column blocks with the
// coefficients; where the caller already holds the norms (taken at intake, where each update's
// bytes were in cache: UpdateBatch), only the second read. The second read runs at the plain
// mean's speed and the first at a plain read's: together 1.96-1.99x the plain mean at n=64,
// d=1M on this 2-core EPYC, against 2.6-3.7x for the earlier one-read design, which summed rows
// in two lanes, each sweep over row i also squaring row i + 1 (row i read back from the L3 and
// the accumulators through it: this VM's L3, shared with other tenants, did not hold them).
//
// Threads: OpenMP's, as the plain mean (mean.cpp). Work handed to threads of our own
// (claims.h) after an OpenMP region ran beside libgomp's workers, which spin a while after each
// region: the private mean of a batch measured 1.6-1.8x the plain mean that way, 1.1-1.2x alone.
#include "dp.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "blake3_xof.h"
#include "common.h"
#include "mean_block.h"

namespace bcfl {

namespace {
// As clip.cpp: squares summed in float32 over chunks of 1024, then in float64; a row whose
// float32 partial sums overflowed or may have underflowed is summed again in float64.
constexpr int64_t kChunk = 1024;
constexpr double kRecheckBelow = 1e-20;

template <typename T>
inline float chunk_sq(const T* p, int64_t k) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < k; ++j) s += load(p, j) * load(p, j);
  return s;
}

template <typename T>
double finish_norm(double sq, const T* row, int64_t d) {
  if (!std::isfinite(sq) || sq < kRecheckBelow) {
    sq = 0.0;
    for (int64_t j = 0; j < d; ++j) {
      const double v = static_cast<double>(load(row, j));
      sq += v * v;
    }
  }
  return std::sqrt(sq);
}

// A row's coefficient w_i min(1, C / ||x_i||): in float32, or, below float32's normal range
// (a subnormal float32 coefficient would keep 1 to 23 bits; norms near 1e38 and more), in
// float64 with each product rounded once.
struct Coef {
  float f;
  double d;
  bool tiny;
};

inline Coef coefficient(double norm, double w, double max_norm) {
  const double scale = (norm > max_norm && std::isfinite(norm)) ? max_norm / norm : 1.0;
  const double c = w * scale;
  if (c < FLT_MIN) return {0.0f, c, true};
  return {static_cast<float>(c), c, false};
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
//
// Where the fused noise's time goes (one thread, n=64, d=1M, this shared 2-core EPYC, best of
// 25): the keyed BLAKE3 words ~0.4 (~6 GB/s into L1; its rotations are already vprord), libmvec's
// log, sin and cos 0.35-0.4, the uniforms, the interleave and the write ~0.25; on one thread the
// noise adds 0.36-0.40x the plain mean's time. Tried and not kept, none measurable in the private
// mean: Box-Muller eight pairs a step in AVX-512 intrinsics (vplzcntq front end, libmvec's 8-lane
// functions by name; 0.7x Box-Muller's own time, 5-8% of the noise), making a block's noise before
// its sum while prefetching the sum's first rows into L2 (0.94-1.06x the noise's added time),
// libmvec's sincos (1.1-1.2x separate sin and cos), unrolled or byte-shuffle BLAKE3 rounds.
#if defined(__x86_64__) && defined(__GLIBC__) && defined(_OPENMP)
extern "C" {
double log(double) noexcept __attribute__((simd("notinbranch")));
double sin(double) noexcept __attribute__((simd("notinbranch")));
double cos(double) noexcept __attribute__((simd("notinbranch")));
}
#define BCFL_SIMD_MATH 1
#endif

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

// z[0 .. m) = the normals of m columns of one noise block (m <= 2 kPairs; pair k is columns 2k
// and 2k + 1) from the words of its pairs (wb[3 k .. 3 k + 2]).
void normals_block(const uint64_t* wb, int64_t m, double* z) {
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  const int64_t pairs = (m + 1) / 2;
  double u[kPairs], t[kPairs], z0[kPairs], z1[kPairs];
  for (int64_t k = 0; k < pairs; ++k) {
    const uint64_t* wk = wb + 3 * k;
    u[k] = fine_uniform(wk[0], wk[1]);
    t[k] = kTwoPi * (static_cast<double>(wk[2] >> 11) * 0x1p-53);
  }
#if BCFL_SIMD_MATH
#pragma omp simd
#endif
  for (int64_t k = 0; k < pairs; ++k) {
    const double r = std::sqrt(-2.0 * log(u[k]));
    z0[k] = r * cos(t[k]);
    z1[k] = r * sin(t[k]);
  }
  for (int64_t k = 0; k < pairs; ++k) {
    z[2 * k] = z0[k];
    if (2 * k + 1 < m) z[2 * k + 1] = z1[k];
  }
}

// out[j] = float32(float64(v[j]) + std * z[j]) for j < m, the float64 part one fma (rounded
// once), then float32. v may be out.
inline void add_normals(const double* z, int64_t m, double std, const float* v, float* out) {
#pragma omp simd
  for (int64_t j = 0; j < m; ++j) out[j] = static_cast<float>(std::fma(std, z[j], static_cast<double>(v[j])));
}

// The words of pairs [k0, k0 + pairs) (k0 a multiple of kPairs, pairs <= kPairs) into w [3 kPairs]:
// the keyed BLAKE3 stream's 64-bit words 3 k0 .. 3 (k0 + pairs) - 1, little-endian as the bytes
// Python's blake3 returns.
constexpr int64_t kBlocksPerNoiseBlock = 3 * kPairs / 8;  // 384, a multiple of kXofLanes
static_assert(kBlocksPerNoiseBlock % kXofLanes == 0, "a block's words start a batch of lanes");

void keyed_words(const NoiseKey& key, int64_t k0, int64_t pairs, uint64_t* w) {
  const int64_t blocks = ((3 * pairs + 7) / 8 + kXofLanes - 1) / kXofLanes * kXofLanes;
  blake3_keyed_xof(key.key, key.message, key.message_len, static_cast<uint64_t>(3 * k0 / 8), blocks,
                   reinterpret_cast<uint8_t*>(w));  // little-endian: the bytes are the words
}

// The final write of columns [j0, j0 + m): out = acc, then the noise: the normals made here
// from `noise`'s words (j0 then a multiple of 2 kPairs, in steps of 2 kPairs columns), or
// prepared ones (`normals`, all d of them), or none.
void finish(const float* acc, int64_t j0, int64_t m, const NoiseKey* noise,
            const double* normals, double std, float* out) {
  if (normals) {
    add_normals(normals + j0, m, std, acc, out + j0);
  } else if (noise) {
    uint64_t w[3 * kPairs];
    double z[2 * kPairs];
    for (int64_t s = 0; s < m; s += 2 * kPairs) {
      const int64_t k = std::min(2 * kPairs, m - s);
      keyed_words(*noise, (j0 + s) / 2, (k + 1) / 2, w);
      normals_block(w, k, z);
      add_normals(z, k, std, acc + s, out + j0 + s);
    }
  } else {
    std::memcpy(out + j0, acc, static_cast<size_t>(m) * sizeof(float));
  }
}

inline int max_threads() {
#ifdef _OPENMP
  return std::max(1, omp_get_max_threads());
#else
  return 1;
#endif
}

// Chunks of kChunk per work item of row_norms_impl: 256 KiB of float32 rows.
constexpr int64_t kChunksPerItem = 64;

// norms[i] = the float64 sum, in chunk order, of row i's float32 chunk sums (finish_norm's
// recheck where that is not finite or tiny). The chunk sums are taken in parallel over pieces
// of rows, so one long row (an update added alone) is read by every thread, and the order of
// the float64 sum, hence the bits, does not depend on the split.
template <typename T>
void row_norms_impl(const T* x, int64_t n, int64_t d, double* norms) {
  const int64_t chunks = (d + kChunk - 1) / kChunk;
  const int64_t pieces = (chunks + kChunksPerItem - 1) / kChunksPerItem;
  std::vector<float> part(static_cast<size_t>(n * chunks));
  const int64_t items = n * pieces;
#pragma omp parallel for schedule(dynamic, 1) if (items > 1)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t i = item / pieces, c0 = item % pieces * kChunksPerItem;
    const int64_t c1 = std::min(chunks, c0 + kChunksPerItem);
    for (int64_t c = c0; c < c1; ++c)
      part[static_cast<size_t>(i * chunks + c)] =
          chunk_sq(x + i * d + c * kChunk, std::min(kChunk, d - c * kChunk));
  }
  for (int64_t i = 0; i < n; ++i) {
    double sq = 0.0;
    for (int64_t c = 0; c < chunks; ++c) sq += part[static_cast<size_t>(i * chunks + c)];
    norms[i] = finish_norm(sq, x + i * d, d);
  }
}

template <typename T>
void clipped_mean_impl(const T* x, int64_t n, int64_t d, const double* w, double max_norm,
                       double* norms, bool norms_known, float* out, const NoiseKey* noise,
                       const double* normals, double std) {
  if (!norms_known) row_norms_impl(x, n, d, norms);
  // float32 coefficients for the sum; a row whose coefficient is below float32's normal range
  // has 0 there and is added to its block in float64 products afterwards.
  std::vector<float> cf(static_cast<size_t>(n));
  std::vector<std::pair<int64_t, double>> tiny;
  for (int64_t i = 0; i < n; ++i) {
    const Coef c = coefficient(norms[i], w[i], max_norm);
    cf[static_cast<size_t>(i)] = c.f;
    if (c.tiny) tiny.emplace_back(i, c.d);
  }
  // With noise, blocks of whole noise blocks (2 kPairs columns from column 0, as add_gaussian
  // cuts them): a pair then goes through the same vector or scalar math as there, the same bits.
  int64_t width = block_width(d, max_threads());
  if (noise) width = (width + 2 * kPairs - 1) / (2 * kPairs) * (2 * kPairs);
  const int64_t blocks = (d + width - 1) / width;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t j0 = b * width, m = std::min(width, d - j0);
    float acc[kMaxBlock];
    std::fill(acc, acc + m, 0.0f);
    sum_rows_block(x, n, d, j0, m, cf.data(), acc);
    for (const auto& [i, c] : tiny) {
      const T* row = x + i * d + j0;
      for (int64_t j = 0; j < m; ++j)
        acc[j] += static_cast<float>(static_cast<double>(load(row, j)) * c);
    }
    finish(acc, j0, m, noise, normals, std, out);
  }
}
}  // namespace

void clipped_mean(int dtype, const void* x, int64_t n, int64_t d, const double* w,
                  double max_norm, double* norms, bool norms_known, float* out,
                  const NoiseKey* noise, const double* normals, double std) {
  with_dtype(dtype, x, [&](auto* p) {
    clipped_mean_impl(p, n, d, w, max_norm, norms, norms_known, out, noise, normals, std);
  });
}

void row_norms(int dtype, const void* x, int64_t n, int64_t d, double* norms) {
  with_dtype(dtype, x, [&](auto* p) { row_norms_impl(p, n, d, norms); });
}

void add_gaussian(const uint64_t* words, int64_t d, double std, float* out) {
  const int64_t blocks = (d + 2 * kPairs - 1) / (2 * kPairs);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t j0 = b * 2 * kPairs, m = std::min(2 * kPairs, d - j0);
    double z[2 * kPairs];
    normals_block(words + 3 * (j0 / 2), m, z);
    add_normals(z, m, std, out + j0, out + j0);
  }
}

void gaussian_normals(const NoiseKey& key, int64_t d, double* z) {
  const int64_t blocks = (d + 2 * kPairs - 1) / (2 * kPairs);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t j0 = b * 2 * kPairs, m = std::min(2 * kPairs, d - j0);
    uint64_t w[3 * kPairs];
    keyed_words(key, j0 / 2, (m + 1) / 2, w);
    normals_block(w, m, z + j0);
  }
}

}  // namespace bcfl
