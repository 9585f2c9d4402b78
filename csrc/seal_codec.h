// SEAL ciphertext codec: TenSEAL CKKSVectorProto and bcfl_engine's compact payloads parsed
// straight into a row of an int64 [n, C, 2, K, N] buffer, validated; and the way back to bytes
// TenSEAL loads. The formats are documented in bcfl_engine/he/wire.py (the Python reference).
// No pybind11 here, no exceptions out: every parse returns a code and a message.
#pragma once

#include <cstddef>
#include <cstdint>

namespace bcfl {

// What every payload of one batch shares; arrays are owned by the caller.
struct CkksLayout {
  int64_t poly_degree;       // N, a power of two
  int64_t residues;          // K primes at the batch's level
  int64_t ciphertexts;       // C per payload
  int64_t d;                 // reals per payload
  int32_t pair;              // 1: two reals per complex slot
  double scale;              // every ciphertext's scale (bit-exact)
  const uint64_t* primes;    // [K]
  const uint64_t* parms_id;  // [4]
  const int64_t* sizes;      // [C] slots used per ciphertext (TenSEAL's `sizes`)
};

constexpr int kMsgLen = 200;  // bytes of an error message, NUL included

// Parses one payload (TenSEAL CKKSVectorProto, SEAL compression none/zlib/zstd, or compact)
// into out [C, 2, K, N]. Returns 0 on success; else nonzero with a message in msg[kMsgLen].
// version[2] receives the SEAL version of a TenSEAL payload ({0, 0} for compact). Never reads
// outside [buf, buf + len) nor writes outside out; out is garbage after a failure.
int parse_payload(const uint8_t* buf, int64_t len, const CkksLayout& lay, uint64_t* out,
                  uint8_t* version, char* msg);

// parse_payload over n payloads into consecutive rows of out, in parallel (OpenMP).
// codes[i] and msgs[i * kMsgLen] receive each payload's result; versions[2 * i] its version.
void parse_payloads(int64_t n, const uint64_t* bufs, const int64_t* lens, const CkksLayout& lay,
                    uint64_t* out, int32_t* codes, uint8_t* versions, char* msgs);

// Bytes of the CKKSVectorProto write_proto writes for this layout (uncompressed SEAL bodies).
int64_t proto_size(const CkksLayout& lay);

// data [C, 2, K, N] -> CKKSVectorProto bytes TenSEAL loads, SEAL version major.minor, at
// `scale` (the aggregate's scale may differ from the layout's). out holds proto_size bytes.
void write_proto(const uint64_t* data, const CkksLayout& lay, double scale, int major, int minor,
                 uint8_t* out);

}  // namespace bcfl
