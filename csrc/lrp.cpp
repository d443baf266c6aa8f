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
  // The elementwise stage of a conv / linear layer's rule at model level: z (N, O, *sp) the
  // layer output, g its gradient (r = z ⊙ g when times_z, else g is the relevance r) of
  // shape (K·N, O, *sp) (K ≥ 1 gradients of one forward, stacked; z, P, M repeat), P the
  // positive sum Σ(aW)⁺ + b⁺ (z⁺, gamma, alpha_beta; None for epsilon), M the negative sum
  // Σ(aW)⁻ + b⁻ (gamma, alpha_beta; None: M = z − P, when z is the layer's output). Returns the rule's
  // coefficients at the outputs: g's shape for epsilon / z⁺, the stacked [c⁺; c⁻]
  // (K·N, groups, 2, O/groups, *sp) for gamma / alpha_beta, the halves (2, K·N, O, *sp) of
  // gamma_mixed (P is then S = |a|∗|W| + |b|, M unused). kind: 0 epsilon, 1 z⁺, 4 gamma,
  // 5 alpha_beta, 6 gamma_mixed (csrc/rule_math.h); e the stabiliser.
  m.def("coefficients(Tensor z, Tensor g, Tensor? P, Tensor? M, int kind, int groups, float e, float gamma, "
        "float alpha, float beta, bool times_z) -> Tensor");
  // The sign-split weights of a (non-transposed) conv / linear layer with weight W (O, C/g, *k)
  // whose output channels are scaled by `scale` (O,) (a merged BatchNorm; None: 1), in one pass:
  // both: [W⁺; W⁻] stacked per group, (2O, C/g, *k) laid out (g, 2, O/g, C/g, *k); else W⁺.
  m.def("signed_weights(Tensor W, Tensor? scale, int groups, bool both) -> Tensor");
  // y / x with 0 where x == 0 (the identity rule's ratio of an elementwise activation), one
  // pass; y and x of one shape, float32 or float64. With g (x's shape, or K copies stacked
  // along dim 0): g ⊙ y / x (0·g where x == 0), the identity rule's gradient.
  m.def("safe_ratio(Tensor y, Tensor x, Tensor? g=None) -> Tensor");
  // A + B where x >= 0 (or NaN), A − B where x < 0 (γ's gradient at an input of both signs,
  // from coefficients' gamma_mixed halves); A and B of one shape, x's or K stacked along dim 0.
  m.def("sign_sum(Tensor A, Tensor B, Tensor x) -> Tensor");
}

#include <algorithm>
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

void check_coefficients(const at::Tensor& z, const at::Tensor& g, const c10::optional<at::Tensor>& P,
                        const c10::optional<at::Tensor>& M, int64_t kind, int64_t groups, double e, double gamma, double alpha,
                        double beta) {
  const char* op = "coefficients";
  TORCH_CHECK(kind == 0 || kind == 1 || kind == 4 || kind == 5 || kind == 6, op,
              ": kind must be 0 (epsilon), 1 (z_plus), 4 (gamma), 5 (alpha_beta) or 6 "
              "(gamma_mixed), got ", kind);
  TORCH_CHECK(z.dim() >= 2, op, ": z must be (N, O, ...), got shape ", shape_str(z));
  TORCH_CHECK(groups >= 1 && z.size(1) % groups == 0, op, ": groups=", groups,
              " must divide z's dim 1 (", z.size(1), ")");
  TORCH_CHECK(z.scalar_type() == at::kFloat || z.scalar_type() == at::kDouble, op,
              ": z must be float32 or float64, got ", z.scalar_type());
  auto same = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.sizes() == z.sizes(), op, ": ", name, " must have z's shape ", shape_str(z),
                ", got ", shape_str(t));
    TORCH_CHECK(t.scalar_type() == z.scalar_type(), op, ": dtype mismatch: z is ",
                z.scalar_type(), " but ", name, " is ", t.scalar_type());
    TORCH_CHECK(t.device() == z.device(), op, ": device mismatch: z is on ", z.device(), " but ",
                name, " is on ", t.device());
  };
  TORCH_CHECK(g.dim() == z.dim() && g.sizes().slice(1) == z.sizes().slice(1) &&
                  (z.size(0) == 0 ? g.size(0) == 0 : g.size(0) % z.size(0) == 0),
              op, ": g must have z's shape ", shape_str(z), " or a multiple of its batch, got ",
              shape_str(g));
  TORCH_CHECK(g.scalar_type() == z.scalar_type(), op, ": dtype mismatch: z is ",
              z.scalar_type(), " but g is ", g.scalar_type());
  TORCH_CHECK(g.device() == z.device(), op, ": device mismatch: z is on ", z.device(),
              " but g is on ", g.device());
  TORCH_CHECK(kind == 0 || P.has_value(), op, ": P is needed for kind ", kind);
  if (P.has_value()) same(*P, "P");
  TORCH_CHECK(kind != 6 || !M.has_value(), op, ": kind 6 (gamma_mixed) takes no M");
  if (M.has_value()) same(*M, "M");
  check_stabilizer(op, "e", e);
  check_finite(op, "gamma", gamma);
  check_finite(op, "alpha", alpha);
  check_finite(op, "beta", beta);
}

std::vector<int64_t> coefficients_shape(const at::Tensor& z, const at::Tensor& g, int64_t kind,
                                        int64_t groups) {
  if (kind == 6) {
    std::vector<int64_t> shape = {2};
    for (int64_t d = 0; d < g.dim(); ++d) shape.push_back(g.size(d));
    return shape;
  }
  if (kind != 4 && kind != 5) return g.sizes().vec();
  std::vector<int64_t> shape = {g.size(0), groups, 2, z.size(1) / groups};
  for (int64_t d = 2; d < z.dim(); ++d) shape.push_back(z.size(d));
  return shape;
}

namespace {
// t has x's shape, or K copies of it stacked along dim 0; one dtype and device with x
void check_stacked(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  const int64_t d = std::min<int64_t>(1, x.dim());
  TORCH_CHECK(t.dim() == x.dim() && t.sizes().slice(d) == x.sizes().slice(d) &&
                  (x.dim() == 0 || (x.size(0) == 0 ? t.size(0) == 0 : t.size(0) % x.size(0) == 0)),
              op, ": ", name, " must have x's shape ", shape_str(x),
              " or a multiple of its batch, got ", shape_str(t));
  TORCH_CHECK(t.scalar_type() == x.scalar_type() && t.device() == x.device(), op, ": ", name,
              " and x must have one dtype and device, got ", t.scalar_type(), " on ", t.device(),
              " and ", x.scalar_type(), " on ", x.device());
}
}  // namespace

void check_safe_ratio(const at::Tensor& y, const at::Tensor& x,
                      const c10::optional<at::Tensor>& g) {
  TORCH_CHECK(y.sizes() == x.sizes(), "safe_ratio: y and x must have one shape, got ",
              shape_str(y), " and ", shape_str(x));
  TORCH_CHECK(x.scalar_type() == y.scalar_type() && x.device() == y.device(),
              "safe_ratio: y and x must have one dtype and device, got ", y.scalar_type(), " on ",
              y.device(), " and ", x.scalar_type(), " on ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "safe_ratio: float32 or float64 only, got ", x.scalar_type());
  if (g.has_value()) check_stacked("safe_ratio", "g", *g, x);
}

void check_sign_sum(const at::Tensor& A, const at::Tensor& B, const at::Tensor& x) {
  const char* op = "sign_sum";
  TORCH_CHECK(A.sizes() == B.sizes(), op, ": A and B must have one shape, got ", shape_str(A),
              " and ", shape_str(B));
  check_stacked(op, "A", A, x);
  check_stacked(op, "B", B, x);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": float32 or float64 only, got ", x.scalar_type());
}

void check_signed_weights(const at::Tensor& W, const c10::optional<at::Tensor>& scale,
                          int64_t groups) {
  const char* op = "signed_weights";
  TORCH_CHECK(W.dim() >= 2, op, ": W must be (O, C/groups, *k), got shape ", shape_str(W));
  TORCH_CHECK(W.scalar_type() == at::kFloat || W.scalar_type() == at::kDouble, op,
              ": W must be float32 or float64, got ", W.scalar_type());
  TORCH_CHECK(groups >= 1 && W.size(0) % groups == 0, op, ": groups=", groups,
              " must divide W's dim 0 (", W.size(0), ")");
  if (scale.has_value()) {
    TORCH_CHECK(scale->dim() == 1 && scale->size(0) == W.size(0), op,
                ": scale must have shape (", W.size(0), ",), got ", shape_str(*scale));
    TORCH_CHECK(scale->scalar_type() == W.scalar_type() && scale->device() == W.device(), op,
                ": scale must have W's dtype and device (", W.scalar_type(), ", ", W.device(),
                "), got ", scale->scalar_type(), ", ", scale->device());
  }
}

}  // namespace lrp_ext
