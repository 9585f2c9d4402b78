// zstd for SEAL's compressed ciphertext bodies, without needing zstd's headers at build time.
//
// TenSEAL compresses with zstd by default, so a codec without zstd rejects every stock payload.
// A fresh machine has the runtime library (libzstd.so.1: systemd, apt and dpkg depend on it) but
// rarely its headers (libzstd-dev). So the codec declares the seven functions it calls (all in
// zstd.h's stable section) and reaches them one of two ways:
//   - built with BCFL_HAVE_ZSTD (setup.py found zstd.h): linked, and each declaration below is
//     checked against the header's at compile time;
//   - otherwise: libzstd.so.1 opened at run time with dlopen (BCFL_ZSTD_LIBRARY names another
//     file). dlopen rather than linking by soname: a missing library then costs zstd only, not
//     the whole extension, and the Python layer decodes zstd bodies instead (zstandard).
// No pybind11 here, no exceptions out.
#pragma once

#include <cstddef>
#include <cstdint>

namespace bcfl {
namespace zstd {

// zstd.h's declarations, as function-pointer types over the context type (checked against the
// header's own when it is there: seal_zstd.cpp).
template <typename Ctx>
struct Signatures {
  using CreateDCtx = Ctx* (*)();
  using FreeDCtx = size_t (*)(Ctx*);
  using DecompressDCtx = size_t (*)(Ctx*, void* dst, size_t cap, const void* src, size_t len);
  using FindFrameCompressedSize = size_t (*)(const void* src, size_t len);
  using GetFrameContentSize = unsigned long long (*)(const void* src, size_t len);
  using IsError = unsigned (*)(size_t code);
  using GetErrorName = const char* (*)(size_t code);
};
struct DCtx;  // ZSTD_DCtx: opaque
using Fn = Signatures<DCtx>;

constexpr uint32_t kMagic = 0xFD2FB528;                       // ZSTD_MAGICNUMBER
constexpr unsigned long long kContentSizeUnknown = 0ULL - 1;  // ZSTD_CONTENTSIZE_UNKNOWN
constexpr unsigned long long kContentSizeError = 0ULL - 2;    // ZSTD_CONTENTSIZE_ERROR

// Where the functions come from.
enum Source : int { kNone = 0, kLinked = 1, kRuntime = 2 };

struct Api {
  Source source = kNone;
  const char* detail = "";  // kLinked: "", kRuntime: the library's path, kNone: why not
  Fn::CreateDCtx create_dctx = nullptr;
  Fn::FreeDCtx free_dctx = nullptr;
  Fn::DecompressDCtx decompress_dctx = nullptr;
  Fn::FindFrameCompressedSize find_frame_compressed_size = nullptr;
  Fn::GetFrameContentSize get_frame_content_size = nullptr;
  Fn::IsError is_error = nullptr;
  Fn::GetErrorName get_error_name = nullptr;
};

// The functions, resolved once (thread-safe); source == kNone when there is no library.
const Api& api();

// Exactly one zstd frame spanning [src, src + len), declaring a content size of exactly `size`,
// decoded into [dst, dst + size) and filling it. Checks the frame header
// before decoding anything; allocates nothing but a per-thread context. 0 on success, else 1
// with a message in msg[kMsgLen] (also when there is no library: api().source == kNone).
int decompress_frame(const uint8_t* src, int64_t len, uint8_t* dst, int64_t size, char* msg);

}  // namespace zstd
}  // namespace bcfl
