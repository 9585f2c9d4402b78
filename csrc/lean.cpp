// Lean CKKS payloads: the modulus switch to 2^b, the sum mod 2^b, bit-unpacking (see lean.h).
//
// The switch needs round(2^b c / q0) for c < q0 < 2^60: a 110-bit dividend. A 128-bit division
// (__udivti3, ~40 ns) would cost 80 ms per million parameters, more than the encryption's
// budget; a float64 estimate is within 1 of the quotient for b <= 50 (relative error 2^-52 of a
// value below 2^50), and one exact correction in wrapping 64-bit arithmetic (the remainder
// c 2^b - est q0 is below 1.5 q0 < 2^61 in magnitude) makes it exact: ~1 ns per coefficient.
// The sum wraps modulo 2^64, a multiple of 2^b, and is masked once at the end.
#include "lean.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace bcfl {

namespace {
constexpr int64_t kTile = 2048;  // 16 KiB of accumulator per thread, as ckks_sum

inline uint64_t switch_one(uint64_t c, uint64_t q0, int b, double ratio) {
  uint64_t est = static_cast<uint64_t>(static_cast<double>(c) * ratio + 0.5);
  const int64_t r = static_cast<int64_t>((c << b) - est * q0);
  const int64_t q = static_cast<int64_t>(q0);
  if (2 * r > q) ++est;
  else if (2 * r < -q) --est;
  return est;
}

inline uint64_t round_even(uint64_t y, int k) {
  const uint64_t t = y >> k, rem = y & ((uint64_t{1} << k) - 1), half = uint64_t{1} << (k - 1);
  return t + ((rem > half) | ((rem == half) & (t & 1)));
}

// Value j of a row of `bits`-bit values starting at `row`, whose last byte is row[len - 1].
// Past 57 bits (b = 58, 59: multiparty lean presets) a value can span 9 bytes: the ninth is then
// within the row (the value is).
inline uint64_t read_bits(const uint8_t* row, int64_t len, int64_t j, int bits) {
  const int64_t off = j * bits, byte = off >> 3;
  const int sh = static_cast<int>(off & 7);
  uint64_t word = 0;
  std::memcpy(&word, row + byte, static_cast<size_t>(std::min<int64_t>(8, len - byte)));
  uint64_t v = word >> sh;
  if (sh + bits > 64) v |= static_cast<uint64_t>(row[byte + 8]) << (64 - sh);
  return v & ((uint64_t{1} << bits) - 1);
}

// One row of N values at BITS bits: dst[j] = value_j << SHIFT (ADD: dst[j] += w * that; W false:
// w is 1). Width and shift known at compile time: the 8 values of each BITS-byte group sit at
// constant bit offsets, so the loop unrolls to loads, shifts and masks (at b = 42, k = 8 the
// fused sum went from 2.1 to 8 GB/s of payload on 2 cores). The last group is read byte-safely:
// its 8-byte loads could run past the payload's end.
template <int BITS, int SHIFT, bool ADD, bool W>
inline void row_fixed(const uint8_t* row, int64_t N, uint64_t w, uint64_t* dst) {
  constexpr uint64_t mask = (uint64_t{1} << BITS) - 1;
  const int64_t groups = N / 8, len = N * BITS / 8;
  for (int64_t g = 0; g + 1 < groups; ++g) {
    const uint8_t* p = row + g * BITS;
    uint64_t* d = dst + g * 8;
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      uint64_t word;
      std::memcpy(&word, p + (j * BITS >> 3), 8);
      const uint64_t v = ((word >> ((j * BITS) & 7)) & mask) << SHIFT;
      if (!ADD) d[j] = v;
      else if (W) d[j] += w * v;
      else d[j] += v;
    }
  }
  for (int64_t j = (groups - 1) * 8; j < N; ++j) {
    const uint64_t v = read_bits(row, len, j, BITS) << SHIFT;
    if (ADD) dst[j] += (W ? w : 1) * v;
    else dst[j] = v;
  }
}

template <bool ADD, bool W>
inline bool row_known(const uint8_t* row, int64_t N, int bits, int shift, uint64_t w, uint64_t* dst) {
  // The lean preset's rows: c0 at b - k = 34 bits shifted by k = 8, c1 at b = 42 bits.
  if (bits == 34 && shift == 8) return row_fixed<34, 8, ADD, W>(row, N, w, dst), true;
  if (bits == 42 && shift == 0) return row_fixed<42, 0, ADD, W>(row, N, w, dst), true;
  // lean16's c0 (32 bits shifted by 26); its c1 at 58 bits can span 9 bytes: read_bits.
  if (bits == 32 && shift == 26) return row_fixed<32, 26, ADD, W>(row, N, w, dst), true;
  return false;
}

template <bool ADD>
inline void row_any(const uint8_t* row, int64_t N, int bits, int shift, const uint64_t* w, uint64_t* dst) {
  const uint64_t wi = w ? *w : 1;
  if (w ? row_known<ADD, true>(row, N, bits, shift, wi, dst) : row_known<ADD, false>(row, N, bits, shift, 1, dst))
    return;
  const int64_t len = N * bits / 8;  // any other width, read at run time
  for (int64_t j = 0; j < N; ++j) {
    const uint64_t v = read_bits(row, len, j, bits) << shift;
    if (ADD) dst[j] += wi * v;
    else dst[j] = v;
  }
}

inline void unpack_row(const uint8_t* row, int64_t N, int bits, int shift, uint64_t* dst) {
  row_any<false>(row, N, bits, shift, nullptr, dst);
}
}  // namespace

// Past b = 50 (a multiparty lean preset: b = 58) the float64 estimate is off by up to 2^(b-52)
// and its remainder leaves 64 bits: one exact 128-bit division, 2b + 1 < 128 bits of dividend
// (~40 ns a coefficient; the torch reference's long division cost 5.4x the whole encryption).
inline uint64_t switch_wide(uint64_t c, uint64_t q0, int b) {
  const unsigned __int128 q = q0;
  return static_cast<uint64_t>(((static_cast<unsigned __int128>(c) << (b + 1)) + q) / (2 * q));
}

void lean_switch(const uint64_t* x, int64_t C, int64_t N, uint64_t q0, int b, int k, uint64_t* out) {
  if (b > 50) {
    const uint64_t mask = (uint64_t{1} << b) - 1, tmask = (uint64_t{1} << (b - k)) - 1;
#pragma omp parallel for schedule(static) if (C * N > (1 << 14))
    for (int64_t r = 0; r < 2 * C; ++r) {
      const uint64_t* xr = x + r * N;
      uint64_t* o = out + r * N;
      const bool c0 = r % 2 == 0 && k > 0;
      for (int64_t j = 0; j < N; ++j) {
        const uint64_t y = switch_wide(xr[j], q0, b) & mask;
        o[j] = c0 ? round_even(y, k) & tmask : y;
      }
    }
    return;
  }
  const double ratio = std::ldexp(1.0, b) / static_cast<double>(q0);
  const uint64_t mask = (uint64_t{1} << b) - 1, tmask = (uint64_t{1} << (b - k)) - 1;
#pragma omp parallel for schedule(static) if (C * N > (1 << 16))
  for (int64_t r = 0; r < 2 * C; ++r) {
    const uint64_t* xr = x + r * N;
    uint64_t* o = out + r * N;
    if (r % 2 == 0 && k > 0) {
      for (int64_t j = 0; j < N; ++j) o[j] = round_even(switch_one(xr[j], q0, b, ratio) & mask, k) & tmask;
    } else {
      for (int64_t j = 0; j < N; ++j) o[j] = switch_one(xr[j], q0, b, ratio) & mask;
    }
  }
}

void lean_sum(const uint64_t* x, int64_t n, int64_t M, int b, const uint64_t* w, const uint64_t* acc,
              uint64_t* out) {
  const uint64_t mask = (uint64_t{1} << b) - 1;
  const int64_t tiles = (M + kTile - 1) / kTile;
#pragma omp parallel for schedule(static) if (n * M > (1 << 19))
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t j0 = t * kTile, m = std::min(kTile, M - j0);
    uint64_t a[kTile];
    for (int64_t j = 0; j < m; ++j) a[j] = acc ? acc[j0 + j] : 0;
    for (int64_t i = 0; i < n; ++i) {
      const uint64_t* xi = x + i * M + j0;
      const uint64_t wi = w ? w[i] : 1;
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) a[j] += wi * xi[j];
    }
    for (int64_t j = 0; j < m; ++j) out[j0 + j] = a[j] & mask;
  }
}

void lean_unpack(const uint8_t* body, int64_t C, int64_t N, int b, int k, uint64_t* out) {
  const int64_t row0 = N * (b - k) / 8, row1 = N * b / 8;
#pragma omp parallel for schedule(static) if (C * N > (1 << 19))  // one thread below 4 MiB (lean_accumulate)
  for (int64_t c = 0; c < C; ++c) {
    const uint8_t* p = body + c * (row0 + row1);
    unpack_row(p, N, b - k, k, out + (2 * c) * N);
    unpack_row(p + row0, N, b, 0, out + (2 * c + 1) * N);
  }
}

void lean_accumulate(int64_t n, const uint64_t* addrs, int64_t C, int64_t N, int b, int k,
                     const uint64_t* w, bool fresh, uint64_t* acc) {
  const int64_t row0 = N * (b - k) / 8, row1 = N * b / 8;
  const uint64_t mask = (uint64_t{1} << b) - 1;
  // One row (one polynomial of one ciphertext) per task: its N accumulators stay in L2
  // (64 KiB at N = 8192) while every client's row streams through; a fresh sum is zeroed by
  // the thread that owns the row (its pages fault in on that thread, in parallel). Under ~4 MiB
  // of values one thread: on a busy machine a team's barrier can wait a whole time slice for a
  // descheduled thread (an aggregate of 4 one-ciphertext payloads: 11 ms with the team, 0.4 without).
#pragma omp parallel for schedule(static) if (n * C * N > (1 << 19))
  for (int64_t r = 0; r < 2 * C; ++r) {
    const int64_t c = r / 2, p = r % 2;
    const int64_t off = c * (row0 + row1) + (p ? row0 : 0);
    uint64_t* a = acc + r * N;
    if (fresh) std::memset(a, 0, static_cast<size_t>(N) * sizeof(uint64_t));
    for (int64_t i = 0; i < n; ++i) {
      const uint8_t* row = reinterpret_cast<const uint8_t*>(addrs[i]) + off;
      row_any<true>(row, N, p ? b : b - k, p ? 0 : k, w ? w + i : nullptr, a);
    }
    for (int64_t j = 0; j < N; ++j) a[j] &= mask;
  }
}

void lean_lift(const uint64_t* x, int64_t M, uint64_t q0, int b, uint64_t* out) {
  const unsigned __int128 half = static_cast<unsigned __int128>(1) << (b - 1);
#pragma omp parallel for schedule(static) if (M > (1 << 16))
  for (int64_t j = 0; j < M; ++j) {
    const uint64_t y = static_cast<uint64_t>((static_cast<unsigned __int128>(x[j]) * q0 + half) >> b);
    out[j] = y >= q0 ? y - q0 : y;  // y <= q0: c < 2^b
  }
}

}  // namespace bcfl
