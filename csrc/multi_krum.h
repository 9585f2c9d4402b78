#pragma once
#include <cstdint>

namespace bcfl {
// out[j] = (1/m) sum_t x[idx[t], j] for x [n, d] of storage dtype `dtype` (see common.h): the
// mean of the m rows a Krum-type selection chose.
void select_mean(int dtype, const void* x, int64_t d, const int64_t* idx, int64_t m, float* out);
}  // namespace bcfl
