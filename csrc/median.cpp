// Coordinate-wise median of an [n, d] buffer: the value of rank r = (n - 1) / 2 of each column,
// and for even n the mean of ranks r and r + 1, by a counting search over groups of 32 columns
// (4 AVX2 vectors; sortnet.h says how and how fast).
#include "median.h"

#include "common.h"
#include "sortnet.h"

namespace bcfl {

namespace {
template <typename T>
bool median_impl(const T* x, int64_t n, int64_t d, float* out) {
  using namespace select;
  const int32_t r = static_cast<int32_t>((n - 1) / 2);
  const bool even = n % 2 == 0;
  return for_each_group(x, n, d, out, [&](const float* tile, float* lanes) {
    f32v med[kU];
    if (!even) {
      rank_value(tile, n, r, med);
    } else {
      // Ranks r and r + 1 lie either side of a cut after rank r: the largest value <= the cut
      // and the smallest above it; both are the straddling value when there is no cut.
      const Bracket b = cut_after(tile, n, r);
      f32v bound[kU], below[kU], above[kU];
      for (int u = 0; u < kU; ++u) bound[u] = value_of(b.hi[u]);
      around(tile, n, bound, below, above);
      for (int u = 0; u < kU; ++u) {
        const f32v next = b.chi[u] >= r + 2 ? below[u] : above[u];
        med[u] = (below[u] + next) * 0.5f;  // rounds as (a + b) / 2 does
      }
    }
    for (int u = 0; u < kU; ++u) store_row(lanes + u * kVec, med[u]);
  });
}
}  // namespace

bool median(int dtype, const void* x, int64_t n, int64_t d, float* out) {
  bool finite = true;
  with_dtype(dtype, x, [&](auto* p) { finite = median_impl(p, n, d, out); });
  return finite;
}

}  // namespace bcfl
