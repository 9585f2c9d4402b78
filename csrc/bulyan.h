#pragma once
#include <cstdint>

namespace bcfl {
// Bulyan's coordinate stage (El Mhamdi et al. 2018): for each column j of x [n, d] (storage
// dtype `dtype`, see common.h), among the theta values x[idx[t], j], the mean of the beta values
// closest to their median (the mean of the two middle values when theta is even); ties in
// distance go to the lower value.
void bulyan_coordinates(int dtype, const void* x, int64_t d, const int64_t* idx, int64_t theta,
                        int64_t beta, float* out);

// Bulyan's selection (iterated Krum) on squared distances dist [n, n] (float64, row-major):
// writes the theta rows chosen, in order, to chosen. With r rows remaining, a row's score is
// the sum of its k = min(max(r - f - 2, 1), r - 1) smallest distances to the other remaining
// rows; the lowest score wins, ties to the lowest index.
void bulyan_select(const double* dist, int64_t n, int64_t f, int64_t theta, int64_t* chosen);
}  // namespace bcfl
