#pragma once
#include <cstdint>

namespace bcfl {
// The mean of clipped rows without writing a clipped row (differential privacy's bounded-
// sensitivity step): out[j] = sum_i c_i * x[i, j] with c_i = w[i] * min(1, max_norm / ||x_i||)
// for x [n, d] of storage dtype `dtype` (see common.h). norms [n]: the rows' L2 norms (float64
// accumulation, as clip.cpp), written here unless norms_known, when they are the caller's
// (taken at intake: a stale one breaks the clip, so the caller owns that they match x). A
// non-finite norm (NaN or inf in the row) keeps c_i = w[i], so the row's values reach out for
// the caller to report.
//
// The sum is weighted_mean's (mean_block.h) with float32 coefficients c_i; a row whose c_i is
// below float32's normal range (a subnormal float32 keeps 1 to 23 bits: norms near 1e38) is added
// after the others, each product in float64 rounded once. The order is fixed, so the result
// depends neither on the thread count nor on whether the norms were given.
//
// noise: null, or the key of a draw: then out[j] = float32(out[j] + std * z_j) as add_gaussian
// does with the words of keyed BLAKE3 (key, message) (the same bits as add_gaussian after,
// given those words), fused into the final write of out, each block's words made where they
// are used (blake3_xof.h). normals: null, or the draw's z [d] made beforehand by
// gaussian_normals (the same bits as with its key; at most one of noise and normals).
struct NoiseKey {
  uint8_t key[32];
  uint8_t message[64];
  int message_len;  // 0 to 64
};
void clipped_mean(int dtype, const void* x, int64_t n, int64_t d, const double* w,
                  double max_norm, double* norms, bool norms_known, float* out,
                  const NoiseKey* noise, const double* normals, double std);
// The rows' L2 norms as clipped_mean computes them (the same bits): what a batch takes at intake
// and hands back to clipped_mean (norms_known). NaN or inf where the row holds one, and only
// there, so a finite norm is also the row's finiteness check.
void row_norms(int dtype, const void* x, int64_t n, int64_t d, double* norms);
// out[j] = float32(out[j] + std * z_j) for j < d, each sum in float64 and rounded once, with
// z_j standard normal by Box-Muller from the caller's random words: pair k (coordinates 2k,
// 2k+1) reads words[3k .. 3k+2] (so words holds 3 * ceil(d / 2)). The radius's uniform keeps
// float64's full resolution down to 2^-65 (mantissa from one word, binary exponent from the
// leading zeros of another): no gaps in the tails to |z| = 9.
void add_gaussian(const uint64_t* words, int64_t d, double std, float* out);
// z [d] = the standard normals z_j of the draw `key`, as clipped_mean makes them in its final
// write: made ahead of the aggregate (while a round waits for its clients), they leave it one
// read of z.
void gaussian_normals(const NoiseKey& key, int64_t d, double* z);
}  // namespace bcfl
