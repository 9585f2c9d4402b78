// Bulyan's coordinate stage: per column, the mean of the beta selected values closest to their
// median (the mean of the two middle values for even theta); a tie in distance goes to the lower
// value.
//
// Each thread copies the theta selected rows of a block of columns into a tile (converting
// float16/bfloat16 once), then answers every column of the block:
// - theta <= kRankMax: ranks by counting, kW columns at a time in SIMD lanes. rank_t =
//   #{s < t: v_s <= v_t} + #{s > t: v_s < v_t} is a permutation (equal values keep their row
//   order); the window grows from the median ranks, one rank per step. theta^2 compares per
//   column but branch-free and vectorized;
// - larger theta: per column, nth_element partitions and a sort of only the ranks the window
//   may or may not take (sort_column).
// CPU seconds at d=1M, beta=4, one thread (ranks / nth_element): theta=34 0.19 / 0.90,
// theta=96 0.64 / 2.1, theta=192 3.1 / 3.8, theta=256 5.3 / 5.4; hence kRankMax = 192.
#include "bulyan.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common.h"

namespace bcfl {

namespace {
constexpr int64_t kW = 16;  // columns per SIMD group: two AVX2 vectors of floats
constexpr int64_t kCols = 256;  // columns per tile: theta x 256 floats, 192 KiB at theta = 192 (L2)
#ifndef BCFL_BULYAN_RANK_MAX
constexpr int64_t kRankMax = 192;
#else
constexpr int64_t kRankMax = BCFL_BULYAN_RANK_MAX;
#endif

// GCC vector types keep the counts and the gathered values in registers (the auto-vectorized
// version with a final masked sum took 0.33 s of CPU at theta=34, d=1M, this one 0.19 s).
typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
static_assert(kW == 16, "rank_group handles two vectors of 8 lanes");

// Columns [0, kW) of a group: v is [theta][kW], out gets kW means.
void rank_group(const float* v, int64_t theta, int64_t beta, int32_t* rank, float* out) {
  auto vec = [&](int64_t t, int h) {
    f32x8 r;
    __builtin_memcpy(&r, v + t * kW + 8 * h, sizeof r);
    return r;
  };
  for (int64_t t = 0; t < theta; ++t) {
    const f32x8 a = vec(t, 0), b = vec(t, 1);
    i32x8 ra = {}, rb = {};
    // Comparisons give -1 (true) or 0 per lane: subtract to count.
    for (int64_t s = 0; s < t; ++s) {
      ra -= vec(s, 0) <= a;
      rb -= vec(s, 1) <= b;
    }
    for (int64_t s = t + 1; s < theta; ++s) {
      ra -= vec(s, 0) < a;
      rb -= vec(s, 1) < b;
    }
    __builtin_memcpy(rank + t * kW, &ra, sizeof ra);
    __builtin_memcpy(rank + t * kW + 8, &rb, sizeof rb);
  }
  // The value of rank k[c] in lane c.
  auto at = [&](const int32_t* k, float* val) {
    for (int h = 0; h < 2; ++h) {
      i32x8 kv;
      __builtin_memcpy(&kv, k + 8 * h, sizeof kv);
      f32x8 acc = {};
      for (int64_t t = 0; t < theta; ++t) {
        i32x8 rt;
        __builtin_memcpy(&rt, rank + t * kW + 8 * h, sizeof rt);
        acc = rt == kv ? vec(t, h) : acc;
      }
      __builtin_memcpy(val + 8 * h, &acc, sizeof acc);
    }
  };
  int32_t lo[kW], hi[kW], mid_hi[kW];
  float a[kW], b[kW];
  for (int64_t c = 0; c < kW; ++c) {
    lo[c] = static_cast<int32_t>((theta - 1) / 2);
    hi[c] = lo[c] + 1;
    mid_hi[c] = static_cast<int32_t>(theta / 2);
  }
  at(lo, a);
  at(mid_hi, b);
  double med[kW], sum[kW] = {};
  // Same float64 arithmetic as the torch reference, so that ties resolve the same way.
  for (int64_t c = 0; c < kW; ++c) {
    med[c] = 0.5 * (static_cast<double>(a[c]) + static_cast<double>(b[c]));
  }
  for (int64_t step = 0; step < beta; ++step) {
    at(lo, a);
    at(hi, b);
    for (int64_t c = 0; c < kW; ++c) {
      const bool take_lo = lo[c] >= 0 && (hi[c] >= theta || med[c] - a[c] <= b[c] - med[c]);
      sum[c] += take_lo ? a[c] : b[c];
      lo[c] -= take_lo;
      hi[c] += !take_lo;
    }
  }
  for (int64_t c = 0; c < kW; ++c) out[c] = static_cast<float>(sum[c] / static_cast<double>(beta));
}

// One column of theta values (reordered): the mean of the beta closest to the median.
//
// The beta values taken form a window of ranks [w, w + beta) that holds rank mid (taken
// first: for even theta, ranks mid and mh tie and the lower wins), so w lies in [lo_w, hi_w]
// below. Ranks [hi_w, lo_w + beta) are in every such window; only the two runs of hi_w - lo_w
// ranks beyond them are contested. Partitioning with nth_element and sorting just those two
// runs, then taking the closer of the two runs' next values (ties to the lower value)
// hi_w - lo_w times, picks what growing the window from the median one value at a time would.
// At theta = 800, beta = 600 that sorts 2 x 200 values instead of 800.
float sort_column(float* a, int64_t theta, int64_t beta) {
  const int64_t mid = (theta - 1) / 2, mh = theta / 2;
  const int64_t lo_w = std::max<int64_t>(0, mid - beta + 1);
  const int64_t hi_w = std::min<int64_t>(mid, theta - beta);
  const int64_t inner_end = lo_w + beta;  // ranks [hi_w, inner_end) are always taken
  const int64_t outer_end = hi_w + beta;  // the upper contested run is [inner_end, outer_end)
  float* end = a + theta;
  std::nth_element(a, a + lo_w, end);
  if (hi_w > lo_w) std::nth_element(a + lo_w, a + hi_w, end);
  if (inner_end < theta) std::nth_element(a + hi_w, a + inner_end, end);
  if (outer_end < theta && outer_end > inner_end) std::nth_element(a + inner_end, a + outer_end, end);
  std::sort(a + lo_w, a + hi_w);
  std::sort(a + inner_end, a + outer_end);
  // Rank mid lies in the always-taken run; rank mh = mid + 1 (even theta) there or first above.
  std::nth_element(a + hi_w, a + mid, a + inner_end);
  float at_mh = a[mid];
  if (mh != mid) at_mh = mh < inner_end ? *std::min_element(a + mh, a + inner_end) : a[inner_end];
  const double med = 0.5 * (static_cast<double>(a[mid]) + static_cast<double>(at_mh));
  double sum = 0.0;
  for (int64_t t = hi_w; t < inner_end; ++t) sum += a[t];
  int64_t lo = hi_w - 1, hi = inner_end;
  for (int64_t t = 0; t < hi_w - lo_w; ++t) {
    const bool take_lo = lo >= lo_w && (hi >= outer_end || med - a[lo] <= a[hi] - med);
    sum += take_lo ? a[lo--] : a[hi++];
  }
  return static_cast<float>(sum / static_cast<double>(beta));
}

template <typename T>
void bulyan_impl(const T* x, int64_t d, const int64_t* idx, int64_t theta, int64_t beta,
                 float* out) {
  const int64_t blocks = (d + kCols - 1) / kCols;
  const bool by_rank = theta <= kRankMax;
#pragma omp parallel
  {
    // by_rank: groups of [theta][kW] (SoA); else one contiguous run of theta per column.
    std::vector<float> tile(static_cast<std::size_t>(kCols * theta));
    std::vector<int32_t> rank(static_cast<std::size_t>(by_rank ? kW * theta : 0));
    float means[kW];
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t j0 = b * kCols, w = std::min(d, j0 + kCols) - j0;
      for (int64_t t = 0; t < theta; ++t) {
        const T* row = x + idx[t] * d + j0;
        if (by_rank) {
          for (int64_t j = 0; j < w; ++j) {
            tile[(j / kW) * kW * theta + t * kW + j % kW] = load(row, j);
          }
          // Pad the last group with a copy of its first column (not stored).
          for (int64_t j = w; j < (w + kW - 1) / kW * kW; ++j) {
            tile[(j / kW) * kW * theta + t * kW + j % kW] = load(row, (j / kW) * kW);
          }
        } else {
          for (int64_t j = 0; j < w; ++j) tile[j * theta + t] = load(row, j);
        }
      }
      if (by_rank) {
        for (int64_t g = 0; g * kW < w; ++g) {
          rank_group(&tile[g * kW * theta], theta, beta, rank.data(), means);
          for (int64_t c = 0; c < kW && g * kW + c < w; ++c) out[j0 + g * kW + c] = means[c];
        }
      } else {
        for (int64_t j = 0; j < w; ++j) out[j0 + j] = sort_column(&tile[j * theta], theta, beta);
      }
    }
  }
}
}  // namespace

// Bulyan's selection. Recomputing every score at every step costs O(n^2) per step, O(n^3) in
// all (37 s at n = 1000 in torch). Here each row keeps its neighbours sorted by distance once,
// a window over that order holding its k nearest remaining rows, and the window's sum as a
// running score. Removing the winner w and shrinking k by one moves each window by O(1)
// entries on average: O(n) per step.
//
// A running score drifts from the sum a fresh computation gives by rounding; each row carries a
// bound on that drift. Rows whose running score could be the minimum within their bounds get
// their score recomputed exactly (the window's values in ascending order, summed left to right),
// and the winner is the lowest exact score, ties to the lowest index: rows with the same
// neighbour distances get the same score bit for bit, as in the torch reference.
void bulyan_select(const double* dist, int64_t n, int64_t f, int64_t theta, int64_t* chosen) {
  const int64_t m = n - 1;  // neighbours per row
  auto k_of = [&](int64_t r) { return std::min(std::max<int64_t>(r - f - 2, 1), r - 1); };
  // order[i * m + q]: the q-th nearest neighbour of i (ties by index); pos: its inverse.
  std::vector<int32_t> order(static_cast<std::size_t>(n * m)), pos(static_cast<std::size_t>(n * n));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    int32_t* o = &order[i * m];
    for (int64_t j = 0, q = 0; j < n; ++j)
      if (j != i) o[q++] = static_cast<int32_t>(j);
    const double* di = dist + i * n;
    // NaN (unchecked non-finite input) sorts last: std::sort needs a strict weak order.
    auto key = [&](int32_t j) { return std::isnan(di[j]) ? std::numeric_limits<double>::infinity() : di[j]; };
    std::sort(o, o + m, [&](int32_t a, int32_t b) {
      const double ka = key(a), kb = key(b);
      return ka < kb || (ka == kb && a < b);
    });
    for (int64_t q = 0; q < m; ++q) pos[i * n + o[q]] = static_cast<int32_t>(q);
  }
  std::vector<char> alive(static_cast<std::size_t>(n), 1);
  // Per row: last = position of the window's last entry; score, its drift bound's ingredients.
  std::vector<int64_t> last(static_cast<std::size_t>(n)), ops(static_cast<std::size_t>(n), 0);
  std::vector<double> score(static_cast<std::size_t>(n)), mass(static_cast<std::size_t>(n));
  auto d_at = [&](int64_t i, int64_t q) { return dist[i * n + order[i * m + q]]; };
  int64_t k = k_of(n);
  for (int64_t i = 0; i < n; ++i) {
    score[i] = mass[i] = 0.0;
    for (int64_t q = 0; q < k; ++q) score[i] += d_at(i, q), mass[i] += std::fabs(d_at(i, q));
    ops[i] = k;
    last[i] = k - 1;
  }
  auto exact = [&](int64_t i) {  // the k smallest distances to remaining rows, in order
    double s = 0.0;
    for (int64_t q = 0, c = 0; c < k; ++q)
      if (alive[order[i * m + q]]) s += d_at(i, q), ++c;
    return s;
  };
  // Each rounding moves a sum of terms of total magnitude <= mass by <= mass * eps: a running
  // score and a fresh left-to-right sum both lie within ops * eps * mass of the exact sum.
  auto drift = [&](int64_t i) {
    return 2.0 * static_cast<double>(ops[i]) * std::numeric_limits<double>::epsilon() * mass[i];
  };
  std::vector<int64_t> near;
  for (int64_t step = 0; step < theta; ++step) {
    // Candidates: every row whose score, within its drift bound, could be the lowest.
    double best_hi = std::numeric_limits<double>::infinity();
    for (int64_t i = 0; i < n; ++i)
      if (alive[i]) best_hi = std::min(best_hi, score[i] + drift(i));
    near.clear();
    for (int64_t i = 0; i < n; ++i)
      if (alive[i] && score[i] - drift(i) <= best_hi) near.push_back(i);
    // NaN scores (unchecked non-finite input) compare false everywhere: the lowest remaining
    // index then, so that the selection still ends.
    int64_t win = near.empty() ? std::find(alive.begin(), alive.end(), 1) - alive.begin() : near[0];
    if (near.size() > 1) {
      double low = exact(win);
      for (std::size_t c = 1; c < near.size(); ++c) {
        const double s = exact(near[c]);
        if (s < low) low = s, win = near[c];
      }
    }
    chosen[step] = win;
    alive[win] = 0;
    if (step + 1 == theta) break;
    const int64_t k_next = k_of(n - step - 1);
    for (int64_t i = 0; i < n; ++i) {
      if (!alive[i]) continue;
      int64_t inside = k;
      const int64_t q = pos[i * n + win];
      if (q <= last[i]) {  // the winner leaves the window
        score[i] -= d_at(i, q);
        ++ops[i];
        --inside;
        if (q == last[i])
          while (last[i] >= 0 && !alive[order[i * m + last[i]]]) --last[i];
      }
      while (inside > k_next) {  // drop the farthest
        score[i] -= d_at(i, last[i]);
        ++ops[i];
        --inside;
        do --last[i]; while (last[i] >= 0 && !alive[order[i * m + last[i]]]);
      }
      while (inside < k_next) {  // take the next nearest
        do ++last[i]; while (!alive[order[i * m + last[i]]]);
        score[i] += d_at(i, last[i]);
        mass[i] += std::fabs(d_at(i, last[i]));
        ++ops[i];
        ++inside;
      }
    }
    k = k_next;
  }
}

void bulyan_coordinates(int dtype, const void* x, int64_t d, const int64_t* idx, int64_t theta,
                        int64_t beta, float* out) {
  with_dtype(dtype, x, [&](auto* p) { bulyan_impl(p, d, idx, theta, beta, out); });
}

}  // namespace bcfl
