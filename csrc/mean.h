#pragma once
#include <cstdint>

namespace bcfl {
// out[j] = sum_i w[i] * x[i, j] for x [n, d] of storage dtype `dtype` (see common.h); the
// caller normalizes w to sum to 1.
void weighted_mean(int dtype, const void* x, int64_t n, int64_t d, const float* w, float* out);
// Flower's FedAvg over float32 rows held in pieces, bit for bit as numpy computes it: segment
// s of row i is rows[i * segments + s] (widths[s] floats) and lands in out at the sum of the
// earlier widths; out[j] = ((r_0[j] * s_0) + r_1[j] * s_1) + ..., each product rounded to
// float32 before its add, rows in order. `parallel`: helper threads (OpenMP's thread count)
// take blocks too (the result is the same either way: each column is summed by one thread,
// in row order).
void weighted_sum_rows(const float* const* rows, const int64_t* widths, int64_t segments,
                       int64_t n, const float* shares, float* out, bool parallel);
}  // namespace bcfl
