// Symmetric Gram matrix of centred updates (the distances of Krum, Multi-Krum, Bulyan, NNM).
//
// Only tiles on or above the diagonal are computed: 3x3 tiles of rows cover 56% of the entries
// at n=64 and 51% at n=256, where a BLAS GEMM computes all of X X^T (torch has no SYRK; row
// panels of GEMMs through torch took 0.9-1.3x a full GEMM's time: small GEMMs are slow).
//
// Each thread takes blocks of kColumns columns. It centres a block into a row-major [np][256]
// float32 buffer (np = n rounded up to 3, padded rows and columns zero; float16/bfloat16
// converted here; 264 KiB at n=256, in L2), then walks the upper tiles, kPanel j rows at a
// time: the panel (24 KiB) and the tile's 3 i rows (3 KiB) stay in the 32 KiB L1. A tile
// accumulates 9 dot products: per 8 columns 6 vector loads and 9 FMAs in registers (15 of the
// 16 AVX2 registers). Each dot product keeps 8 float32 lanes per tile across blocks and goes
// into the thread's float64 matrix every kFlushColumns columns: float32 sums of 512 products
// per lane, float64 across.
//
// Measured (CPU seconds, one thread, n=64 d=1M and n=256 d=256K, against torch's full
// X X^T on MKL): 0.70-0.80x and 0.67-0.85x the GEMM's time (noisy shared machine; 0.9-1.3x for
// the GEMM panels this replaces). Block sizes 128-1024 and panels 12-96 were within that noise.
#include "_distances.h"

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#include "common.h"

namespace bcfl {

namespace {
typedef float f32x8 __attribute__((vector_size(32)));
constexpr int64_t kTile = 3;
constexpr int64_t kColumns = 256;
constexpr int64_t kPanel = 24;
// Columns summed in float32 (kFlushColumns / 8 products per lane) before the float64 matrix.
constexpr int64_t kFlushColumns = 4096;

inline f32x8 ld(const float* p) {
  f32x8 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

inline double hsum(f32x8 v) {
  // Pairwise over the 8 lanes, then float64.
  const float a = (v[0] + v[4]) + (v[2] + v[6]);
  const float b = (v[1] + v[5]) + (v[3] + v[7]);
  return static_cast<double>(a) + static_cast<double>(b);
}

// acc[0..9) += the 9 dot products (as 8-lane partial sums) of rows i0..i0+2 with rows
// j0..j0+2 of buf ([np][kc]).
inline void tile3x3(const float* buf, int64_t kc, int64_t i0, int64_t j0, f32x8* acc) {
  const float* a0 = buf + i0 * kc;
  const float* a1 = a0 + kc;
  const float* a2 = a1 + kc;
  const float* b0 = buf + j0 * kc;
  const float* b1 = b0 + kc;
  const float* b2 = b1 + kc;
  f32x8 c00 = acc[0], c01 = acc[1], c02 = acc[2], c10 = acc[3], c11 = acc[4], c12 = acc[5];
  f32x8 c20 = acc[6], c21 = acc[7], c22 = acc[8];
  for (int64_t k = 0; k < kc; k += 8) {
    f32x8 x0 = ld(a0 + k), x1 = ld(a1 + k), x2 = ld(a2 + k);
    f32x8 y0 = ld(b0 + k), y1 = ld(b1 + k), y2 = ld(b2 + k);
    // Keep all six in registers: as memory operands of the FMAs GCC loads three of them 3
    // times, 12 loads per 9 FMAs, and the 2 load ports of a Zen 3 core bind.
#if defined(__AVX__)
    // (Only where an 8-float vector fits one register: without AVX it is two.)
    asm("" : "+x"(x0), "+x"(x1), "+x"(x2), "+x"(y0), "+x"(y1), "+x"(y2));
#endif
    c00 += x0 * y0; c01 += x0 * y1; c02 += x0 * y2;
    c10 += x1 * y0; c11 += x1 * y1; c12 += x1 * y2;
    c20 += x2 * y0; c21 += x2 * y1; c22 += x2 * y2;
  }
  acc[0] = c00; acc[1] = c01; acc[2] = c02; acc[3] = c10; acc[4] = c11; acc[5] = c12;
  acc[6] = c20; acc[7] = c21; acc[8] = c22;
}

// One run of columns of every row: rows[i] points at row i's first column of the run, p at
// the pivot's; `width` columns. A contiguous [n, d] matrix is one segment; a model held as
// separate arrays per client (Flower's replies) is one segment per array.
template <typename T>
struct Segment {
  std::vector<const T*> rows;
  const float* p;
  int64_t width;
};

template <typename T>
void gram_impl(const std::vector<Segment<T>>& segs, int64_t n, double* G) {
  const int64_t np = (n + kTile - 1) / kTile * kTile;
  const int64_t tiles = np / kTile * (np / kTile + 1) / 2;
  const int64_t kc = kColumns;
  const int64_t nt = np / kTile;
  // Work items: (segment, first column) of each block of kc columns, segment after segment.
  std::vector<std::pair<int64_t, int64_t>> work;
  for (std::size_t s = 0; s < segs.size(); ++s) {
    for (int64_t j0 = 0; j0 < segs[s].width; j0 += kc) work.emplace_back(static_cast<int64_t>(s), j0);
  }
  const int64_t blocks = static_cast<int64_t>(work.size());
  std::vector<double> total(static_cast<std::size_t>(np * np), 0.0);
#pragma omp parallel
  {
    std::vector<float> buf(static_cast<std::size_t>(np * kc), 0.0f);
    std::vector<f32x8> part(static_cast<std::size_t>(tiles * 9));
    std::vector<double> acc(static_cast<std::size_t>(np * np), 0.0);
    int64_t pending = 0;
    // Lanes into the float64 matrix, then restart the float32 partial sums.
    auto flush = [&]() {
      int64_t t = 0;
      for (int64_t i0 = 0; i0 < np; i0 += kTile) {
        for (int64_t j0 = i0; j0 < np; j0 += kTile, ++t) {
          for (int64_t e = 0; e < 9; ++e) {
            acc[(i0 + e / 3) * np + j0 + e % 3] += hsum(part[t * 9 + e]);
            part[t * 9 + e] = f32x8{};
          }
        }
      }
      pending = 0;
    };
    flush();
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const Segment<T>& seg = segs[static_cast<std::size_t>(work[static_cast<std::size_t>(b)].first)];
      const int64_t j0 = work[static_cast<std::size_t>(b)].second;
      const int64_t w = std::min(seg.width, j0 + kc) - j0;
      const float* p = seg.p + j0;
      for (int64_t i = 0; i < n; ++i) {
        const T* row = seg.rows[static_cast<std::size_t>(i)] + j0;
        float* dst = buf.data() + i * kc;
#pragma omp simd
        for (int64_t k = 0; k < w; ++k) dst[k] = load(row, k) - p[k];
        for (int64_t k = w; k < kc; ++k) dst[k] = 0.0f;  // only in a segment's last block
      }
      // Panels of kPanel j rows stay in L2 while every i tile above them passes through L1.
      for (int64_t p0 = 0; p0 < np; p0 += kPanel) {
        const int64_t p1 = std::min(np, p0 + kPanel);
        for (int64_t i0 = 0; i0 < p1; i0 += kTile) {
          const int64_t ti = i0 / kTile;
          // Upper tiles are numbered row by row: tile (ti, tj) is row_start + tj.
          const int64_t row_start = ti * nt - ti * (ti - 1) / 2 - ti;
          for (int64_t jt = std::max(i0, p0); jt < p1; jt += kTile) {
            tile3x3(buf.data(), kc, i0, jt, &part[(row_start + jt / kTile) * 9]);
          }
        }
      }
      if ((pending += kc) >= kFlushColumns) flush();
    }
    flush();
#pragma omp critical
    for (int64_t e = 0; e < np * np; ++e) total[e] += acc[e];
  }
  // The upper tiles, mirrored: inside a diagonal tile both halves were computed; take the upper.
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = i; j < n; ++j) G[i * n + j] = G[j * n + i] = total[i * np + j];
  }
}
}  // namespace

void gram_centered(int dtype, const void* x, int64_t n, int64_t d, const float* p, double* G) {
  with_dtype(dtype, x, [&](auto* q) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(q)>>;
    std::vector<Segment<T>> one(1);
    one[0].p = p;
    one[0].width = d;
    for (int64_t i = 0; i < n; ++i) one[0].rows.push_back(q + i * d);
    gram_impl(one, n, G);
  });
}

void gram_centered_rows(const float* const* rows, const int64_t* widths, int64_t segments,
                        int64_t n, int64_t pivot, double* G) {
  std::vector<Segment<float>> segs(static_cast<std::size_t>(segments));
  for (int64_t s = 0; s < segments; ++s) {
    Segment<float>& seg = segs[static_cast<std::size_t>(s)];
    seg.width = widths[s];
    for (int64_t i = 0; i < n; ++i) seg.rows.push_back(rows[i * segments + s]);
    seg.p = seg.rows[static_cast<std::size_t>(pivot)];
  }
  gram_impl(segs, n, G);
}

}  // namespace bcfl
