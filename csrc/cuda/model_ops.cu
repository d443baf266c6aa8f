// CUDA kernels of the model-level stages of a layer rule (schemas in csrc/lrp.cpp; CPU kernels
// csrc/cpu/model_ops.cpp), each one grid-stride pass; the per-value math is csrc/rule_math.h,
// the very functions the CPU suite tests.
// coefficients: over z, g, P and M; signed_weights: over W; safe_ratio: over y and x; sign_sum:
// over A, B and x. Rows of `inner` contiguous values (row = sample × group); out: (rows, 2,
// inner) for gamma / alpha_beta, (2, rows, inner) for gamma_mixed, (rows, inner) for epsilon / z⁺. float32 and float64 (callers compute 2-byte
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

// grid-stride launches: enough blocks to fill the device, no more than the work needs
int64_t grid_for(int64_t total) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, sms * 16));
}

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
    if (kind == rule::GAMMA_MIXED) {  // out: (2, total): the half sum, then the half difference
      T cs, cd;
      rule::gamma_mixed(prm, P[zi], zk, r, cs, cd);
      out[idx] = cs;
      out[total + idx] = cd;
    } else if (two) {
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
  const int64_t blocks = grid_for(total);
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
  const int64_t blocks = grid_for(total);
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "lrp_ext_signed_weights", [&] {
    signed_weights_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0,
                                      at::cuda::getCurrentCUDAStream()>>>(
        W.data_ptr<scalar_t>(), scale.defined() ? scale.data_ptr<scalar_t>() : nullptr,
        out.data_ptr<scalar_t>(), O, O / groups, total / O, both);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// safe_ratio: thread per output value (y and x repeat along g's leading copies).
template <typename T>
__global__ void __launch_bounds__(kThreads)
safe_ratio_kernel(const T* __restrict__ y, const T* __restrict__ x, const T* __restrict__ g,
                  T* __restrict__ out, int64_t total, int64_t n) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T r = rule::safe_ratio(y[idx % n], x[idx % n]);
    out[idx] = g != nullptr ? g[idx] * r : r;
  }
}

at::Tensor safe_ratio_cuda(const at::Tensor& y_, const at::Tensor& x_,
                           const c10::optional<at::Tensor>& g_) {
  check_safe_ratio(y_, x_, g_);
  TORCH_CHECK(x_.is_cuda(), "safe_ratio: the CUDA kernel got a tensor on ", x_.device());
  c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor y = y_.contiguous(), x = x_.contiguous();
  const at::Tensor g = g_.has_value() ? g_->contiguous() : at::Tensor();
  at::Tensor out = at::empty(g.defined() ? g.sizes() : x.sizes(), x.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  const int64_t blocks = grid_for(total);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lrp_ext_safe_ratio", [&] {
    safe_ratio_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0,
                                  at::cuda::getCurrentCUDAStream()>>>(
        y.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
        g.defined() ? g.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), total,
        x.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// sign_sum: thread per value of A (x's values repeat along A's leading copies).
template <typename T>
__global__ void __launch_bounds__(kThreads)
sign_sum_kernel(const T* __restrict__ x, const T* __restrict__ A, const T* __restrict__ B,
                T* __restrict__ out, int64_t total, int64_t n) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[idx] = rule::sign_sum(x[idx % n], A[idx], B[idx]);
}

at::Tensor sign_sum_cuda(const at::Tensor& A_, const at::Tensor& B_, const at::Tensor& x_) {
  check_sign_sum(A_, B_, x_);
  TORCH_CHECK(x_.is_cuda(), "sign_sum: the CUDA kernel got a tensor on ", x_.device());
  c10::cuda::CUDAGuard guard(x_.device());
  const at::Tensor A = A_.contiguous(), B = B_.contiguous(), x = x_.contiguous();
  at::Tensor out = at::empty(A.sizes(), A.options());
  const int64_t total = A.numel();
  if (total == 0) return out;
  const int64_t blocks = grid_for(total);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lrp_ext_sign_sum", [&] {
    sign_sum_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0,
                                at::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(), B.data_ptr<scalar_t>(),
        out.data_ptr<scalar_t>(), total, x.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace lrp_ext

TORCH_LIBRARY_IMPL(lrp_ext, CUDA, m) {
  m.impl("sign_sum", &lrp_ext::sign_sum_cuda);
  m.impl("safe_ratio", &lrp_ext::safe_ratio_cuda);
  m.impl("coefficients", &lrp_ext::coefficients_cuda);
  m.impl("signed_weights", &lrp_ext::signed_weights_cuda);
}
