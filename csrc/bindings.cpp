// The only file that includes pybind11: thin wrappers from Python ints (tensor data pointers,
// sizes) to the C++ kernels. Python owns every buffer; each call releases the GIL.
// Kernel authors: add one block per op below, named after its file stem.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "mean.h"

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
}
