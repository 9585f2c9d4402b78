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
// - larger theta: per column, two nth_element calls and a sort of the 2 beta ranks the window
//   can reach.
// CPU seconds at d=1M, beta=4, one thread (ranks / nth_element): theta=34 0.19 / 0.90,
// theta=96 0.64 / 2.1, theta=192 3.1 / 3.8, theta=256 5.3 / 5.4; hence kRankMax = 192.
#include "bulyan.h"

#include <algorithm>
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
float sort_column(float* a, int64_t theta, int64_t beta) {
  const int64_t mid = (theta - 1) / 2;
  // The window reads ranks [mid - beta + 1, mid + beta]: order only those.
  const int64_t first = std::max<int64_t>(0, mid - beta + 1);
  const int64_t last = std::min<int64_t>(theta - 1, mid + beta);
  std::nth_element(a, a + first, a + theta);
  std::nth_element(a + first, a + last, a + theta);
  std::sort(a + first, a + last + 1);
  const double med = 0.5 * (static_cast<double>(a[mid]) + static_cast<double>(a[theta / 2]));
  int64_t lo = mid, hi = mid + 1;
  double sum = 0.0;
  for (int64_t t = 0; t < beta; ++t) {
    const bool take_lo = lo >= 0 && (hi >= theta || med - a[lo] <= a[hi] - med);
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

void bulyan_coordinates(int dtype, const void* x, int64_t d, const int64_t* idx, int64_t theta,
                        int64_t beta, float* out) {
  with_dtype(dtype, x, [&](auto* p) { bulyan_impl(p, d, idx, theta, beta, out); });
}

}  // namespace bcfl
