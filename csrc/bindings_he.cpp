// The CKKS bindings (seal_codec, ckks_accumulate, ckks_sum, lean) and the NTT's: residues and tables
// are int64 (or uint64) tensors whose shapes follow the layout (a CkksLayout, checked when
// built); payloads are bytes-like objects read through the buffer protocol at their real length,
// held (so neither resized nor freed) until the call returns. See bindings.cpp.
#include "bindings_util.h"

#include "ckks_accumulate.h"
#include "ckks_sum.h"
#include "lean.h"
#include "ntt.h"
#include "seal_codec.h"
#include "seal_zstd.h"

namespace bcfl::bind {

namespace {
// b <= 59 (2^b < q0 < 2^60): the switch divides in 128 bits past 50, unpacking reads a ninth
// byte past 57, the sums wrap modulo 2^64 (a multiple of 2^b), the lift multiplies in 128 bits.
void lean_bits(int b, int k, const char* fn, int max_b = 59) {
  if (b < 1 || b > max_b || k < 0 || k >= b)
    invalid(std::string(fn) + ": need 1 <= b <= " + std::to_string(max_b) +
            " and 0 <= k < b; got b=" + std::to_string(b) + ", k=" + std::to_string(k));
}
}  // namespace

void bind_he(py::module_& m) {
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

  // ---- lean (he/lean.py): b in [1, 50], k in [0, b), q0 odd in (2^b, 2^60) ----
  // lean_switch(x [C, 2, N] coefficients below q0, q0, b, k, out [C, 2, N]).
  m.def("lean_switch", [](py::handle x_, uint64_t q0, int b, int k, py::handle out_) {
    lean_bits(b, k, "lean_switch");
    if (q0 % 2 == 0 || q0 <= (uint64_t{1} << b) || q0 >= (uint64_t{1} << 60))
      invalid("lean_switch: q0 must be odd, in (2^b, 2^60); got " + std::to_string(q0));
    const View x = view(x_, "lean_switch: x", {kI64, kU64}, {-1, 2, -1});
    const int64_t C = x.dim(0), N = x.dim(2);
    const View out = view(out_, "lean_switch: out", {kI64, kU64}, {C, 2, N}, true);
    no_overlap(out, "lean_switch: out", {&x});
    py::gil_scoped_release release;
    bcfl::lean_switch(x.as<const uint64_t>(), C, N, q0, b, k, out.as<uint64_t>());
  });
  // lean_sum(x [n, M], b, w [n] | None, acc [M] | None, out [M]); acc may be out (in place).
  m.def("lean_sum", [](py::handle x_, int b, py::handle w_, py::handle acc_, py::handle out_) {
    lean_bits(b, 0, "lean_sum");
    const View x = view(x_, "lean_sum: x", {kI64, kU64}, {-1, -1});
    const int64_t n = x.dim(0), M = x.dim(1);
    const View w = none(w_) ? View{} : view(w_, "lean_sum: w", {kI64, kU64}, {n});
    const View acc = none(acc_) ? View{} : view(acc_, "lean_sum: acc", {kI64, kU64}, {M});
    const View out = view(out_, "lean_sum: out", {kI64, kU64}, {M}, true);
    no_overlap(out, "lean_sum: out", {&x, &w});
    if (acc.data != out.data) no_overlap(out, "lean_sum: out", {&acc});
    py::gil_scoped_release release;
    bcfl::lean_sum(x.as<const uint64_t>(), n, M, b, w.as<const uint64_t>(), acc.as<const uint64_t>(),
                   out.as<uint64_t>());
  });
  // lean_unpack(payload, offset, b, k, out [C, 2, N]): the body after `offset` bytes.
  m.def("lean_unpack", [](py::handle blob_, int64_t offset, int b, int k, py::handle out_) {
    lean_bits(b, k, "lean_unpack");
    const Bytes blob(blob_, "lean_unpack: payload");
    const View out = view(out_, "lean_unpack: out", {kI64, kU64}, {-1, 2, -1}, true);
    const int64_t C = out.dim(0), N = out.dim(2);
    if (N % 8 || offset < 0 || blob.span.nbytes != offset + C * N * (2 * b - k) / 8)
      invalid("lean_unpack: the payload holds " + std::to_string(blob.span.nbytes) +
              " bytes; its layout needs " + std::to_string(offset + C * N * (2 * b - k) / 8));
    no_overlap(out, "lean_unpack: out", {&blob.span});
    py::gil_scoped_release release;
    bcfl::lean_unpack(blob.span.as<const uint8_t>() + offset, C, N, b, k, out.as<uint64_t>());
  });
  // lean_accumulate(payloads, offset, b, k, w [n] | None, acc [C, 2, N], fresh): acc (zeroed
  // first when fresh) += their sum.
  m.def("lean_accumulate", [](py::handle blobs_, int64_t offset, int b, int k, py::handle w_,
                              py::handle acc_, bool fresh) {
    lean_bits(b, k, "lean_accumulate");
    const Payloads in = payloads(blobs_, "lean_accumulate: payloads");
    const int64_t n = in.n();
    const View acc = view(acc_, "lean_accumulate: acc", {kI64, kU64}, {-1, 2, -1}, true);
    const int64_t C = acc.dim(0), N = acc.dim(2);
    const View w = none(w_) ? View{} : view(w_, "lean_accumulate: w", {kI64, kU64}, {n});
    const int64_t want = offset + C * N * (2 * b - k) / 8;
    for (int64_t i = 0; i < n; ++i)
      if (N % 8 || offset < 0 || in.lens[static_cast<size_t>(i)] != want)
        invalid("lean_accumulate: payload " + std::to_string(i) + " holds " +
                std::to_string(in.lens[static_cast<size_t>(i)]) + " bytes; the layout needs " +
                std::to_string(want));
    no_overlap(acc, "lean_accumulate: acc", {&w});
    no_overlap(acc, "lean_accumulate: acc", in);
    std::vector<uint64_t> addrs(in.addrs.begin(), in.addrs.end());
    for (auto& a : addrs) a += static_cast<uint64_t>(offset);
    py::gil_scoped_release release;
    bcfl::lean_accumulate(n, addrs.data(), C, N, b, k, w.as<const uint64_t>(), fresh, acc.as<uint64_t>());
  });
  // lean_lift(x [M] below 2^b, q0, b, out [M]).
  m.def("lean_lift", [](py::handle x_, uint64_t q0, int b, py::handle out_) {
    lean_bits(b, 0, "lean_lift");
    if (q0 % 2 == 0 || q0 <= (uint64_t{1} << b) || q0 >= (uint64_t{1} << 60))
      invalid("lean_lift: q0 must be odd, in (2^b, 2^60); got " + std::to_string(q0));
    const View x = view(x_, "lean_lift: x", {kI64, kU64}, {-1});
    const View out = view(out_, "lean_lift: out", {kI64, kU64}, {x.dim(0)}, true);
    no_overlap(out, "lean_lift: out", {&x});
    py::gil_scoped_release release;
    bcfl::lean_lift(x.as<const uint64_t>(), x.dim(0), q0, b, out.as<uint64_t>());
  });

  // lean_finish(x [C, 2, N] below 2^b, q0, b, w [N], ws [N], out [C, 2, N]): lift, then NTT.
  m.def("lean_finish", [](py::handle x_, uint64_t q0, int b, py::handle w_, py::handle ws_, py::handle out_) {
    lean_bits(b, 0, "lean_finish");
    const View x = view(x_, "lean_finish: x", {kI64, kU64}, {-1, 2, -1});
    const int64_t C = x.dim(0), N = x.dim(2);
    if (N < 2 || (N & (N - 1)) != 0) invalid("lean_finish: N must be a power of two >= 2; got " + std::to_string(N));
    if (q0 % 2 == 0 || q0 <= (uint64_t{1} << b) || q0 >= (uint64_t{1} << 60) ||
        (q0 - 1) % static_cast<uint64_t>(2 * N) != 0)
      invalid("lean_finish: q0 must be 1 mod 2N, in (2^b, 2^60); got " + std::to_string(q0));
    const View w = view(w_, "lean_finish: w", {kU64}, {N});
    const View ws = view(ws_, "lean_finish: ws", {kU64}, {N});
    const View out = view(out_, "lean_finish: out", {kI64, kU64}, {C, 2, N}, true);
    no_overlap(out, "lean_finish: out", {&x, &w, &ws});
    py::gil_scoped_release release;
    bcfl::lean_finish(x.as<const uint64_t>(), 2 * C, N, q0, b, w.as<const uint64_t>(), ws.as<const uint64_t>(),
                      out.as<uint64_t>());
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

}

}  // namespace bcfl::bind
