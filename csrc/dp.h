#pragma once
#include <cstdint>

namespace bcfl {
// The mean of clipped rows without writing a clipped row (differential privacy's bounded-
// sensitivity step): out[j] = sum_i c_i * x[i, j] with c_i = w[i] * min(1, max_norm / ||x_i||)
// for x [n, d] of storage dtype `dtype` (see common.h). The rows' L2 norms (float64
// accumulation, as clip.cpp) are written to norms [n]. A non-finite norm
// (NaN or inf in the row) keeps c_i = w[i], so the row's values reach out for the caller to
// report.
void clipped_mean(int dtype, const void* x, int64_t n, int64_t d, const double* w,
                  double max_norm, double* norms, float* out);
// out[j] = float32(out[j] + std * z_j) for j < d, each sum in float64 and rounded once, with
// z_j standard normal by Box-Muller from the caller's random words: pair k (coordinates 2k,
// 2k+1) reads words[3k .. 3k+2] (so words holds 3 * ceil(d / 2)). The radius's uniform keeps
// float64's full resolution down to 2^-65 (mantissa from one word, binary exponent from the
// leading zeros of another): no gaps in the tails to |z| = 9.
void add_gaussian(const uint64_t* words, int64_t d, double std, float* out);
}  // namespace bcfl
