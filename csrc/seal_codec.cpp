// SEAL / TenSEAL / compact payload codec (see seal_codec.h; formats in bcfl_engine/he/wire.py).
//
// Every read is bounds-checked against the payload; compressed bodies inflate straight into the
// caller's row with the output capped at the expected size, so a forged length or a zip bomb
// can neither overrun the row nor allocate. This file is also compiled standalone with
// -fsanitize=address,undefined by tests/test_he_fuzz.py and fed mutated payloads.
#include "seal_codec.h"

#include <zlib.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <vector>
#ifdef BCFL_HAVE_ZSTD
#include <zstd.h>
#endif

namespace bcfl {
namespace {

constexpr uint16_t kSealMagic = 0xA15E;
constexpr int64_t kSealHeader = 16;
constexpr int64_t kMeta = 73;                         // parms_id, ntt, size, N, K, scale, cf
constexpr int64_t kPrefix = kMeta + kSealHeader + 8;  // + the residue array's header and count
constexpr int64_t kCompactHeader = 64;
constexpr int kFieldSizes = 1, kFieldCts = 2, kFieldScale = 3, kFieldD = 14, kFieldPack = 15;

int fail(char* msg, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(msg, kMsgLen, fmt, ap);
  va_end(ap);
  return 1;
}

template <typename T>
T rd(const uint8_t* p) {  // unaligned little-endian load (x86 and aarch64 are little-endian)
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
void wr(uint8_t*& p, T v) {
  std::memcpy(p, &v, sizeof v);
  p += sizeof v;
}

// Protobuf varint; false if it runs past end or past 64 bits.
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

int varint_len(uint64_t v) {
  int n = 1;
  while (v >= 0x80) v >>= 7, ++n;
  return n;
}

void put_varint(uint8_t*& p, uint64_t v) {
  while (v >= 0x80) *p++ = static_cast<uint8_t>((v & 0x7F) | 0x80), v >>= 7;
  *p++ = static_cast<uint8_t>(v);
}

// Every residue of row [N] below q; else the index of the first one that is not.
int64_t first_unreduced(const uint64_t* row, int64_t n, uint64_t q) {
  uint64_t bad = 0;
#pragma omp simd reduction(| : bad)
  for (int64_t j = 0; j < n; ++j) bad |= static_cast<uint64_t>(row[j] >= q);
  if (!bad) return -1;
  for (int64_t j = 0; j < n; ++j)
    if (row[j] >= q) return j;
  return -1;
}

int check_rows(const uint64_t* ct, const CkksLayout& lay, int64_t c, char* msg) {
  const int64_t k = lay.residues, n = lay.poly_degree;
  for (int64_t p = 0; p < 2; ++p)
    for (int64_t r = 0; r < k; ++r) {
      const int64_t j = first_unreduced(ct + (p * k + r) * n, n, lay.primes[r]);
      if (j >= 0)
        return fail(msg, "ciphertext %lld: residue at (%lld, %lld, %lld) not below its prime",
                    (long long)c, (long long)p, (long long)r, (long long)j);
    }
  return 0;
}

// Output of a body decompression: the 97-byte prefix, then the residues into the row.
struct Sink {
  uint8_t* prefix;
  uint8_t* data;
  int64_t data_len;
};

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
  if (!(scale == lay.scale)) return fail(msg, "ciphertext scale %.17g; expected %.17g", scale, lay.scale);
  if (rd<uint64_t>(m + 65) != 1) return fail(msg, "correction factor not 1");
  const uint8_t* a = m + kMeta;  // the residue array: an uncompressed SEAL object
  const uint64_t count = 2 * static_cast<uint64_t>(k) * n;
  if (rd<uint16_t>(a) != kSealMagic || a[2] != kSealHeader || a[5] != 0 || rd<uint16_t>(a + 6) != 0 ||
      rd<uint64_t>(a + 8) != 24 + 8 * count || rd<uint64_t>(a + 16) != count)
    return fail(msg, "residue array header invalid (expected %llu uncompressed values)",
                (unsigned long long)count);
  return 0;
}

int inflate_zlib(const uint8_t* body, int64_t len, const Sink& s, char* msg) {
  if (len > 0xFFFFFFFFll) return fail(msg, "zlib body over 4 GiB");
  z_stream zs;
  std::memset(&zs, 0, sizeof zs);
  if (inflateInit(&zs) != Z_OK) return fail(msg, "zlib init failed");
  struct End {
    z_stream* z;
    ~End() { inflateEnd(z); }
  } guard{&zs};
  zs.next_in = const_cast<Bytef*>(body);
  zs.avail_in = static_cast<uInt>(len);
  uint8_t* outs[2] = {s.prefix, s.data};
  const int64_t sizes[2] = {kPrefix, s.data_len};
  int ret = Z_OK;
  for (int part = 0; part < 2; ++part) {
    zs.next_out = outs[part];
    zs.avail_out = static_cast<uInt>(sizes[part]);
    while (zs.avail_out > 0) {
      ret = inflate(&zs, Z_NO_FLUSH);
      if (ret == Z_STREAM_END && zs.avail_out > 0) return fail(msg, "zlib body shorter than expected");
      if (ret == Z_BUF_ERROR) return fail(msg, "zlib body truncated");
      if (ret != Z_OK && ret != Z_STREAM_END) return fail(msg, "zlib body corrupt (%d)", ret);
    }
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

#ifdef BCFL_HAVE_ZSTD
int inflate_zstd(const uint8_t* body, int64_t len, const Sink& s, char* msg) {
  // One decompression context per thread: creating one costs ~100 KB of allocation.
  thread_local struct Ctx {
    ZSTD_DCtx* p = ZSTD_createDCtx();
    ~Ctx() { ZSTD_freeDCtx(p); }
  } ctx;
  if (!ctx.p) return fail(msg, "zstd init failed");
  ZSTD_DCtx_reset(ctx.p, ZSTD_reset_session_only);
  ZSTD_inBuffer in{body, static_cast<size_t>(len), 0};
  uint8_t* outs[2] = {s.prefix, s.data};
  const int64_t sizes[2] = {kPrefix, s.data_len};
  size_t r = 1;
  for (int part = 0; part < 2; ++part) {
    ZSTD_outBuffer out{outs[part], static_cast<size_t>(sizes[part]), 0};
    while (out.pos < out.size) {
      const size_t before_in = in.pos, before_out = out.pos;
      r = ZSTD_decompressStream(ctx.p, &out, &in);
      if (ZSTD_isError(r)) return fail(msg, "zstd body corrupt: %s", ZSTD_getErrorName(r));
      if (r == 0 && out.pos < out.size) return fail(msg, "zstd body shorter than expected");
      if (in.pos == before_in && out.pos == before_out) return fail(msg, "zstd body truncated");
    }
  }
  while (r != 0) {  // the frame must end here: no more output, no trailing input
    uint8_t extra;
    ZSTD_outBuffer out{&extra, 1, 0};
    const size_t before_in = in.pos;
    r = ZSTD_decompressStream(ctx.p, &out, &in);
    if (ZSTD_isError(r)) return fail(msg, "zstd body corrupt: %s", ZSTD_getErrorName(r));
    if (out.pos) return fail(msg, "zstd body longer than expected");
    if (r != 0 && in.pos == before_in) return fail(msg, "zstd body truncated");
  }
  if (in.pos != in.size) return fail(msg, "%zu trailing bytes after the zstd frame", in.size - in.pos);
  return 0;
}
#endif

// One SEAL ciphertext object [p, p + len) into ct [2, K, N].
int parse_ciphertext(const uint8_t* p, int64_t len, const CkksLayout& lay, int64_t c, uint64_t* ct,
                     uint8_t* version, char* msg) {
  char inner[kMsgLen];
  int rc = 0;
  const int64_t data_len = 16 * lay.residues * lay.poly_degree;
  if (len < kSealHeader) {
    rc = fail(inner, "%lld bytes, shorter than a SEAL header", (long long)len);
  } else if (rd<uint16_t>(p) != kSealMagic || p[2] != kSealHeader || rd<uint16_t>(p + 6) != 0) {
    rc = fail(inner, "not a SEAL header");
  } else if (p[3] != 4) {
    rc = fail(inner, "SEAL version %d.%d not supported (expected 4.x)", p[3], p[4]);
  } else if (rd<uint64_t>(p + 8) != static_cast<uint64_t>(len)) {
    rc = fail(inner, "SEAL header says %llu bytes; the field holds %lld",
              (unsigned long long)rd<uint64_t>(p + 8), (long long)len);
  } else {
    version[0] = p[3], version[1] = p[4];
    const uint8_t* body = p + kSealHeader;
    const int64_t body_len = len - kSealHeader;
    uint8_t prefix[kPrefix];
    const Sink sink{prefix, reinterpret_cast<uint8_t*>(ct), data_len};
    switch (p[5]) {
      case 0:
        if (body_len != kPrefix + data_len) {
          rc = fail(inner, "SEAL body holds %lld bytes; expected %lld", (long long)body_len,
                    (long long)(kPrefix + data_len));
        } else {
          std::memcpy(prefix, body, kPrefix);
          rc = check_meta(prefix, lay, inner);
          if (!rc) std::memcpy(ct, body + kPrefix, data_len);
        }
        break;
      case 1:
        rc = inflate_zlib(body, body_len, sink, inner);
        break;
      case 2:
#ifdef BCFL_HAVE_ZSTD
        rc = inflate_zstd(body, body_len, sink, inner);
#else
        rc = fail(inner, "zstd-compressed SEAL body, but this build has no zstd");
#endif
        break;
      default:
        rc = fail(inner, "unknown SEAL compression mode %d", p[5]);
    }
    if (!rc && p[5] != 0) rc = check_meta(prefix, lay, inner);
  }
  if (rc) return fail(msg, "ciphertext %lld: %s", (long long)c, inner);
  return check_rows(ct, lay, c, msg);
}

int parse_proto(const uint8_t* buf, int64_t len, const CkksLayout& lay, uint64_t* out,
                uint8_t* version, char* msg) {
  const uint8_t* p = buf;
  const uint8_t* end = buf + len;
  std::vector<int64_t> sizes;
  int64_t cts = 0, d = -1;
  uint64_t pack = 0;
  bool has_scale = false;
  double scale = 0;
  const int64_t ct_words = 2 * lay.residues * lay.poly_degree;
  while (p < end) {
    uint64_t tag, v;
    if (!varint(p, end, tag)) return fail(msg, "protobuf tag runs past the end or past 64 bits");
    const uint64_t field = tag >> 3, wt = tag & 7;
    const bool known = field == kFieldSizes || field == kFieldCts || field == kFieldScale ||
                       field == kFieldD || field == kFieldPack;
    if (field == 0) return fail(msg, "protobuf field number 0");
    if (wt == 0) {
      if (!varint(p, end, v)) return fail(msg, "protobuf varint runs past the end or past 64 bits");
      if (field == kFieldSizes) {
        sizes.push_back(static_cast<int64_t>(v > 0xFFFFFFFFull ? -1 : v));
      } else if (field == kFieldD) {
        d = v > (1ull << 62) ? -2 : static_cast<int64_t>(v);
      } else if (field == kFieldPack) {
        pack = v;
      } else if (known) {
        return fail(msg, "protobuf field %llu has wire type 0", (unsigned long long)field);
      }
    } else if (wt == 1) {
      if (end - p < 8) return fail(msg, "protobuf fixed64 runs past the end");
      if (field == kFieldScale) {
        if (has_scale) return fail(msg, "protobuf field scale appears twice");
        has_scale = true, scale = rd<double>(p);
      } else if (known) {
        return fail(msg, "protobuf field %llu has wire type 1", (unsigned long long)field);
      }
      p += 8;
    } else if (wt == 2) {
      if (!varint(p, end, v)) return fail(msg, "protobuf length runs past the end");
      if (v > static_cast<uint64_t>(end - p))
        return fail(msg, "protobuf length %llu exceeds the %lld bytes left", (unsigned long long)v,
                    (long long)(end - p));
      const uint8_t* sub_end = p + v;
      if (field == kFieldSizes) {
        while (p < sub_end) {
          uint64_t s;
          if (!varint(p, sub_end, s)) return fail(msg, "packed sizes: bad varint");
          sizes.push_back(static_cast<int64_t>(s > 0xFFFFFFFFull ? -1 : s));
        }
      } else if (field == kFieldCts) {
        if (cts >= lay.ciphertexts)
          return fail(msg, "more than the %lld ciphertexts expected", (long long)lay.ciphertexts);
        const int rc = parse_ciphertext(p, static_cast<int64_t>(v), lay, cts, out + cts * ct_words,
                                        version, msg);
        if (rc) return rc;
        ++cts;
      } else if (known) {
        return fail(msg, "protobuf field %llu has wire type 2", (unsigned long long)field);
      }
      p = sub_end;
    } else if (wt == 5) {
      if (end - p < 4 || known) return fail(msg, "protobuf field %llu: bad fixed32", (unsigned long long)field);
      p += 4;
    } else {
      return fail(msg, "protobuf wire type %llu not allowed", (unsigned long long)wt);
    }
  }
  if (cts != lay.ciphertexts || static_cast<int64_t>(sizes.size()) != lay.ciphertexts)
    return fail(msg, "%lld ciphertexts and %zu sizes; expected %lld", (long long)cts, sizes.size(),
                (long long)lay.ciphertexts);
  for (int64_t c = 0; c < lay.ciphertexts; ++c)
    if (sizes[c] != lay.sizes[c])
      return fail(msg, "size of chunk %lld is %lld; the batch has %lld", (long long)c,
                  (long long)sizes[c], (long long)lay.sizes[c]);
  if (pack != 0 && pack != 2) return fail(msg, "unknown value packing %llu", (unsigned long long)pack);
  if ((pack == 2) != (lay.pair != 0) || (lay.pair && d != lay.d))
    return fail(msg, "value packing or length differs from the batch's");
  if (!has_scale || !(scale == lay.scale)) return fail(msg, "vector scale missing or not the batch's");
  return 0;
}

int bit_width(uint64_t q) { return 64 - __builtin_clzll(q); }

// N residues of `bits` bits, packed least significant bit first, from src into dst.
// Residue j starts at bit j * bits; with bits <= 61 and a start shift <= 7 it spans at most 9
// bytes, so one 16-byte load covers it. A constant-size memcpy compiles to one unaligned load
// (a variable one is a libc call per residue: 3x slower on 60-bit rows); only the last two
// residues of a row, whose 16 bytes would run past it, take the zero-padded slow path.
void unpack_row(const uint8_t* src, int bits, int64_t n, uint64_t* dst) {
  const uint64_t mask = bits == 64 ? ~0ull : (1ull << bits) - 1;
  const int64_t row_bytes = n * bits / 8;
  int64_t j = 0;
  for (; j < n && ((j * bits) >> 3) + 16 <= row_bytes; ++j) {
    const int64_t bit = j * bits;
    unsigned __int128 w;
    std::memcpy(&w, src + (bit >> 3), 16);
    dst[j] = static_cast<uint64_t>(w >> (bit & 7)) & mask;
  }
  for (; j < n; ++j) {
    const int64_t bit = j * bits, byte = bit >> 3;
    unsigned __int128 w = 0;
    std::memcpy(&w, src + byte, static_cast<size_t>(row_bytes - byte));
    dst[j] = static_cast<uint64_t>(w >> (bit & 7)) & mask;
  }
}

int parse_compact(const uint8_t* buf, int64_t len, const CkksLayout& lay, uint64_t* out,
                  char* msg) {
  if (len < kCompactHeader) return fail(msg, "compact payload of %lld bytes < its header", (long long)len);
  const uint8_t flags = buf[5];
  if (buf[4] != 1 || (flags & ~3))
    return fail(msg, "compact version %d, flags %#x not supported", buf[4], flags);
  const bool packed = flags & 1;
  if (rd<uint16_t>(buf + 6) != lay.residues || rd<uint32_t>(buf + 8) != lay.poly_degree ||
      rd<uint32_t>(buf + 12) != lay.ciphertexts || rd<uint64_t>(buf + 16) != static_cast<uint64_t>(lay.d) ||
      std::memcmp(buf + 24, lay.parms_id, 32) != 0 || !(rd<double>(buf + 56) == lay.scale) ||
      ((flags & 2) != 0) != (lay.pair != 0))
    return fail(msg, "compact header (K, N, C, d, parms_id, scale, pairing) differs from the batch's");
  const int64_t k = lay.residues, n = lay.poly_degree;
  if (len < kCompactHeader + 8 * k || std::memcmp(buf + kCompactHeader, lay.primes, 8 * k) != 0)
    return fail(msg, "compact primes differ from the batch's");
  int64_t per_ct = 0;
  for (int64_t r = 0; r < k; ++r) per_ct += 2 * (packed ? n * bit_width(lay.primes[r]) / 8 : 8 * n);
  const int64_t want = kCompactHeader + 8 * k + lay.ciphertexts * per_ct;
  if (len != want) return fail(msg, "compact payload holds %lld bytes; expected %lld", (long long)len, (long long)want);
  const uint8_t* p = buf + kCompactHeader + 8 * k;
  for (int64_t c = 0; c < lay.ciphertexts; ++c) {
    uint64_t* ct = out + c * 2 * k * n;
    for (int64_t pr = 0; pr < 2 * k; ++pr) {
      const int bits = bit_width(lay.primes[pr % k]);
      if (packed) {
        unpack_row(p, bits, n, ct + pr * n);
        p += n * bits / 8;
      } else {
        std::memcpy(ct + pr * n, p, 8 * n);
        p += 8 * n;
      }
    }
    const int rc = check_rows(ct, lay, c, msg);
    if (rc) return rc;
  }
  return 0;
}

}  // namespace

int parse_payload(const uint8_t* buf, int64_t len, const CkksLayout& lay, uint64_t* out,
                  uint8_t* version, char* msg) {
  version[0] = version[1] = 0;
  msg[0] = '\0';
  if (len >= 4 && std::memcmp(buf, "BCKS", 4) == 0) return parse_compact(buf, len, lay, out, msg);
  return parse_proto(buf, len, lay, out, version, msg);
}

void parse_payloads(int64_t n, const uint64_t* bufs, const int64_t* lens, const CkksLayout& lay,
                    uint64_t* out, int32_t* codes, uint8_t* versions, char* msgs) {
  const int64_t row = lay.ciphertexts * 2 * lay.residues * lay.poly_degree;
  // One payload per iteration: zstd/zlib inflation dominates and payloads are independent.
  // Below ~4 MiB of payloads one thread is faster: waking the team costs more than the work.
  int64_t total = 0;
  for (int64_t i = 0; i < n; ++i) total += lens[i];
#pragma omp parallel for schedule(dynamic, 1) if (n > 1 && total > (4 << 20))
  for (int64_t i = 0; i < n; ++i) {
    const auto* buf = reinterpret_cast<const uint8_t*>(bufs[i]);
    codes[i] = parse_payload(buf, lens[i], lay, out + i * row, versions + 2 * i, msgs + i * kMsgLen);
  }
}

int64_t proto_size(const CkksLayout& lay) {
  int64_t packed = 0;
  for (int64_t c = 0; c < lay.ciphertexts; ++c) packed += varint_len(static_cast<uint64_t>(lay.sizes[c]));
  const int64_t ct = kSealHeader + kPrefix + 16 * lay.residues * lay.poly_degree;
  int64_t total = 1 + varint_len(packed) + packed + lay.ciphertexts * (1 + varint_len(ct) + ct) + 9;
  if (lay.pair) total += 1 + varint_len(static_cast<uint64_t>(lay.d)) + 2;
  return total;
}

void write_proto(const uint64_t* data, const CkksLayout& lay, double scale, int major, int minor,
                 uint8_t* out) {
  const int64_t k = lay.residues, n = lay.poly_degree, words = 2 * k * n;
  const int64_t ct_len = kSealHeader + kPrefix + 8 * words;
  uint8_t* p = out;
  int64_t packed = 0;
  for (int64_t c = 0; c < lay.ciphertexts; ++c) packed += varint_len(static_cast<uint64_t>(lay.sizes[c]));
  *p++ = kFieldSizes << 3 | 2;
  put_varint(p, packed);
  for (int64_t c = 0; c < lay.ciphertexts; ++c) put_varint(p, static_cast<uint64_t>(lay.sizes[c]));
  auto seal_header = [&](uint64_t size) {
    wr<uint16_t>(p, kSealMagic);
    *p++ = kSealHeader, *p++ = static_cast<uint8_t>(major), *p++ = static_cast<uint8_t>(minor);
    *p++ = 0;  // compression none: residues are uniformly random, zstd saves ~6% at 60 bits
    wr<uint16_t>(p, 0);
    wr<uint64_t>(p, size);
  };
  for (int64_t c = 0; c < lay.ciphertexts; ++c) {
    *p++ = kFieldCts << 3 | 2;
    put_varint(p, ct_len);
    seal_header(ct_len);
    std::memcpy(p, lay.parms_id, 32), p += 32;
    *p++ = 1;  // NTT form
    wr<uint64_t>(p, 2), wr<uint64_t>(p, n), wr<uint64_t>(p, k);
    wr<double>(p, scale);
    wr<uint64_t>(p, 1);  // correction factor
    seal_header(24 + 8 * words);
    wr<uint64_t>(p, words);
    std::memcpy(p, data + c * words, 8 * words), p += 8 * words;
  }
  *p++ = kFieldScale << 3 | 1;
  wr<double>(p, scale);
  if (lay.pair) {
    *p++ = kFieldD << 3;
    put_varint(p, static_cast<uint64_t>(lay.d));
    *p++ = kFieldPack << 3;
    *p++ = 2;
  }
}

}  // namespace bcfl
