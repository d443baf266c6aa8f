// Shared declarations of the lrp_ext kernels: the argument checks every backend runs first.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Optional.h>

#include <vector>

namespace lrp_ext {

// Checks R (..., O), a (..., I), W (O, I), b (O,) for a dense rule named `rule`: ranks, sizes,
// dtypes and devices; the messages name the argument and the shapes.
void check_dense(const char* rule, const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                 const c10::optional<at::Tensor>& b);
// low/high of z_box: the same shape as a after broadcasting, same dtype and device.
void check_bounds(const at::Tensor& a, const at::Tensor& low, const at::Tensor& high);

// Every argument check of each op, in one place: the CPU and the CUDA kernels call these first
// (tensors as above; stabilizers finite and >= 0; gamma finite; alpha >= 0, beta >= 0 and
// alpha - beta = 1, as lrp_ext._checks does for the Python entry points).
void check_epsilon(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                   const c10::optional<at::Tensor>& b, double epsilon);
void check_gamma(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                 const c10::optional<at::Tensor>& b, double gamma, double stabilizer);
void check_alpha_beta(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                      const c10::optional<at::Tensor>& b, double alpha, double beta,
                      double stabilizer);
void check_flat(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W, double stabilizer);
void check_w_square(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                    const c10::optional<at::Tensor>& b, double stabilizer);
void check_z_box(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                 const at::Tensor& low, const at::Tensor& high, double stabilizer);

// coefficients: z, g, P (when the rule reads it), M (optional) of one shape and dtype (float32/float64) on
// one device, groups dividing dim 1, kind one of EPS, ZPLUS, GAMMA, AB, GAMMA_MIXED (no M); the
// scalars as above.
void check_coefficients(const at::Tensor& z, const at::Tensor& g, const c10::optional<at::Tensor>& P,
                        const c10::optional<at::Tensor>& M, int64_t kind, int64_t groups, double e, double gamma, double alpha,
                        double beta);
// The shape of coefficients' result: g's, (N, groups, 2, O/groups, *sp) for the
// two-coefficient rules (N = g.size(0)), (2, *g's shape) for GAMMA_MIXED.
std::vector<int64_t> coefficients_shape(const at::Tensor& z, const at::Tensor& g, int64_t kind,
                                        int64_t groups);
// safe_ratio: y, x of one shape, dtype (float32/float64) and device; g of x's shape or K copies
// stacked along dim 0, same dtype and device.
void check_safe_ratio(const at::Tensor& y, const at::Tensor& x,
                      const c10::optional<at::Tensor>& g);
// sign_sum: A, B of one shape (x's, or K copies stacked along dim 0), one dtype (float32/float64)
// and device with x.
void check_sign_sum(const at::Tensor& A, const at::Tensor& B, const at::Tensor& x);
// signed_weights: W (O, ...) float32/float64, groups dividing O, scale (O,) of W's dtype/device.
void check_signed_weights(const at::Tensor& W, const c10::optional<at::Tensor>& scale,
                          int64_t groups);

}  // namespace lrp_ext
