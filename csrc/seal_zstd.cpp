// zstd reached without its headers (see seal_zstd.h): the function table and the one-frame
// decoder the codec uses for SEAL bodies. Compiled standalone by tests/test_he_fuzz.py.
#include "seal_zstd.h"

#include <cstdio>
#include <cstdlib>
#include <type_traits>

#include "seal_format.h"
#ifdef BCFL_HAVE_ZSTD
#include <zstd.h>
#else
#include <dlfcn.h>
#endif

namespace bcfl {
namespace zstd {

namespace {

#ifdef BCFL_HAVE_ZSTD
// Our declarations are the header's: a mismatch fails this build, not a run.
using Real = Signatures<ZSTD_DCtx>;
static_assert(std::is_same<decltype(&ZSTD_createDCtx), Real::CreateDCtx>::value, "");
static_assert(std::is_same<decltype(&ZSTD_freeDCtx), Real::FreeDCtx>::value, "");
static_assert(std::is_same<decltype(&ZSTD_decompressDCtx), Real::DecompressDCtx>::value, "");
static_assert(std::is_same<decltype(&ZSTD_findFrameCompressedSize),
                           Real::FindFrameCompressedSize>::value, "");
static_assert(std::is_same<decltype(&ZSTD_getFrameContentSize), Real::GetFrameContentSize>::value,
              "");
static_assert(std::is_same<decltype(&ZSTD_isError), Real::IsError>::value, "");
static_assert(std::is_same<decltype(&ZSTD_getErrorName), Real::GetErrorName>::value, "");
static_assert(ZSTD_MAGICNUMBER == kMagic, "");
static_assert(ZSTD_CONTENTSIZE_UNKNOWN == kContentSizeUnknown, "");
static_assert(ZSTD_CONTENTSIZE_ERROR == kContentSizeError, "");

Api load() {
  Api a;
  a.source = kLinked;
  a.create_dctx = reinterpret_cast<Fn::CreateDCtx>(&ZSTD_createDCtx);
  a.free_dctx = reinterpret_cast<Fn::FreeDCtx>(&ZSTD_freeDCtx);
  a.decompress_dctx = reinterpret_cast<Fn::DecompressDCtx>(&ZSTD_decompressDCtx);
  a.find_frame_compressed_size = &ZSTD_findFrameCompressedSize;
  a.get_frame_content_size = &ZSTD_getFrameContentSize;
  a.is_error = &ZSTD_isError;
  a.get_error_name = &ZSTD_getErrorName;
  return a;
}
#else
#ifdef __APPLE__
constexpr const char* kLibrary = "libzstd.1.dylib";
#else
constexpr const char* kLibrary = "libzstd.so.1";  // the soname: present without libzstd-dev
#endif

char detail[512];  // written once, by load()

template <typename F>
bool sym(void* lib, const char* file, const char* name, F& out) {
  out = reinterpret_cast<F>(dlsym(lib, name));
  if (!out) std::snprintf(detail, sizeof detail, "%s has no %s (too old a zstd?)", file, name);
  return out != nullptr;
}

Api load() {
  Api a;
  a.detail = detail;
  const char* env = std::getenv("BCFL_ZSTD_LIBRARY");
  const char* name = env && *env ? env : kLibrary;
  // RTLD_LOCAL: its symbols stay out of the process's namespace; never closed (thread-local
  // contexts free themselves through it at thread exit).
  void* lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    const char* why = dlerror();
    std::snprintf(detail, sizeof detail, "cannot load %s: %s", name, why ? why : "unknown error");
    return a;
  }
  Api f;
  if (!sym(lib, name, "ZSTD_createDCtx", f.create_dctx) ||
      !sym(lib, name, "ZSTD_freeDCtx", f.free_dctx) ||
      !sym(lib, name, "ZSTD_decompressDCtx", f.decompress_dctx) ||
      !sym(lib, name, "ZSTD_findFrameCompressedSize", f.find_frame_compressed_size) ||
      !sym(lib, name, "ZSTD_getFrameContentSize", f.get_frame_content_size) ||
      !sym(lib, name, "ZSTD_isError", f.is_error) ||
      !sym(lib, name, "ZSTD_getErrorName", f.get_error_name))
    return a;
  Dl_info where;
  const bool found = dladdr(reinterpret_cast<void*>(f.create_dctx), &where) && where.dli_fname;
  std::snprintf(detail, sizeof detail, "%s", found ? where.dli_fname : name);
  f.source = kRuntime;
  f.detail = detail;
  return f;
}
#endif

}  // namespace

const Api& api() {
  static const Api a = load();  // thread-safe one-time initialisation (C++11)
  return a;
}

int decompress_frame(const uint8_t* src, int64_t len, uint8_t* dst, int64_t size, char* msg) {
  const Api& z = api();
  if (z.source == kNone)
    return codec::fail(msg, "zstd-compressed SEAL body, but no zstd library (%s)", z.detail);
  // The frame header first: what it declares is checked before anything is decoded (a decoder
  // that trusts Frame_Content_Size allocates it: 1 TiB from a 20-byte frame). SEAL always
  // declares it; the Python codec (bcfl_engine/he/seal.py) refuses the same frames.
  if (len < 4 || codec::rd<uint32_t>(src) != kMagic)
    return codec::fail(msg, "SEAL body is not a zstd frame (bad magic number)");
  const auto src_len = static_cast<size_t>(len);
  const unsigned long long declared = z.get_frame_content_size(src, src_len);
  if (declared == kContentSizeError) return codec::fail(msg, "zstd frame header invalid");
  if (declared == kContentSizeUnknown)
    return codec::fail(msg, "zstd frame does not declare its content size (SEAL's always do)");
  if (declared != static_cast<unsigned long long>(size))
    return codec::fail(msg, "zstd frame declares a content size of %llu bytes; expected %lld",
                       declared, static_cast<long long>(size));
  // Exactly one frame, spanning the whole body: ZSTD_decompressDCtx alone would also accept
  // several concatenated frames.
  const size_t frame = z.find_frame_compressed_size(src, src_len);
  if (z.is_error(frame)) return codec::fail(msg, "zstd body corrupt: %s", z.get_error_name(frame));
  if (frame != src_len)
    return codec::fail(msg, "%lld trailing bytes after the zstd frame",
                       static_cast<long long>(src_len - frame));
  // One decompression context per thread: creating one costs ~100 KB of allocation. One frame
  // decoded in one call straight into dst: streaming through two output parts (prefix, then
  // residues) went through zstd's window buffer, an extra copy of every byte.
  thread_local struct Ctx {
    DCtx* p = api().create_dctx();
    ~Ctx() {
      if (p) api().free_dctx(p);
    }
  } ctx;
  if (!ctx.p) return codec::fail(msg, "zstd init failed");
  const size_t r = z.decompress_dctx(ctx.p, dst, static_cast<size_t>(size), src, frame);
  if (z.is_error(r))
    return codec::fail(msg, "zstd body corrupt or longer than expected: %s", z.get_error_name(r));
  if (r != static_cast<size_t>(size)) return codec::fail(msg, "zstd body shorter than expected");
  return 0;
}

}  // namespace zstd
}  // namespace bcfl
