#pragma once
#include <cstdint>

namespace bcfl {
// Coordinate-wise median of x [n, d] (storage dtype `dtype`, see common.h) into out [d] float32;
// even n gives the mean of the two middle values. Returns whether every value of x was finite.
bool median(int dtype, const void* x, int64_t n, int64_t d, float* out);
}  // namespace bcfl
