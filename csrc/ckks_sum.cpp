// Modular weighted sum of CKKS residues (see ckks_sum.h): a streaming reduction over clients.
//
// Each thread owns a tile of one residue row (one prime) and walks the clients, so every byte of
// x is read once and the accumulator tile stays in L1. Tile 2048 residues (16 KiB).
// Additions stay below 2q < 2^61 (SEAL primes have at most 60 bits), so "subtract q if >= q"
// is a signed compare that vectorizes (AVX2 has no unsigned 64-bit compare). Integer weights use
// Shoup's multiplication: one 64x64->128 multiply-high and one low multiply per residue, no
// division, exact for any x < q and w < q.
#include "ckks_sum.h"

#include <algorithm>

namespace bcfl {

namespace {
constexpr int64_t kTile = 2048;

inline uint64_t add_mod(uint64_t a, uint64_t b, uint64_t q) {
  const int64_t s = static_cast<int64_t>(a + b - q);  // a + b < 2q < 2^61: no wrap-around
  return s < 0 ? a + b : static_cast<uint64_t>(s);
}

inline uint64_t mul_shoup(uint64_t x, uint64_t w, uint64_t ws, uint64_t q) {
  const uint64_t hi = static_cast<uint64_t>((static_cast<unsigned __int128>(x) * ws) >> 64);
  const uint64_t r = x * w - hi * q;  // in [0, 2q) by Shoup's bound
  return r >= q ? r - q : r;
}
}  // namespace

void ckks_sum(const uint64_t* x, int64_t n, int64_t rows, int64_t N, int64_t K,
              const uint64_t* primes, const uint64_t* w, const uint64_t* wshoup,
              const uint64_t* acc, uint64_t* out) {
  const int64_t tile = std::min(kTile, N);
  const int64_t tiles_per_row = (N + tile - 1) / tile;
  const int64_t stride = rows * N;  // one client
  // Under ~4 MiB of residues one thread wins: waking the team costs more than the work.
#pragma omp parallel for schedule(static) if (n * stride > (1 << 19))
  for (int64_t t = 0; t < rows * tiles_per_row; ++t) {
    const int64_t r = t / tiles_per_row, k = r % K;
    const int64_t j0 = (t % tiles_per_row) * tile, m = std::min(tile, N - j0);
    const uint64_t q = primes[k];
    uint64_t a[kTile];
    const int64_t off = r * N + j0;
    if (acc) {
      for (int64_t j = 0; j < m; ++j) a[j] = acc[off + j];
    } else {
      for (int64_t j = 0; j < m; ++j) a[j] = 0;
    }
    for (int64_t i = 0; i < n; ++i) {
      const uint64_t* xi = x + i * stride + off;
      if (w) {
        const uint64_t wi = w[i * K + k], wsi = wshoup[i * K + k];
        for (int64_t j = 0; j < m; ++j) a[j] = add_mod(a[j], mul_shoup(xi[j], wi, wsi, q), q);
      } else {
#pragma omp simd
        for (int64_t j = 0; j < m; ++j) a[j] = add_mod(a[j], xi[j], q);
      }
    }
    for (int64_t j = 0; j < m; ++j) out[off + j] = a[j];
  }
}

}  // namespace bcfl
