// Fused parse-and-accumulate (see ckks_accumulate.h): one read of every payload byte, no
// intermediate batch (the two-pass path writes and rereads 8 bytes per residue).
//
// Pass 1 (serial, ~1 us a payload): headers and protobuf framing; each TenSEAL payload's C
// ciphertext fields are located, not decoded. Pass 2 (OpenMP): a unit is one residue row
// (c, p, k) of the accumulator, or a whole ciphertext when some body is compressed (a zstd
// frame decodes whole); each thread walks all clients for its unit, so its accumulator rows
// (64 KiB a row at N = 8192) stay in L2 and every payload byte is read once.
// Lazy reduction: residues are < q < 2^60, so up to 7 plain terms (3 Shoup products, each
// < 2q) add onto an accumulator < q before it can reach 8q < 2^63; one 3-step conditional
// subtraction (4q, 2q, q) then brings it back below q.
// Validation rides along: ok &= (x - q) & ~x keeps bit 63 set iff every x < q (x < q makes
// x - q wrap to >= 2^64 - q > 2^63; ~x rules out x >= 2^63): three vector ops, no branch.
// Any failure is re-run through parse_payload for the batch path's exact message.
#include "ckks_accumulate.h"

#include <algorithm>
#include <vector>

#include "seal_format.h"

namespace bcfl {

using namespace codec;

namespace {

constexpr int64_t kTile = 512;  // bit-packed residues unpacked per step: 4 KiB, in L1

enum Kind : int8_t { kBad = 0, kCompact = 1, kSeal = 2 };

struct Client {
  Kind kind = kBad;
  bool packed = false;
  const uint8_t* data = nullptr;  // compact: first residue byte
};

struct Spans {
  const uint8_t** ptr;
  int64_t* len;
  uint8_t* version;
  bool compressed = false;
};

int record_span(void* ctx, int64_t c, const uint8_t* p, int64_t len, char* msg) {
  auto& s = *static_cast<Spans*>(ctx);
  if (seal_object_header(p, len, s.version, msg)) return 1;
  s.ptr[c] = p, s.len[c] = len;
  s.compressed |= p[5] != 0;
  return 0;
}

// a[j] += x[j] for x read (unaligned) from src; ok's bit 63 clears if some x >= q.
inline void add_plain(uint64_t* a, const uint8_t* src, int64_t m, uint64_t q, uint64_t& ok) {
  uint64_t o = ~0ull;
#pragma omp simd reduction(& : o)
  for (int64_t j = 0; j < m; ++j) {
    const uint64_t x = rd<uint64_t>(src + 8 * j);
    o &= (x - q) & ~x;
    a[j] += x;
  }
  ok &= o;
}

// a[j] += w * x[j] mod q, left in [0, 2q) (Shoup's product without its final subtraction).
inline void add_weighted(uint64_t* a, const uint8_t* src, int64_t m, uint64_t q, uint64_t w,
                         uint64_t ws, uint64_t& ok) {
  uint64_t o = ~0ull;
  for (int64_t j = 0; j < m; ++j) {
    const uint64_t x = rd<uint64_t>(src + 8 * j);
    o &= (x - q) & ~x;
    const uint64_t hi = static_cast<uint64_t>((static_cast<unsigned __int128>(x) * ws) >> 64);
    a[j] += x * w - hi * q;
  }
  ok &= o;
}

// a < 8q < 2^63 -> a mod q: signed compares (AVX2 has no unsigned 64-bit one) are exact here.
inline void reduce(uint64_t* a, int64_t m, uint64_t q) {
  const int64_t q1 = static_cast<int64_t>(q), q2 = 2 * q1, q4 = 4 * q1;
#pragma omp simd
  for (int64_t j = 0; j < m; ++j) {
    int64_t v = static_cast<int64_t>(a[j]);
    v -= v >= q4 ? q4 : 0;
    v -= v >= q2 ? q2 : 0;
    v -= v >= q1 ? q1 : 0;
    a[j] = static_cast<uint64_t>(v);
  }
}

}  // namespace

int64_t accumulate_payloads(int64_t n, const uint64_t* bufs, const int64_t* lens,
                            const CkksLayout& lay, const uint64_t* w, const uint64_t* wshoup,
                            uint64_t* acc, uint8_t* versions, char* msg) {
  const int64_t K = lay.residues, N = lay.poly_degree, C = lay.ciphertexts, rows = 2 * K;
  std::vector<Client> clients(n);
  std::vector<int32_t> codes(n, 0);
  std::vector<const uint8_t*> span_ptr(n * C);
  std::vector<int64_t> span_len(n * C);
  bool compressed = false;
  int64_t total = 0;
  char scratch_msg[kMsgLen];
  for (int64_t i = 0; i < n; ++i) {  // pass 1: framing only
    const auto* buf = reinterpret_cast<const uint8_t*>(bufs[i]);
    const int64_t len = lens[i];
    total += len;
    uint8_t* version = versions + 2 * i;
    version[0] = version[1] = 0;
    Client& cl = clients[i];
    if (len >= 4 && std::memcmp(buf, "BCKS", 4) == 0) {
      int64_t data = 0;
      if (compact_header(buf, len, lay, &data, &cl.packed, scratch_msg) == 0)
        cl.kind = kCompact, cl.data = buf + data;
    } else {
      Spans s{span_ptr.data() + i * C, span_len.data() + i * C, version};
      if (walk_proto(buf, len, lay, scratch_msg, record_span, &s) == 0) cl.kind = kSeal;
      compressed |= s.compressed;
    }
    codes[i] = cl.kind == kBad;
  }
  std::vector<int> bits(rows);
  std::vector<int64_t> off_packed(rows + 1, 0), off_raw(rows + 1, 0);
  for (int64_t r = 0; r < rows; ++r) {
    bits[r] = bit_width(lay.primes[r % K]);
    off_packed[r + 1] = off_packed[r] + row_bytes(bits[r], N, true);
    off_raw[r + 1] = off_raw[r] + row_bytes(bits[r], N, false);
  }
  // A zstd frame holds a whole ciphertext: units are ciphertexts then, else single rows.
  const int64_t per_unit = compressed ? rows : 1, units = C * rows / per_unit;
  const int lazy = w ? 3 : 7;
#pragma omp parallel if (total > (4 << 20) && units > 1)
  {
    std::vector<uint8_t> body;
    if (compressed) body.resize(static_cast<size_t>(kPrefix + 16 * K * N + 16));
    uint8_t* out = body.data() + 7;  // residues at out + 97 = body + 104: 8-byte aligned
    alignas(64) uint64_t tmp[kTile];
    char err[kMsgLen];
#pragma omp for schedule(dynamic, 1)
    for (int64_t u = 0; u < units; ++u) {
      const int64_t c = u * per_unit / rows, r0 = u * per_unit % rows, r1 = r0 + per_unit;
      uint64_t* a = acc + (c * rows + r0) * N;
      int pending = 0;
      for (int64_t i = 0; i < n; ++i) {
        const Client& cl = clients[i];
        if (cl.kind == kBad) continue;
        uint64_t ok = ~0ull;
        const uint8_t* res = nullptr;  // u64 residues [rows, N] of this ciphertext
        if (cl.kind == kSeal) {
          const int64_t s = i * C + c;
          if (seal_body(span_ptr[s], span_len[s], lay, out, &res, err)) {
#pragma omp atomic write
            codes[i] = 1;
            continue;
          }
        }
        for (int64_t r = r0; r < r1; ++r) {
          const uint64_t q = lay.primes[r % K];
          uint64_t* ar = a + (r - r0) * N;
          const uint64_t wi = w ? w[i * K + r % K] : 1, wsi = w ? wshoup[i * K + r % K] : 0;
          if (cl.kind == kCompact && cl.packed) {
            const uint8_t* row = cl.data + c * off_packed[rows] + off_packed[r];
            for (int64_t j = 0; j < N; j += kTile) {
              const int64_t m = std::min(kTile, N - j);
              unpack_range(row, bits[r], N, j, j + m, tmp);
              const auto* t = reinterpret_cast<const uint8_t*>(tmp);
              if (w) add_weighted(ar + j, t, m, q, wi, wsi, ok);
              else add_plain(ar + j, t, m, q, ok);
            }
          } else {
            const uint8_t* row = cl.kind == kCompact
                                     ? cl.data + c * off_raw[rows] + off_raw[r]
                                     : res + r * N * 8;
            if (w) add_weighted(ar, row, N, q, wi, wsi, ok);
            else add_plain(ar, row, N, q, ok);
          }
        }
        if (!(ok >> 63)) {
#pragma omp atomic write
          codes[i] = 1;
        }
        if (++pending == lazy) {
          for (int64_t r = r0; r < r1; ++r) reduce(a + (r - r0) * N, N, lay.primes[r % K]);
          pending = 0;
        }
      }
      for (int64_t r = r0; r < r1; ++r) reduce(a + (r - r0) * N, N, lay.primes[r % K]);
    }
  }
  const auto bad = std::find(codes.begin(), codes.end(), 1);
  if (bad == codes.end()) return -1;
  const int64_t i = bad - codes.begin();
  std::vector<uint64_t> row(static_cast<size_t>(C * rows * N));
  uint8_t version[2];
  if (parse_payload(reinterpret_cast<const uint8_t*>(bufs[i]), lens[i], lay, row.data(), version,
                    msg) == 0)
    fail(msg, "payload rejected by the fused parser (the batch parser accepts it)");
  return i;
}

}  // namespace bcfl
