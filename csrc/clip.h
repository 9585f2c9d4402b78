#pragma once
#include <cstdint>

namespace bcfl {
// out[i, :] = x[i, :] * min(1, max_norm / ||x[i, :]||) for x [n, d] of storage dtype `dtype`
// (see common.h); out is float32 [n, d]. Rows within the bound are copied unchanged. Row norms
// (accumulated in float64) go to norms[i] if norms is not null.
void clip_rows(int dtype, const void* x, int64_t n, int64_t d, double max_norm, float* out,
               double* norms);
}  // namespace bcfl
