// The only file that includes pybind11: thin wrappers from Python ints (tensor data pointers,
// sizes) to the C++ kernels. Python owns every buffer; each call releases the GIL.
// Kernel authors: add one block per op below, named after its file stem.
#include <pybind11/pybind11.h>

#include <cstdint>

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
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "bcfl_engine native kernels (C++17, OpenMP)";
  using gil = py::call_guard<py::gil_scoped_release>;

  // ---- mean ----
  m.def(
      "weighted_mean",
      [](int dtype, std::uintptr_t x, int64_t n, int64_t d, std::uintptr_t w, std::uintptr_t out) {
        bcfl::weighted_mean(dtype, ptr<const void>(x), n, d, ptr<const float>(w), ptr<float>(out));
      },
      gil());

  // ---- geometric_median ----
  // Also the step of centered clipping. v_in and dist2 may be 0 (none).
  m.def(
      "combine_distances",
      [](int dtype, std::uintptr_t x, int64_t n, int64_t d, std::uintptr_t coef, float beta,
         std::uintptr_t v_in, std::uintptr_t v_out, std::uintptr_t dist2) {
        bcfl::combine_distances(dtype, ptr<const void>(x), n, d, ptr<const float>(coef), beta,
                                ptr<const float>(v_in), ptr<float>(v_out), ptr<double>(dist2));
      },
      gil());

  // ---- clip ----
  // norms may be 0 (not wanted).
  m.def(
      "clip_rows",
      [](int dtype, std::uintptr_t x, int64_t n, int64_t d, double max_norm, std::uintptr_t out,
         std::uintptr_t norms) {
        bcfl::clip_rows(dtype, ptr<const void>(x), n, d, max_norm, ptr<float>(out),
                        ptr<double>(norms));
      },
      gil());

  // ---- median ----
  m.def(
      "median",
      [](int dtype, std::uintptr_t x, int64_t n, int64_t d, std::uintptr_t out) {
        bcfl::median(dtype, ptr<const void>(x), n, d, ptr<float>(out));
      },
      gil());

  // ---- trimmed_mean ----
  m.def(
      "trimmed_mean",
      [](int dtype, std::uintptr_t x, int64_t n, int64_t d, int64_t f, std::uintptr_t out) {
        bcfl::trimmed_mean(dtype, ptr<const void>(x), n, d, f, ptr<float>(out));
      },
      gil());

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
  m.def(
      "gram_centered",
      [](int dtype, std::uintptr_t x, int64_t n, int64_t d, std::uintptr_t p, std::uintptr_t G) {
        bcfl::gram_centered(dtype, ptr<const void>(x), n, d, ptr<const float>(p), ptr<double>(G));
      },
      gil());

  // ---- multi_krum ----
  // Also the second pass of krum: the mean of the m selected rows idx (int64).
  m.def(
      "select_mean",
      [](int dtype, std::uintptr_t x, int64_t d, std::uintptr_t idx, int64_t m_, std::uintptr_t out) {
        bcfl::select_mean(dtype, ptr<const void>(x), d, ptr<const int64_t>(idx), m_, ptr<float>(out));
      },
      gil());

  // ---- bulyan ----
  m.def(
      "bulyan_select",
      [](std::uintptr_t dist, int64_t n, int64_t f, int64_t theta, std::uintptr_t chosen) {
        bcfl::bulyan_select(ptr<const double>(dist), n, f, theta, ptr<int64_t>(chosen));
      },
      gil());
  m.def(
      "bulyan_coordinates",
      [](int dtype, std::uintptr_t x, int64_t d, std::uintptr_t idx, int64_t theta, int64_t beta,
         std::uintptr_t out) {
        bcfl::bulyan_coordinates(dtype, ptr<const void>(x), d, ptr<const int64_t>(idx), theta, beta,
                                 ptr<float>(out));
      },
      gil());
}
