// The only file that includes pybind11: thin wrappers from Python to the C++ kernels. Python
// owns every buffer; each call releases the GIL around the kernel.
// Kernel authors: add one block per op below, named after its file stem.
//
// The rules' kernels take torch tensors and check them here, before any pointer is used: a CPU
// tensor, of the dtype and shape the kernel reads, contiguous, outputs in writable memory that
// does not overlap an input (clip_rows alone may write over its input, float32 in place). A
// failed check raises bcfl_engine.errors.InvalidArgument; nothing has been read or written.
#include <pybind11/pybind11.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "mean.h"
#include "seal_codec.h"
#include "seal_zstd.h"
#include "ckks_sum.h"
#include "ckks_accumulate.h"
#include "median.h"
#include "trimmed_mean.h"
#include "geometric_median.h"
#include "clip.h"
#include "multi_krum.h"
#include "_distances.h"
#include "bulyan.h"

namespace py = pybind11;

namespace {
template <typename T>
T* ptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

// ---- checked tensor views (the rules' kernels) ----
// Codes 0-2 are the storage dtypes of common.h.
enum Code : int { kF32 = 0, kF16 = 1, kBF16 = 2, kF64 = 3, kI64 = 4 };

[[noreturn]] void invalid(const std::string& msg) {
  py::object type = py::module_::import("bcfl_engine.errors").attr("InvalidArgument");
  PyErr_SetString(type.ptr(), msg.c_str());
  throw py::error_already_set();
}

int code_of(const std::string& dtype) {
  if (dtype == "torch.float32") return kF32;
  if (dtype == "torch.float16") return kF16;
  if (dtype == "torch.bfloat16") return kBF16;
  if (dtype == "torch.float64") return kF64;
  if (dtype == "torch.int64") return kI64;
  return -1;
}

const char* name_of(int code) {
  static const char* names[] = {"float32", "float16", "bfloat16", "float64", "int64"};
  return code >= 0 && code <= kI64 ? names[code] : "?";
}

// Whether the byte at `addr` may be written, asked of the kernel rather than by writing it
// (which would SIGSEGV on a read-only page): the byte goes into a pipe and is read back into
// place; read() fails with EFAULT where the page is not writable. The value is unchanged.
// About 2 us, where parsing /proc/self/maps (~400 mappings with torch loaded) took ~1 ms per
// call, 4% of a mean at n=64, d=1M. The GIL is held, so one pipe serves every call.
bool byte_writable(std::uintptr_t addr) {
  static int fds[2] = {-1, -1};
  if (fds[0] < 0 && pipe2(fds, O_CLOEXEC) != 0) return true;  // cannot tell: let it through
  void* p = reinterpret_cast<void*>(addr);
  if (write(fds[1], p, 1) != 1) return false;  // not even readable
  if (read(fds[0], p, 1) == 1) return true;
  char drain;
  (void)!read(fds[0], &drain, 1);  // the byte read() could not deliver
  return false;
}

// [lo, hi) is writable: its first and last bytes are (a read-only mapping, as np.memmap
// mode='r', covers a whole buffer).
bool mapped_writable(std::uintptr_t lo, std::uintptr_t hi) {
  return byte_writable(lo) && byte_writable(hi - 1);
}

struct View {
  std::uintptr_t data = 0;
  int code = -1;
  std::vector<int64_t> shape;
  int64_t nbytes = 0;
  int64_t dim(int k) const { return shape[static_cast<size_t>(k)]; }
  template <typename T>
  T* as() const { return reinterpret_cast<T*>(data); }
};

// `t` as a View after the checks: a torch.Tensor on the CPU, of one of `codes`, with `ndim`
// dimensions equal to `shape` where that is >= 0, contiguous, and (`write`) in writable memory.
View view(py::handle t, const char* name, std::initializer_list<int> codes,
          std::initializer_list<int64_t> shape, bool write = false) {
  static py::object tensor_type = py::module_::import("torch").attr("Tensor");
  if (!py::isinstance(t, tensor_type))
    invalid(std::string(name) + ": expected a torch.Tensor; got " +
            std::string(py::str(py::type::handle_of(t).attr("__name__"))));
  View v;
  const std::string device = py::str(t.attr("device").attr("type"));
  if (device != "cpu") invalid(std::string(name) + ": expected a CPU tensor; got one on " + device);
  v.code = code_of(py::str(t.attr("dtype")));
  bool ok = false;
  std::string want;
  for (int c : codes) {
    ok = ok || c == v.code;
    want += (want.empty() ? "" : " or ") + std::string(name_of(c));
  }
  if (!ok)
    invalid(std::string(name) + ": dtype must be " + want + "; got " +
            std::string(py::str(t.attr("dtype"))));
  for (auto s : t.attr("shape")) v.shape.push_back(s.cast<int64_t>());
  bool shape_ok = v.shape.size() == shape.size();
  std::string want_shape = "[", got_shape = "[";
  size_t k = 0;
  for (int64_t s : shape) {
    want_shape += (k ? ", " : "") + (s >= 0 ? std::to_string(s) : std::string("*"));
    if (shape_ok && s >= 0 && v.shape[k] != s) shape_ok = false;
    ++k;
  }
  for (size_t i = 0; i < v.shape.size(); ++i) got_shape += (i ? ", " : "") + std::to_string(v.shape[i]);
  if (!shape_ok) invalid(std::string(name) + ": shape must be " + want_shape + "]; got " + got_shape + "]");
  if (!t.attr("is_contiguous")().cast<bool>()) invalid(std::string(name) + ": must be contiguous");
  v.data = t.attr("data_ptr")().cast<std::uintptr_t>();
  v.nbytes = t.attr("numel")().cast<int64_t>() * t.attr("element_size")().cast<int64_t>();
  if (write && v.nbytes > 0 && !mapped_writable(v.data, v.data + static_cast<std::uintptr_t>(v.nbytes)))
    invalid(std::string(name) + ": is in read-only memory (a memory map opened mode='r'?)");
  return v;
}

View storage(py::handle t, const char* name, std::initializer_list<int64_t> shape) {
  return view(t, name, {kF32, kF16, kBF16}, shape);
}

// `out` must not share a byte with any of `inputs`.
void no_overlap(const View& out, const char* name, std::initializer_list<const View*> inputs) {
  for (const View* in : inputs)
    if (in->nbytes > 0 && out.nbytes > 0 && out.data < in->data + in->nbytes &&
        in->data < out.data + out.nbytes)
      invalid(std::string(name) + ": overlaps an input");
}

// Rows idx[t] in [0, n) (read before the GIL is released).
void check_rows(const View& idx, int64_t n, const char* name) {
  const int64_t* p = idx.as<const int64_t>();
  for (int64_t t = 0; t < idx.dim(0); ++t)
    if (p[t] < 0 || p[t] >= n)
      invalid(std::string(name) + ": row " + std::to_string(p[t]) + " out of [0, " + std::to_string(n) + ")");
}

bool none(py::handle h) { return h.is_none(); }
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "bcfl_engine native kernels (C++17, OpenMP)";
  using gil = py::call_guard<py::gil_scoped_release>;

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

  // ---- seal_codec ----
  // A layout travels as the tuple (N, K, C, d, pair, scale, primes*, parms_id*, sizes*).
  auto layout = [](const py::tuple& t) {
    return bcfl::CkksLayout{t[0].cast<int64_t>(), t[1].cast<int64_t>(), t[2].cast<int64_t>(),
                            t[3].cast<int64_t>(), t[4].cast<int32_t>(), t[5].cast<double>(),
                            ptr<const uint64_t>(t[6].cast<std::uintptr_t>()),
                            ptr<const uint64_t>(t[7].cast<std::uintptr_t>()),
                            ptr<const int64_t>(t[8].cast<std::uintptr_t>())};
  };
  m.def("he_parse", [layout](std::uintptr_t buf, int64_t len, const py::tuple& lay, std::uintptr_t out) {
    const bcfl::CkksLayout l = layout(lay);
    char msg[bcfl::kMsgLen];
    uint8_t version[2];
    int rc;
    {
      py::gil_scoped_release release;
      rc = bcfl::parse_payload(ptr<const uint8_t>(buf), len, l, ptr<uint64_t>(out), version, msg);
    }
    return py::make_tuple(rc, rc ? std::string(msg) : std::string(), version[0], version[1]);
  });
  m.def("he_parse_many", [layout](int64_t n, std::uintptr_t bufs, std::uintptr_t lens, const py::tuple& lay,
                                  std::uintptr_t out, std::uintptr_t codes, std::uintptr_t versions,
                                  std::uintptr_t msgs) {
    const bcfl::CkksLayout l = layout(lay);
    py::gil_scoped_release release;
    bcfl::parse_payloads(n, ptr<const uint64_t>(bufs), ptr<const int64_t>(lens), l, ptr<uint64_t>(out),
                         ptr<int32_t>(codes), ptr<uint8_t>(versions), ptr<char>(msgs));
  });
  // Who decodes zstd bodies: (0 none | 1 linked against zstd.h | 2 libzstd loaded at run time,
  // the library's path or why there is none).
  m.def("zstd_info", [] {
    const bcfl::zstd::Api& z = bcfl::zstd::api();
    return py::make_tuple(static_cast<int>(z.source), std::string(z.detail));
  });
  m.def("he_proto_size", [layout](const py::tuple& lay) { return bcfl::proto_size(layout(lay)); });
  // The CKKSVectorProto as a bytes object written in place (no second copy of ~8 MiB).
  m.def("he_proto_bytes", [layout](std::uintptr_t data, const py::tuple& lay, double scale, int major,
                                   int minor) {
    const bcfl::CkksLayout l = layout(lay);
    const int64_t size = bcfl::proto_size(l);
    PyObject* obj = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(size));
    if (!obj) throw py::error_already_set();
    auto* out = reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(obj));
    {
      py::gil_scoped_release release;
      bcfl::write_proto(ptr<const uint64_t>(data), l, scale, major, minor, out);
    }
    return py::reinterpret_steal<py::bytes>(obj);
  });
  m.def("he_write_proto", [layout](std::uintptr_t data, const py::tuple& lay, double scale, int major,
                                   int minor, std::uintptr_t out) {
    const bcfl::CkksLayout l = layout(lay);
    py::gil_scoped_release release;
    bcfl::write_proto(ptr<const uint64_t>(data), l, scale, major, minor, ptr<uint8_t>(out));
  });

  // ---- ckks_accumulate ----
  // Returns (index of the first bad payload or -1, its message).
  m.def("he_accumulate", [layout](int64_t n, std::uintptr_t bufs, std::uintptr_t lens,
                                  const py::tuple& lay, std::uintptr_t w, std::uintptr_t ws,
                                  std::uintptr_t acc, std::uintptr_t versions) {
    const bcfl::CkksLayout l = layout(lay);
    char msg[bcfl::kMsgLen] = {0};
    int64_t bad;
    {
      py::gil_scoped_release release;
      bad = bcfl::accumulate_payloads(n, ptr<const uint64_t>(bufs), ptr<const int64_t>(lens), l,
                                      ptr<const uint64_t>(w), ptr<const uint64_t>(ws),
                                      ptr<uint64_t>(acc), ptr<uint8_t>(versions), msg);
    }
    return py::make_tuple(bad, bad >= 0 ? std::string(msg) : std::string());
  });

  // ---- ckks_sum ----
  m.def(
      "ckks_sum",
      [](std::uintptr_t x, int64_t n, int64_t rows, int64_t N, int64_t K, std::uintptr_t primes,
         std::uintptr_t w, std::uintptr_t ws, std::uintptr_t acc, std::uintptr_t out) {
        bcfl::ckks_sum(ptr<const uint64_t>(x), n, rows, N, K, ptr<const uint64_t>(primes),
                       ptr<const uint64_t>(w), ptr<const uint64_t>(ws), ptr<const uint64_t>(acc),
                       ptr<uint64_t>(out));
      },
      gil());

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
}
