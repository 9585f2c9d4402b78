// The only file that includes pybind11: thin wrappers from Python to the C++ kernels. Python
// owns every buffer; each call releases the GIL around the kernel.
// Kernel authors: add one block per op below, named after its file stem.
//
// The rules' kernels take torch tensors and check them here, before any pointer is used: a CPU
// tensor, of the dtype and shape the kernel reads, contiguous, outputs in writable memory that
// does not overlap an input (clip_rows alone may write over its input, float32 in place). A
// failed check raises bcfl_engine.errors.InvalidArgument; nothing has been read or written.
//
// The CKKS bindings (seal_codec, ckks_accumulate, ckks_sum) check the same way: residues and
// tables are int64 (or uint64) tensors whose shapes follow the layout (a CkksLayout, checked
// when built); payloads are bytes-like objects read through the buffer protocol at their real
// length, held (so neither resized nor freed) until the call returns.
#include <pybind11/pybind11.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>
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
#include "eip712_recover.h"
#include "keccak.h"
#include "ntt.h"

namespace py = pybind11;

namespace {
// ---- checked tensor views (the rules' kernels) ----
// Codes 0-2 are the storage dtypes of common.h.
enum Code : int { kF32 = 0, kF16 = 1, kBF16 = 2, kF64 = 3, kI64 = 4, kU64 = 5 };

[[noreturn]] void invalid(const std::string& msg) {
  py::object type = py::module_::import("bcfl_engine.errors").attr("InvalidArgument");
  PyErr_SetString(type.ptr(), msg.c_str());
  throw py::error_already_set();
}

const char* name_of(int code) {
  static const char* names[] = {"float32", "float16", "bfloat16", "float64", "int64", "uint64"};
  return code >= 0 && code <= kU64 ? names[code] : "?";
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
  // torch's type and dtypes, looked up once (and never freed: no decref after Python ends).
  // Comparing dtype objects and asking is_cpu took each check from ~2.4 us to ~1 us.
  struct Torch {
    py::object tensor;
    py::object dtypes[kU64 + 1];
  };
  static const Torch* torch = [] {
    py::module_ m = py::module_::import("torch");
    return new Torch{m.attr("Tensor"),
                     {m.attr("float32"), m.attr("float16"), m.attr("bfloat16"), m.attr("float64"),
                      m.attr("int64"), m.attr("uint64")}};
  }();
  if (!py::isinstance(t, torch->tensor))
    invalid(std::string(name) + ": expected a torch.Tensor; got " +
            std::string(py::str(py::type::handle_of(t).attr("__name__"))));
  View v;
  if (!t.attr("is_cpu").cast<bool>())
    invalid(std::string(name) + ": expected a CPU tensor; got one on " +
            std::string(py::str(t.attr("device").attr("type"))));
  const py::object dtype = t.attr("dtype");
  for (int c = 0; c <= kU64 && v.code < 0; ++c)
    if (dtype.is(torch->dtypes[c])) v.code = c;
  bool ok = false;
  for (int c : codes) ok = ok || c == v.code;
  if (!ok) {  // messages are built on failure only (they cost ~1 us a check)
    std::string want;
    for (int c : codes) want += (want.empty() ? "" : " or ") + std::string(name_of(c));
    invalid(std::string(name) + ": dtype must be " + want + "; got " + std::string(py::str(dtype)));
  }
  for (auto s : t.attr("shape")) v.shape.push_back(s.cast<int64_t>());
  bool shape_ok = v.shape.size() == shape.size();
  size_t k = 0;
  for (int64_t s : shape) {
    if (shape_ok && s >= 0 && v.shape[k] != s) shape_ok = false;
    ++k;
  }
  if (!shape_ok) {
    std::string want_shape = "[", got_shape = "[";
    k = 0;
    for (int64_t s : shape) want_shape += (k++ ? ", " : "") + (s >= 0 ? std::to_string(s) : std::string("*"));
    for (size_t i = 0; i < v.shape.size(); ++i) got_shape += (i ? ", " : "") + std::to_string(v.shape[i]);
    invalid(std::string(name) + ": shape must be " + want_shape + "]; got " + got_shape + "]");
  }
  if (!t.attr("is_contiguous")().cast<bool>()) invalid(std::string(name) + ": must be contiguous");
  v.data = t.attr("data_ptr")().cast<std::uintptr_t>();
  static const int64_t item_bytes[] = {4, 2, 2, 8, 8, 8};  // by code
  v.nbytes = item_bytes[v.code];
  for (int64_t s : v.shape) v.nbytes *= s;
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

// ---- the CKKS bindings: payload bytes and layouts ----
std::string type_name(py::handle h) { return py::str(py::type::handle_of(h).attr("__name__")); }

// One bytes-like object's buffer (PEP 3118), released when this goes (with the GIL held).
class Bytes {
 public:
  Bytes(py::handle obj, const std::string& name, bool write = false) {
    if (PyObject_GetBuffer(obj.ptr(), &buf_, write ? PyBUF_WRITABLE : PyBUF_SIMPLE) != 0) {
      PyErr_Clear();
      invalid(name + ": expected a contiguous" + (write ? " writable" : "") +
              " bytes-like object; got " + type_name(obj));
    }
    held_ = true;
    span.data = reinterpret_cast<std::uintptr_t>(buf_.buf);
    span.nbytes = static_cast<int64_t>(buf_.len);
    if (write && span.nbytes > 0 && !mapped_writable(span.data, span.data + static_cast<std::uintptr_t>(span.nbytes)))
      invalid(name + ": is in read-only memory (a memory map opened mode='r'?)");
  }
  Bytes(Bytes&& o) noexcept : span(o.span), buf_(o.buf_), held_(o.held_) { o.held_ = false; }
  Bytes(const Bytes&) = delete;
  Bytes& operator=(const Bytes&) = delete;
  Bytes& operator=(Bytes&&) = delete;
  ~Bytes() {
    if (held_) PyBuffer_Release(&buf_);
  }
  View span;  // data and nbytes: for no_overlap

 private:
  Py_buffer buf_{};
  bool held_ = false;
};

// A sequence of payloads: each one's buffer, and the address and length arrays the kernels read.
struct Payloads {
  std::vector<Bytes> held;
  std::vector<uint64_t> addrs;
  std::vector<int64_t> lens;
  int64_t n() const { return static_cast<int64_t>(held.size()); }
};

Payloads payloads(py::handle seq, const std::string& name) {
  if (!PySequence_Check(seq.ptr()) || PyBytes_Check(seq.ptr()) || PyByteArray_Check(seq.ptr()) ||
      PyUnicode_Check(seq.ptr()) || PyObject_CheckBuffer(seq.ptr()))
    invalid(name + ": expected a sequence of bytes-like objects; got " + type_name(seq));
  const py::sequence items = py::reinterpret_borrow<py::sequence>(seq);
  Payloads p;
  const size_t n = items.size();
  p.held.reserve(n);
  p.addrs.reserve(n);
  p.lens.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    p.held.emplace_back(items[i], name + "[" + std::to_string(i) + "]");
    p.addrs.push_back(static_cast<uint64_t>(p.held.back().span.data));
    p.lens.push_back(p.held.back().span.nbytes);
  }
  return p;
}

// `out` shares no byte with any payload.
void no_overlap(const View& out, const char* name, const Payloads& in) {
  for (const Bytes& b : in.held) no_overlap(out, name, {&b.span});
}

// Primes in (1, 2^60): Shoup's multiplication and the lazy sums assume it.
void check_primes(const View& q, const char* name) {
  const uint64_t* p = q.as<const uint64_t>();
  for (int64_t k = 0; k < q.dim(0); ++k)
    if (p[k] < 2 || p[k] >= (uint64_t{1} << 60))
      invalid(std::string(name) + ": primes must be in (1, 2^60); got " + std::to_string(p[k]));
}

// A sequence of Python ints as T (uint64_t or int64_t), each in T's range.
template <typename T>
std::vector<T> ints(py::handle seq, const std::string& name) {
  if (!PySequence_Check(seq.ptr()) || PyUnicode_Check(seq.ptr()) || PyObject_CheckBuffer(seq.ptr()))
    invalid(name + ": expected a sequence of ints; got " + type_name(seq));
  std::vector<T> out;
  for (py::handle item : py::reinterpret_borrow<py::sequence>(seq)) {
    PyObject* v = PyNumber_Index(item.ptr());
    T x = 0;
    if (v) {
      x = std::is_signed<T>::value ? static_cast<T>(PyLong_AsLongLong(v))
                                   : static_cast<T>(PyLong_AsUnsignedLongLong(v));
      Py_DECREF(v);
    }
    if (PyErr_Occurred()) {
      PyErr_Clear();
      invalid(name + ": expected ints in [" + (std::is_signed<T>::value ? "-2^63, 2^63)" : "0, 2^64)") +
              "; got " + std::string(py::repr(item)));
    }
    out.push_back(x);
  }
  return out;
}

// Float32 rows held in pieces (the Flower path: each client's arrays as views over its reply's
// bytes): rows[i * S + s] is row i's piece s, exactly widths[s] float32 (4-byte aligned).
struct Pieces {
  Payloads held;
  std::vector<int64_t> widths;
  std::vector<const float*> ptrs;
  int64_t n = 0, d = 0;
};

Pieces pieces(py::handle rows, py::handle widths, const std::string& name) {
  Pieces p{payloads(rows, name + ": rows"), ints<int64_t>(widths, name + ": widths"), {}, 0, 0};
  const auto S = static_cast<int64_t>(p.widths.size());
  for (int64_t w : p.widths) {
    if (w < 0) invalid(name + ": widths must be >= 0");
    p.d += w;
  }
  if (S == 0 || p.held.n() == 0 || p.held.n() % S != 0)
    invalid(name + ": expected n * " + std::to_string(S) + " rows (n >= 1); got " +
            std::to_string(p.held.n()));
  p.n = p.held.n() / S;
  for (int64_t k = 0; k < p.held.n(); ++k) {
    const int64_t w = p.widths[static_cast<size_t>(k % S)];
    if (p.held.lens[static_cast<size_t>(k)] != 4 * w)
      invalid(name + ": row piece " + std::to_string(k) + " holds " +
              std::to_string(p.held.lens[static_cast<size_t>(k)]) + " bytes, expected " +
              std::to_string(4 * w) + " (float32)");
    if (p.held.addrs[static_cast<size_t>(k)] % 4 != 0)
      invalid(name + ": row piece " + std::to_string(k) + " is not 4-byte aligned");
    p.ptrs.push_back(reinterpret_cast<const float*>(p.held.addrs[static_cast<size_t>(k)]));
  }
  return p;
}

// A batch's layout (N, d, pair, scale, primes [K], parms_id [4], sizes [C]), checked once and
// owned here (K + 4 + C words copied) so that no call checks it again and nothing in Python
// can free or change what the kernels read. Python builds it with bcfl_engine.he.accumulate.
// native_layout; it cannot be copied (l points into the vectors).
class Layout {
 public:
  Layout(int64_t N, int64_t d, int64_t pair, double scale, py::handle primes, py::handle parms_id,
         py::handle sizes)
      : primes_(ints<uint64_t>(primes, "CkksLayout: primes")),
        parms_id_(ints<uint64_t>(parms_id, "CkksLayout: parms_id")),
        sizes_(ints<int64_t>(sizes, "CkksLayout: sizes")) {
    const auto K = static_cast<int64_t>(primes_.size()), C = static_cast<int64_t>(sizes_.size());
    // SEAL's bounds: N a power of two up to 2^17 (SEAL_POLY_MOD_DEGREE_MAX), K up to 64
    // (SEAL_COEFF_MOD_COUNT_MAX); they also keep proto_size's products far from overflow.
    if (N < 2 || N > (int64_t{1} << 17) || (N & (N - 1)) != 0 || K < 1 || K > 64 || C < 1 ||
        C > (int64_t{1} << 32) || d < 0 || (pair != 0 && pair != 1) || parms_id_.size() != 4)
      invalid("CkksLayout: needs N a power of two in [2, 2^17], 1 to 64 primes, at least one size, "
              "d >= 0, pair 0 or 1 and 4 parms_id words; got N=" + std::to_string(N) + ", " +
              std::to_string(K) + " primes, " + std::to_string(C) + " sizes, d=" + std::to_string(d) +
              ", pair=" + std::to_string(pair) + ", " + std::to_string(parms_id_.size()) + " parms_id words");
    for (uint64_t q : primes_)
      if (q < 2 || q >= (uint64_t{1} << 60))  // Shoup's products and the lazy sums assume it
        invalid("CkksLayout: primes must be in (1, 2^60); got " + std::to_string(q));
    l = bcfl::CkksLayout{N, K, C, d, static_cast<int32_t>(pair), scale, primes_.data(), parms_id_.data(),
                         sizes_.data()};
  }
  Layout(const Layout&) = delete;
  Layout& operator=(const Layout&) = delete;
  int64_t C() const { return l.ciphertexts; }
  int64_t K() const { return l.residues; }
  int64_t N() const { return l.poly_degree; }
  bcfl::CkksLayout l{};

 private:
  std::vector<uint64_t> primes_, parms_id_;
  std::vector<int64_t> sizes_;
};

const Layout& layout_of(py::handle h, const std::string& fn) {
  if (!py::isinstance<Layout>(h))
    invalid(fn + ": layout: expected a bcfl_engine._C.CkksLayout (he.accumulate.native_layout); got " +
            type_name(h));
  return h.cast<const Layout&>();
}

// An output of the layout's residues: `lead` [C, 2, K, N] (lead = -1: none), int64 or uint64,
// writable.
View residues_out(py::handle t, const char* name, const Layout& lay, int64_t lead = -1) {
  return lead < 0 ? view(t, name, {kI64, kU64}, {lay.C(), 2, lay.K(), lay.N()}, true)
                  : view(t, name, {kI64, kU64}, {lead, lay.C(), 2, lay.K(), lay.N()}, true);
}

// The weight tables of ckks_sum / he_accumulate: both None or both [n, K].
std::pair<View, View> weight_tables(py::handle w_, py::handle ws_, const char* fn, int64_t n, int64_t K) {
  if (none(w_) != none(ws_)) invalid(std::string(fn) + ": w and wshoup must both be None or both tensors");
  if (none(w_)) return {View{}, View{}};
  return {view(w_, (std::string(fn) + ": w").c_str(), {kI64, kU64}, {n, K}),
          view(ws_, (std::string(fn) + ": wshoup").c_str(), {kI64, kU64}, {n, K})};
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
  py::class_<Layout>(m, "CkksLayout", "A batch's CKKS layout, checked: (N, d, pair, scale, primes, parms_id, sizes).")
      .def(py::init<int64_t, int64_t, int64_t, double, py::handle, py::handle, py::handle>(),
           py::arg("N"), py::arg("d"), py::arg("pair"), py::arg("scale"), py::arg("primes"),
           py::arg("parms_id"), py::arg("sizes"))
      .def_property_readonly("shape", [](const Layout& l) { return py::make_tuple(l.C(), 2, l.K(), l.N()); });
  // he_parse(payload, layout, out [C, 2, K, N]) -> (code, message, major, minor).
  m.def("he_parse", [](py::handle blob_, py::handle lay_, py::handle out_) {
    const Layout& lay = layout_of(lay_, "he_parse");
    const Bytes blob(blob_, "he_parse: payload");
    const View out = residues_out(out_, "he_parse: out", lay);
    no_overlap(out, "he_parse: out", {&blob.span});
    char msg[bcfl::kMsgLen];
    uint8_t version[2];
    int rc;
    {
      py::gil_scoped_release release;
      rc = bcfl::parse_payload(blob.span.as<const uint8_t>(), blob.span.nbytes, lay.l,
                               out.as<uint64_t>(), version, msg);
    }
    return py::make_tuple(rc, rc ? std::string(msg) : std::string(), version[0], version[1]);
  });
  // he_parse_many(payloads, layout, out [n, C, 2, K, N]) -> (index of the first bad payload or
  // -1, its message, [(major, minor)] * n).
  m.def("he_parse_many", [](py::handle blobs_, py::handle lay_, py::handle out_) {
    const Layout& lay = layout_of(lay_, "he_parse_many");
    const Payloads in = payloads(blobs_, "he_parse_many: payloads");
    const int64_t n = in.n();
    const View out = residues_out(out_, "he_parse_many: out", lay, n);
    no_overlap(out, "he_parse_many: out", in);
    std::vector<int32_t> codes(static_cast<size_t>(n));
    std::vector<uint8_t> versions(static_cast<size_t>(2 * n));
    std::vector<char> msgs(static_cast<size_t>(n * bcfl::kMsgLen));
    {
      py::gil_scoped_release release;
      bcfl::parse_payloads(n, in.addrs.data(), in.lens.data(), lay.l, out.as<uint64_t>(), codes.data(),
                           versions.data(), msgs.data());
    }
    int64_t bad = -1;
    for (int64_t i = 0; i < n && bad < 0; ++i)
      if (codes[static_cast<size_t>(i)]) bad = i;
    py::list vs(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i)
      vs[static_cast<size_t>(i)] = py::make_tuple(versions[static_cast<size_t>(2 * i)],
                                                   versions[static_cast<size_t>(2 * i + 1)]);
    const std::string msg = bad >= 0 ? std::string(&msgs[static_cast<size_t>(bad * bcfl::kMsgLen)]) : "";
    return py::make_tuple(bad, msg, vs);
  });
  // Who decodes zstd bodies: (0 none | 1 linked against zstd.h | 2 libzstd loaded at run time,
  // the library's path or why there is none).
  m.def("zstd_info", [] {
    const bcfl::zstd::Api& z = bcfl::zstd::api();
    return py::make_tuple(static_cast<int>(z.source), std::string(z.detail));
  });
  m.def("he_proto_size", [](py::handle lay_) { return bcfl::proto_size(layout_of(lay_, "he_proto_size").l); });
  // he_proto_bytes(data [C, 2, K, N], layout, scale, major, minor): the CKKSVectorProto as a
  // bytes object written in place (no second copy of ~8 MiB).
  m.def("he_proto_bytes", [](py::handle data_, py::handle lay_, double scale, int major, int minor) {
    const Layout& lay = layout_of(lay_, "he_proto_bytes");
    const View data = view(data_, "he_proto_bytes: data", {kI64, kU64}, {lay.C(), 2, lay.K(), lay.N()});
    const int64_t size = bcfl::proto_size(lay.l);
    PyObject* obj = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(size));
    if (!obj) throw py::error_already_set();
    auto* out = reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(obj));
    {
      py::gil_scoped_release release;
      bcfl::write_proto(data.as<const uint64_t>(), lay.l, scale, major, minor, out);
    }
    return py::reinterpret_steal<py::bytes>(obj);
  });
  // he_write_proto(data [C, 2, K, N], layout, scale, major, minor, out): the same bytes into the
  // first he_proto_size(layout) bytes of the writable buffer `out`.
  m.def("he_write_proto", [](py::handle data_, py::handle lay_, double scale, int major, int minor,
                             py::handle out_) {
    const Layout& lay = layout_of(lay_, "he_write_proto");
    const View data = view(data_, "he_write_proto: data", {kI64, kU64}, {lay.C(), 2, lay.K(), lay.N()});
    const Bytes out(out_, "he_write_proto: out", true);
    const int64_t size = bcfl::proto_size(lay.l);
    if (out.span.nbytes < size)
      invalid("he_write_proto: out must hold " + std::to_string(size) + " bytes; got " +
              std::to_string(out.span.nbytes));
    no_overlap(out.span, "he_write_proto: out", {&data});
    py::gil_scoped_release release;
    bcfl::write_proto(data.as<const uint64_t>(), lay.l, scale, major, minor, out.span.as<uint8_t>());
  });

  // ---- ckks_accumulate ----
  // he_accumulate(payloads, layout, w [n, K] | None, wshoup [n, K] | None, acc [C, 2, K, N])
  // -> (index of the first bad payload or -1, its message, [(major, minor)] * n).
  m.def("he_accumulate", [](py::handle blobs_, py::handle lay_, py::handle w_, py::handle ws_,
                            py::handle acc_) {
    const Layout& lay = layout_of(lay_, "he_accumulate");
    const Payloads in = payloads(blobs_, "he_accumulate: payloads");
    const int64_t n = in.n();
    const auto [w, ws] = weight_tables(w_, ws_, "he_accumulate", n, lay.K());
    const View acc = residues_out(acc_, "he_accumulate: acc", lay);
    no_overlap(acc, "he_accumulate: acc", {&w, &ws});
    no_overlap(acc, "he_accumulate: acc", in);
    std::vector<uint8_t> versions(static_cast<size_t>(2 * n));
    char msg[bcfl::kMsgLen] = {0};
    int64_t bad;
    {
      py::gil_scoped_release release;
      bad = bcfl::accumulate_payloads(n, in.addrs.data(), in.lens.data(), lay.l, w.as<const uint64_t>(),
                                      ws.as<const uint64_t>(), acc.as<uint64_t>(), versions.data(), msg);
    }
    py::list vs(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i)
      vs[static_cast<size_t>(i)] = py::make_tuple(versions[static_cast<size_t>(2 * i)],
                                                   versions[static_cast<size_t>(2 * i + 1)]);
    return py::make_tuple(bad, bad >= 0 ? std::string(msg) : std::string(), vs);
  });

  // ---- ckks_sum ----
  // ckks_sum(x [n, C, 2, K, N], primes [K], w [n, K] | None, wshoup [n, K] | None,
  //          acc [C, 2, K, N] | None, out [C, 2, K, N]); acc may be out itself (in place).
  m.def("ckks_sum", [](py::handle x_, py::handle q_, py::handle w_, py::handle ws_, py::handle acc_,
                       py::handle out_) {
    const View x = view(x_, "ckks_sum: x", {kI64, kU64}, {-1, -1, 2, -1, -1});
    const int64_t n = x.dim(0), C = x.dim(1), K = x.dim(3), N = x.dim(4);
    const View q = view(q_, "ckks_sum: primes", {kI64, kU64}, {K});
    check_primes(q, "ckks_sum: primes");
    const auto [w, ws] = weight_tables(w_, ws_, "ckks_sum", n, K);
    const View acc = none(acc_) ? View{} : view(acc_, "ckks_sum: acc", {kI64, kU64}, {C, 2, K, N});
    const View out = view(out_, "ckks_sum: out", {kI64, kU64}, {C, 2, K, N}, true);
    no_overlap(out, "ckks_sum: out", {&x, &q, &w, &ws});
    if (acc.data != out.data) no_overlap(out, "ckks_sum: out", {&acc});
    py::gil_scoped_release release;
    bcfl::ckks_sum(x.as<const uint64_t>(), n, C * 2 * K, N, K, q.as<const uint64_t>(), w.as<const uint64_t>(),
                   ws.as<const uint64_t>(), acc.as<const uint64_t>(), out.as<uint64_t>());
  });

  // ---- ntt ----
  // ntt(x [rows, N] uint64, in place, residues below q; q < 2^62 prime = 1 mod 2N;
  //     w, ws [N] uint64: he.ntt.tables' twiddles and Shoup constants; inverse;
  //     ninv, ninvs: N^-1 mod q and its Shoup constant, read when inverse).
  m.def("ntt", [](py::handle x_, uint64_t q, py::handle w_, py::handle ws_, bool inverse,
                  uint64_t ninv, uint64_t ninvs) {
    const View x = view(x_, "ntt: x", {kU64}, {-1, -1}, true);
    const int64_t rows = x.dim(0), N = x.dim(1);
    if (N < 2 || (N & (N - 1)) != 0) invalid("ntt: N must be a power of two >= 2; got " + std::to_string(N));
    if (q < 3 || q >= (uint64_t{1} << 62) || (q - 1) % static_cast<uint64_t>(2 * N) != 0)
      invalid("ntt: q must be 1 mod 2N and below 2^62; got " + std::to_string(q));
    const View w = view(w_, "ntt: w", {kU64}, {N});
    const View ws = view(ws_, "ntt: ws", {kU64}, {N});
    no_overlap(x, "ntt: x", {&w, &ws});
    py::gil_scoped_release release;
    if (inverse)
      bcfl::ntt_inverse(x.as<uint64_t>(), rows, N, q, w.as<const uint64_t>(), ws.as<const uint64_t>(),
                        ninv, ninvs);
    else
      bcfl::ntt_forward(x.as<uint64_t>(), rows, N, q, w.as<const uint64_t>(), ws.as<const uint64_t>());
  });

  // mul_add_mod(a [rows, N], q, b [N], bs [N], c [rows, N] | None, out [rows, N]), all uint64,
  // residues below q; out may be a or c (in place).
  m.def("mul_add_mod", [](py::handle a_, uint64_t q, py::handle b_, py::handle bs_, py::handle c_,
                          py::handle out_) {
    const View a = view(a_, "mul_add_mod: a", {kU64}, {-1, -1});
    const int64_t rows = a.dim(0), N = a.dim(1);
    if (q < 3 || q >= (uint64_t{1} << 62)) invalid("mul_add_mod: q must be in (2, 2^62); got " + std::to_string(q));
    const View b = view(b_, "mul_add_mod: b", {kU64}, {N});
    const View bs = view(bs_, "mul_add_mod: bs", {kU64}, {N});
    const View c = none(c_) ? View{} : view(c_, "mul_add_mod: c", {kU64}, {rows, N});
    const View out = view(out_, "mul_add_mod: out", {kU64}, {rows, N}, true);
    no_overlap(out, "mul_add_mod: out", {&b, &bs});
    if (out.data != a.data) no_overlap(out, "mul_add_mod: out", {&a});
    if (c.data != out.data) no_overlap(out, "mul_add_mod: out", {&c});
    py::gil_scoped_release release;
    bcfl::mul_add_mod(a.as<const uint64_t>(), rows, N, q, b.as<const uint64_t>(), bs.as<const uint64_t>(),
                      c.as<const uint64_t>(), out.as<uint64_t>());
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
  // ---- eip712_recover ----
  m.def("keccak256", [](py::handle data_) {
    const Bytes data(data_, "keccak256: data");
    char out[32];
    bcfl::keccak256(data.span.as<const uint8_t>(), static_cast<size_t>(data.span.nbytes),
                    reinterpret_cast<uint8_t*>(out));
    return py::bytes(out, 32);
  });
  // secp256k1_load(path) -> "" or why libsecp256k1 cannot be used from that shared object.
  m.def("secp256k1_load", [](const std::string& path) { return bcfl::secp256k1_load(path); });
  // eip712_recover(head [96], domain [32], records [n * 105], threads) -> bytes [n * 21]: per
  // record (digest | weight u64 big-endian | r s v) a status and the recovered address;
  // threads <= 0: OpenMP's default.
  m.def("eip712_recover", [](py::handle head_, py::handle domain_, py::handle records_, int threads) {
    const Bytes head(head_, "eip712_recover: head"), domain(domain_, "eip712_recover: domain");
    const Bytes rec(records_, "eip712_recover: records");
    if (head.span.nbytes != 96 || domain.span.nbytes != 32)
      invalid("eip712_recover: head must be 96 bytes and domain 32");
    if (rec.span.nbytes % bcfl::kRecoverIn)
      invalid("eip712_recover: records must be a multiple of " + std::to_string(bcfl::kRecoverIn) + " bytes");
    if (!bcfl::secp256k1_ready()) invalid("eip712_recover: call secp256k1_load(path) first");
    const int64_t n = static_cast<int64_t>(rec.span.nbytes / bcfl::kRecoverIn);
    std::string out(static_cast<size_t>(n * bcfl::kRecoverOut), '\0');
    {
      py::gil_scoped_release release;
      bcfl::eip712_recover(head.span.as<const uint8_t>(), domain.span.as<const uint8_t>(),
                           rec.span.as<const uint8_t>(), n, threads, reinterpret_cast<uint8_t*>(&out[0]));
    }
    return py::bytes(out);
  });
}
