#pragma once
#include <cstdint>

namespace bcfl {
// Keyed BLAKE3 of a message of at most 64 bytes (one chunk of one block: the root node), read
// as an extendable output: the 64-byte output blocks [first, first + count) of
// blake3(message, key=key).digest(length=...) (the reference implementation's bytes; output
// block t is the root compression with counter t), into out [64 * count], count a multiple of
// kXofLanes (16 blocks at a time, one per vector lane).
constexpr int kXofLanes = 16;
void blake3_keyed_xof(const uint8_t key[32], const uint8_t* message, int message_len,
                      uint64_t first, int64_t count, uint8_t* out);
}  // namespace bcfl
