#pragma once
#include <cstdint>

namespace bcfl {
// out[j] = sum_i w[i] * x[i, j] for x [n, d] of storage dtype `dtype` (see common.h); the
// caller normalizes w to sum to 1.
void weighted_mean(int dtype, const void* x, int64_t n, int64_t d, const float* w, float* out);
}  // namespace bcfl
