// Lean CKKS payloads: the modulus switch to 2^b, the sum mod 2^b, bit-unpacking (see lean.h).
//
// The switch needs round(2^b c / q0) for c < q0 < 2^60: a 110-bit dividend. A 128-bit division
// (__udivti3, ~40 ns) would cost 80 ms per million parameters, more than the encryption's
// budget; a float64 estimate is within 1 of the quotient for b <= 50 (relative error 2^-52 of a
// value below 2^50), and one exact correction in wrapping 64-bit arithmetic (the remainder
// c 2^b - est q0 is below 1.5 q0 < 2^61 in magnitude) makes it exact: ~1 ns per coefficient.
// The sum wraps modulo 2^64, a multiple of 2^b, and is masked once at the end.
#include "lean.h"

#include "ntt.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__AVX512VBMI__)
#include <immintrin.h>
#endif

namespace bcfl {

namespace {
constexpr int64_t kTile = 2048;  // 16 KiB of accumulator per thread, as ckks_sum
// lean_accumulate's tile: 16 KiB of accumulators (L1) per task, a multiple of 8 values. A whole
// row's 64 KiB (N = 8192) sat in L2: on one core the fused sum of 4 payloads held in L3 read
// 13.6 GB/s with it, 23 GB/s with the tile.
constexpr int64_t kAccTile = 2048;
// Bytes read ahead of the group being unpacked (~one DRAM latency at 27 GB/s per core), and the
// first ones of the next client's row while this one streams: each task switches between 128
// streams of ~9 KB (a tile of a row of each payload), each of which the hardware prefetcher
// would otherwise start cold.
constexpr int64_t kPrefetch = 1024;
// Clients unpacked together into one tile (rows_avx512; see there for 8).
constexpr int kClients = 8;

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

#if defined(__AVX512VBMI__) && defined(__AVX512DQ__) && defined(__AVX512BW__)
// P clients' rows of N values at `bits` bits (each shifted left by `shift`, times its weight
// when W) added into dst (ADD) or written to it (P = 1), 8 values (one `bits`-byte group) per
// step: one 64-byte load, one byte permutation (vpermb) that puts each value's 8-byte window in
// its lane, a variable shift and a mask (a second permutation brings the ninth byte past 57
// bits). The scalar loop costs ~40 instructions per group: at b = 42, k = 8 the fused sum read
// 6.9 GB/s of payload per core against 27 GB/s of memory. P rows at once: one load and one store
// of the accumulators per P groups, P streams in flight. On one core, 128 clients of 2.5 MB (from
// DRAM), of the memory floor: P = 1 ~40%, P = 4 ~65%, P = 8 ~75% (best of runs on a shared
// machine): as fast as a bare read of the same bytes. Groups whose 64-byte load would pass the
// row's end are loaded with a byte mask (only their `bits` bytes); `next` (or null): the rows
// read after these, whose first bytes are prefetched while these stream.
template <int P, bool ADD, bool W>
inline void rows_avx512(const uint8_t* const* rows, int64_t N, int bits, int shift, const uint64_t* w,
                        uint64_t* dst, const uint8_t* const* next) {
  alignas(64) uint8_t lo[64], hi[64];
  alignas(64) uint64_t sh[8], hsh[8];
  for (int j = 0; j < 8; ++j) {
    const int off = j * bits, byte = off >> 3;
    for (int t = 0; t < 8; ++t) lo[8 * j + t] = static_cast<uint8_t>(byte + t);
    for (int t = 0; t < 8; ++t) hi[8 * j + t] = static_cast<uint8_t>(t ? 0 : byte + 8);  // < 64: bits <= 59
    sh[j] = static_cast<uint64_t>(off & 7);
    hsh[j] = 64 - sh[j];  // a count of 64 shifts everything out: no ninth byte at offset 0
  }
  const __m512i vlo = _mm512_load_si512(lo), vhi = _mm512_load_si512(hi);
  const __m512i vsh = _mm512_load_si512(sh), vhsh = _mm512_load_si512(hsh);
  const __m512i vmask = _mm512_set1_epi64(static_cast<long long>((uint64_t{1} << bits) - 1));
  __m512i vw[P];
  for (int q = 0; q < P; ++q) vw[q] = _mm512_set1_epi64(static_cast<long long>(W ? w[q] : 1));
  const __m128i vshift = _mm_cvtsi32_si128(shift);
  const bool ninth = bits > 56;
  const int64_t groups = N / 8, len = N * bits / 8;
  const __mmask64 tail = (__mmask64{1} << bits) - 1;  // bits <= 59
  auto value = [&](__m512i data) {
    __m512i v = _mm512_srlv_epi64(_mm512_permutexvar_epi8(vlo, data), vsh);
    if (ninth)
      v = _mm512_or_si512(v, _mm512_sllv_epi64(_mm512_maskz_permutexvar_epi8(0x0101010101010101ULL, vhi, data), vhsh));
    return _mm512_and_si512(v, vmask);
  };
  auto step = [&](int64_t g, bool masked) {
    __m512i sum = _mm512_setzero_si512();
    for (int q = 0; q < P; ++q) {
      const uint8_t* p = rows[q] + g * bits;
      const __m512i v = value(masked ? _mm512_maskz_loadu_epi8(tail, p) : _mm512_loadu_si512(p));
      sum = _mm512_add_epi64(sum, W ? _mm512_mullo_epi64(v, vw[q]) : v);
    }
    uint64_t* d = dst + g * 8;  // (sum w v) << shift = sum w (v << shift) mod 2^64
    const __m512i add = _mm512_sll_epi64(sum, vshift);
    _mm512_storeu_si512(d, ADD ? _mm512_add_epi64(_mm512_loadu_si512(d), add) : add);
  };
  // Three stretches, no branch inside: prefetching kPrefetch bytes ahead within the rows, then
  // plain 64-byte loads, then byte-masked loads.
  const int64_t plain = std::min(groups, len >= 64 ? (len - 64) / bits + 1 : 0);
  const int64_t ahead = std::min(plain, len > kPrefetch ? (len - kPrefetch + bits - 1) / bits : 0);
  if (next)
    for (int q = 0; q < P; ++q)
      if (next[q])
        for (int64_t o = 0; o < std::min<int64_t>(kPrefetch, len); o += 64)
          _mm_prefetch(reinterpret_cast<const char*>(next[q] + o), _MM_HINT_T0);
  int64_t g = 0;
  for (; g < ahead; ++g) {
    for (int q = 0; q < P; ++q)
      _mm_prefetch(reinterpret_cast<const char*>(rows[q] + g * bits + kPrefetch), _MM_HINT_T0);
    step(g, false);
  }
  for (; g < plain; ++g) step(g, false);
  for (; g < groups; ++g) step(g, true);
  for (int64_t j = groups * 8; j < N; ++j) {  // N is a multiple of 8 in every layout; kept exact
    uint64_t add = 0;
    for (int q = 0; q < P; ++q) add += (W ? w[q] : 1) * (read_bits(rows[q], len, j, bits) << shift);
    dst[j] = ADD ? dst[j] + add : add;
  }
}
#endif

template <bool ADD>
inline void row_any(const uint8_t* row, int64_t N, int bits, int shift, const uint64_t* w, uint64_t* dst,
                    const uint8_t* next = nullptr) {
  const uint64_t wi = w ? *w : 1;
#if defined(__AVX512VBMI__) && defined(__AVX512DQ__) && defined(__AVX512BW__)
  const uint8_t* const nexts[1] = {next};
  if (w) rows_avx512<1, ADD, true>(&row, N, bits, shift, w, dst, next ? nexts : nullptr);
  else rows_avx512<1, ADD, false>(&row, N, bits, shift, nullptr, dst, next ? nexts : nullptr);
  return;
#endif
  (void)next;  // the scalar rows leave prefetching to the hardware
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
  // One tile of kAccTile values of one row (one polynomial of one ciphertext) per task: its
  // accumulators stay in L1 while every client's slice of the row streams through. A fresh sum is zeroed by the thread that owns the tile (its pages fault in on that
  // thread, in parallel). Tasks are handed out dynamically: on a shared machine a descheduled
  // thread's static share would hold the whole team. Under ~4 MiB of values one thread: a team's
  // barrier can wait a whole time slice for a descheduled thread (an aggregate of 4
  // one-ciphertext payloads: 11 ms with the team, 0.4 without).
  const int64_t T = std::min<int64_t>(kAccTile, N), tiles = (N + T - 1) / T;
#pragma omp parallel for schedule(dynamic) if (n * C * N > (1 << 19))
  for (int64_t task = 0; task < 2 * C * tiles; ++task) {
    const int64_t r = task / tiles, j0 = (task % tiles) * T, m = std::min(T, N - j0);
    const int64_t c = r / 2, p = r % 2, bits = p ? b : b - k;
    const int64_t off = c * (row0 + row1) + (p ? row0 : 0) + j0 * bits / 8;
    uint64_t* a = acc + r * N + j0;
    if (fresh) std::memset(a, 0, static_cast<size_t>(m) * sizeof(uint64_t));
    auto at = [&](int64_t i) { return i < n ? reinterpret_cast<const uint8_t*>(addrs[i]) + off : nullptr; };
    int64_t i = 0;
#if defined(__AVX512VBMI__) && defined(__AVX512DQ__) && defined(__AVX512BW__)
    for (; i + kClients <= n; i += kClients) {  // kClients clients at once, then one at a time
      const uint8_t* rows[kClients];
      const uint8_t* next[kClients];
      for (int q = 0; q < kClients; ++q) rows[q] = at(i + q), next[q] = at(i + kClients + q);
      if (w) rows_avx512<kClients, true, true>(rows, m, static_cast<int>(bits), p ? 0 : k, w + i, a, next);
      else rows_avx512<kClients, true, false>(rows, m, static_cast<int>(bits), p ? 0 : k, nullptr, a, next);
    }
#endif
    for (; i < n; ++i)
      row_any<true>(at(i), m, static_cast<int>(bits), p ? 0 : k, w ? w + i : nullptr, a, at(i + 1));
    for (int64_t j = 0; j < m; ++j) a[j] &= mask;
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


void lean_finish(const uint64_t* x, int64_t rows, int64_t N, uint64_t q0, int b, const uint64_t* w,
                 const uint64_t* ws, uint64_t* out) {
  // Row by row, the lift and the NTT while the row is in L2: at C = 32, N = 8192 the numpy
  // glue around the two (a checked copy, a range check, fresh buffers) had cost as much again.
#pragma omp parallel for schedule(dynamic) if (rows >= 4)
  for (int64_t r = 0; r < rows; ++r) {
    lean_lift(x + r * N, N, q0, b, out + r * N);
    ntt_forward(out + r * N, 1, N, q0, w, ws);
  }
}

}  // namespace bcfl
