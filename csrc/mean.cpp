// Weighted mean (FedAvg) over the rows of an [n, d] buffer: out[j] = sum_i w[i] * x[i, j].
//
// Each thread owns a block of columns and walks the rows, so every byte of x is read once and
// the accumulator block stays in L1/L2.
//
// Blocks of up to 8192 floats (32 KiB runs of each row): best of 2048..16384 on this 2-core
// EPYC, best-of-9 against a C++ streaming sum (noisy: another process shared the cores), at
// n=64, d=1M 0.85-0.96 (2048) vs 1.0-1.15 (8192), at n=1000, d=100k about equal. Longer runs of
// a row give the hardware prefetcher more to follow; software prefetch of the next rows made it
// worse (0.4-0.7). The block count is a multiple of the thread count, so that no thread waits
// for another's extra block (d=100k in blocks of 8192 is 13: 7 against 6).
#include "mean.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "claims.h"
#include "common.h"

namespace bcfl {

namespace {
constexpr int64_t kBlock = 8192;

template <typename T>
void mean_impl(const T* x, int64_t n, int64_t d, const float* w, float* out) {
  const int64_t threads = std::max(1, omp_get_max_threads());
  int64_t blocks = (d + kBlock - 1) / kBlock;
  blocks = (blocks + threads - 1) / threads * threads;
  // Columns per block: a multiple of 16 (one 64-byte line), at most kBlock.
  const int64_t width = std::min(kBlock, ((d + blocks - 1) / blocks + 15) / 16 * 16);
  blocks = (d + width - 1) / width;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t j0 = b * width, j1 = std::min(d, j0 + width);
    float acc[kBlock];
    const int64_t m = j1 - j0;
    for (int64_t j = 0; j < m; ++j) acc[j] = 0.0f;
    // Eight rows per sweep of the accumulator: an eighth of its loads and stores, and eight
    // streams in flight. Against four, best-of-9 over a C++ streaming sum on the quiet 2-core
    // EPYC: 0.79-0.88 -> 0.87-1.21 at n=1000, d=100k, 0.94-1.07 -> 1.02-1.14 at n=64, d=1M
    // (four against one had measured 0.61 -> 0.88 at n=1000, d=100k).
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      const T* r0 = x + i * d + j0;
      const T *r1 = r0 + d, *r2 = r1 + d, *r3 = r2 + d, *r4 = r3 + d, *r5 = r4 + d,
              *r6 = r5 + d, *r7 = r6 + d;
      const float* wi = w + i;
#pragma omp simd
      for (int64_t j = 0; j < m; ++j)
        acc[j] += ((wi[0] * load(r0, j) + wi[1] * load(r1, j)) +
                   (wi[2] * load(r2, j) + wi[3] * load(r3, j))) +
                  ((wi[4] * load(r4, j) + wi[5] * load(r5, j)) +
                   (wi[6] * load(r6, j) + wi[7] * load(r7, j)));
    }
    for (; i + 4 <= n; i += 4) {
      const T* r0 = x + i * d + j0;
      const T* r1 = r0 + d;
      const T* r2 = r1 + d;
      const T* r3 = r2 + d;
      const float w0 = w[i], w1 = w[i + 1], w2 = w[i + 2], w3 = w[i + 3];
#pragma omp simd
      for (int64_t j = 0; j < m; ++j)
        acc[j] += w0 * load(r0, j) + w1 * load(r1, j) + w2 * load(r2, j) + w3 * load(r3, j);
    }
    for (; i < n; ++i) {
      const T* row = x + i * d + j0;
      const float wi = w[i];
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) acc[j] += wi * load(row, j);
    }
    for (int64_t j = 0; j < m; ++j) out[j0 + j] = acc[j];
  }
}
}  // namespace

void weighted_mean(int dtype, const void* x, int64_t n, int64_t d, const float* w, float* out) {
  with_dtype(dtype, x, [&](auto* p) { mean_impl(p, n, d, w, out); });
}

// ---- Flower's FedAvg arithmetic over rows held in pieces (weighted_sum_rows) ----
//
// numpy's `acc = r0 * s0; acc += r1 * s1; ...` in float32: each product rounded to float32,
// then added, rows in order. The products are kept out of FMAs (which -march=native would
// otherwise form) by an empty asm that hides where the value came from.
namespace {
// Lanes of one vector: AVX's 8 where the target has it, else SSE's or NEON's 4.
#if defined(__AVX__)
constexpr int64_t kLanes = 8;
#else
constexpr int64_t kLanes = 4;
#endif
typedef float fvec __attribute__((vector_size(kLanes * 4)));

template <typename V>
inline V rounded(V v) {
#if defined(__x86_64__) || defined(__i386__)
  asm("" : "+x"(v));
#elif defined(__aarch64__)
  asm("" : "+w"(v));
#else
  volatile V keep = v;
  v = keep;
#endif
  return v;
}

inline fvec ldv(const float* p) {
  fvec v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
inline void stv(float* p, fvec v) { __builtin_memcpy(p, &v, sizeof v); }

// Columns per block: the block of `out` (16 KiB) stays in L1 while every row's run of it
// streams past. kGroup rows per sweep of the block (eight streams in flight, an eighth of the
// block's loads and stores, as weighted_mean above), added one after another as numpy does.
constexpr int64_t kSumBlock = 4096;
constexpr int kGroup = 8;

void sum_block(const float* const* rows, int64_t n, const float* s, int64_t j0, int64_t w,
               float* out) {
  const float* r0 = rows[0] + j0;
  int64_t k = 0;
  for (; k + kLanes <= w; k += kLanes) stv(out + k, ldv(r0 + k) * s[0]);
  for (; k < w; ++k) out[k] = r0[k] * s[0];
  int64_t i = 1;
  for (; i + kGroup <= n; i += kGroup) {
    const float* r[kGroup];
    float sc[kGroup];
    for (int q = 0; q < kGroup; ++q) {
      r[q] = rows[i + q] + j0;
      sc[q] = s[i + q];
    }
    for (k = 0; k + kLanes <= w; k += kLanes) {
      fvec acc = ldv(out + k);
      for (int q = 0; q < kGroup; ++q) acc = acc + rounded(ldv(r[q] + k) * sc[q]);
      stv(out + k, acc);
    }
    for (; k < w; ++k) {
      float acc = out[k];
      for (int q = 0; q < kGroup; ++q) acc = acc + rounded(r[q][k] * sc[q]);
      out[k] = acc;
    }
  }
  for (; i < n; ++i) {
    const float* a = rows[i] + j0;
    const float sa = s[i];
    for (k = 0; k + kLanes <= w; k += kLanes) stv(out + k, ldv(out + k) + rounded(ldv(a + k) * sa));
    for (; k < w; ++k) out[k] = out[k] + rounded(a[k] * sa);
  }
}
}  // namespace

void weighted_sum_rows(const float* const* rows, const int64_t* widths, int64_t segments,
                       int64_t n, const float* shares, float* out, bool parallel) {
  // Work items: (segment, first column, output offset) of each block, segment after segment.
  struct Item {
    int64_t seg, j0, at;
  };
  std::vector<Item> items;
  int64_t at = 0;
  for (int64_t s = 0; s < segments; ++s) {
    for (int64_t j0 = 0; j0 < widths[s]; j0 += kSumBlock) items.push_back({s, j0, at + j0});
    at += widths[s];
  }
  // Row pointers of each segment, row-major as sum_block reads them.
  std::vector<const float*> by_seg(static_cast<std::size_t>(segments * n));
  for (int64_t s = 0; s < segments; ++s)
    for (int64_t i = 0; i < n; ++i) by_seg[static_cast<std::size_t>(s * n + i)] = rows[i * segments + s];
  const std::function<void(int64_t)> work = [&](int64_t t) {
    const Item& it = items[static_cast<std::size_t>(t)];
    const int64_t w = std::min(kSumBlock, widths[it.seg] - it.j0);
    sum_block(by_seg.data() + it.seg * n, n, shares, it.j0, w, out + it.at);
  };
  const int helpers = parallel ? std::max(1, omp_get_max_threads()) - 1 : 0;
  run_claimed(static_cast<int64_t>(items.size()), helpers, work);
}

}  // namespace bcfl
