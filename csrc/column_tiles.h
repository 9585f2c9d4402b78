// Column tiles for the order-statistic kernels (median, trimmed_mean): vectors of columns in
// SIMD lanes, and the copy of a block of columns into a per-thread tile, run over all of x with
// OpenMP. sortnet.h searches the tiles.
//
// Layout: a thread copies a block of columns into a tile (converting float16/bfloat16 to float32
// once), as groups of [n][kLanes] floats followed by two rows: each lane's min and max, taken
// during the copy, where the data is already in registers. Each group is searched while it sits
// in L1/L2. The tile is 1 MiB (kTileFloats) so that each row's slice is at least 1 KiB at n=1000
// (4 groups); the copy also prefetches a few rows ahead (see load_tile).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common.h"

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace bcfl {
namespace select {

// A group is kU native vectors of columns: 4 x 8 = 32 columns with AVX2. With one vector per
// group a pass is latency-bound: one chain of count updates, then a dependent chain (reduce,
// compare, new pivot, the loop-exit branch) about as long as 64 rows. Four independent vectors
// were 1.7x faster at n=64 and 1.9x at n=1000 (one core). GCC vector extensions rather than
// auto-vectorized loops keep the counts in registers; vectors wider than the target's are
// lowered to scalar compares (8x slower), hence the width follows the target.
#if defined(__AVX512F__)
constexpr int kVec = 16;
#elif defined(__AVX2__)
constexpr int kVec = 8;
#else
constexpr int kVec = 4;
#endif
constexpr int kU = 4;
constexpr int kLanes = kVec * kU;
typedef float f32v __attribute__((vector_size(kVec * 4)));
typedef int32_t i32v __attribute__((vector_size(kVec * 4)));

constexpr int64_t kTileFloats = 256 * 1024;  // 1 MiB of float32 per thread

inline f32v load_row(const float* p) {
  f32v v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store_row(float* p, const f32v& v) { std::memcpy(p, &v, sizeof v); }

inline f32v splat(float v) { return f32v{} + v; }
inline i32v splat_i(int32_t v) { return i32v{} + v; }

// True if any lane of a compare mask is set.
inline bool any(const i32v& m) {
#if defined(__AVX512F__)
  return _mm512_test_epi32_mask(reinterpret_cast<__m512i>(m), reinterpret_cast<__m512i>(m)) != 0;
#elif defined(__AVX2__)
  return !_mm256_testz_si256(reinterpret_cast<__m256i>(m), reinterpret_cast<__m256i>(m));
#else
  int32_t r = 0;
  for (int l = 0; l < kVec; ++l) r |= m[l];
  return r != 0;
#endif
}

inline f32v vmin(const f32v& a, const f32v& b) { return a < b ? a : b; }
inline f32v vmax(const f32v& a, const f32v& b) { return a > b ? a : b; }

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};

#ifdef _OPENMP
inline size_t max_threads() { return static_cast<size_t>(omp_get_max_threads()); }
inline size_t thread_id() { return static_cast<size_t>(omp_get_thread_num()); }
#else
inline size_t max_threads() { return 1; }
inline size_t thread_id() { return 0; }
#endif

// Rows of a group in the tile: the n values of each column, then their min and max.
inline int64_t group_rows(int64_t n) { return n + 2; }

// Software prefetch distance of load_tile, in rows: every row's slice of a block lies in
// another page, which the hardware prefetcher does not follow. Per thread at n=1000 (128-float
// slices), the copy ran at 3 GB/s without it and 8 GB/s with it (2, 4 and 8 rows: within noise).
constexpr int64_t kPrefetchRows = 4;

// Copies columns [j0, j0 + m) of x [n, d] into tile groups [(g * (n + 2) + i) * kLanes + l]
// as float32 with every zero made -0 (keys must agree with float compares, and -0 == +0 does
// not tell them apart), and fills each group's rows n and n + 1 with the per-lane min and max.
// Lanes past m hold -0; their results are not written out. Returns whether every value copied
// was finite: the caller's finite check, folded into the one read of x (a median or a trimmed
// mean can drop a NaN or an infinity, so their results cannot tell).
template <typename T>
bool load_tile(const T* x, int64_t n, int64_t d, int64_t j0, int64_t m, float* tile) {
  const int64_t rows = group_rows(n), groups = (m + kLanes - 1) / kLanes;
  for (int64_t g = 0; g < groups; ++g) {
    float* mn = tile + (g * rows + n) * kLanes;
    for (int l = 0; l < kLanes; ++l) {
      mn[l] = std::numeric_limits<float>::infinity();
      mn[kLanes + l] = -std::numeric_limits<float>::infinity();
    }
  }
  const int64_t full = m / kLanes;
  // v - v is 0 for a finite v and NaN for NaN or an infinity: one add per value, in lanes.
  alignas(64) float check[kLanes] = {};
  for (int64_t i = 0; i < n; ++i) {
    const T* src = x + i * d + j0;
    if (i + kPrefetchRows < n) prefetch(src + kPrefetchRows * d, m);
    for (int64_t g = 0; g < groups; ++g) {
      float* dst = tile + (g * rows + i) * kLanes;
      float* mn = tile + (g * rows + n) * kLanes;
      float* mx = mn + kLanes;
      auto put = [&](int l, float v) {
        check[l] += v - v;
        v = v == 0.0f ? -0.0f : v;
        dst[l] = v;
        mn[l] = v < mn[l] ? v : mn[l];
        mx[l] = v > mx[l] ? v : mx[l];
      };
      if (g < full) {
#pragma omp simd
        for (int l = 0; l < kLanes; ++l) put(l, load(src, g * kLanes + l));
      } else {  // the block's last, partial group
        for (int l = 0; l < kLanes; ++l) {
          const int64_t c = g * kLanes + l;
          put(l, c < m ? load(src, c) : 0.0f);
        }
      }
    }
  }
  bool finite = true;
  for (int l = 0; l < kLanes; ++l) finite = finite && check[l] == 0.0f;
  return finite;
}

// Runs fn(group_tile, out_lanes) for every group of kLanes columns of x [n, d] (group_tile: its
// n rows, then min and max) and copies the first (valid) lanes of out_lanes to out[j...].
// OpenMP over column blocks. Returns whether every value of x was finite.
template <typename T, typename Fn>
bool for_each_group(const T* x, int64_t n, int64_t d, float* out, Fn&& fn) {
  const int64_t d_groups = (d + kLanes - 1) / kLanes;
  const int64_t groups = std::clamp<int64_t>(kTileFloats / (n * kLanes), 1, d_groups);
  const int64_t block = groups * kLanes;
  const int64_t blocks = (d + block - 1) / block;
  // One tile per thread, allocated here so that a failure raises (MemoryError in Python)
  // instead of crashing inside the parallel region.
  const size_t bytes = static_cast<size_t>(group_rows(n) * block) * sizeof(float);  // 64 | bytes
  std::vector<std::unique_ptr<float, FreeDeleter>> tiles(max_threads());
  for (auto& t : tiles) {
    t.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
    if (!t) throw std::bad_alloc();
  }
  int nonfinite = 0;
#pragma omp parallel num_threads(static_cast<int>(tiles.size()))
  {
    float* tile = tiles[thread_id()].get();
    // Dynamic: the number of passes depends on the data.
#pragma omp for schedule(dynamic, 4) reduction(| : nonfinite)
    for (int64_t bi = 0; bi < blocks; ++bi) {
      const int64_t j0 = bi * block, m = std::min(block, d - j0);
      nonfinite |= load_tile(x, n, d, j0, m, tile) ? 0 : 1;
      for (int64_t g = 0; g * kLanes < m; ++g) {
        alignas(64) float lanes[kLanes];
        fn(tile + g * group_rows(n) * kLanes, lanes);
        const int64_t w = std::min<int64_t>(kLanes, m - g * kLanes);
        std::memcpy(out + j0 + g * kLanes, lanes, static_cast<size_t>(w) * sizeof(float));
      }
    }
  }
  return nonfinite == 0;
}

}  // namespace select
}  // namespace bcfl
