// Norm clipping of each row: one pass copies the row to float32 while summing its squares;
// only a row over the bound is touched again, in the output it was just written to.
//
// Against "norms, then scale" this saves one read of x for every row within the bound, and for
// a clipped row re-reads `out` rather than `x`: from L2/L3 when the row fits (d = 100k float32
// is 400 KiB, under the 512 KiB L2), from memory otherwise.
#include "clip.h"

#include <algorithm>
#include <cmath>

#include "common.h"

namespace bcfl {

namespace {
// Squares are summed in float32 over chunks of 1024, then in float64: the float32 part stays
// within ~1e-7 relative, and the float64 sum keeps that at d = 1M.
constexpr int64_t kChunk = 1024;

template <typename T>
void clip_impl(const T* x, int64_t n, int64_t d, double max_norm, float* out, double* norms) {
  // out == x: clip in place (float32 storage), reading each row once and writing only the
  // rows over the bound.
  const bool inplace = static_cast<const void*>(x) == static_cast<const void*>(out);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < n; ++i) {
    const T* row = x + i * d;
    float* o = out + i * d;
    double sq = 0.0;
    for (int64_t j0 = 0; j0 < d; j0 += kChunk) {
      const int64_t m = std::min(kChunk, d - j0);
      float s = 0.0f;
      if (inplace) {  // only read: a row within the bound is never written
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < m; ++j) s += load(row, j0 + j) * load(row, j0 + j);
      } else {
#pragma omp simd reduction(+ : s)
        for (int64_t j = 0; j < m; ++j) {
          const float v = load(row, j0 + j);
          o[j0 + j] = v;
          s += v * v;
        }
      }
      sq += s;
    }
    const double norm = std::sqrt(sq);
    if (norms) norms[i] = norm;
    if (norm > max_norm) {
      const float scale = static_cast<float>(max_norm / norm);
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) o[j] *= scale;
    }
  }
}
}  // namespace

void clip_rows(int dtype, const void* x, int64_t n, int64_t d, double max_norm, float* out,
               double* norms) {
  with_dtype(dtype, x, [&](auto* p) { clip_impl(p, n, d, max_norm, out, norms); });
}

}  // namespace bcfl
