// Norm clipping of each row: one pass copies the row to float32 while summing its squares;
// only a row over the bound is touched again, in the output it was just written to.
//
// Against "norms, then scale" this saves one read of x for every row within the bound, and for
// a clipped row re-reads `out` rather than `x`: from L2/L3 when the row fits (d = 100k float32
// is 400 KiB, under the 512 KiB L2), from memory otherwise.
#include "clip.h"

#include <algorithm>
#include <cfloat>
#include <cmath>

#include "common.h"

namespace bcfl {

namespace {
// Squares are summed in float32 over chunks of 1024, then in float64: the float32 part stays
// within ~1e-7 relative, and the float64 sum keeps that at d = 1M.
constexpr int64_t kChunk = 1024;
// A float32 sum of squares below this may have lost terms to underflow (squares under
// FLT_MIN): at most d * 1.2e-38, 1e-9 of 1e-20 for d <= 1e9. Such rows, and rows whose float32
// sum overflowed (values over ~1e19), are summed again in float64, where the square of any
// finite float32 fits. Same bound as RECHECK_BELOW in bcfl_engine/rules/_common.py.
constexpr double kRecheckBelow = 1e-20;

template <typename T>
double sum_sq64(const T* row, int64_t d) {
  double s = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    const double v = static_cast<double>(load(row, j));
    s += v * v;
  }
  return s;
}

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
    if (!std::isfinite(sq) || sq < kRecheckBelow) sq = sum_sq64(row, d);
    const double norm = std::sqrt(sq);
    if (norms) norms[i] = norm;
    // A non-finite norm is a NaN or an infinity in the row: left as it is, for the caller to
    // report (in place, the input is then unchanged).
    if (norm > max_norm && std::isfinite(norm)) {
      const double scale = max_norm / norm;
      if (scale >= FLT_MIN) {
        const float s32 = static_cast<float>(scale);
#pragma omp simd
        for (int64_t j = 0; j < d; ++j) o[j] *= s32;
      } else {  // a float32 scale would be subnormal or 0: scale in float64, round once
        for (int64_t j = 0; j < d; ++j)
          o[j] = static_cast<float>(static_cast<double>(o[j]) * scale);
      }
    }
  }
}
}  // namespace

void clip_rows(int dtype, const void* x, int64_t n, int64_t d, double max_norm, float* out,
               double* norms) {
  with_dtype(dtype, x, [&](auto* p) { clip_impl(p, n, d, max_norm, out, norms); });
}

}  // namespace bcfl
