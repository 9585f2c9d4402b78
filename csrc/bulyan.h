#pragma once
#include <cstdint>

namespace bcfl {
// Bulyan's coordinate stage (El Mhamdi et al. 2018): for each column j of x [n, d] (storage
// dtype `dtype`, see common.h), among the theta values x[idx[t], j], the mean of the beta values
// closest to their median (the mean of the two middle values when theta is even); ties in
// distance go to the lower value.
void bulyan_coordinates(int dtype, const void* x, int64_t d, const int64_t* idx, int64_t theta,
                        int64_t beta, float* out);
}  // namespace bcfl
