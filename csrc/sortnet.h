// Column-block order statistics, shared by median and trimmed_mean: the k-th smallest value of
// every column of an [n, d] buffer, for a vector of columns at once.
//
// Why not a sort: a per-column std::nth_element is scalar and branchy (torch.median(dim=0) takes
// 0.55 s at n=64, d=1M on 2 cores, 80x one read of the data). A sorting network across columns
// vectorizes, but costs ~n log^2 n / 4 compare-exchanges (24k at n=1024) with a load and a store
// per operand. Bisection on the float bit pattern costs 3 vector ops per element per pass (load,
// compare, subtract the mask into a count), needs at most 33 passes whatever n, and stops as soon
// as every lane has isolated its rank: 15-18 passes for a group of 32 Gaussian columns at n=64
// and n=1000 (bisect below says how ties are kept from taking all 32).
//
// Layout: a thread copies a block of columns into a tile (converting float16/bfloat16 to float32
// once), as groups of [n][kLanes] floats; each group is searched while it sits in L1/L2. The
// tile is 128 KiB (kTileFloats): it stays in the 512 KiB L2 of a Zen 3 core. A software
// prefetch of the next block during the search, and tiles of 64-512 KiB, measured no faster.
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

constexpr int64_t kTileFloats = 32 * 1024;  // 128 KiB of float32 per thread
constexpr int kMaxPasses = 34;              // 32 halvings of 2^32 keys, plus slack

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

// Monotonic integer key of a float: key(a) < key(b) iff a < b, with -0 < +0. Positive floats
// keep their bits; negative ones flip the 31 low bits so that larger magnitudes sort lower. The
// transform is its own inverse.
inline i32v key_of(const f32v& v) {
  i32v b;
  std::memcpy(&b, &v, sizeof b);
  return b ^ ((b >> 31) & 0x7fffffff);
}
inline f32v value_of(const i32v& k) {
  const i32v b = k ^ ((k >> 31) & 0x7fffffff);
  f32v v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

inline f32v vmin(const f32v& a, const f32v& b) { return a < b ? a : b; }
inline f32v vmax(const f32v& a, const f32v& b) { return a > b ? a : b; }

// Per lane: the value of rank r (0-based) has its key in [lo, hi], and chi = #{x <= hi}.
struct Bracket {
  i32v lo[kU], hi[kU], chi[kU];
};

// A group's initial bracket: [key(min), key(max)], with all n values <= max.
inline Bracket initial(const float* tile, int64_t n) {
  f32v mn[kU], mx[kU];
  for (int u = 0; u < kU; ++u) mn[u] = mx[u] = load_row(tile + u * kVec);
  for (int64_t i = 1; i < n; ++i) {
    for (int u = 0; u < kU; ++u) {
      const f32v v = load_row(tile + i * kLanes + u * kVec);
      mn[u] = vmin(mn[u], v);
      mx[u] = vmax(mx[u], v);
    }
  }
  Bracket b;
  for (int u = 0; u < kU; ++u) {
    b.lo[u] = key_of(mn[u]);
    b.hi[u] = key_of(mx[u]);
    b.chi[u] = splat_i(static_cast<int32_t>(n));
  }
  return b;
}

// Narrows b until every lane has isolated rank r: its bracket is one key, or exactly r + 1
// values are <= hi (then rank r is the largest of them, see around). The tile holds no +0
// (load_tile makes every zero -0), so comparing floats with the pivot's float agrees with
// comparing keys.
//
// Ties: a bracket that holds only copies of one value never isolates it by counting, and
// plain bisection then runs all 31-32 passes (sparse updates: a column that is mostly zeros).
// So when a pass leaves some open lane with as many values inside its bracket as before, the
// next pass also snaps the bracket ends to the nearest values inside (largest <= pivot,
// smallest > pivot): a bracket of copies becomes one key. A snapping pass costs 2.6 counting
// passes. Time per row and 8 columns for the whole median (min/max and final pass included),
// one core, plain -> snapping (n=64 | n=1000):
//   Gaussian          7.3 -> 7.6 ns | 6.3 -> 8.2 ns
//   rounded Gaussian 10.3 -> 5.1 ns | 15.1 -> 4.4 ns  (values -3 .. 3 in steps of 0.5)
//   75% zeros        12.1 -> 3.8 ns | 13.0 -> 3.5 ns
// Snapping only brackets narrower than 2^16 keys was 8-18% faster on Gaussian columns but
// 1.6-2.8x slower on the other two: a stuck count also comes from a pivot among empty
// exponents, where snapping pays too.
inline void bisect(const float* tile, int64_t n, int32_t r, Bracket& b) {
  const f32v ninf = splat(-std::numeric_limits<float>::infinity());
  const f32v pinf = splat(std::numeric_limits<float>::infinity());
  i32v lo[kU], hi[kU], chi[kU], clo[kU], was[kU];
  for (int u = 0; u < kU; ++u) {
    lo[u] = b.lo[u], hi[u] = b.hi[u], chi[u] = b.chi[u];
    clo[u] = splat_i(0);  // #{x < lo}
    was[u] = splat_i(-1);
  }
  bool snap = false;
  for (int pass = 0; pass < kMaxPasses; ++pass) {
    i32v open = splat_i(0);
    for (int u = 0; u < kU; ++u) open |= (lo[u] != hi[u]) & (chi[u] != r + 1);
    if (!any(open)) break;
    i32v mid[kU], cnt[kU];
    f32v piv[kU], below[kU], above[kU];
    for (int u = 0; u < kU; ++u) {
      mid[u] = (lo[u] >> 1) + (hi[u] >> 1) + (lo[u] & hi[u] & 1);  // floor((lo + hi) / 2)
      piv[u] = value_of(mid[u]);
      cnt[u] = splat_i(0);
      below[u] = ninf;
      above[u] = pinf;
    }
    if (!snap) {
      for (int64_t i = 0; i < n; ++i) {
        const float* row = tile + i * kLanes;
        for (int u = 0; u < kU; ++u) cnt[u] -= (load_row(row + u * kVec) <= piv[u]);  // true: -1
      }
    } else {
      for (int64_t i = 0; i < n; ++i) {
        for (int u = 0; u < kU; ++u) {
          const f32v v = load_row(tile + i * kLanes + u * kVec);
          const i32v le = v <= piv[u];
          cnt[u] -= le;
          below[u] = vmax(below[u], le ? v : ninf);
          above[u] = vmin(above[u], le ? pinf : v);
        }
      }
    }
    bool flat = false;
    for (int u = 0; u < kU; ++u) {
      const i32v down = cnt[u] > r;  // rank r lies at or below mid
      hi[u] = down ? (snap ? key_of(below[u]) : mid[u]) : hi[u];
      chi[u] = down ? cnt[u] : chi[u];
      lo[u] = down ? lo[u] : (snap ? key_of(above[u]) : mid[u] + 1);
      clo[u] = down ? clo[u] : cnt[u];
      const i32v inside = chi[u] - clo[u];
      flat = flat || any((lo[u] != hi[u]) & (chi[u] != r + 1) & (inside == was[u]));
      was[u] = inside;
    }
    snap = flat;
  }
  for (int u = 0; u < kU; ++u) b.lo[u] = lo[u], b.hi[u] = hi[u], b.chi[u] = chi[u];
}

// Per lane, the largest value <= hi (rank r, once bisect has settled) and the smallest > hi.
inline void around(const float* tile, int64_t n, const Bracket& b, f32v (&below)[kU],
                   f32v (&above)[kU]) {
  const f32v ninf = splat(-std::numeric_limits<float>::infinity());
  const f32v pinf = splat(std::numeric_limits<float>::infinity());
  f32v bound[kU];
  for (int u = 0; u < kU; ++u) {
    bound[u] = value_of(b.hi[u]);
    below[u] = ninf;
    above[u] = pinf;
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int u = 0; u < kU; ++u) {
      const f32v v = load_row(tile + i * kLanes + u * kVec);
      const i32v le = v <= bound[u];
      below[u] = vmax(below[u], le ? v : ninf);
      above[u] = vmin(above[u], le ? pinf : v);
    }
  }
}

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

// Copies columns [j0, j0 + m) of x [n, d] into tile groups [(g * n + i) * kLanes + l] as
// float32 with every zero made -0 (keys must agree with float compares, and -0 == +0 does not
// tell them apart). Lanes past m hold -0; their results are not written out.
template <typename T>
void load_tile(const T* x, int64_t n, int64_t d, int64_t j0, int64_t m, float* tile) {
  const int64_t full = m / kLanes;
  for (int64_t i = 0; i < n; ++i) {
    const T* src = x + i * d + j0;
    for (int64_t g = 0; g < full; ++g) {
      float* dst = tile + (g * n + i) * kLanes;
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) {
        const float v = load(src, g * kLanes + l);
        dst[l] = v == 0.0f ? -0.0f : v;
      }
    }
    if (full * kLanes < m) {
      float* dst = tile + (full * n + i) * kLanes;
      for (int64_t c = full * kLanes; c < full * kLanes + kLanes; ++c) {
        const float v = c < m ? load(src, c) : 0.0f;
        dst[c - full * kLanes] = v == 0.0f ? -0.0f : v;
      }
    }
  }
}

// Runs fn(group_tile, out_lanes) for every group of kLanes columns of x [n, d] and copies
// the first (valid) lanes of out_lanes to out[j...]. OpenMP over column blocks.
template <typename T, typename Fn>
void for_each_group(const T* x, int64_t n, int64_t d, float* out, Fn&& fn) {
  const int64_t d_groups = (d + kLanes - 1) / kLanes;
  const int64_t groups = std::clamp<int64_t>(kTileFloats / (n * kLanes), 1, d_groups);
  const int64_t block = groups * kLanes;
  const int64_t blocks = (d + block - 1) / block;
  // One tile per thread, allocated here so that a failure raises (MemoryError in Python)
  // instead of crashing inside the parallel region.
  const size_t bytes = static_cast<size_t>(n * block) * sizeof(float);  // a multiple of 64
  std::vector<std::unique_ptr<float, FreeDeleter>> tiles(max_threads());
  for (auto& t : tiles) {
    t.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
    if (!t) throw std::bad_alloc();
  }
#pragma omp parallel num_threads(static_cast<int>(tiles.size()))
  {
    float* tile = tiles[thread_id()].get();
    // Dynamic: the number of passes depends on the data (9 to 33 per group).
#pragma omp for schedule(dynamic, 4)
    for (int64_t bi = 0; bi < blocks; ++bi) {
      const int64_t j0 = bi * block, m = std::min(block, d - j0);
      load_tile(x, n, d, j0, m, tile);
      for (int64_t g = 0; g * kLanes < m; ++g) {
        alignas(64) float lanes[kLanes];
        fn(tile + g * n * kLanes, lanes);
        const int64_t w = std::min<int64_t>(kLanes, m - g * kLanes);
        std::memcpy(out + j0 + g * kLanes, lanes, static_cast<size_t>(w) * sizeof(float));
      }
    }
  }
}

}  // namespace select
}  // namespace bcfl
