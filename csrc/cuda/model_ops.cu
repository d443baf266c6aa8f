// CUDA kernels of the model-level stages of a layer rule (schemas in csrc/lrp.cpp; CPU kernels
// csrc/cpu/model_ops.cpp), each one grid-stride pass; the per-value math is csrc/rule_math.h,
// the very functions the CPU suite tests.
// coefficients: over z, g, P and M.
// Rows of `inner` contiguous values (row = sample × group); out: (rows, 2, inner) for gamma /
// alpha_beta, (rows, inner) for epsilon / z⁺. float32 and float64 (callers compute 2-byte
// types in float32). The rule is a run-time argument: one instantiation per dtype.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "lrp.h"
#include "rule_math.h"

namespace lrp_ext {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads)
coefficients_kernel(const T* __restrict__ z, const T* __restrict__ g, const T* __restrict__ P,
                    const T* __restrict__ M, T* __restrict__ out, int64_t total, int64_t inner,
                    int64_t ztotal, int kind, bool times_z, rule::Params<T> prm) {
  const bool two = rule::is_signed(kind);
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t zi = idx % ztotal;  // g holds K stacked gradients of z's shape
    const T zk = z[zi];
    const T r = times_z ? zk * g[idx] : g[idx];
    if (two) {
      const T Pk = P[zi];
      const T Mk = M != nullptr ? M[zi] : zk - Pk;
      T cp, cn;
      if (kind == rule::GAMMA)
        rule::pair_pmz<rule::GAMMA>(prm, Pk, Mk, zk, r, cp, cn);
      else
        rule::pair_pmz<rule::AB>(prm, Pk, Mk, zk, r, cp, cn);
      const int64_t row = idx / inner, k = idx - row * inner;
      out[(2 * row) * inner + k] = cp;
      out[(2 * row + 1) * inner + k] = cn;
    } else if (kind == rule::EPS) {
      out[idx] = rule::single<rule::EPS>(prm, zk, r, T(0));
    } else {
      out[idx] = rule::single<rule::ZPLUS>(prm, P[zi], r, T(0));
    }
  }
}

at::Tensor coefficients_cuda(const at::Tensor& z_, const at::Tensor& g_,
                             const c10::optional<at::Tensor>& P_,
                             const c10::optional<at::Tensor>& M_, int64_t kind, int64_t groups,
                             double e, double gamma, double alpha, double beta, bool times_z) {
  check_coefficients(z_, g_, P_, M_, kind, groups, e, gamma, alpha, beta);
  TORCH_CHECK(z_.is_cuda(), "coefficients: the CUDA kernel got a tensor on ", z_.device());
  c10::cuda::CUDAGuard guard(z_.device());
  const at::Tensor z = z_.contiguous(), g = g_.contiguous();
  const at::Tensor P = P_.has_value() ? P_->contiguous() : at::Tensor();
  const at::Tensor M = M_.has_value() ? M_->contiguous() : at::Tensor();
  const std::vector<int64_t> shape = coefficients_shape(z, g, kind, groups);
  at::Tensor out = at::empty(shape, z.options());
  const int64_t total = g.numel();
  if (total == 0) return out;
  const int64_t inner = total / (g.size(0) * groups);
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t blocks = std::max<int64_t>(
      1, std::min<int64_t>((total + kThreads - 1) / kThreads, sms * 16));
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "lrp_ext_coefficients", [&] {
    const rule::Params<scalar_t> prm{static_cast<scalar_t>(e), static_cast<scalar_t>(gamma),
                                     static_cast<scalar_t>(alpha), static_cast<scalar_t>(beta)};
    coefficients_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0,
                                    at::cuda::getCurrentCUDAStream()>>>(
        z.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(),
        P.defined() ? P.data_ptr<scalar_t>() : nullptr,
        M.defined() ? M.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), total, inner,
        z.numel(), static_cast<int>(kind), times_z, prm);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// signed_weights: thread per output value; row o of W goes to row (g, half, o mod O/g).
template <typename T>
__global__ void __launch_bounds__(kThreads)
signed_weights_kernel(const T* __restrict__ W, const T* __restrict__ scale, T* __restrict__ out,
                      int64_t O, int64_t Og, int64_t len, bool both) {
  const int64_t total = O * len;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = idx / len, k = idx - o * len;
    const T v = scale != nullptr ? W[idx] * scale[o] : W[idx];
    if (!both) {
      out[idx] = rule::pos(v);
      continue;
    }
    const int64_t gi = o / Og, oc = o - gi * Og;
    const int64_t p = (gi * 2 * Og + oc) * len + k;
    out[p] = rule::pos(v);
    out[p + Og * len] = rule::neg(v);
  }
}

at::Tensor signed_weights_cuda(const at::Tensor& W_, const c10::optional<at::Tensor>& scale_,
                               int64_t groups, bool both) {
  check_signed_weights(W_, scale_, groups);
  TORCH_CHECK(W_.is_cuda(), "signed_weights: the CUDA kernel got a tensor on ", W_.device());
  c10::cuda::CUDAGuard guard(W_.device());
  const at::Tensor W = W_.contiguous();
  const at::Tensor scale = scale_.has_value() ? scale_->contiguous() : at::Tensor();
  const int64_t O = W.size(0), total = W.numel();
  std::vector<int64_t> shape = W.sizes().vec();
  if (both) shape[0] *= 2;
  at::Tensor out = at::empty(shape, W.options());
  if (total == 0) return out;
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t blocks = std::max<int64_t>(
      1, std::min<int64_t>((total + kThreads - 1) / kThreads, sms * 16));
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "lrp_ext_signed_weights", [&] {
    signed_weights_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0,
                                      at::cuda::getCurrentCUDAStream()>>>(
        W.data_ptr<scalar_t>(), scale.defined() ? scale.data_ptr<scalar_t>() : nullptr,
        out.data_ptr<scalar_t>(), O, O / groups, total / O, both);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace lrp_ext

TORCH_LIBRARY_IMPL(lrp_ext, CUDA, m) {
  m.impl("coefficients", &lrp_ext::coefficients_cuda);
  m.impl("signed_weights", &lrp_ext::signed_weights_cuda);
}
