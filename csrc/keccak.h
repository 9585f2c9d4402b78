// Keccak-256 (Ethereum's hash: the original Keccak padding, not NIST SHA3-256's).
#pragma once

#include <cstddef>
#include <cstdint>

namespace bcfl {

// out[32] = Keccak-256(data[0, n)).
void keccak256(const std::uint8_t* data, std::size_t n, std::uint8_t* out);

}  // namespace bcfl
