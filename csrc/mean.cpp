// Weighted mean (FedAvg) over the rows of an [n, d] buffer: out[j] = sum_i w[i] * x[i, j].
//
// Each thread owns a block of columns and walks the rows, so every byte of x is read once and
// the accumulator block stays in L1. Block 2048 floats (8 KiB): within 3% of 4096 and 8192 at
// n=64, d=1M on 2 cores, and leaves room in L1 for the streaming loads.
#include "mean.h"

#include <algorithm>
#include <vector>

#include "common.h"

namespace bcfl {

namespace {
constexpr int64_t kBlock = 2048;

template <typename T>
void mean_impl(const T* x, int64_t n, int64_t d, const float* w, float* out) {
  const int64_t blocks = (d + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t j0 = b * kBlock, j1 = std::min(d, j0 + kBlock);
    float acc[kBlock];
    const int64_t m = j1 - j0;
    for (int64_t j = 0; j < m; ++j) acc[j] = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
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

}  // namespace bcfl
