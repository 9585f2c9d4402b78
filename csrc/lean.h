#pragma once
#include <cstdint>

namespace bcfl {
// Lean CKKS payloads (bcfl_engine/he/lean.py states the maps; these are their fast paths).
//
// lean_switch: x [C, 2, N] coefficients below the odd modulus q0 < 2^60; out [C, 2, N]:
//   y = round(2^b x / q0) mod 2^b, then for the c0 rows (index 1 of 2 is 0) the k low bits of y
//   rounded away with ties to even: t = round_half_even(y / 2^k) mod 2^(b-k). b <= 50.
void lean_switch(const uint64_t* x, int64_t C, int64_t N, uint64_t q0, int b, int k, uint64_t* out);

// lean_sum: out[j] = acc[j] + sum_i w[i] x[i, j] mod 2^b over x [n, M]; w null (all ones);
// acc null (zero) or aliasing out.
void lean_sum(const uint64_t* x, int64_t n, int64_t M, int b, const uint64_t* w, const uint64_t* acc,
              uint64_t* out);

// lean_unpack: a payload body (after its header) of C ciphertexts -> out [C, 2, N] mod 2^b:
// c0 rows read at b - k bits and shifted left by k, c1 rows at b bits. The body holds exactly
// C N (2b - k) / 8 bytes (the caller checks).
void lean_unpack(const uint8_t* body, int64_t C, int64_t N, int b, int k, uint64_t* out);

// lean_accumulate: acc [C, 2, N] = (fresh ? 0 : acc) + sum_i w[i] * unpack(body_i) mod 2^b,
// each body as in lean_unpack, w null (all ones); one pass over each payload, no buffer.
void lean_accumulate(int64_t n, const uint64_t* addrs, int64_t C, int64_t N, int b, int k,
                     const uint64_t* w, bool fresh, uint64_t* acc);

// lean_lift: out[j] = round(q0 x[j] / 2^b) mod q0 for x[j] < 2^b (exact, 128-bit products).
void lean_lift(const uint64_t* x, int64_t M, uint64_t q0, int b, uint64_t* out);

// lean_finish: each of `rows` rows x [rows, N] below 2^b lifted to q0 (lean_lift) and put in NTT
// form (ntt_forward with q0's tables w, ws): out [rows, N], the aggregate SEAL decrypts.
void lean_finish(const uint64_t* x, int64_t rows, int64_t N, uint64_t q0, int b, const uint64_t* w,
                 const uint64_t* ws, uint64_t* out);
}  // namespace bcfl
