// The column-block sum of the weighted mean (mean.cpp), shared with the clipped mean (dp.cpp),
// so both add the same products in the same order.
#pragma once

#include <algorithm>
#include <cstdint>

#include "common.h"

namespace bcfl {

// Columns per block: up to 8192 floats (32 KiB runs of each row), best of 2048..16384 on this
// 2-core EPYC, best-of-9 against a C++ streaming sum (noisy: another process shared the cores),
// at n=64, d=1M 0.85-0.96 (2048) vs 1.0-1.15 (8192), at n=1000, d=100k about equal. Longer runs
// of a row give the hardware prefetcher more to follow; software prefetch of the next rows made
// it worse (0.4-0.7). The width is a multiple of 16 (one 64-byte line), and the block count a
// multiple of the thread count, so that no thread waits for another's extra block (d=100k in
// blocks of 8192 is 13: 7 against 6).
constexpr int64_t kMaxBlock = 8192;

inline int64_t block_width(int64_t d, int64_t threads) {
  int64_t blocks = (d + kMaxBlock - 1) / kMaxBlock;
  blocks = (blocks + threads - 1) / threads * threads;
  return std::min(kMaxBlock, ((d + blocks - 1) / blocks + 15) / 16 * 16);
}

// acc[j] += sum_i w[i] * x[i, j0 + j] for j < m (x [n, d] row-major): eight rows per sweep of
// the accumulator (an eighth of its loads and stores, eight streams in flight), added as one
// tree, then fours, then single rows. Each column's value depends only on n, w and its own
// column, so neither the block nor the thread changes it. Against four rows per sweep,
// best-of-9 over a C++ streaming sum on the quiet 2-core EPYC: 0.79-0.88 -> 0.87-1.21 at
// n=1000, d=100k, 0.94-1.07 -> 1.02-1.14 at n=64, d=1M (four against one: 0.61 -> 0.88).
template <typename T>
inline void sum_rows_block(const T* x, int64_t n, int64_t d, int64_t j0, int64_t m,
                           const float* w, float* acc) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const T* r0 = x + i * d + j0;
    const T *r1 = r0 + d, *r2 = r1 + d, *r3 = r2 + d, *r4 = r3 + d, *r5 = r4 + d, *r6 = r5 + d,
            *r7 = r6 + d;
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
}

}  // namespace bcfl
