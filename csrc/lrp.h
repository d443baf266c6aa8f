// Shared declarations of the lrp_ext kernels: the argument checks every backend runs first.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Optional.h>

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

}  // namespace lrp_ext
