#pragma once
#include <cstdint>

namespace bcfl {
// Coordinate-wise trimmed mean of x [n, d] (storage dtype `dtype`, see common.h) into out [d]
// float32: per column, the mean of the values left after dropping the f largest and f smallest.
// Requires n > 2f (checked by the caller). Returns whether every value of x was finite.
bool trimmed_mean(int dtype, const void* x, int64_t n, int64_t d, int64_t f, float* out);
}  // namespace bcfl
