#pragma once
#include <cstdint>

namespace bcfl {
// Gram matrix of centred rows: G[i, j] = sum_k (x[i, k] - p[k]) (x[j, k] - p[k]) for x [n, d] of
// storage dtype `dtype` (see common.h), p [d] float32. G is [n, n] float64, written whole
// (symmetric). Products in float32 within a block of columns, float64 across blocks.
void gram_centered(int dtype, const void* x, int64_t n, int64_t d, const float* p, double* G);
}  // namespace bcfl
