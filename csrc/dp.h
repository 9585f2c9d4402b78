#pragma once
#include <cstdint>

namespace bcfl {
// The mean of clipped rows without writing a clipped row (differential privacy's bounded-
// sensitivity step): out[j] = sum_i c_i * x[i, j] with c_i = w[i] * min(1, max_norm / ||x_i||)
// for x [n, d] of storage dtype `dtype` (see common.h). The rows' L2 norms (float64
// accumulation, as clip.cpp) are written to norms [n]. A non-finite norm (NaN or inf in the
// row) keeps c_i = w[i], so the row's values reach out for the caller to report.
//
// The sum's order is fixed (two lanes of rows, see dp.cpp), so the result does not depend on
// the thread count nor on `cache_bytes`, which only chooses between one read of x (a lane's
// working set, three rows and an accumulator, fits in cache_bytes / 2) and two.
//
// noise: null, or the key of a draw: then out[j] = float32(out[j] + std * z_j) as add_gaussian
// does with the words of keyed BLAKE3 (key, message) (the same bits as add_gaussian after,
// given those words), fused into the final write of out, each block's words made where they
// are used (blake3_xof.h).
struct NoiseKey {
  uint8_t key[32];
  uint8_t message[64];
  int message_len;  // 0 to 64
};
void clipped_mean(int dtype, const void* x, int64_t n, int64_t d, const double* w,
                  double max_norm, double* norms, float* out, const NoiseKey* noise, double std,
                  int64_t cache_bytes);
// out[j] = float32(out[j] + std * z_j) for j < d, each sum in float64 and rounded once, with
// z_j standard normal by Box-Muller from the caller's random words: pair k (coordinates 2k,
// 2k+1) reads words[3k .. 3k+2] (so words holds 3 * ceil(d / 2)). The radius's uniform keeps
// float64's full resolution down to 2^-65 (mantissa from one word, binary exponent from the
// leading zeros of another): no gaps in the tails to |z| = 9.
void add_gaussian(const uint64_t* words, int64_t d, double std, float* out);
// The default cache_bytes of clipped_mean: one instance of this machine's last-level cache
// (sysfs, else sysconf), 32 MiB where the system does not say.
int64_t last_level_cache_bytes();
}  // namespace bcfl
