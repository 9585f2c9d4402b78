// Batch recovery of EIP-712 signers through libsecp256k1's public API, opened with dlopen from
// the shared object the caller names (the Python side passes coincurve's, which exports it):
// no build-time dependency, and the library that Python's single-signature path uses.
#include "eip712_recover.h"

#include <dlfcn.h>
#include <omp.h>

#include <cstring>
#include <mutex>

#include "keccak.h"

namespace bcfl {
namespace {

// libsecp256k1's opaque types are fixed-size byte arrays (secp256k1.h, secp256k1_recovery.h).
struct Pubkey { unsigned char data[64]; };
struct RecoverableSig { unsigned char data[65]; };
using Ctx = void;
using CreateFn = Ctx* (*)(unsigned int);
using ParseFn = int (*)(const Ctx*, RecoverableSig*, const unsigned char*, int);
using RecoverFn = int (*)(const Ctx*, Pubkey*, const RecoverableSig*, const unsigned char*);
using SerializeFn = int (*)(const Ctx*, unsigned char*, std::size_t*, const Pubkey*, unsigned int);

constexpr unsigned int kContextVerify = (1u << 0) | (1u << 8);  // SECP256K1_CONTEXT_VERIFY
constexpr unsigned int kUncompressed = 1u << 1;                 // SECP256K1_EC_UNCOMPRESSED

struct Api {
  Ctx* ctx = nullptr;
  ParseFn parse = nullptr;
  RecoverFn recover = nullptr;
  SerializeFn serialize = nullptr;
};

Api g_api;
std::mutex g_mutex;

// n / 2 of secp256k1's group order, big-endian: the largest low s.
constexpr unsigned char kHalfOrder[32] = {
    0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    0x5D, 0x57, 0x6E, 0x73, 0x57, 0xA4, 0x50, 0x1D, 0xDF, 0xE9, 0x2F, 0x46, 0x68, 0x1B, 0x20, 0xA0};

std::uint8_t recover_one(const Api& api, const std::uint8_t* head, const std::uint8_t* domain,
                         const std::uint8_t* rec, std::uint8_t* address) {
  unsigned char buf[32 * 5];
  std::memcpy(buf, head, 96);
  std::memcpy(buf + 96, rec, 32);  // digest
  std::memset(buf + 128, 0, 24);
  std::memcpy(buf + 152, rec + 32, 8);  // weight, already big-endian
  unsigned char msg[2 + 64];
  msg[0] = 0x19;
  msg[1] = 0x01;
  std::memcpy(msg + 2, domain, 32);
  keccak256(buf, 160, msg + 34);
  unsigned char hash[32];
  keccak256(msg, sizeof msg, hash);

  const std::uint8_t* sig = rec + 40;
  const unsigned v = sig[64];
  if (v != 0 && v != 1 && v != 27 && v != 28) return kBadV;
  if (std::memcmp(sig + 32, kHalfOrder, 32) > 0) return kHighS;
  RecoverableSig rs;
  if (!api.parse(api.ctx, &rs, sig, static_cast<int>(v % 27))) return kNoParse;
  Pubkey key;
  if (!api.recover(api.ctx, &key, &rs, hash)) return kNoKey;
  unsigned char full[65];
  std::size_t len = sizeof full;
  if (!api.serialize(api.ctx, full, &len, &key, kUncompressed) || len != 65) return kNoKey;
  unsigned char digest[32];
  keccak256(full + 1, 64, digest);
  std::memcpy(address, digest + 12, 20);
  return kRecovered;
}

}  // namespace

std::string secp256k1_load(const std::string& library) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_api.ctx) return "";
  void* lib = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);  // never closed: g_api points in
  if (!lib) {
    const char* why = dlerror();
    return "cannot load " + library + ": " + (why ? why : "unknown error");
  }
  Api api;
  auto create = reinterpret_cast<CreateFn>(dlsym(lib, "secp256k1_context_create"));
  api.parse = reinterpret_cast<ParseFn>(dlsym(lib, "secp256k1_ecdsa_recoverable_signature_parse_compact"));
  api.recover = reinterpret_cast<RecoverFn>(dlsym(lib, "secp256k1_ecdsa_recover"));
  api.serialize = reinterpret_cast<SerializeFn>(dlsym(lib, "secp256k1_ec_pubkey_serialize"));
  if (!create || !api.parse || !api.recover || !api.serialize)
    return library + " lacks libsecp256k1's recovery functions";
  api.ctx = create(kContextVerify);  // read-only from here on: shared by all threads
  if (!api.ctx) return "secp256k1_context_create failed";
  g_api = api;
  return "";
}

bool secp256k1_ready() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_api.ctx != nullptr;
}

void eip712_recover(const std::uint8_t* head, const std::uint8_t* domain, const std::uint8_t* in,
                    std::int64_t n, int threads, std::uint8_t* out) {
  Api api;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    api = g_api;
  }
  const int t = threads > 0 ? threads : omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(t) if (n >= 64)
  for (std::int64_t i = 0; i < n; ++i) {
    std::uint8_t* res = out + i * kRecoverOut;
    std::memset(res, 0, kRecoverOut);
    res[0] = recover_one(api, head, domain, in + i * kRecoverIn, res + 1);
  }
}

}  // namespace bcfl
