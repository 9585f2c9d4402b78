// Coordinate-wise trimmed mean of an [n, d] buffer: per column, find a = rank f and b = rank
// n-1-f, then sum what lies between:
//
//   kept sum = sum{a < x < b} + a * (#{x <= a} - f) + b * (n - f - #{x < b})
//
// The ties at a and b enter with their kept multiplicity, and no value outside the kept ranks
// is ever added: "sum all, subtract the extremes" would cancel catastrophically when Byzantine
// updates are 1e6 times larger than honest ones.
//
// For f <= kMaxInsert a single pass does it all instead (trim_by_lists): two sorted lists of
// f + 1 registers per lane sieve out the extremes and every value that passes both is added,
// so that here too only kept values are summed. For larger f, a and b come from bisection on
// the float bit pattern (sortnet.h), once per rank.
#include "trimmed_mean.h"

#include <limits>

#include "common.h"
#include "sortnet.h"

namespace bcfl {

namespace {
using namespace select;

// The lists cost 4 (f + 1) min/max per value in one pass; bisection ~2 x 20 counting passes of
// 2 ops. Time per row and 8 Gaussian columns, one core, lists | bisection:
//   f = 1:  1.7 | 19.7 ns (n=64),  2.1 | 19.7 ns (n=1000)
//   f = 5:  3.9 | 21.3 ns,          4.1 | 21.8 ns
//   f = 16: 11.6 | 21.9 ns,        12.4 | 18.6 ns
//   f = 20: 27.6 | 21.8 ns,        19.1 | 18.2 ns  (2 x 21 lists outgrow the 16 AVX2 registers)
// Finding ranks f and n-1-f with one list per pass, then summing between them in a third pass,
// took 1.4x as long at f = 5.
constexpr int kMaxInsert = 16;

// Inserts v into s (sorted ascending, F + 1 values) and returns what falls off: the largest.
template <int F>
inline f32v keep_smallest(f32v (&s)[F + 1], f32v v) {
  for (int j = 0; j <= F; ++j) {
    const f32v t = vmin(s[j], v);
    v = vmax(s[j], v);
    s[j] = t;
  }
  return v;
}

// Inserts v into s (sorted descending) and returns what falls off: the smallest.
template <int F>
inline f32v keep_largest(f32v (&s)[F + 1], f32v v) {
  for (int j = 0; j <= F; ++j) {
    const f32v t = vmax(s[j], v);
    v = vmin(s[j], v);
    s[j] = t;
  }
  return v;
}

// One pass per vector of lanes: every value goes through the list of the F + 1 smallest so
// far; what falls off it goes through the list of the F + 1 largest of the rest; what falls off
// that too is neither among the F + 1 smallest nor the F + 1 largest: a kept value, added.
// At the end the lists hold ranks 0..F and n-1-F..n-1, whose ranks F and n-1-F are kept too.
template <int F>
void trim_by_lists(const float* tile, int64_t n, float* lanes) {
  const f32v pinf = splat(std::numeric_limits<float>::infinity());
  const f32v ninf = splat(-std::numeric_limits<float>::infinity());
  const float kept = static_cast<float>(n - 2 * F);
  for (int u = 0; u < kU; ++u) {
    f32v lo[F + 1], hi[F + 1];
    for (int j = 0; j <= F; ++j) lo[j] = pinf, hi[j] = ninf;
    f32v s = splat(0.0f);
    const float* col = tile + u * kVec;
    // While a list fills, what falls off it is its +-inf padding: three loops, not a test.
    int64_t i = 0;
    for (; i < std::min<int64_t>(n, F + 1); ++i) keep_smallest<F>(lo, load_row(col + i * kLanes));
    for (; i < std::min<int64_t>(n, 2 * F + 2); ++i)
      keep_largest<F>(hi, keep_smallest<F>(lo, load_row(col + i * kLanes)));
    for (; i < n; ++i) s += keep_largest<F>(hi, keep_smallest<F>(lo, load_row(col + i * kLanes)));
    const f32v a = lo[F], b = hi[F];
    // n = 2F + 1 keeps rank F alone (hi is then one value short); all kept values equal: exact.
    const f32v mean = n == 2 * F + 1 ? a : (s + a + b) / kept;
    store_row(lanes + u * kVec, a == b ? a : mean);
  }
}

template <int F>
bool trim_by_lists_upto(int64_t f, const float* tile, int64_t n, float* lanes) {
  if (f == F) {
    trim_by_lists<F>(tile, n, lanes);
    return true;
  }
  if constexpr (F > 1) return trim_by_lists_upto<F - 1>(f, tile, n, lanes);
  return false;
}

// Per lane, the value of rank r by bisection: the largest value <= the settled bracket's hi.
void rank_value(const float* tile, int64_t n, const Bracket& start, int32_t r, f32v (&v)[kU]) {
  Bracket b = start;
  bisect(tile, n, r, b);
  f32v unused[kU];
  around(tile, n, b, v, unused);
}

void trimmed_group(const float* tile, int64_t n, int64_t f, float* lanes) {
  const float kept = static_cast<float>(n - 2 * f);
  f32v s[kU];
  for (int u = 0; u < kU; ++u) s[u] = splat(0.0f);
  if (f == 0) {  // the plain mean: one pass
    for (int64_t i = 0; i < n; ++i)
      for (int u = 0; u < kU; ++u) s[u] += load_row(tile + i * kLanes + u * kVec);
    for (int u = 0; u < kU; ++u) store_row(lanes + u * kVec, s[u] / kept);
    return;
  }
  if (f <= kMaxInsert) {
    trim_by_lists_upto<kMaxInsert>(f, tile, n, lanes);
    return;
  }
  // One search after the other, not both in one pass: a settled search would keep paying its
  // compares while the other runs on.
  f32v a[kU], b[kU];
  const Bracket start = initial(tile, n);
  rank_value(tile, n, start, static_cast<int32_t>(f), a);
  rank_value(tile, n, start, static_cast<int32_t>(n - 1 - f), b);
  i32v inside[kU], le_a[kU];
  for (int u = 0; u < kU; ++u) inside[u] = le_a[u] = splat_i(0);
  for (int64_t i = 0; i < n; ++i) {
    for (int u = 0; u < kU; ++u) {
      const f32v v = load_row(tile + i * kLanes + u * kVec);
      const i32v in = (v > a[u]) & (v < b[u]);
      s[u] += in ? v : splat(0.0f);
      inside[u] -= in;
      le_a[u] -= (v <= a[u]);
    }
  }
  for (int u = 0; u < kU; ++u) {
    const i32v at_a = le_a[u] - static_cast<int32_t>(f);
    const i32v at_b = static_cast<int32_t>(n - f) - le_a[u] - inside[u];
    const f32v mean = (s[u] + a[u] * __builtin_convertvector(at_a, f32v) +
                       b[u] * __builtin_convertvector(at_b, f32v)) / kept;
    store_row(lanes + u * kVec, a[u] == b[u] ? a[u] : mean);  // all kept values equal: exact
  }
}

template <typename T>
void trimmed_impl(const T* x, int64_t n, int64_t d, int64_t f, float* out) {
  for_each_group(x, n, d, out,
                 [&](const float* tile, float* lanes) { trimmed_group(tile, n, f, lanes); });
}
}  // namespace

void trimmed_mean(int dtype, const void* x, int64_t n, int64_t d, int64_t f, float* out) {
  with_dtype(dtype, x, [&](auto* p) { trimmed_impl(p, n, d, f, out); });
}

}  // namespace bcfl
