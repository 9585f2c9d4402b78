// Thin wrappers from Python to the C++ kernels, in three files: the rules' kernels here (and the
// module itself), the CKKS and NTT ones in bindings_he.cpp, Keccak and signature recovery in
// bindings_chain.cpp; bindings_util.h holds the checks they share. Python owns every buffer;
// each call releases the GIL around the kernel. Kernel authors: add one block per op, named
// after its file stem, in the file of its family.
//
// The rules' kernels take torch tensors and check them here, before any pointer is used: a CPU
// tensor, of the dtype and shape the kernel reads, contiguous, outputs in writable memory that
// does not overlap an input (clip_rows alone may write over its input, float32 in place). A
// failed check raises bcfl_engine.errors.InvalidArgument; nothing has been read or written.
// The CKKS and chain bindings check the same way (their files say how).
#include "bindings_util.h"

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "mean.h"
#include "median.h"
#include "trimmed_mean.h"
#include "geometric_median.h"
#include "clip.h"
#include "multi_krum.h"
#include "_distances.h"
#include "bulyan.h"
#include "blake3_xof.h"
#include "dp.h"

using namespace bcfl::bind;  // NOLINT: the checks every block below uses

namespace bcfl::bind {
void bind_he(py::module_& m);
void bind_chain(py::module_& m);
}  // namespace bcfl::bind

namespace {
// A keyed BLAKE3 draw's key (32 bytes) and message (at most 64 bytes), checked.
bcfl::NoiseKey noise_key(py::handle key_, py::handle message_, const std::string& who) {
  const Bytes key(key_, (who + ": key").c_str()), message(message_, (who + ": message").c_str());
  if (key.span.nbytes != 32) invalid(who + ": key must be 32 bytes");
  if (message.span.nbytes > 64) invalid(who + ": message must be at most 64 bytes");
  bcfl::NoiseKey noise{};
  std::memcpy(noise.key, key.span.as<const void>(), 32);
  std::memcpy(noise.message, message.span.as<const void>(), static_cast<size_t>(message.span.nbytes));
  noise.message_len = static_cast<int>(message.span.nbytes);
  return noise;
}
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "bcfl_engine native kernels (C++17, OpenMP)";

  // ---- mean ----
  m.def("weighted_mean", [](py::handle x_, py::handle w_, py::handle out_) {
    const View x = storage(x_, "weighted_mean: x", {-1, -1});
    const int64_t n = x.dim(0), d = x.dim(1);
    const View w = view(w_, "weighted_mean: w", {kF32}, {n});
    const View out = view(out_, "weighted_mean: out", {kF32}, {d}, true);
    no_overlap(out, "weighted_mean: out", {&x, &w});
    py::gil_scoped_release release;
    bcfl::weighted_mean(x.code, x.as<const void>(), n, d, w.as<const float>(), out.as<float>());
  });

  // Flower's FedAvg (numpy's float32 arithmetic) over rows held in pieces; see mean.h.
  m.def("weighted_sum_rows", [](py::handle rows_, py::handle widths_, py::handle s_,
                                py::handle out_, bool parallel) {
    const Pieces p = pieces(rows_, widths_, "weighted_sum_rows");
    const View s = view(s_, "weighted_sum_rows: shares", {kF32}, {p.n});
    const View out = view(out_, "weighted_sum_rows: out", {kF32}, {p.d}, true);
    no_overlap(out, "weighted_sum_rows: out", p.held);
    no_overlap(out, "weighted_sum_rows: out", {&s});
    py::gil_scoped_release release;
    bcfl::weighted_sum_rows(p.ptrs.data(), p.widths.data(), static_cast<int64_t>(p.widths.size()),
                            p.n, s.as<const float>(), out.as<float>(), parallel);
  });

  // ---- geometric_median ----
  // Also the step of centered clipping. v_in and dist2 may be None.
  m.def("combine_distances", [](py::handle x_, py::handle coef_, float beta, py::handle v_in_,
                                py::handle v_out_, py::handle dist2_) {
    const View x = storage(x_, "combine_distances: x", {-1, -1});
    const int64_t n = x.dim(0), d = x.dim(1);
    const View coef = view(coef_, "combine_distances: coef", {kF32}, {n});
    const View v_in = none(v_in_) ? View{} : view(v_in_, "combine_distances: v_in", {kF32}, {d});
    const View v_out = view(v_out_, "combine_distances: v_out", {kF32}, {d}, true);
    const View dist2 = none(dist2_) ? View{} : view(dist2_, "combine_distances: dist2", {kF64}, {n}, true);
    no_overlap(v_out, "combine_distances: v_out", {&x, &coef, &v_in, &dist2});
    no_overlap(dist2, "combine_distances: dist2", {&x, &coef, &v_in});
    py::gil_scoped_release release;
    bcfl::combine_distances(x.code, x.as<const void>(), n, d, coef.as<const float>(), beta,
                            v_in.as<const float>(), v_out.as<float>(), dist2.as<double>());
  });

  // ---- clip ----
  // out may be x itself (float32: clip in place); norms may be None.
  m.def("clip_rows", [](py::handle x_, double max_norm, py::handle out_, py::handle norms_) {
    const View x = storage(x_, "clip_rows: x", {-1, -1});
    const int64_t n = x.dim(0), d = x.dim(1);
    const View out = view(out_, "clip_rows: out", {kF32}, {n, d}, true);
    const View norms = none(norms_) ? View{} : view(norms_, "clip_rows: norms", {kF64}, {n}, true);
    if (!(max_norm > 0.0)) invalid("clip_rows: max_norm must be > 0; got " + std::to_string(max_norm));
    if (out.data != x.data || x.code != kF32) no_overlap(out, "clip_rows: out", {&x});
    no_overlap(norms, "clip_rows: norms", {&x, &out});
    py::gil_scoped_release release;
    bcfl::clip_rows(x.code, x.as<const void>(), n, d, max_norm, out.as<float>(), norms.as<double>());
  });

  // ---- dp ----
  // The mean of clipped rows (see dp.h). norms [n] float64: the rows' norms, written here, or
  // read when norms_known (the caller's, taken at intake). key: None, or the 32-byte key of a
  // keyed BLAKE3 draw and message (at most 64 bytes): the noise of std added in out's final
  // write; or normals: None, or that draw's normals [d] float64 made beforehand.
  m.def("clipped_mean", [](py::handle x_, py::handle w_, double max_norm, py::handle norms_,
                           bool norms_known, py::handle out_, py::handle key_,
                           py::handle message_, double std, py::handle normals_) {
    const View x = storage(x_, "clipped_mean: x", {-1, -1});
    const int64_t n = x.dim(0), d = x.dim(1);
    const View w = view(w_, "clipped_mean: w", {kF64}, {n});
    const View norms = view(norms_, "clipped_mean: norms", {kF64}, {n}, !norms_known);
    const View out = view(out_, "clipped_mean: out", {kF32}, {d}, true);
    const bcfl::NoiseKey noise = none(key_) ? bcfl::NoiseKey{} : noise_key(key_, message_, "clipped_mean");
    View normals;
    if (!none(normals_)) {
      if (!none(key_)) invalid("clipped_mean: a key or normals, not both");
      normals = view(normals_, "clipped_mean: normals", {kF64}, {d});
    }
    if (!(max_norm > 0.0)) invalid("clipped_mean: max_norm must be > 0; got " + std::to_string(max_norm));
    if (!(std >= 0.0) || !std::isfinite(std)) invalid("clipped_mean: std must be finite and >= 0");
    no_overlap(out, "clipped_mean: out", {&x, &w, &norms, &normals});
    if (!norms_known) no_overlap(norms, "clipped_mean: norms", {&x, &w});
    py::gil_scoped_release release;
    bcfl::clipped_mean(x.code, x.as<const void>(), n, d, w.as<const double>(), max_norm,
                       norms.as<double>(), norms_known, out.as<float>(),
                       none(key_) ? nullptr : &noise,
                       none(normals_) ? nullptr : normals.as<const double>(), std);
  });
  // gaussian_normals(key [32], message [<= 64], z [d] float64): the draw's normals (dp.h).
  m.def("gaussian_normals", [](py::handle key_, py::handle message_, py::handle z_) {
    const bcfl::NoiseKey key = noise_key(key_, message_, "gaussian_normals");
    const View z = view(z_, "gaussian_normals: z", {kF64}, {-1}, true);
    py::gil_scoped_release release;
    bcfl::gaussian_normals(key, z.dim(0), z.as<double>());
  });
  // row_norms(x [n, d], norms [n] float64): the rows' norms, the bits clipped_mean computes.
  m.def("row_norms", [](py::handle x_, py::handle norms_) {
    const View x = storage(x_, "row_norms: x", {-1, -1});
    const View norms = view(norms_, "row_norms: norms", {kF64}, {x.dim(0)}, true);
    no_overlap(norms, "row_norms: norms", {&x});
    py::gil_scoped_release release;
    bcfl::row_norms(x.code, x.as<const void>(), x.dim(0), x.dim(1), norms.as<double>());
  });
  // blake3_xof(key [32], message [<= 64], first, count) -> bytes [64 * count]: output blocks
  // [first, first + count) of keyed BLAKE3 (the noise's words, made by the kernel; for tests).
  m.def("blake3_xof", [](py::handle key_, py::handle message_, uint64_t first, int64_t count) {
    const Bytes key(key_, "blake3_xof: key"), message(message_, "blake3_xof: message");
    if (key.span.nbytes != 32 || message.span.nbytes > 64 || count < 0)
      invalid("blake3_xof: a 32-byte key, a message of at most 64 bytes, count >= 0");
    const int64_t batches = (count + bcfl::kXofLanes - 1) / bcfl::kXofLanes;
    std::string out(static_cast<size_t>(64 * batches * bcfl::kXofLanes), '\0');
    {
      py::gil_scoped_release release;
      bcfl::blake3_keyed_xof(key.span.as<const uint8_t>(), message.span.as<const uint8_t>(),
                             static_cast<int>(message.span.nbytes), first,
                             batches * bcfl::kXofLanes, reinterpret_cast<uint8_t*>(out.data()));
    }
    out.resize(static_cast<size_t>(64 * count));
    return py::bytes(out);
  });

  // Gaussian noise added into out (float32 [d]) from words (uint64 [3 * ceil(d / 2)]).
  m.def("add_gaussian", [](py::handle words_, double std, py::handle out_) {
    const View out = view(out_, "add_gaussian: out", {kF32}, {-1}, true);
    const int64_t d = out.dim(0);
    const View words = view(words_, "add_gaussian: words", {kU64}, {3 * ((d + 1) / 2)});
    if (!(std >= 0.0) || !std::isfinite(std)) invalid("add_gaussian: std must be finite and >= 0");
    no_overlap(out, "add_gaussian: out", {&words});
    py::gil_scoped_release release;
    bcfl::add_gaussian(words.as<const uint64_t>(), d, std, out.as<float>());
  });

  // ---- median ----
  // Both order-statistic kernels return whether every value of x was finite.
  m.def("median", [](py::handle x_, py::handle out_) {
    const View x = storage(x_, "median: x", {-1, -1});
    const View out = view(out_, "median: out", {kF32}, {x.dim(1)}, true);
    no_overlap(out, "median: out", {&x});
    py::gil_scoped_release release;
    return bcfl::median(x.code, x.as<const void>(), x.dim(0), x.dim(1), out.as<float>());
  });

  // ---- trimmed_mean ----
  m.def("trimmed_mean", [](py::handle x_, int64_t f, py::handle out_) {
    const View x = storage(x_, "trimmed_mean: x", {-1, -1});
    const View out = view(out_, "trimmed_mean: out", {kF32}, {x.dim(1)}, true);
    if (f < 0 || 2 * f >= x.dim(0))
      invalid("trimmed_mean: needs 0 <= f and 2f < n=" + std::to_string(x.dim(0)) + "; got f=" + std::to_string(f));
    no_overlap(out, "trimmed_mean: out", {&x});
    py::gil_scoped_release release;
    return bcfl::trimmed_mean(x.code, x.as<const void>(), x.dim(0), x.dim(1), f, out.as<float>());
  });

  // ---- _distances ----
  // The centred Gram matrix of krum, multi_krum, bulyan and nnm: G [n, n] float64, written whole.
  m.def("gram_centered", [](py::handle x_, py::handle p_, py::handle G_) {
    const View x = storage(x_, "gram_centered: x", {-1, -1});
    const int64_t n = x.dim(0), d = x.dim(1);
    const View p = view(p_, "gram_centered: p", {kF32}, {d});
    const View G = view(G_, "gram_centered: G", {kF64}, {n, n}, true);
    no_overlap(G, "gram_centered: G", {&x, &p});
    py::gil_scoped_release release;
    bcfl::gram_centered(x.code, x.as<const void>(), n, d, p.as<const float>(), G.as<double>());
  });

  // The same Gram over float32 rows held in pieces, centred on row `pivot`; see _distances.h.
  m.def("gram_centered_rows", [](py::handle rows_, py::handle widths_, int64_t pivot,
                                 py::handle G_) {
    const Pieces p = pieces(rows_, widths_, "gram_centered_rows");
    if (pivot < 0 || pivot >= p.n)
      invalid("gram_centered_rows: pivot " + std::to_string(pivot) + " out of [0, " +
              std::to_string(p.n) + ")");
    const View G = view(G_, "gram_centered_rows: G", {kF64}, {p.n, p.n}, true);
    no_overlap(G, "gram_centered_rows: G", p.held);
    py::gil_scoped_release release;
    bcfl::gram_centered_rows(p.ptrs.data(), p.widths.data(), static_cast<int64_t>(p.widths.size()),
                             p.n, pivot, G.as<double>());
  });

  // ---- multi_krum ----
  // Also the second pass of krum: the mean of the m >= 1 selected rows idx (int64).
  m.def("select_mean", [](py::handle x_, py::handle idx_, py::handle out_) {
    const View x = storage(x_, "select_mean: x", {-1, -1});
    const View idx = view(idx_, "select_mean: idx", {kI64}, {-1});
    const View out = view(out_, "select_mean: out", {kF32}, {x.dim(1)}, true);
    if (idx.dim(0) < 1) invalid("select_mean: idx must hold at least one row");
    check_rows(idx, x.dim(0), "select_mean: idx");
    no_overlap(out, "select_mean: out", {&x, &idx});
    py::gil_scoped_release release;
    bcfl::select_mean(x.code, x.as<const void>(), x.dim(1), idx.as<const int64_t>(), idx.dim(0),
                      out.as<float>());
  });

  // ---- bulyan ----
  m.def("bulyan_select", [](py::handle dist_, int64_t f, py::handle chosen_) {
    const View dist = view(dist_, "bulyan_select: dist", {kF64}, {-1, -1});
    const int64_t n = dist.dim(0);
    if (dist.dim(1) != n) invalid("bulyan_select: dist must be square; got [" + std::to_string(n) + ", " + std::to_string(dist.dim(1)) + "]");
    const View chosen = view(chosen_, "bulyan_select: chosen", {kI64}, {-1}, true);
    const int64_t theta = chosen.dim(0);
    if (f < 0 || theta < 1 || theta > n)
      invalid("bulyan_select: needs f >= 0 and 1 <= theta <= n=" + std::to_string(n) + "; got f=" +
              std::to_string(f) + ", theta=" + std::to_string(theta));
    no_overlap(chosen, "bulyan_select: chosen", {&dist});
    py::gil_scoped_release release;
    bcfl::bulyan_select(dist.as<const double>(), n, f, theta, chosen.as<int64_t>());
  });
  m.def("bulyan_coordinates", [](py::handle x_, py::handle idx_, int64_t beta, py::handle out_) {
    const View x = storage(x_, "bulyan_coordinates: x", {-1, -1});
    const View idx = view(idx_, "bulyan_coordinates: idx", {kI64}, {-1});
    const View out = view(out_, "bulyan_coordinates: out", {kF32}, {x.dim(1)}, true);
    const int64_t theta = idx.dim(0);
    if (beta < 1 || beta > theta)
      invalid("bulyan_coordinates: needs 1 <= beta <= theta=" + std::to_string(theta) + "; got beta=" + std::to_string(beta));
    check_rows(idx, x.dim(0), "bulyan_coordinates: idx");
    no_overlap(out, "bulyan_coordinates: out", {&x, &idx});
    py::gil_scoped_release release;
    bcfl::bulyan_coordinates(x.code, x.as<const void>(), x.dim(1), idx.as<const int64_t>(), theta,
                             beta, out.as<float>());
  });
  bcfl::bind::bind_he(m);
  bcfl::bind::bind_chain(m);
}
