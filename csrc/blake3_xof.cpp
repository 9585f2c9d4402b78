// BLAKE3 (O'Connor, Aumasson, Neves, Wilcox-O'Hearn 2020) keyed mode, only the case the DP
// noise needs: a message of at most one block, whose root node is its only chunk's only block,
// so output block t is one compression of (key, message block, counter t, ROOT flags). Sixteen
// counters in the lanes of one vector (GCC vector extensions: AVX-512 here, two AVX2 halves
// elsewhere), so the words of a block of noise come out where they are used, in any order of
// blocks, on any thread (tests: against the blake3 package, byte for byte).
#include "blake3_xof.h"

#include <cstring>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "output words stored as bytes");

namespace bcfl {

namespace {
typedef uint32_t u32v __attribute__((vector_size(4 * kXofLanes)));

constexpr uint32_t kIv[8] = {0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A,
                             0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19};
constexpr uint8_t kPermutation[16] = {2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8};
constexpr uint32_t kChunkStart = 1, kChunkEnd = 2, kRoot = 8, kKeyedHash = 16;

inline u32v rotr(u32v x, int r) { return (x >> r) | (x << (32 - r)); }

inline void g(u32v* v, int a, int b, int c, int d, uint32_t mx, uint32_t my) {
  v[a] = v[a] + v[b] + mx;
  v[d] = rotr(v[d] ^ v[a], 16);
  v[c] = v[c] + v[d];
  v[b] = rotr(v[b] ^ v[c], 12);
  v[a] = v[a] + v[b] + my;
  v[d] = rotr(v[d] ^ v[a], 8);
  v[c] = v[c] + v[d];
  v[b] = rotr(v[b] ^ v[c], 7);
}

// rows[i][l] -> rows[l][i]: four stages, stage b exchanging bit b of the row with bit b of the
// lane (two-source shuffles with constant indices into (row i, row i + s): vpermt2d on AVX-512;
// elementwise where GCC's __builtin_shuffle is missing).
#if defined(__GNUC__) && !defined(__clang__)
template <int S>
inline void stage(u32v* rows) {
  constexpr int n = kXofLanes;
  // keep_lo[l]: lane l of the new row i; keep_hi[l]: of the new row i + S.
  static const u32v lo = [] {
    u32v m{};
    for (int l = 0; l < n; ++l) m[l] = static_cast<uint32_t>((l & S) ? n + (l ^ S) : l);
    return m;
  }();
  static const u32v hi = [] {
    u32v m{};
    for (int l = 0; l < n; ++l) m[l] = static_cast<uint32_t>((l & S) ? n + l : (l | S));
    return m;
  }();
  const u32v keep_lo = lo, keep_hi = hi;
  for (int i = 0; i < 16; ++i) {
    if (i & S) continue;
    const u32v a = rows[i], c = rows[i + S];
    rows[i] = __builtin_shuffle(a, c, keep_lo);
    rows[i + S] = __builtin_shuffle(a, c, keep_hi);
  }
}
#endif

inline void transpose(u32v* rows) {
#if defined(__GNUC__) && !defined(__clang__)
  stage<1>(rows);
  stage<2>(rows);
  stage<4>(rows);
  stage<8>(rows);
#else
  uint32_t m[16][16];
  for (int i = 0; i < 16; ++i)
    for (int l = 0; l < 16; ++l) m[l][i] = rows[i][l];
  std::memcpy(rows, m, sizeof m);
#endif
}

inline uint32_t le32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}
}  // namespace

void blake3_keyed_xof(const uint8_t key[32], const uint8_t* message, int message_len,
                      uint64_t first, int64_t count, uint8_t* out) {
  uint32_t cv[8], block[16];
  for (int i = 0; i < 8; ++i) cv[i] = le32(key + 4 * i);
  uint8_t padded[64] = {};
  std::memcpy(padded, message, static_cast<size_t>(message_len));
  for (int i = 0; i < 16; ++i) block[i] = le32(padded + 4 * i);
  // Message words per round: the permutation applied r times.
  uint32_t m[7][16];
  std::memcpy(m[0], block, sizeof block);
  for (int r = 1; r < 7; ++r)
    for (int i = 0; i < 16; ++i) m[r][i] = m[r - 1][kPermutation[i]];
  const uint32_t flags = kChunkStart | kChunkEnd | kRoot | kKeyedHash;
  u32v lane;
  for (int l = 0; l < kXofLanes; ++l) lane[l] = static_cast<uint32_t>(l);
  for (int64_t b = 0; b < count; b += kXofLanes) {
    const uint64_t t0 = first + static_cast<uint64_t>(b);
    // Counters t0 + l: the low words may wrap within the batch, the high words follow.
    const uint32_t base = static_cast<uint32_t>(t0);
    const u32v lo = base + lane;
    const u32v hi = (static_cast<uint32_t>(t0 >> 32) + u32v{}) - (u32v)(lo < base);  // mask -1
    u32v v[16];
    for (int i = 0; i < 8; ++i) v[i] = u32v{} + cv[i];
    for (int i = 0; i < 4; ++i) v[8 + i] = u32v{} + kIv[i];
    v[12] = lo;
    v[13] = hi;
    v[14] = u32v{} + static_cast<uint32_t>(message_len);
    v[15] = u32v{} + flags;
    for (int r = 0; r < 7; ++r) {
      const uint32_t* w = m[r];
      g(v, 0, 4, 8, 12, w[0], w[1]);
      g(v, 1, 5, 9, 13, w[2], w[3]);
      g(v, 2, 6, 10, 14, w[4], w[5]);
      g(v, 3, 7, 11, 15, w[6], w[7]);
      g(v, 0, 5, 10, 15, w[8], w[9]);
      g(v, 1, 6, 11, 12, w[10], w[11]);
      g(v, 2, 7, 8, 13, w[12], w[13]);
      g(v, 3, 4, 9, 14, w[14], w[15]);
    }
    // Output words of each lane (block), then the 16 x 16 transpose: row l becomes block
    // first + b + l, its 64 bytes in order.
    u32v rows[16];
    for (int i = 0; i < 8; ++i) {
      rows[i] = v[i] ^ v[i + 8];
      rows[i + 8] = v[i + 8] ^ cv[i];
    }
    transpose(rows);
    std::memcpy(out + b * 64, rows, sizeof rows);
  }
}

}  // namespace bcfl
