// Decoding one SEAL ciphertext body and one bit-packed row (see seal_format.h). Shared by the
// batch parser (seal_codec.cpp) and the fused accumulator (ckks_accumulate.cpp), so both accept
// and reject exactly the same bytes.
//
// Every read is bounds-checked against the payload; compressed bodies inflate into a buffer of
// exactly the expected size, so a forged length or a zip bomb can neither overrun it nor
// allocate. Compiled standalone with -fsanitize=address,undefined by tests/test_he_fuzz.py.
#include <zlib.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>

#include "seal_format.h"
#include "seal_zstd.h"
#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace bcfl {
namespace codec {

int fail(char* msg, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(msg, kMsgLen, fmt, ap);
  va_end(ap);
  return 1;
}

bool varint(const uint8_t*& p, const uint8_t* end, uint64_t& v) {
  v = 0;
  for (int i = 0; i < 10; ++i) {
    if (p >= end) return false;
    const uint8_t b = *p++;
    if (i == 9 && b > 1) return false;
    v |= static_cast<uint64_t>(b & 0x7F) << (7 * i);
    if (!(b & 0x80)) return true;
  }
  return false;
}

int seal_object_header(const uint8_t* p, int64_t len, uint8_t* version, char* msg) {
  if (len < kSealHeader) return fail(msg, "%lld bytes, shorter than a SEAL header", (long long)len);
  if (rd<uint16_t>(p) != kSealMagic || p[2] != kSealHeader || rd<uint16_t>(p + 6) != 0)
    return fail(msg, "not a SEAL header");
  if (p[3] != 4) return fail(msg, "SEAL version %d.%d not supported (expected 4.x)", p[3], p[4]);
  if (rd<uint64_t>(p + 8) != static_cast<uint64_t>(len))
    return fail(msg, "SEAL header says %llu bytes; the field holds %lld",
                (unsigned long long)rd<uint64_t>(p + 8), (long long)len);
  if (p[5] > 2) return fail(msg, "unknown SEAL compression mode %d", p[5]);
  version[0] = p[3], version[1] = p[4];
  return 0;
}

int check_meta(const uint8_t* m, const CkksLayout& lay, char* msg) {
  if (std::memcmp(m, lay.parms_id, 32) != 0)
    return fail(msg, "parms_id is not the batch's level (another context or level)");
  if (m[32] != 1) return fail(msg, "ciphertext not in NTT form (flag %d)", m[32]);
  const uint64_t size = rd<uint64_t>(m + 33), n = rd<uint64_t>(m + 41), k = rd<uint64_t>(m + 49);
  if (size != 2) return fail(msg, "ciphertext size %llu; expected 2", (unsigned long long)size);
  if (n != static_cast<uint64_t>(lay.poly_degree) || k != static_cast<uint64_t>(lay.residues))
    return fail(msg, "ciphertext has N=%llu, K=%llu; expected N=%lld, K=%lld",
                (unsigned long long)n, (unsigned long long)k, (long long)lay.poly_degree,
                (long long)lay.residues);
  const double scale = rd<double>(m + 57);
  if (!(scale == lay.scale))
    return fail(msg, "ciphertext scale %.17g; expected %.17g", scale, lay.scale);
  if (rd<uint64_t>(m + 65) != 1) return fail(msg, "correction factor not 1");
  const uint8_t* a = m + kMeta;  // the residue array: an uncompressed SEAL object
  const uint64_t count = 2 * static_cast<uint64_t>(k) * n;
  if (rd<uint16_t>(a) != kSealMagic || a[2] != kSealHeader || a[5] != 0 ||
      rd<uint16_t>(a + 6) != 0 || rd<uint64_t>(a + 8) != 24 + 8 * count ||
      rd<uint64_t>(a + 16) != count)
    return fail(msg, "residue array header invalid (expected %llu uncompressed values)",
                (unsigned long long)count);
  return 0;
}

namespace {

int inflate_zlib(const uint8_t* body, int64_t len, uint8_t* out, int64_t size, char* msg) {
  if (len > 0xFFFFFFFFll || size > 0xFFFFFFFFll) return fail(msg, "zlib body over 4 GiB");
  z_stream zs;
  std::memset(&zs, 0, sizeof zs);
  if (inflateInit(&zs) != Z_OK) return fail(msg, "zlib init failed");
  struct End {
    z_stream* z;
    ~End() { inflateEnd(z); }
  } guard{&zs};
  zs.next_in = const_cast<Bytef*>(body);
  zs.avail_in = static_cast<uInt>(len);
  zs.next_out = out;
  zs.avail_out = static_cast<uInt>(size);
  int ret = Z_OK;
  while (zs.avail_out > 0) {
    ret = inflate(&zs, Z_NO_FLUSH);
    if (ret == Z_STREAM_END && zs.avail_out > 0) return fail(msg, "zlib body shorter than expected");
    if (ret == Z_BUF_ERROR) return fail(msg, "zlib body truncated");
    if (ret != Z_OK && ret != Z_STREAM_END) return fail(msg, "zlib body corrupt (%d)", ret);
  }
  if (ret != Z_STREAM_END) {
    uint8_t extra;
    zs.next_out = &extra;
    zs.avail_out = 1;
    ret = inflate(&zs, Z_FINISH);
    if (zs.avail_out == 0) return fail(msg, "zlib body longer than expected");
    if (ret != Z_STREAM_END) return fail(msg, "zlib body truncated or corrupt (%d)", ret);
  }
  if (zs.avail_in != 0) return fail(msg, "%u trailing bytes after the zlib body", zs.avail_in);
  return 0;
}

}  // namespace

int seal_body(const uint8_t* p, int64_t len, const CkksLayout& lay, uint8_t* out,
              const uint8_t** residues, char* msg) {
  const uint8_t* body = p + kSealHeader;
  const int64_t body_len = len - kSealHeader, size = kPrefix + 16 * lay.residues * lay.poly_degree;
  int rc = 0;
  // At least a byte a residue: see check_body_length in bcfl_engine/he/seal.py.
  if (p[5] != 0 && body_len < 2 * lay.residues * lay.poly_degree)
    return fail(msg,
                "compressed SEAL body of %lld bytes for %lld residues: fewer than one byte a "
                "residue",
                (long long)body_len, (long long)(2 * lay.residues * lay.poly_degree));
  switch (p[5]) {
    case 0:
      if (body_len != size)
        return fail(msg, "SEAL body holds %lld bytes; expected %lld", (long long)body_len,
                    (long long)size);
      rc = check_meta(body, lay, msg);
      *residues = body + kPrefix;
      return rc;
    case 1:
      rc = inflate_zlib(body, body_len, out, size, msg);
      break;
    case 2:
      rc = zstd::decompress_frame(body, body_len, out, size, msg);
      break;
    default:
      return fail(msg, "unknown SEAL compression mode %d", p[5]);
  }
  if (!rc) rc = check_meta(out, lay, msg);
  *residues = out + kPrefix;
  return rc;
}

// Residue j starts at bit j * bits. When bits + (largest start shift) <= 64 (every width up
// to 60 but 59: the shifts are multiples of gcd(bits, 8)), one 8-byte load covers a residue;
// else a 16-byte one does. A constant-size memcpy compiles to one unaligned load (a variable
// one is a libc call per residue: 3x slower on 60-bit rows); only the last residues of a row,
// whose load would run past it, take the zero-padded slow path.
namespace {
#ifdef __AVX2__
// Eight residues (exactly `bits` bytes) per step, four per 256-bit register: each 128-bit lane
// loads the 16 bytes holding two residues, a byte shuffle puts each residue's 8 bytes in its
// own 64-bit slot, a variable shift and a mask finish it. ~10 instructions per 8 residues
// against ~4 per residue for the scalar loop (bit-packed rows: 1.6 -> see bench_ckks.py).
// Needs j % 8 == 0 and every residue within 8 bytes of its start byte (bits + shift <= 64).
int64_t unpack_avx2(const uint8_t* row, int bits, int64_t bytes, int64_t j, int64_t j1,
                    uint64_t* dst) {
  const int64_t j0 = j;
  int b[8];
  alignas(32) uint8_t ctl[2][32];
  alignas(32) int64_t sh[2][4];
  for (int m = 0; m < 8; ++m) b[m] = (m * bits) >> 3, sh[m / 4][m % 4] = (m * bits) & 7;
  for (int m = 0; m < 8; ++m) {
    const int lane_base = b[m & ~1], off = b[m] - lane_base;  // lanes hold residues 2l, 2l + 1
    for (int t = 0; t < 8; ++t) ctl[m / 4][(m % 4) * 8 + t] = static_cast<uint8_t>(off + t);
  }
  const __m256i c0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(ctl[0]));
  const __m256i c1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(ctl[1]));
  const __m256i s0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(sh[0]));
  const __m256i s1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(sh[1]));
  const __m256i mask = _mm256_set1_epi64x(static_cast<long long>((1ull << bits) - 1));
  auto lanes = [](const uint8_t* lo, const uint8_t* hi) {
    return _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lo))),
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(hi)), 1);
  };
  // The last lane load reads 16 bytes from b[6] <= 45 < bits: stay 64 bytes inside the row.
  for (; j + 8 <= j1 && (j / 8) * bits + 64 <= bytes; j += 8) {
    const uint8_t* g = row + (j / 8) * bits;
    __m256i v0 = _mm256_shuffle_epi8(lanes(g, g + b[2]), c0);
    __m256i v1 = _mm256_shuffle_epi8(lanes(g + b[4], g + b[6]), c1);
    v0 = _mm256_and_si256(_mm256_srlv_epi64(v0, s0), mask);
    v1 = _mm256_and_si256(_mm256_srlv_epi64(v1, s1), mask);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + (j - j0)), v0);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + (j - j0) + 4), v1);
  }
  return j;
}
#endif
}  // namespace

void unpack_range(const uint8_t* row, int bits, int64_t n, int64_t j0, int64_t j1, uint64_t* dst) {
  const uint64_t mask = bits == 64 ? ~0ull : (1ull << bits) - 1;
  const int64_t bytes = n * bits / 8;
  const int gcd = bits & 7 ? (bits & 3 ? (bits & 1 ? 1 : 2) : 4) : 8;
  int64_t j = j0;
#ifdef __AVX2__
  if (bits + 8 - gcd <= 64 && bits < 64 && j0 % 8 == 0) j = unpack_avx2(row, bits, bytes, j0, j1, dst);
#endif
  if (bits + 8 - gcd <= 64) {
    for (; j < j1 && ((j * bits) >> 3) + 8 <= bytes; ++j) {
      const int64_t bit = j * bits;
      dst[j - j0] = (rd<uint64_t>(row + (bit >> 3)) >> (bit & 7)) & mask;
    }
  } else {
    for (; j < j1 && ((j * bits) >> 3) + 16 <= bytes; ++j) {
      const int64_t bit = j * bits;
      unsigned __int128 w;
      std::memcpy(&w, row + (bit >> 3), 16);
      dst[j - j0] = static_cast<uint64_t>(w >> (bit & 7)) & mask;
    }
  }
  for (; j < j1; ++j) {
    const int64_t bit = j * bits, byte = bit >> 3;
    unsigned __int128 w = 0;
    std::memcpy(&w, row + byte, static_cast<size_t>(std::min<int64_t>(16, bytes - byte)));
    dst[j - j0] = static_cast<uint64_t>(w >> (bit & 7)) & mask;
  }
}

}  // namespace codec
}  // namespace bcfl
