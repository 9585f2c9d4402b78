// Coordinate-wise median of an [n, d] buffer: the value of rank r = (n - 1) / 2 of each column,
// and for even n the mean of ranks r and r + 1, by bisection on the float bit pattern over
// groups of 32 columns (4 AVX2 vectors; sortnet.h says why and how fast).
#include "median.h"

#include "common.h"
#include "sortnet.h"

namespace bcfl {

namespace {
template <typename T>
void median_impl(const T* x, int64_t n, int64_t d, float* out) {
  using namespace select;
  const int32_t r = static_cast<int32_t>((n - 1) / 2);
  const bool even = n % 2 == 0;
  for_each_group(x, n, d, out, [&](const float* tile, float* lanes) {
    Bracket b = initial(tile, n);
    bisect(tile, n, r, b);
    f32v below[kU], above[kU];
    around(tile, n, b, below, above);  // below = rank r
    for (int u = 0; u < kU; ++u) {
      f32v med = below[u];
      if (even) {
        // Rank r + 1 ties with rank r when more than r + 1 values are <= hi.
        const f32v next = b.chi[u] >= r + 2 ? below[u] : above[u];
        med = (below[u] + next) * 0.5f;  // rounds as (a + b) / 2 does
      }
      store_row(lanes + u * kVec, med);
    }
  });
}
}  // namespace

void median(int dtype, const void* x, int64_t n, int64_t d, float* out) {
  with_dtype(dtype, x, [&](auto* p) { median_impl(p, n, d, out); });
}

}  // namespace bcfl
