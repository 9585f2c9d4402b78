// Keccak-256 by the reference description (FIPS 202's permutation, Keccak's 0x01 padding):
// a 1600-bit state of 25 little-endian 64-bit lanes A[x + 5y], 24 rounds of theta, rho, pi,
// chi and iota, a rate of 136 bytes. Checked against pycryptodome in tests/test_eip712_native.py.
#include "keccak.h"

#include <cstring>

namespace bcfl {
namespace {

constexpr std::uint64_t kRound[24] = {
    0x0000000000000001ULL, 0x0000000000008082ULL, 0x800000000000808aULL, 0x8000000080008000ULL,
    0x000000000000808bULL, 0x0000000080000001ULL, 0x8000000080008081ULL, 0x8000000000008009ULL,
    0x000000000000008aULL, 0x0000000000000088ULL, 0x0000000080008009ULL, 0x000000008000000aULL,
    0x000000008000808bULL, 0x800000000000008bULL, 0x8000000000008089ULL, 0x8000000000008003ULL,
    0x8000000000008002ULL, 0x8000000000000080ULL, 0x000000000000800aULL, 0x800000008000000aULL,
    0x8000000080008081ULL, 0x8000000000008080ULL, 0x0000000080000001ULL, 0x8000000080008008ULL};

// rho's rotation of lane A[x + 5y].
constexpr int kRotate[25] = {0,  1,  62, 28, 27, 36, 44, 6,  55, 20, 3,  10, 43,
                             25, 39, 41, 45, 15, 21, 8,  18, 2,  61, 56, 14};

constexpr std::size_t kRate = 136;

inline std::uint64_t rotl(std::uint64_t v, int r) { return r ? (v << r) | (v >> (64 - r)) : v; }

void permute(std::uint64_t* a) {
  std::uint64_t b[25], c[5];
  for (int round = 0; round < 24; ++round) {
    for (int x = 0; x < 5; ++x) c[x] = a[x] ^ a[x + 5] ^ a[x + 10] ^ a[x + 15] ^ a[x + 20];
    for (int x = 0; x < 5; ++x) {
      const std::uint64_t d = c[(x + 4) % 5] ^ rotl(c[(x + 1) % 5], 1);
      for (int y = 0; y < 25; y += 5) a[x + y] ^= d;
    }
    // rho and pi: lane (x, y) moves to (y, 2x + 3y), rotated.
    for (int x = 0; x < 5; ++x)
      for (int y = 0; y < 5; ++y) b[y + 5 * ((2 * x + 3 * y) % 5)] = rotl(a[x + 5 * y], kRotate[x + 5 * y]);
    for (int y = 0; y < 25; y += 5)
      for (int x = 0; x < 5; ++x) a[x + y] = b[x + y] ^ (~b[(x + 1) % 5 + y] & b[(x + 2) % 5 + y]);
    a[0] ^= kRound[round];
  }
}

void absorb(std::uint64_t* a, const std::uint8_t* block) {
  for (std::size_t i = 0; i < kRate / 8; ++i) {
    std::uint64_t lane = 0;
    for (int k = 7; k >= 0; --k) lane = (lane << 8) | block[8 * i + k];
    a[i] ^= lane;
  }
  permute(a);
}

}  // namespace

void keccak256(const std::uint8_t* data, std::size_t n, std::uint8_t* out) {
  std::uint64_t a[25] = {0};
  for (; n >= kRate; data += kRate, n -= kRate) absorb(a, data);
  std::uint8_t last[kRate] = {0};
  if (n) std::memcpy(last, data, n);
  last[n] ^= 0x01;
  last[kRate - 1] ^= 0x80;
  absorb(a, last);
  for (int i = 0; i < 32; ++i) out[i] = static_cast<std::uint8_t>(a[i / 8] >> (8 * (i % 8)));
}

}  // namespace bcfl
