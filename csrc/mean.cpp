// Weighted mean (FedAvg) over the rows of an [n, d] buffer: out[j] = sum_i w[i] * x[i, j].
//
// Each thread owns a block of columns and walks the rows, so every byte of x is read once and
// the accumulator block stays in L1/L2.
//
// Blocks and their sum: mean_block.h.
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
#include "mean_block.h"

namespace bcfl {

namespace {
template <typename T>
void mean_impl(const T* x, int64_t n, int64_t d, const float* w, float* out) {
  const int64_t width = block_width(d, std::max(1, omp_get_max_threads()));
  const int64_t blocks = (d + width - 1) / width;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t j0 = b * width, j1 = std::min(d, j0 + width);
    float acc[kMaxBlock];
    const int64_t m = j1 - j0;
    for (int64_t j = 0; j < m; ++j) acc[j] = 0.0f;
    sum_rows_block(x, n, d, j0, m, w, acc);
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
