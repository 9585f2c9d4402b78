// Many EIP-712 payload signatures checked at once: each signer's address recovered with
// libsecp256k1, on all cores, without the GIL.
#pragma once

#include <cstdint>
#include <string>

namespace bcfl {

// One record in: digest[32] | weight (uint64, big-endian)[8] | signature r|s|v [65].
constexpr int kRecoverIn = 32 + 8 + 65;
// One result out: status[1] | address[20].
constexpr int kRecoverOut = 1 + 20;

enum RecoverStatus : std::uint8_t {
  kRecovered = 0,
  kBadV = 1,      // v not in {0, 1, 27, 28}
  kHighS = 2,     // s above n / 2 (EIP-2)
  kNoParse = 3,   // r or s out of range
  kNoKey = 4,     // no public key recovers
};

// Loads libsecp256k1's functions from the shared object `library` (once; later calls reuse
// it). Returns "" or why it cannot.
std::string secp256k1_load(const std::string& library);

// Whether secp256k1_load succeeded.
bool secp256k1_ready();

// For each of n records: message = keccak256(0x19 0x01 | domain[32] | keccak256(head[96] |
// digest | weight as a 32-byte word)); out = status and, when recovered, the 20-byte address
// keccak256(public key)[12:]. head is the struct's type hash, task and round words. threads <= 0:
// OpenMP's default.
void eip712_recover(const std::uint8_t* head, const std::uint8_t* domain, const std::uint8_t* in,
                    std::int64_t n, int threads, std::uint8_t* out);

}  // namespace bcfl
