// What every binding file shares: checked views of torch tensors and bytes-like objects, the
// CKKS layout, and the one error type (bcfl_engine.errors.InvalidArgument). Included by the
// bindings_*.cpp files only; each helper is inline (one definition across them).
#pragma once

#include <pybind11/pybind11.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "seal_codec.h"

namespace bcfl::bind {
namespace py = pybind11;

// ---- checked tensor views (the rules' kernels) ----
// Codes 0-2 are the storage dtypes of common.h.
enum Code : int { kF32 = 0, kF16 = 1, kBF16 = 2, kF64 = 3, kI64 = 4, kU64 = 5 };

[[noreturn]] inline void invalid(const std::string& msg) {
  py::object type = py::module_::import("bcfl_engine.errors").attr("InvalidArgument");
  PyErr_SetString(type.ptr(), msg.c_str());
  throw py::error_already_set();
}

inline const char* name_of(int code) {
  static const char* names[] = {"float32", "float16", "bfloat16", "float64", "int64", "uint64"};
  return code >= 0 && code <= kU64 ? names[code] : "?";
}

// Whether the byte at `addr` may be written, asked of the kernel rather than by writing it
// (which would SIGSEGV on a read-only page): the byte goes into a pipe and is read back into
// place; read() fails with EFAULT where the page is not writable. The value is unchanged.
// About 2 us, where parsing /proc/self/maps (~400 mappings with torch loaded) took ~1 ms per
// call, 4% of a mean at n=64, d=1M. The GIL is held, so one pipe serves every call.
inline bool byte_writable(std::uintptr_t addr) {
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
inline bool mapped_writable(std::uintptr_t lo, std::uintptr_t hi) {
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
inline View view(py::handle t, const char* name, std::initializer_list<int> codes,
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

inline View storage(py::handle t, const char* name, std::initializer_list<int64_t> shape) {
  return view(t, name, {kF32, kF16, kBF16}, shape);
}

// `out` must not share a byte with any of `inputs`.
inline void no_overlap(const View& out, const char* name, std::initializer_list<const View*> inputs) {
  for (const View* in : inputs)
    if (in->nbytes > 0 && out.nbytes > 0 && out.data < in->data + in->nbytes &&
        in->data < out.data + out.nbytes)
      invalid(std::string(name) + ": overlaps an input");
}

// Rows idx[t] in [0, n) (read before the GIL is released).
inline void check_rows(const View& idx, int64_t n, const char* name) {
  const int64_t* p = idx.as<const int64_t>();
  for (int64_t t = 0; t < idx.dim(0); ++t)
    if (p[t] < 0 || p[t] >= n)
      invalid(std::string(name) + ": row " + std::to_string(p[t]) + " out of [0, " + std::to_string(n) + ")");
}

inline bool none(py::handle h) { return h.is_none(); }

// ---- the CKKS bindings: payload bytes and layouts ----
inline std::string type_name(py::handle h) { return py::str(py::type::handle_of(h).attr("__name__")); }

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

inline Payloads payloads(py::handle seq, const std::string& name) {
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
inline void no_overlap(const View& out, const char* name, const Payloads& in) {
  for (const Bytes& b : in.held) no_overlap(out, name, {&b.span});
}

// Primes in (1, 2^60): Shoup's multiplication and the lazy sums assume it.
inline void check_primes(const View& q, const char* name) {
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

inline Pieces pieces(py::handle rows, py::handle widths, const std::string& name) {
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

inline const Layout& layout_of(py::handle h, const std::string& fn) {
  if (!py::isinstance<Layout>(h))
    invalid(fn + ": layout: expected a bcfl_engine._C.CkksLayout (he.accumulate.native_layout); got " +
            type_name(h));
  return h.cast<const Layout&>();
}

// An output of the layout's residues: `lead` [C, 2, K, N] (lead = -1: none), int64 or uint64,
// writable.
inline View residues_out(py::handle t, const char* name, const Layout& lay, int64_t lead = -1) {
  return lead < 0 ? view(t, name, {kI64, kU64}, {lay.C(), 2, lay.K(), lay.N()}, true)
                  : view(t, name, {kI64, kU64}, {lead, lay.C(), 2, lay.K(), lay.N()}, true);
}

// The weight tables of ckks_sum / he_accumulate: both None or both [n, K].
inline std::pair<View, View> weight_tables(py::handle w_, py::handle ws_, const char* fn, int64_t n, int64_t K) {
  if (none(w_) != none(ws_)) invalid(std::string(fn) + ": w and wshoup must both be None or both tensors");
  if (none(w_)) return {View{}, View{}};
  return {view(w_, (std::string(fn) + ": w").c_str(), {kI64, kU64}, {n, K}),
          view(ws_, (std::string(fn) + ": wshoup").c_str(), {kI64, kU64}, {n, K})};
}
}  // namespace bcfl::bind
