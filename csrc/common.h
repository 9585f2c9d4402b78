// Shared helpers of the C++ kernels: storage-dtype loads and the OpenMP column partition.
// No pybind11 here: bindings.cpp is the only file that sees Python.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace bcfl {

// Storage dtypes of an update buffer; bindings.cpp maps torch dtypes to these codes.
enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };

inline float load(const float* p, std::size_t i) { return p[i]; }

struct Half { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

inline float load(const BFloat16* p, std::size_t i) {
  // bfloat16 is the top half of a float32: a shift, which the compiler vectorizes.
  uint32_t u = static_cast<uint32_t>(p[i].bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float load(const Half* p, std::size_t i) {
  _Float16 h;
  std::memcpy(&h, &p[i].bits, sizeof h);
  return static_cast<float>(h);  // one vcvtph2ps per 8 lanes with F16C (-march=native)
}

// Asks for the cache lines of [p, p + count) ahead of use: for rows read a slice at a time,
// each slice in another page, which the hardware prefetcher does not follow.
template <typename T>
inline void prefetch(const T* p, int64_t count) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t b = 0; b < count * static_cast<int64_t>(sizeof(T)); b += 64) __builtin_prefetch(c + b);
}

// Calls f(ptr) with the buffer cast to its storage type.
template <typename F>
inline void with_dtype(int dtype, const void* data, F&& f) {
  switch (dtype) {
    case kF16: f(static_cast<const Half*>(data)); break;
    case kBF16: f(static_cast<const BFloat16*>(data)); break;
    default: f(static_cast<const float*>(data)); break;
  }
}

}  // namespace bcfl
