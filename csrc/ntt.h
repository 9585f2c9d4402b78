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
}  // namespace bcfl
