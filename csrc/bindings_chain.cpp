// Keccak-256 and the batch recovery of EIP-712 signers (libsecp256k1 opened at run time from
// the shared object Python names). See bindings.cpp.
#include "bindings_util.h"

#include "eip712_recover.h"
#include "keccak.h"

namespace bcfl::bind {

void bind_chain(py::module_& m) {
  // ---- eip712_recover ----
  m.def("keccak256", [](py::handle data_) {
    const Bytes data(data_, "keccak256: data");
    char out[32];
    bcfl::keccak256(data.span.as<const uint8_t>(), static_cast<size_t>(data.span.nbytes),
                    reinterpret_cast<uint8_t*>(out));
    return py::bytes(out, 32);
  });
  // secp256k1_load(path) -> "" or why libsecp256k1 cannot be used from that shared object.
  m.def("secp256k1_load", [](const std::string& path) { return bcfl::secp256k1_load(path); });
  // eip712_recover(head [96], domain [32], records [n * 105], threads) -> bytes [n * 21]: per
  // record (digest | weight u64 big-endian | r s v) a status and the recovered address;
  // threads <= 0: OpenMP's default.
  m.def("eip712_recover", [](py::handle head_, py::handle domain_, py::handle records_, int threads) {
    const Bytes head(head_, "eip712_recover: head"), domain(domain_, "eip712_recover: domain");
    const Bytes rec(records_, "eip712_recover: records");
    if (head.span.nbytes != 96 || domain.span.nbytes != 32)
      invalid("eip712_recover: head must be 96 bytes and domain 32");
    if (rec.span.nbytes % bcfl::kRecoverIn)
      invalid("eip712_recover: records must be a multiple of " + std::to_string(bcfl::kRecoverIn) + " bytes");
    if (!bcfl::secp256k1_ready()) invalid("eip712_recover: call secp256k1_load(path) first");
    const int64_t n = static_cast<int64_t>(rec.span.nbytes / bcfl::kRecoverIn);
    std::string out(static_cast<size_t>(n * bcfl::kRecoverOut), '\0');
    {
      py::gil_scoped_release release;
      bcfl::eip712_recover(head.span.as<const uint8_t>(), domain.span.as<const uint8_t>(),
                           rec.span.as<const uint8_t>(), n, threads, reinterpret_cast<uint8_t*>(&out[0]));
    }
    return py::bytes(out);
  });
}

}  // namespace bcfl::bind
