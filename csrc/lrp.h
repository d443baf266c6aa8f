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

}  // namespace lrp_ext
