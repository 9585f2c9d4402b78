// Internal to the CKKS codec (seal_codec.cpp, seal_inflate.cpp, ckks_accumulate.cpp): the wire
// constants, bounds-checked readers, the protobuf walk and the body decoders both the batch
// parser and the fused accumulator use. Formats: bcfl_engine/he/wire.py. No pybind11 here.
#pragma once

#include <cstdint>
#include <cstring>

#include "seal_codec.h"

namespace bcfl {
namespace codec {

constexpr uint16_t kSealMagic = 0xA15E;
constexpr int64_t kSealHeader = 16;
constexpr int64_t kMeta = 73;                         // parms_id, ntt, size, N, K, scale, cf
constexpr int64_t kPrefix = kMeta + kSealHeader + 8;  // + the residue array's header and count
constexpr int64_t kCompactHeader = 64;
constexpr int kFieldSizes = 1, kFieldCts = 2, kFieldScale = 3, kFieldD = 14, kFieldPack = 15;

int fail(char* msg, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

template <typename T>
inline T rd(const uint8_t* p) {  // unaligned little-endian load (x86 and aarch64 are LE)
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Protobuf varint; false if it runs past end or past 64 bits.
bool varint(const uint8_t*& p, const uint8_t* end, uint64_t& v);

inline int bit_width(uint64_t q) { return 64 - __builtin_clzll(q); }

// Bytes of one residue row of N residues of `bits` bits, bit-packed or as u64.
inline int64_t row_bytes(int bits, int64_t n, bool packed) { return packed ? n * bits / 8 : 8 * n; }

// Checks a SEAL object header of a ciphertext field of len bytes; version[2] gets its version.
int seal_object_header(const uint8_t* p, int64_t len, uint8_t* version, char* msg);

// The 97-byte prefix of a ciphertext body (metadata + the residue array's header) vs the layout.
int check_meta(const uint8_t* m, const CkksLayout& lay, char* msg);

// The body of one SEAL ciphertext object [p, p + len) (header already checked) decoded into
// out [kPrefix + 16 K N] bytes: stored, inflated (zlib) or decompressed (zstd, one shot), capped
// at that size; then its prefix checked. *residues points at the [2, K, N] u64 residues: into
// the payload itself when it is stored uncompressed (no copy), else at out + kPrefix.
int seal_body(const uint8_t* p, int64_t len, const CkksLayout& lay, uint8_t* out,
              const uint8_t** residues, char* msg);

// A compact payload's header and length against the layout; *data gets the offset of its
// residues, *packed whether they are bit-packed.
int compact_header(const uint8_t* buf, int64_t len, const CkksLayout& lay, int64_t* data,
                   bool* packed, char* msg);

// Residues [j0, j1) of a row of N residues of `bits` bits (row_bytes(bits, N, true) bytes) into
// dst. Never reads past the row.
void unpack_range(const uint8_t* row, int bits, int64_t n, int64_t j0, int64_t j1, uint64_t* dst);

// The CKKSVectorProto framing of [buf, buf + len) checked against the layout (sizes, scale,
// pairing, field types, no more than C ciphertexts); on_ct(ctx, c, p, n) gets each ciphertext
// field in order and may fail (nonzero stops the walk and is returned).
using CtVisitor = int (*)(void* ctx, int64_t c, const uint8_t* p, int64_t len, char* msg);
int walk_proto(const uint8_t* buf, int64_t len, const CkksLayout& lay, char* msg, CtVisitor on_ct,
               void* ctx);

}  // namespace codec
}  // namespace bcfl
