// SEAL / TenSEAL / compact payload codec (see seal_codec.h; formats in bcfl_engine/he/wire.py):
// the CKKSVectorProto walk, the batch parser (one payload into one row) and the writer.
// Body decoding is in seal_body.cpp, shared with the fused accumulator (ckks_accumulate.cpp).
// Compiled standalone with -fsanitize=address,undefined by tests/test_he_fuzz.py.
#include "seal_codec.h"

#include <vector>

#include "seal_format.h"

namespace bcfl {

using namespace codec;

namespace codec {

int walk_proto(const uint8_t* buf, int64_t len, const CkksLayout& lay, char* msg, CtVisitor on_ct,
               void* ctx) {
  const uint8_t* p = buf;
  const uint8_t* end = buf + len;
  std::vector<int64_t> sizes;
  int64_t cts = 0, d = -1;
  uint64_t pack = 0;
  bool has_scale = false;
  double scale = 0;
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
        const int rc = on_ct(ctx, cts, p, static_cast<int64_t>(v), msg);
        if (rc) return rc;
        ++cts;
      } else if (known) {
        return fail(msg, "protobuf field %llu has wire type 2", (unsigned long long)field);
      }
      p = sub_end;
    } else if (wt == 5) {
      if (end - p < 4 || known)
        return fail(msg, "protobuf field %llu: bad fixed32", (unsigned long long)field);
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
  if (pack != 0 && pack != 2)
    return fail(msg, "unknown value packing %llu", (unsigned long long)pack);
  if ((pack == 2) != (lay.pair != 0) || (lay.pair && d != lay.d))
    return fail(msg, "value packing or length differs from the batch's");
  if (!has_scale || !(scale == lay.scale))
    return fail(msg, "vector scale missing or not the batch's");
  return 0;
}

}  // namespace codec

namespace {

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

struct RowSink {
  const CkksLayout* lay;
  uint64_t* out;
  uint8_t* version;
};

// One SEAL ciphertext object into row c of the sink.
int parse_ciphertext(void* ctx, int64_t c, const uint8_t* p, int64_t len, char* msg) {
  const auto& s = *static_cast<RowSink*>(ctx);
  const CkksLayout& lay = *s.lay;
  const int64_t data_len = 16 * lay.residues * lay.poly_degree;
  uint64_t* ct = s.out + c * 2 * lay.residues * lay.poly_degree;
  thread_local std::vector<uint8_t> scratch;
  char inner[kMsgLen];
  int rc = seal_object_header(p, len, s.version, inner);
  if (!rc) {
    if (p[5] != 0) scratch.resize(static_cast<size_t>(kPrefix + data_len));
    const uint8_t* residues = nullptr;
    rc = seal_body(p, len, lay, scratch.data(), &residues, inner);
    if (!rc) std::memcpy(ct, residues, static_cast<size_t>(data_len));
  }
  if (rc) return fail(msg, "ciphertext %lld: %s", (long long)c, inner);
  return check_rows(ct, lay, c, msg);
}

int parse_compact(const uint8_t* buf, int64_t len, const CkksLayout& lay, uint64_t* out,
                  char* msg) {
  int64_t data = 0;
  bool packed = false;
  const int rc = compact_header(buf, len, lay, &data, &packed, msg);
  if (rc) return rc;
  const int64_t k = lay.residues, n = lay.poly_degree;
  const uint8_t* p = buf + data;
  for (int64_t c = 0; c < lay.ciphertexts; ++c) {
    uint64_t* ct = out + c * 2 * k * n;
    for (int64_t pr = 0; pr < 2 * k; ++pr) {
      const int bits = bit_width(lay.primes[pr % k]);
      if (packed) {
        unpack_range(p, bits, n, 0, n, ct + pr * n);
      } else {
        std::memcpy(ct + pr * n, p, 8 * n);
      }
      p += row_bytes(bits, n, packed);
    }
    const int rc2 = check_rows(ct, lay, c, msg);
    if (rc2) return rc2;
  }
  return 0;
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

template <typename T>
void wr(uint8_t*& p, T v) {
  std::memcpy(p, &v, sizeof v);
  p += sizeof v;
}

}  // namespace

namespace codec {

int compact_header(const uint8_t* buf, int64_t len, const CkksLayout& lay, int64_t* data,
                   bool* packed, char* msg) {
  if (len < kCompactHeader)
    return fail(msg, "compact payload of %lld bytes < its header", (long long)len);
  const uint8_t flags = buf[5];
  if (buf[4] != 1 || (flags & ~3))
    return fail(msg, "compact version %d, flags %#x not supported", buf[4], flags);
  *packed = flags & 1;
  // Each declared size against the batch's, named: they fix how many bytes follow.
  const struct {
    const char* name;
    uint64_t got, want;
  } sizes[] = {{"K", rd<uint16_t>(buf + 6), static_cast<uint64_t>(lay.residues)},
               {"N", rd<uint32_t>(buf + 8), static_cast<uint64_t>(lay.poly_degree)},
               {"C", rd<uint32_t>(buf + 12), static_cast<uint64_t>(lay.ciphertexts)},
               {"d", rd<uint64_t>(buf + 16), static_cast<uint64_t>(lay.d)}};
  for (const auto& f : sizes)
    if (f.got != f.want)
      return fail(msg, "compact header: %s=%llu; the batch has %s=%llu", f.name,
                  (unsigned long long)f.got, f.name, (unsigned long long)f.want);
  if (std::memcmp(buf + 24, lay.parms_id, 32) != 0 || !(rd<double>(buf + 56) == lay.scale) ||
      ((flags & 2) != 0) != (lay.pair != 0))
    return fail(msg, "compact header (parms_id, scale, pairing) differs from the batch's");
  const int64_t k = lay.residues, n = lay.poly_degree;
  if (len < kCompactHeader + 8 * k || std::memcmp(buf + kCompactHeader, lay.primes, 8 * k) != 0)
    return fail(msg, "compact primes differ from the batch's");
  int64_t per_ct = 0;
  for (int64_t r = 0; r < k; ++r) per_ct += 2 * row_bytes(bit_width(lay.primes[r]), n, *packed);
  const int64_t want = kCompactHeader + 8 * k + lay.ciphertexts * per_ct;
  if (len != want)
    return fail(msg, "compact payload holds %lld bytes; expected %lld", (long long)len,
                (long long)want);
  *data = kCompactHeader + 8 * k;
  return 0;
}

}  // namespace codec

int parse_payload(const uint8_t* buf, int64_t len, const CkksLayout& lay, uint64_t* out,
                  uint8_t* version, char* msg) {
  version[0] = version[1] = 0;
  msg[0] = '\0';
  if (len >= 4 && std::memcmp(buf, "BCKS", 4) == 0) return parse_compact(buf, len, lay, out, msg);
  RowSink sink{&lay, out, version};
  return walk_proto(buf, len, lay, msg, parse_ciphertext, &sink);
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
  for (int64_t c = 0; c < lay.ciphertexts; ++c)
    packed += varint_len(static_cast<uint64_t>(lay.sizes[c]));
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
  for (int64_t c = 0; c < lay.ciphertexts; ++c)
    packed += varint_len(static_cast<uint64_t>(lay.sizes[c]));
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
