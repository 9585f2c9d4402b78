#pragma once
#include <cstdint>

namespace bcfl {
// Gram matrix of centred rows: G[i, j] = sum_k (x[i, k] - p[k]) (x[j, k] - p[k]) for x [n, d] of
// storage dtype `dtype` (see common.h), p [d] float32. G is [n, n] float64, written whole
// (symmetric). Products in float32 within a block of columns, float64 across blocks.
void gram_centered(int dtype, const void* x, int64_t n, int64_t d, const float* p, double* G);
// The same Gram for float32 rows held in pieces: segment s of row i is rows[i * segments + s]
// (widths[s] floats), centred on row `pivot`'s pieces.
void gram_centered_rows(const float* const* rows, const int64_t* widths, int64_t segments,
                        int64_t n, int64_t pivot, double* G);
}  // namespace bcfl
