// Coordinate-wise trimmed mean of an [n, d] buffer: per column, the mean of the values of ranks
// f .. n-1-f. Only kept values are ever added: "sum all, subtract the extremes" would cancel
// catastrophically when Byzantine updates are 1e6 times larger than honest ones.
//
// For f <= kMaxInsert one pass does it all (trim_by_lists): two sorted lists of f + 1
// registers per lane sieve out the extremes and every value that passes both is added. For
// larger f, two counting searches (sortnet.h) find a key t1 with exactly f values <= t1 and a
// key t2 with exactly n - f values <= t2, and one pass sums the values in (t1, t2]. Where
// copies of one value straddle a cut, no such key exists: the search returns that value, and
// its kept copies are added by count.
#include "trimmed_mean.h"

#include <limits>

#include "common.h"
#include "sortnet.h"

namespace bcfl {

namespace {
using namespace select;

// The lists cost 4 (f + 1) min/max per value in one pass; the searches ~2 x 10 counting passes.
// Time per row and 8 Gaussian columns, one core, lists | the former bisection:
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

void trimmed_group(const float* tile, int64_t n, int64_t f, float* lanes) {
  const float kept = static_cast<float>(n - 2 * f);
  if (f == 0) {  // the plain mean: one pass
    f32v s[kU];
    for (int u = 0; u < kU; ++u) s[u] = splat(0.0f);
    for (int64_t i = 0; i < n; ++i)
      for (int u = 0; u < kU; ++u) s[u] += load_row(tile + i * kLanes + u * kVec);
    for (int u = 0; u < kU; ++u) store_row(lanes + u * kVec, s[u] / kept);
    return;
  }
  if (f <= kMaxInsert) {
    trim_by_lists_upto<kMaxInsert>(f, tile, n, lanes);
    return;
  }
  // A cut after rank f - 1 (the f smallest are x <= lo_t) and one after rank n - f - 1 (the
  // kept values and those below them are x <= hi_t); where copies of one value straddle a cut,
  // the search returns that value's key instead, and its kept copies are added by count.
  const int32_t n_lo = static_cast<int32_t>(f), n_hi = static_cast<int32_t>(n - f);
  const Bracket a = cut_after(tile, n, n_lo - 1);
  const Bracket b = cut_after(tile, n, n_hi - 1);
  f32v lo_t[kU], hi_t[kU], extra[kU], s[kU];
  i32v same[kU];
  for (int u = 0; u < kU; ++u) {
    // Lower: everything <= a.hi goes; a straddling value v keeps #{x <= v} - f copies (none
    // for a cut, where #{x <= a.hi} = f).
    lo_t[u] = value_of(a.hi[u]);
    extra[u] = lo_t[u] * to_float(a.chi[u] - n_lo);
    // Upper: a cut keeps x <= b.hi; a straddling value v keeps x < v, plus n - f - #{x < v}
    // copies of v.
    const i32v cut = b.chi[u] == n_hi;
    hi_t[u] = value_of(cut ? b.hi[u] : b.hi[u] - 1);
    extra[u] += cut ? splat(0.0f) : value_of(b.hi[u]) * to_float(n_hi - b.clo[u]);
    // Copies of the lower straddling value beyond rank n - f - 1: every kept value is that one.
    same[u] = a.chi[u] > n_hi;
    s[u] = splat(0.0f);
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int u = 0; u < kU; ++u) {
      const f32v v = load_row(tile + i * kLanes + u * kVec);
      s[u] += (v > lo_t[u]) & (v <= hi_t[u]) ? v : splat(0.0f);
    }
  }
  for (int u = 0; u < kU; ++u)
    store_row(lanes + u * kVec, same[u] ? value_of(a.hi[u]) : (s[u] + extra[u]) / kept);
}

template <typename T>
bool trimmed_impl(const T* x, int64_t n, int64_t d, int64_t f, float* out) {
  return for_each_group(x, n, d, out,
                 [&](const float* tile, float* lanes) { trimmed_group(tile, n, f, lanes); });
}
}  // namespace

bool trimmed_mean(int dtype, const void* x, int64_t n, int64_t d, int64_t f, float* out) {
  bool finite = true;
  with_dtype(dtype, x, [&](auto* p) { finite = trimmed_impl(p, n, d, f, out); });
  return finite;
}

}  // namespace bcfl
