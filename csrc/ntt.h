#pragma once
#include <cstdint>

namespace bcfl {
// Negacyclic NTT in SEAL's convention over one prime q < 2^62 (see bcfl_engine/he/ntt.py), in
// place on `rows` independent polynomials x [rows, N] (residues below q):
//   forward: Cooley-Tukey, natural order in, bit-reversed out; w [N] = psi^bitrev(i), ws its
//            Shoup constants floor(w * 2^64 / q);
//   inverse: Gentleman-Sande with w = psi^-bitrev(i), then a multiplication by ninv = N^-1
//            (ninvs its Shoup constant).
void ntt_forward(uint64_t* x, int64_t rows, int64_t N, uint64_t q, const uint64_t* w,
                 const uint64_t* ws);
void ntt_inverse(uint64_t* x, int64_t rows, int64_t N, uint64_t q, const uint64_t* w,
                 const uint64_t* ws, uint64_t ninv, uint64_t ninvs);
// Pointwise out[r, j] = a[r, j] * b[j] + c[r, j] mod q over rows a [rows, N] (c may be null:
// zero; out may alias a or c), b [N] with bs its Shoup constants; residues below q < 2^62.
void mul_add_mod(const uint64_t* a, int64_t rows, int64_t N, uint64_t q, const uint64_t* b,
                 const uint64_t* bs, const uint64_t* c, uint64_t* out);
}  // namespace bcfl
