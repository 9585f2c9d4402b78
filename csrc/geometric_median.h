#pragma once
#include <cstdint>

namespace bcfl {
// One fused step of the iterative rules (smoothed Weiszfeld, centered clipping), over x [n, d]
// of storage dtype `dtype` (see common.h):
//   v_out[j] = beta * v_in[j] + sum_i coef[i] * x[i, j]         (v_in may be null: zeros)
//   dist2[i] = sum_j (x[i, j] - v_out[j])^2, in float64          (skipped if dist2 is null)
// One read of x per step: the distances to the new point come from the column tile just summed.
void combine_distances(int dtype, const void* x, int64_t n, int64_t d, const float* coef,
                       float beta, const float* v_in, float* v_out, double* dist2);
}  // namespace bcfl
