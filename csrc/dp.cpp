// The mean of clipped rows: the clip becomes a per-row coefficient of the sum, and the noise is
// added in the sum's final write.
//
// A row's scale min(1, C / ||x_i||) is known only once the whole row has been read, so a
// column-blocked mean (mean.cpp) cannot apply it on the fly, and "norms, then the weighted
// mean" reads x from memory twice: 1.5-2.1x the plain mean at n=64, d=1M on this 2-core EPYC.
// Here rows are summed in two lanes (rows [0, h) and [h, n), h = ceil(n / 2)), each into its own
// accumulator of d floats, one row after the other, and a lane's sweep over row i also sums the
// squares of row i + 1: row i + 1 streams in from memory while row i, read one sweep earlier,
// and the accumulator come from the cache (a 4 MiB row and a 4 MiB accumulator per lane at
// d = 1M, in the 32 MiB L3). So x is read from memory once, and the two lanes need no barrier
// but the final one, and a thread that does not get a core leaves its lane to the other
// (claims.h; an OpenMP barrier per group of rows, waiting for threads that the other processes
// on these 2 cores deschedule, had measured 2.6-3.7x the mean). out = lane 0 + lane 1, then
// the noise, in one write, in column blocks claimed the same way.
//
// Measured (benchmarks/dp.py, n=64, d=1M, the 2 cores shared with other work): one read 1.5 to
// 2.3x the plain mean, two reads 1.8 to 2.6x, run to run; each lane's re-read row and
// accumulator cost 12 MiB of L3 traffic per row, and this VM's L3 is shared with other
// tenants. Also tried: sweeps of all rows in column blocks, a group of rows squared while the
// previous group is summed into out (less L3 traffic per row, but a wait at every sweep): 2.3
// to 2.6x with groups of 1 or 2 rows, worse past the cache.
//
// Where a lane's working set does not fit in half of cache_bytes the same sum runs as two reads
// of x: the norms, then column blocks in which each lane's rows are summed in the same order
// with the same float32 fma: the same bits, so neither the cache size nor the thread count
// changes the result. Two lanes rather than one per thread for that reason.
#include "dp.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "blake3_xof.h"
#include "claims.h"
#include "common.h"

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

template <typename T>
double row_norm(const T* row, int64_t d) {
  double sq = 0.0;
  for (int64_t j0 = 0; j0 < d; j0 += kChunk) sq += chunk_sq(row + j0, std::min(kChunk, d - j0));
  return finish_norm(sq, row, d);
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

// acc[j] = fma(c, row[j], first ? 0 : acc[j]) over k columns (tiny c: acc + float32(row * c)).
// Both paths call this, so they round alike.
template <typename T>
inline void axpy(const T* row, int64_t k, const Coef& c, float* acc, bool first) {
  if (!c.tiny) {
    const float cf = c.f;
    if (first) {
#pragma omp simd
      for (int64_t j = 0; j < k; ++j) acc[j] = std::fma(cf, load(row, j), 0.0f);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < k; ++j) acc[j] = std::fma(cf, load(row, j), acc[j]);
    }
  } else {
    for (int64_t j = 0; j < k; ++j)
      acc[j] = (first ? 0.0f : acc[j]) + static_cast<float>(static_cast<double>(load(row, j)) * c.d);
  }
}

// One lane of the one-read path: rows [r0, r1) into acc [d], norms written as they complete.
template <typename T>
void fused_lane(const T* x, int64_t d, int64_t r0, int64_t r1, const double* w, double max_norm,
                double* norms, float* acc) {
  if (r0 >= r1) return;
  norms[r0] = row_norm(x + r0 * d, d);
  for (int64_t i = r0; i < r1; ++i) {
    const T* row = x + i * d;
    const T* next = i + 1 < r1 ? row + d : nullptr;
    const Coef c = coefficient(norms[i], w[i], max_norm);
    double sq = 0.0;
    for (int64_t j0 = 0; j0 < d; j0 += kChunk) {
      const int64_t k = std::min(kChunk, d - j0);
      if (next) sq += chunk_sq(next + j0, k);
      axpy(row + j0, k, c, acc + j0, i == r0);
    }
    if (next) norms[i + 1] = finish_norm(sq, next, d);
  }
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

// out[j] = float32(float64(v[j - j0]) + std * z_j) for j in [j0, j0 + m), j0 even, m <= 2 kPairs,
// from the words of these pairs (wb[3 k .. 3 k + 2] for pair j0 / 2 + k). v may be out + j0.
void noise_block(const uint64_t* wb, int64_t j0, int64_t m, double std, const float* v,
                 float* out) {
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
    const int64_t j = 2 * k;
    out[j0 + j] = static_cast<float>(static_cast<double>(v[j]) + std * z0[k]);
    if (j + 1 < m) out[j0 + j + 1] = static_cast<float>(static_cast<double>(v[j + 1]) + std * z1[k]);
  }
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

// The final write of columns [j0, j0 + m) (j0 a multiple of 2 kPairs): out = a0 + a1 (a1 null:
// an empty lane), then the noise if `noise` is not null. a0 may be out + j0.
void finish(const float* a0, const float* a1, int64_t j0, int64_t m, const NoiseKey* noise,
            double std, float* out) {
  for (int64_t s = 0; s < m; s += 2 * kPairs) {
    const int64_t k = std::min(2 * kPairs, m - s);
    float* o = out + j0 + s;
#pragma omp simd
    for (int64_t j = 0; j < k; ++j) o[j] = a0[s + j] + (a1 ? a1[s + j] : 0.0f);
    if (noise) {
      uint64_t w[3 * kPairs];
      keyed_words(*noise, (j0 + s) / 2, (k + 1) / 2, w);
      noise_block(w, j0 + s, k, std, o, out);
    }
  }
}

inline int max_threads() {
#ifdef _OPENMP
  return std::max(1, omp_get_max_threads());
#else
  return 1;
#endif
}

// Columns per block of the two-read path: both lanes' accumulators (2 x 16 KiB) stay in L1
// while the rows stream past. Even (the noise's pairs).
constexpr int64_t kBlock = 4096;

template <typename T>
void clipped_mean_impl(const T* x, int64_t n, int64_t d, const double* w, double max_norm,
                       double* norms, float* out, const NoiseKey* noise, double std,
                       int64_t cache_bytes) {
  const int64_t h = (n + 1) / 2;
  const bool two_lanes = h < n;
  // A lane holds the row streaming in, the row it sums and its accumulator.
  const int64_t lane_bytes = (2 * static_cast<int64_t>(sizeof(T)) + 4) * d;
  if (lane_bytes <= cache_bytes / 2) {
    static thread_local std::vector<float> scratch;  // lane 1's accumulator, kept between calls
    if (two_lanes && scratch.size() < static_cast<size_t>(d)) scratch.resize(static_cast<size_t>(d));
    float* acc1 = two_lanes ? scratch.data() : nullptr;
    const int helpers = max_threads() - 1;  // run_claimed starts at most items - 1
    run_claimed(two_lanes ? 2 : 1, helpers, [&](int64_t lane) {
      if (lane == 0) fused_lane(x, d, 0, h, w, max_norm, norms, out);
      else fused_lane(x, d, h, n, w, max_norm, norms, acc1);
    });
    run_claimed((d + kBlock - 1) / kBlock, helpers, [&](int64_t b) {
      const int64_t j0 = b * kBlock, m = std::min(kBlock, d - j0);
      finish(out + j0, acc1 ? acc1 + j0 : nullptr, j0, m, noise, std, out);
    });
    return;
  }
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) norms[i] = row_norm(x + i * d, d);
  std::vector<Coef> coef(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) coef[static_cast<size_t>(i)] = coefficient(norms[i], w[i], max_norm);
  const int64_t blocks = (d + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t j0 = b * kBlock, m = std::min(kBlock, d - j0);
    float a0[kBlock], a1[kBlock];
    for (int64_t i = 0; i < n; ++i)
      axpy(x + i * d + j0, m, coef[static_cast<size_t>(i)], i < h ? a0 : a1, i == 0 || i == h);
    finish(a0, two_lanes ? a1 : nullptr, j0, m, noise, std, out);
  }
}
}  // namespace

void clipped_mean(int dtype, const void* x, int64_t n, int64_t d, const double* w,
                  double max_norm, double* norms, float* out, const NoiseKey* noise, double std,
                  int64_t cache_bytes) {
  with_dtype(dtype, x, [&](auto* p) {
    clipped_mean_impl(p, n, d, w, max_norm, norms, out, noise, std, cache_bytes);
  });
}

void add_gaussian(const uint64_t* words, int64_t d, double std, float* out) {
  const int64_t blocks = (d + 2 * kPairs - 1) / (2 * kPairs);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t j0 = b * 2 * kPairs;
    noise_block(words + 3 * (j0 / 2), j0, std::min(2 * kPairs, d - j0), std, out + j0, out);
  }
}

int64_t last_level_cache_bytes() {
  // One instance of the last-level cache, as sysfs reports it ("32768K"): glibc's sysconf
  // answered 320 MiB on this 2-core VM of a host whose L3 instances are 32 MiB each.
  for (const char* path : {"/sys/devices/system/cpu/cpu0/cache/index3/size",
                           "/sys/devices/system/cpu/cpu0/cache/index2/size"}) {
    if (FILE* f = std::fopen(path, "r")) {
      long long value = 0;
      char unit = 0;
      const int got = std::fscanf(f, "%lld%c", &value, &unit);
      std::fclose(f);
      if (got >= 1 && value > 0)
        return static_cast<int64_t>(value) << (unit == 'K' ? 10 : unit == 'M' ? 20 : 0);
    }
  }
  long bytes = -1;
#ifdef _SC_LEVEL3_CACHE_SIZE
  bytes = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
  return bytes > 0 ? static_cast<int64_t>(bytes) : int64_t{32} << 20;
}

}  // namespace bcfl
