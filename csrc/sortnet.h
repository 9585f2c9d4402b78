// Column-block order statistics, shared by median and trimmed_mean: the k-th smallest value of
// every column of an [n, d] buffer (or a key that cuts a column after its k smallest), for a
// vector of columns at once.
//
// Why not a sort: a per-column std::nth_element is scalar and branchy (torch.median(dim=0) takes
// 0.55 s at n=64, d=1M on 2 cores, 80x one read of the data). A sorting network across columns
// vectorizes, but costs ~n log^2 n / 4 compare-exchanges (24k at n=1024) with a load and a store
// per operand. A counting pass costs one load, one compare and one subtract per vector of values
// (count the values <= a pivot per lane), and search below needs few of them: on Gaussian
// columns, per group of 32, 6.5-8 passes for a rank at n=64 and n=1000, about one of them
// snapping (see search), where bisection on the float bit pattern took 15-18.
//
// The columns arrive in tiles (column_tiles.h): groups of kLanes columns, each with its min and
// max rows, and no +0 among the values.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "column_tiles.h"

namespace bcfl {
namespace select {

constexpr int kMaxPasses = 34;  // 32 halvings of 2^32 keys, plus slack

// Monotonic integer key of a float: key(a) < key(b) iff a < b, with -0 < +0. Positive floats
// keep their bits; negative ones flip the 31 low bits so that larger magnitudes sort lower. The
// transform is its own inverse.
inline i32v key_of(const f32v& v) {
  i32v b;
  std::memcpy(&b, &v, sizeof b);
  return b ^ ((b >> 31) & 0x7fffffff);
}
inline f32v value_of(const i32v& k) {
  const i32v b = k ^ ((k >> 31) & 0x7fffffff);
  f32v v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

// Per lane: the value of rank r (0-based) has its key in [lo, hi], clo = #{x < lo} and
// chi = #{x <= hi}. Rank r is isolated when the bracket is one key, when chi = r + 1 (rank r is
// the largest value <= hi) or when clo = r (the smallest value >= lo).
struct Bracket {
  i32v lo[kU], hi[kU], clo[kU], chi[kU];
};

inline f32v to_float(const i32v& v) { return __builtin_convertvector(v, f32v); }

// Lanes whose rank r is not yet isolated.
inline i32v open_lanes(const i32v& lo, const i32v& hi, const i32v& clo, const i32v& chi,
                       int32_t r) {
  return (lo != hi) & (chi != r + 1) & (clo != r);
}

// Batcher's odd-even merge sorting network on N (a power of two) values: its compare-exchange
// pairs (a[c], b[c]), computed at compile time.
template <int N>
constexpr int network_size() {
  int c = 0;
  for (int p = 1; p < N; p <<= 1)
    for (int k = p; k >= 1; k >>= 1)
      for (int j = k % p; j + k < N; j += 2 * k)
        for (int i = 0; i < k && i + j + k < N; ++i)
          if ((i + j) / (2 * p) == (i + j + k) / (2 * p)) ++c;
  return c;
}
template <int N>
struct Network {
  uint8_t a[network_size<N>()], b[network_size<N>()];
  constexpr Network() : a(), b() {
    int c = 0;
    for (int p = 1; p < N; p <<= 1)
      for (int k = p; k >= 1; k >>= 1)
        for (int j = k % p; j + k < N; j += 2 * k)
          for (int i = 0; i < k && i + j + k < N; ++i)
            if ((i + j) / (2 * p) == (i + j + k) / (2 * p)) {
              a[c] = static_cast<uint8_t>(i + j);
              b[c] = static_cast<uint8_t>(i + j + k);
              ++c;
            }
  }
};

// Sorts s[.][u] ascending per lane, for every u (191 compare-exchanges for N = 32).
template <int N>
inline void sort_lanes(f32v (&s)[N][kU]) {
  static constexpr Network<N> net;
  for (int c = 0; c < network_size<N>(); ++c) {
    f32v* x = s[net.a[c]];
    f32v* y = s[net.b[c]];
    for (int u = 0; u < kU; ++u) {
      const f32v lo = vmin(x[u], y[u]), hi = vmax(x[u], y[u]);
      x[u] = lo;
      y[u] = hi;
    }
  }
}

// Sample rows for the starting bracket, and the smallest n that uses them.
constexpr int kSample = 32;
constexpr int64_t kSampleMinRows = 4 * kSample;

// A group's starting bracket for rank r: [key(min), key(max)] from the rows load_tile added.
// From kSampleMinRows rows on, one pass also counts the values <= two pivots taken from a
// sorted sample of kSample evenly spaced rows, at the sample ranks 1.5 standard deviations
// either side of where rank r should fall: both usually bracket rank r, leaving ~20% of the
// values inside (at r = n / 10). The pivots are values of the column, whatever the sample: the
// bracket is correct even when they miss.
inline Bracket start(const float* tile, int64_t n, int32_t r) {
  Bracket b;
  for (int u = 0; u < kU; ++u) {
    b.lo[u] = key_of(load_row(tile + n * kLanes + u * kVec));  // row n: min, n + 1: max
    b.hi[u] = key_of(load_row(tile + (n + 1) * kLanes + u * kVec));
    b.clo[u] = splat_i(0);
    b.chi[u] = splat_i(static_cast<int32_t>(n));
  }
  if (n < kSampleMinRows) return b;
  const double q = (r + 0.5) / static_cast<double>(n);
  const double at = q * kSample - 0.5, spread = 1.5 * std::sqrt(kSample * q * (1 - q));
  const int ia = std::clamp(static_cast<int>(std::floor(at - spread)), 0, kSample - 1);
  const int ib = std::clamp(static_cast<int>(std::ceil(at + spread)), 0, kSample - 1);
  f32v s[kSample][kU];
  for (int k = 0; k < kSample; ++k)
    for (int u = 0; u < kU; ++u)
      s[k][u] = load_row(tile + ((2 * k + 1) * n / (2 * kSample)) * kLanes + u * kVec);
  sort_lanes(s);
  f32v pa[kU], pb[kU];
  i32v ca[kU], cb[kU];
  for (int u = 0; u < kU; ++u) {
    pa[u] = s[ia][u], pb[u] = s[ib][u];
    ca[u] = cb[u] = splat_i(0);
  }
  for (int64_t i = 0; i < n; ++i) {
    for (int u = 0; u < kU; ++u) {
      const f32v v = load_row(tile + i * kLanes + u * kVec);
      ca[u] -= (v <= pa[u]);  // true: -1
      cb[u] -= (v <= pb[u]);
    }
  }
  for (int u = 0; u < kU; ++u) {
    const f32v piv[2] = {pa[u], pb[u]};
    const i32v cnt[2] = {ca[u], cb[u]};
    for (int p = 0; p < 2; ++p) {  // keep whichever bound each pivot tightens
      const i32v k = key_of(piv[p]), down = cnt[p] > r;
      const i32v to_hi = down & (k < b.hi[u]), to_lo = ~down & (k + 1 > b.lo[u]);
      b.hi[u] = to_hi ? k : b.hi[u];
      b.chi[u] = to_hi ? cnt[p] : b.chi[u];
      b.lo[u] = to_lo ? k + 1 : b.lo[u];
      b.clo[u] = to_lo ? cnt[p] : b.clo[u];
    }
  }
  return b;
}

// Passes that pick their pivot by interpolation before search falls back to halving the keys.
constexpr int kInterpPasses = 16;

// Narrows b until every lane has isolated rank r. Each pass counts the values <=
// one pivot per lane (a load, a compare and a subtract per vector of values) and keeps the part
// of the bracket that holds rank r. The tile holds no +0 (load_tile makes every zero -0), so
// comparing floats with the pivot's float agrees with comparing keys.
//
// Pivot: where rank r falls if the values inside the bracket were spread evenly between its
// ends (interpolation, as in regula falsi), with the Illinois rule: an end that stays put two
// passes running has its weight halved, or a skewed column (the tail of a Gaussian, a sparse
// column) would creep in from one side only. After kInterpPasses the pivot halves the keys, so
// that no input takes more than kInterpPasses + 33 passes.
//
// Ties: a bracket that holds only copies of one value is never isolated by counting. So when
// two passes running leave some open lane with as many values inside its bracket as before,
// the next pass also snaps the bracket ends to the nearest values inside (largest <= pivot,
// smallest > pivot): a bracket of copies becomes one key. A snapping pass costs ~3 counting
// passes. (Snapping after one such pass, as the key-halving search before this one did, took
// 2.4 snapping passes per group of Gaussian columns instead of 1.)
inline void search(const float* tile, int64_t n, int32_t r, Bracket& b) {
  const f32v ninf = splat(-std::numeric_limits<float>::infinity());
  const f32v pinf = splat(std::numeric_limits<float>::infinity());
  const f32v target = splat(static_cast<float>(r) + 0.5f);
  i32v lo[kU], hi[kU], clo[kU], chi[kU], was[kU], last[kU];
  f32v wlo[kU], whi[kU];
  for (int u = 0; u < kU; ++u) {
    lo[u] = b.lo[u], hi[u] = b.hi[u], clo[u] = b.clo[u], chi[u] = b.chi[u];
    was[u] = splat_i(-1);
    last[u] = splat_i(0);  // -1: the last pass moved hi, +1: lo
    wlo[u] = whi[u] = splat(1.0f);
  }
  bool snap = false, flat_before = false;
  for (int pass = 0; pass < kInterpPasses + kMaxPasses; ++pass) {
    i32v open = splat_i(0);
    for (int u = 0; u < kU; ++u) open |= open_lanes(lo[u], hi[u], clo[u], chi[u], r);
    if (!any(open)) break;
    i32v mid[kU], cnt[kU];
    f32v piv[kU], below[kU], above[kU];
    for (int u = 0; u < kU; ++u) {
      if (pass < kInterpPasses) {
        // Weighted distances of the target from the two ends, in counts; t in (0, 1).
        const f32v wl = (target - to_float(clo[u])) * wlo[u];
        const f32v wh = (to_float(chi[u]) - target) * whi[u];
        const f32v t = wl / (wl + wh);
        // Written so that it cannot overflow, whatever the ends. The pivot stays in
        // [lo, hi - 1]; a settled lane (lo = hi) gets lo, which changes nothing.
        const f32v guess = value_of(lo[u]) * (1.0f - t) + value_of(hi[u]) * t;
        const i32v k = key_of(guess), top = hi[u] - 1;
        const i32v below_top = k < top ? k : top;
        mid[u] = below_top > lo[u] ? below_top : lo[u];
      } else {
        mid[u] = (lo[u] >> 1) + (hi[u] >> 1) + (lo[u] & hi[u] & 1);  // floor((lo + hi) / 2)
      }
      piv[u] = value_of(mid[u]);
      cnt[u] = splat_i(0);
      below[u] = ninf;
      above[u] = pinf;
    }
    if (!snap) {
      for (int64_t i = 0; i < n; ++i) {
        const float* row = tile + i * kLanes;
        for (int u = 0; u < kU; ++u) cnt[u] -= (load_row(row + u * kVec) <= piv[u]);  // true: -1
      }
    } else {
      for (int64_t i = 0; i < n; ++i) {
        for (int u = 0; u < kU; ++u) {
          const f32v v = load_row(tile + i * kLanes + u * kVec);
          const i32v le = v <= piv[u];
          cnt[u] -= le;
          below[u] = vmax(below[u], le ? v : ninf);
          above[u] = vmin(above[u], le ? pinf : v);
        }
      }
    }
    bool flat = false;
    for (int u = 0; u < kU; ++u) {
      const i32v was_open = open_lanes(lo[u], hi[u], clo[u], chi[u], r);
      const i32v down = cnt[u] > r;  // rank r lies at or below mid
      hi[u] = down ? (snap ? key_of(below[u]) : mid[u]) : hi[u];
      chi[u] = down ? cnt[u] : chi[u];
      lo[u] = down ? lo[u] : (snap ? key_of(above[u]) : mid[u] + 1);
      clo[u] = down ? clo[u] : cnt[u];
      // Illinois: the end that did not move for the second pass running weighs half.
      const i32v again = down ? (last[u] < 0) : (last[u] > 0);
      wlo[u] = down ? (again ? wlo[u] * 0.5f : wlo[u]) : splat(1.0f);
      whi[u] = down ? splat(1.0f) : (again ? whi[u] * 0.5f : whi[u]);
      last[u] = down ? splat_i(-1) : splat_i(1);
      const i32v inside = chi[u] - clo[u];
      flat = flat || any(was_open & open_lanes(lo[u], hi[u], clo[u], chi[u], r) &
                         (inside == was[u]));
      was[u] = inside;
    }
    snap = flat && flat_before;
    flat_before = flat && !snap;
  }
  for (int u = 0; u < kU; ++u)
    b.lo[u] = lo[u], b.hi[u] = hi[u], b.clo[u] = clo[u], b.chi[u] = chi[u];
}

// Per lane, the largest value <= bound and the smallest > bound, in one pass.
inline void around(const float* tile, int64_t n, const f32v (&bound)[kU], f32v (&below)[kU],
                   f32v (&above)[kU]) {
  const f32v ninf = splat(-std::numeric_limits<float>::infinity());
  const f32v pinf = splat(std::numeric_limits<float>::infinity());
  for (int u = 0; u < kU; ++u) below[u] = ninf, above[u] = pinf;
  for (int64_t i = 0; i < n; ++i) {
    for (int u = 0; u < kU; ++u) {
      const f32v v = load_row(tile + i * kLanes + u * kVec);
      const i32v le = v <= bound[u];
      below[u] = vmax(below[u], le ? v : ninf);
      above[u] = vmin(above[u], le ? pinf : v);
    }
  }
}

// Per lane, the value of rank r: start, search and one pass to read it off the bracket.
inline void rank_value(const float* tile, int64_t n, int32_t r, f32v (&value)[kU]) {
  Bracket b = start(tile, n, r);
  search(tile, n, r, b);
  f32v bound[kU], below[kU], above[kU];
  i32v at_hi[kU];
  for (int u = 0; u < kU; ++u) {
    at_hi[u] = (b.chi[u] == r + 1) | (b.lo[u] == b.hi[u]);
    bound[u] = value_of(at_hi[u] ? b.hi[u] : b.lo[u] - 1);  // x > value_of(lo - 1): x >= lo
  }
  around(tile, n, bound, below, above);
  for (int u = 0; u < kU; ++u) value[u] = at_hi[u] ? below[u] : above[u];
}

// Per lane, a cut after rank r: a key t with #{x <= t} = r + 1, so that "x <= t" keeps exactly
// the r + 1 smallest values. Returned as a bracket: hi is the cut when chi = r + 1; otherwise
// copies of one value hold ranks r and r + 1, no such key exists, and lo = hi is that value's key.
//
// A search for the cut itself needs a pivot between ranks r and r + 1 (9.5 passes per group of
// Gaussian columns at n=1000, 2.3 of them snapping); the search for rank r also stops on a
// pivot just below rank r (7.9 passes at r = 99, 1 snapping). So: that search, then, if some lane
// stopped below rank r (clo = r: rank r is the smallest value >= lo), one pass for that value
// and its copies: one copy puts the cut at its key, more straddle it.
inline Bracket cut_after(const float* tile, int64_t n, int32_t r) {
  Bracket b = start(tile, n, r);
  search(tile, n, r, b);
  i32v below_r[kU], any_below = splat_i(0);
  f32v floor_v[kU];
  for (int u = 0; u < kU; ++u) {
    below_r[u] = (b.lo[u] != b.hi[u]) & (b.chi[u] != r + 1);  // then clo = r
    any_below |= below_r[u];
    floor_v[u] = value_of(b.lo[u] - 1);  // x > floor_v: x >= lo
  }
  if (!any(any_below)) return b;
  const f32v pinf = splat(std::numeric_limits<float>::infinity());
  f32v least[kU];
  i32v copies[kU];
  for (int u = 0; u < kU; ++u) least[u] = pinf, copies[u] = splat_i(0);
  for (int64_t i = 0; i < n; ++i) {
    for (int u = 0; u < kU; ++u) {
      const f32v v = load_row(tile + i * kLanes + u * kVec);
      const i32v in = v > floor_v[u];
      const i32v lower = in & (v < least[u]), same = in & (v == least[u]);
      copies[u] = lower ? splat_i(1) : copies[u] - same;  // same: -1
      least[u] = lower ? v : least[u];
    }
  }
  for (int u = 0; u < kU; ++u) {
    const i32v k = key_of(least[u]), one = copies[u] == 1;
    b.hi[u] = below_r[u] ? k : b.hi[u];
    b.lo[u] = below_r[u] & ~one ? k : b.lo[u];
    b.chi[u] = below_r[u] ? r + copies[u] : b.chi[u];
  }
  return b;
}

}  // namespace select
}  // namespace bcfl
