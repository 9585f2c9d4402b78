// The step shared by the geometric median (smoothed Weiszfeld) and centered clipping:
// a weighted combination of the rows, then every row's squared distance to it.
//
// Each thread owns contiguous blocks of columns. For a block it first sums coef[i] * x[i, block]
// over the rows, then walks the same rows again for (x - v)^2: the second walk reads the
// [n, block] tile from L2, not from memory, so a step costs one read of x instead of two.
// The block is sized so that the tile is at most kTileBytes.
#include "geometric_median.h"

#include <omp.h>

#include <algorithm>
#include <vector>

#include "common.h"

namespace bcfl {

namespace {
// Tile budget 256 KiB: half of the 512 KiB L2 per core, the other half for the streaming
// loads and v. Block bounds: 64 floats (one 256-byte run per row keeps the prefetcher busy)
// to 2048 (mean.cpp's block; more only grows the accumulator).
constexpr int64_t kTileBytes = 256 * 1024;
constexpr int64_t kMinBlock = 64;
constexpr int64_t kMaxBlock = 2048;

int64_t block_for(int64_t n, int64_t elem) {
  int64_t b = kTileBytes / std::max<int64_t>(1, n * elem);
  b = b / kMinBlock * kMinBlock;
  return std::clamp(b, kMinBlock, kMaxBlock);
}

template <typename T>
void combine_impl(const T* x, int64_t n, int64_t d, const float* coef, float beta,
                  const float* v_in, float* v_out, double* dist2) {
  const int64_t block = block_for(n, sizeof(T));
  const int64_t blocks = (d + block - 1) / block;
  const int threads = omp_get_max_threads();
  // Per-thread partial distances, summed in thread order afterwards: deterministic for a
  // given thread count (no atomics).
  std::vector<double> partial(dist2 ? static_cast<size_t>(threads) * n : 0, 0.0);
#pragma omp parallel num_threads(threads)
  {
    double* mine = dist2 ? partial.data() + static_cast<size_t>(omp_get_thread_num()) * n : nullptr;
    std::vector<float> acc(block);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t j0 = b * block, m = std::min(d, j0 + block) - j0;
      float* a = acc.data();
      if (v_in) {
        for (int64_t j = 0; j < m; ++j) a[j] = beta * v_in[j0 + j];
      } else {
        for (int64_t j = 0; j < m; ++j) a[j] = 0.0f;
      }
      for (int64_t i = 0; i < n; ++i) {
        const float ci = coef[i];
        if (ci == 0.0f) continue;  // centered clipping's first step: only the distances
        const T* row = x + i * d + j0;
#pragma omp simd
        for (int64_t j = 0; j < m; ++j) a[j] += ci * load(row, j);
      }
      for (int64_t j = 0; j < m; ++j) v_out[j0 + j] = a[j];
      if (!mine) continue;
      for (int64_t i = 0; i < n; ++i) {
        const T* row = x + i * d + j0;
        float s = 0.0f;  // at most 2048 terms in float32, then added in float64
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < m; ++j) {
          const float t = load(row, j) - a[j];
          s += t * t;
        }
        mine[i] += s;
      }
    }
  }
  if (dist2) {
    for (int64_t i = 0; i < n; ++i) dist2[i] = 0.0;
    for (int t = 0; t < threads; ++t)
      for (int64_t i = 0; i < n; ++i) dist2[i] += partial[static_cast<size_t>(t) * n + i];
  }
}
}  // namespace

void combine_distances(int dtype, const void* x, int64_t n, int64_t d, const float* coef,
                       float beta, const float* v_in, float* v_out, double* dist2) {
  with_dtype(dtype, x, [&](auto* p) { combine_impl(p, n, d, coef, beta, v_in, v_out, dist2); });
}

}  // namespace bcfl
