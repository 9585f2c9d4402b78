#pragma once
#include <cstdint>

namespace bcfl {
// Homomorphic weighted sum of CKKS ciphertexts in RNS/NTT form, coefficient-wise:
//   out[r, j] = acc[r, j] + sum_i w[i, r % K] * x[i, r, j]   (mod primes[r % K])
// for x [n, rows, N] (rows = C * 2 * K, every row one residue polynomial), residues below their
// prime. w [n, K] is None (all ones) or each weight reduced mod its prime, with wshoup [n, K] =
// floor(w * 2^64 / q) (Shoup's precomputed quotient). acc [rows, N] may be null (zero) and may
// alias out (accumulate in place).
void ckks_sum(const uint64_t* x, int64_t n, int64_t rows, int64_t N, int64_t K,
              const uint64_t* primes, const uint64_t* w, const uint64_t* wshoup,
              const uint64_t* acc, uint64_t* out);
}  // namespace bcfl
