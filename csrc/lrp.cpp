// Operator schemas of lrp_ext (one place for all dispatch keys) and the Python module stub.
// CPU kernels: csrc/cpu/, CUDA kernels: csrc/cuda/, fake kernels: lrp_ext/ops.py.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing lrp_ext._C loads this shared library, which runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(lrp_ext, m) {
  // R (..., O), a (..., I), W (O, I), b (O,) or None -> relevance at the input (..., I)
  m.def("epsilon(Tensor R, Tensor a, Tensor W, Tensor? b, float epsilon) -> Tensor");
  m.def("gamma(Tensor R, Tensor a, Tensor W, Tensor? b, float gamma, float stabilizer) -> Tensor");
  m.def("alpha_beta(Tensor R, Tensor a, Tensor W, Tensor? b, float alpha, float beta, "
        "float stabilizer) -> Tensor");
  m.def("flat(Tensor R, Tensor a, Tensor W, float stabilizer) -> Tensor");
  m.def("w_square(Tensor R, Tensor a, Tensor W, Tensor? b, float stabilizer) -> Tensor");
  // low, high: broadcastable to a's shape
  m.def("z_box(Tensor R, Tensor a, Tensor W, Tensor low, Tensor high, float stabilizer) -> Tensor");
}

#include <cmath>
#include <sstream>

#include "lrp.h"

namespace lrp_ext {

namespace {
std::string shape_str(const at::Tensor& t) {
  std::ostringstream os;
  os << t.sizes();
  return os.str();
}
}  // namespace

void check_dense(const char* rule, const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                 const c10::optional<at::Tensor>& b) {
  TORCH_CHECK(W.dim() == 2, rule, ": W must be 2-D (O, I), got shape ", shape_str(W));
  const int64_t O = W.size(0), I = W.size(1);
  TORCH_CHECK(a.dim() >= 1 && a.size(-1) == I, rule,
              ": a's last dim must equal W's in_features I=", I, "; got a ", shape_str(a),
              " and W ", shape_str(W));
  TORCH_CHECK(R.dim() >= 1 && R.size(-1) == O, rule,
              ": R's last dim must equal W's out_features O=", O, "; got R ", shape_str(R),
              " and W ", shape_str(W));
  TORCH_CHECK(R.sizes().slice(0, R.dim() - 1) == a.sizes().slice(0, a.dim() - 1), rule,
              ": batch dims of R and a differ: R ", shape_str(R), " vs a ", shape_str(a));
  TORCH_CHECK(at::isFloatingType(a.scalar_type()), rule, ": a must be a floating tensor, got ",
              a.scalar_type());
  auto same = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == a.scalar_type(), rule, ": dtype mismatch: a is ",
                a.scalar_type(), " but ", name, " is ", t.scalar_type());
    TORCH_CHECK(t.device() == a.device(), rule, ": device mismatch: a is on ", a.device(),
                " but ", name, " is on ", t.device());
  };
  same(R, "R");
  same(W, "W");
  if (b.has_value()) {
    TORCH_CHECK(b->dim() == 1 && b->size(0) == O, rule, ": b must have shape (O,) = (", O,
                ",) to match W ", shape_str(W), ", got b ", shape_str(*b));
    same(*b, "b");
  }
}

void check_bounds(const at::Tensor& a, const at::Tensor& low, const at::Tensor& high) {
  for (auto* p : {&low, &high}) {
    const char* name = p == &low ? "low" : "high";
    TORCH_CHECK(p->scalar_type() == a.scalar_type(), "z_box: dtype mismatch: a is ",
                a.scalar_type(), " but ", name, " is ", p->scalar_type());
    TORCH_CHECK(p->device() == a.device(), "z_box: device mismatch: a is on ", a.device(),
                " but ", name, " is on ", p->device());
    bool ok = p->dim() <= a.dim();
    for (int64_t d = 1; ok && d <= p->dim(); ++d)
      ok = p->size(-d) == 1 || p->size(-d) == a.size(-d);
    TORCH_CHECK(ok, "z_box: ", name, " of shape ", shape_str(*p), " is not broadcastable to a ",
                shape_str(a));
  }
}

namespace {
void check_finite(const char* rule, const char* name, double v) {
  TORCH_CHECK(std::isfinite(v), rule, ": ", name, " must be a finite number, got ", v);
}
void check_stabilizer(const char* rule, const char* name, double v) {
  check_finite(rule, name, v);
  TORCH_CHECK(v >= 0, rule, ": ", name, " must be >= 0, got ", v);
}
}  // namespace

void check_epsilon(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                   const c10::optional<at::Tensor>& b, double epsilon) {
  check_dense("epsilon", R, a, W, b);
  check_stabilizer("epsilon", "epsilon", epsilon);
}

void check_gamma(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                 const c10::optional<at::Tensor>& b, double gamma, double stabilizer) {
  check_dense("gamma", R, a, W, b);
  check_finite("gamma", "gamma", gamma);
  check_stabilizer("gamma", "stabilizer", stabilizer);
}

void check_alpha_beta(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                      const c10::optional<at::Tensor>& b, double alpha, double beta,
                      double stabilizer) {
  check_dense("alpha_beta", R, a, W, b);
  check_finite("alpha_beta", "alpha", alpha);
  check_finite("alpha_beta", "beta", beta);
  TORCH_CHECK(alpha >= 0 && beta >= 0 && std::abs(alpha - beta - 1.0) <= 1e-9,
              "alpha_beta needs alpha >= 0, beta >= 0 and alpha - beta = 1, got alpha=", alpha,
              ", beta=", beta);
  check_stabilizer("alpha_beta", "stabilizer", stabilizer);
}

void check_flat(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W, double stabilizer) {
  check_dense("flat", R, a, W, c10::nullopt);
  check_stabilizer("flat", "stabilizer", stabilizer);
}

void check_w_square(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                    const c10::optional<at::Tensor>& b, double stabilizer) {
  check_dense("w_square", R, a, W, b);
  check_stabilizer("w_square", "stabilizer", stabilizer);
}

void check_z_box(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                 const at::Tensor& low, const at::Tensor& high, double stabilizer) {
  check_dense("z_box", R, a, W, c10::nullopt);
  check_bounds(a, low, high);
  check_stabilizer("z_box", "stabilizer", stabilizer);
}

}  // namespace lrp_ext
