// Coordinate-wise trimmed mean of an [n, d] buffer: per column, find a = rank f and b = rank
// n-1-f, then sum what lies between:
//
//   kept sum = sum{a < x < b} + a * (#{x <= a} - f) + b * (n - f - #{x < b})
//
// The ties at a and b enter with their kept multiplicity, and no value outside the kept ranks
// is ever added: "sum all, subtract the extremes" would cancel catastrophically when Byzantine
// updates are 1e6 times larger than honest ones.
//
// a and b come from one of two searches, whichever costs less for this f:
//  - insertion (f <= kMaxInsert): one pass keeps the f + 1 smallest values of every lane in
//    sorted registers (f + 1 compare-exchanges per value), another the f + 1 largest;
//  - bisection on the float bit pattern (sortnet.h), once per rank.
#include "trimmed_mean.h"

#include <limits>

#include "common.h"
#include "sortnet.h"

namespace bcfl {

namespace {
using namespace select;

// Insertion costs 2 (f + 1) min/max per value and list; bisection ~2 x 20 counting passes of
// 2 ops. Bisection time over insertion time, per group of 32 Gaussian columns (one core):
//   f = 1: 5.1x (n=64), 4.0x (n=1000);  f = 8: 2.5x, 3.0x;  f = 16: 1.3x, 1.4x;
//   f = 22: 0.9x, 0.7x: from about f = 20 the list no longer fits the 16 AVX2 registers.
constexpr int kMaxInsert = 16;

// Per lane, the value of rank F (the largest of the F + 1 smallest) and of rank n-1-F.
template <int F>
void extremes(const float* tile, int64_t n, f32v (&a)[kU], f32v (&b)[kU]) {
  const f32v pinf = splat(std::numeric_limits<float>::infinity());
  const f32v ninf = splat(-std::numeric_limits<float>::infinity());
  for (int u = 0; u < kU; ++u) {
    // One list per pass: F + 1 registers, so that even F = 8 leaves room without spilling.
    f32v s[F + 1];
    for (int j = 0; j <= F; ++j) s[j] = pinf;
    for (int64_t i = 0; i < n; ++i) {
      f32v v = load_row(tile + i * kLanes + u * kVec);
      for (int j = 0; j <= F; ++j) {  // s stays sorted ascending; the largest falls off
        const f32v t = vmin(s[j], v);
        v = vmax(s[j], v);
        s[j] = t;
      }
    }
    a[u] = s[F];
    for (int j = 0; j <= F; ++j) s[j] = ninf;
    for (int64_t i = 0; i < n; ++i) {
      f32v v = load_row(tile + i * kLanes + u * kVec);
      for (int j = 0; j <= F; ++j) {  // descending; the smallest falls off
        const f32v t = vmax(s[j], v);
        v = vmin(s[j], v);
        s[j] = t;
      }
    }
    b[u] = s[F];
  }
}

template <int F>
void extremes_upto(int64_t f, const float* tile, int64_t n, f32v (&a)[kU], f32v (&b)[kU]) {
  if (f == F) {
    extremes<F>(tile, n, a, b);
  } else if constexpr (F > 1) {
    extremes_upto<F - 1>(f, tile, n, a, b);
  }
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
  f32v a[kU], b[kU];
  if (f <= kMaxInsert) {
    extremes_upto<kMaxInsert>(f, tile, n, a, b);
  } else {
    // One search after the other, not both in one pass: a settled search would keep paying
    // its compares while the other runs on.
    const Bracket start = initial(tile, n);
    rank_value(tile, n, start, static_cast<int32_t>(f), a);
    rank_value(tile, n, start, static_cast<int32_t>(n - 1 - f), b);
  }
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
