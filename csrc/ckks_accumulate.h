// The fused CKKS aggregate: clients' payloads (compact, bit-packed or not, or TenSEAL
// CKKSVectorProto with SEAL bodies stored, zlib or zstd) decoded straight into the running
// modular weighted sum, validated on the way: no [n, C, 2, K, N] batch is ever written.
#pragma once

#include <cstdint>

#include "seal_codec.h"

namespace bcfl {

// acc[c, p, k, j] += sum_i w[i, k] * x_i[c, p, k, j]  (mod primes[k]) over n payloads, where
// x_i is payload i's residues (exactly what parse_payload would write). w [n, K] is null (all
// ones) or each weight reduced mod its prime, with wshoup [n, K] = floor(w * 2^64 / q). acc
// [C, 2, K, N] holds residues below their primes (zeros to start).
// Returns -1, or the index of the first payload parse_payload rejects: msg[kMsgLen] then holds
// its message and acc is garbage. versions[2 * i] gets each payload's SEAL version ({0, 0} for
// compact). Never reads outside a payload.
int64_t accumulate_payloads(int64_t n, const uint64_t* bufs, const int64_t* lens,
                            const CkksLayout& lay, const uint64_t* w, const uint64_t* wshoup,
                            uint64_t* acc, uint8_t* versions, char* msg);

}  // namespace bcfl
