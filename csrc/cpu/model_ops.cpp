// CPU kernels of the model-level stages of a layer rule (schemas in csrc/lrp.cpp):
// - coefficients: one pass over z, g and P instead of about a dozen eager passes. The per-value
//   math is csrc/rule_math.h (rule::single, rule::pair_pmz), shared with the dense epilogues and
//   the CUDA kernel; the loops are in kernels.h, compiled once per ISA.
// - signed_weights: [W⁺; W⁻] of a BatchNorm-merged weight in one pass over W (rule::pos/neg).
// - safe_ratio: y / x, 0 where x == 0 (rule::safe_ratio), the identity rule's ratio; times g,
//   its gradient.
// - sign_sum: A ± B by the sign of x (rule::sign_sum), the gradient at a mixed-sign input of γ.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/kernels_api.h"
#include "lrp.h"
#include "rule_math.h"

namespace lrp_ext {
namespace cpu {
namespace {

using at::Tensor;

// Values per task: enough to amortise a task (a few L2-sized blocks per thread).
constexpr int64_t kGrain = 1 << 15;

Tensor coefficients_cpu(const Tensor& z_, const Tensor& g_, const c10::optional<Tensor>& P_,
                        const c10::optional<Tensor>& M_, int64_t kind, int64_t groups, double e, double gamma, double alpha,
                        double beta, bool times_z) {
  check_coefficients(z_, g_, P_, M_, kind, groups, e, gamma, alpha, beta);
  TORCH_CHECK(z_.device().is_cpu(), "coefficients: the CPU kernel got a tensor on ", z_.device());
  const Tensor z = z_.contiguous(), g = g_.contiguous();
  const Tensor P = P_.has_value() ? P_->contiguous() : Tensor();
  const Tensor M = M_.has_value() ? M_->contiguous() : Tensor();
  const int64_t N = g.size(0), rows = N * groups, zrows = z.size(0) * groups;
  const int64_t inner = rows == 0 ? 0 : g.numel() / rows;
  const std::vector<int64_t> shape = coefficients_shape(z, g, kind, groups);
  Tensor out = at::empty(shape, z.options());
  if (g.numel() == 0) return out;
  CoefJob job{static_cast<int>(kind), z.scalar_type() == at::kDouble, times_z, z.data_ptr(),
              g.data_ptr(), P.defined() ? P.data_ptr() : nullptr,
              M.defined() ? M.data_ptr() : nullptr, out.data_ptr(), inner,
              zrows, g.numel(), e, gamma, alpha, beta};
  const Isa isa = pick_isa();
  // tasks: (row, chunk of the row), so one sample with one group still spreads over threads
  const int64_t chunks = (inner + kGrain - 1) / kGrain;
  at::parallel_for(0, rows * chunks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t row = t / chunks, k0 = (t % chunks) * kGrain;
      const int64_t k1 = std::min(inner, k0 + kGrain);
      switch (isa) {
        case Isa::AVX512: avx512::coef_range(job, row, k0, k1); break;
        case Isa::AVX2: avx2::coef_range(job, row, k0, k1); break;
        case Isa::BASE: base::coef_range(job, row, k0, k1); break;
      }
    }
  });
  return out;
}

template <class T>
void signed_rows(const T* W, const T* scale, T* out, int64_t O, int64_t groups, int64_t len,
                 bool both, int64_t o0, int64_t o1) {
  const int64_t Og = O / groups;
  for (int64_t o = o0; o < o1; ++o) {
    const T s = scale ? scale[o] : T(1);
    const T* w = W + o * len;
    const int64_t gi = o / Og, oc = o - gi * Og;
    T* p = out + (both ? (gi * 2 * Og + oc) : o) * len;
    T* n = p + Og * len;
    for (int64_t k = 0; k < len; ++k) {
      const T v = scale ? w[k] * s : w[k];
      p[k] = rule::pos(v);
      if (both) n[k] = rule::neg(v);
    }
  }
}

Tensor signed_weights_cpu(const Tensor& W_, const c10::optional<Tensor>& scale_, int64_t groups,
                          bool both) {
  check_signed_weights(W_, scale_, groups);
  TORCH_CHECK(W_.device().is_cpu(), "signed_weights: the CPU kernel got a tensor on ",
              W_.device());
  const Tensor W = W_.contiguous();
  const Tensor scale = scale_.has_value() ? scale_->contiguous() : Tensor();
  const int64_t O = W.size(0), len = O == 0 ? 0 : W.numel() / O;
  std::vector<int64_t> shape = W.sizes().vec();
  if (both) shape[0] *= 2;
  Tensor out = at::empty(shape, W.options());
  if (W.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(W.scalar_type(), "lrp_ext_signed_weights", [&] {
    const scalar_t* sp = scale.defined() ? scale.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, O, std::max<int64_t>(1, kGrain / std::max<int64_t>(1, len)),
                     [&](int64_t o0, int64_t o1) {
                       signed_rows<scalar_t>(W.data_ptr<scalar_t>(), sp,
                                             out.data_ptr<scalar_t>(), O, groups, len, both, o0,
                                             o1);
                     });
  });
  return out;
}

Tensor safe_ratio_cpu(const Tensor& y_, const Tensor& x_, const c10::optional<Tensor>& g_) {
  check_safe_ratio(y_, x_, g_);
  TORCH_CHECK(x_.device().is_cpu(), "safe_ratio: the CPU kernel got a tensor on ", x_.device());
  const Tensor y = y_.contiguous(), x = x_.contiguous();
  const Tensor g = g_.has_value() ? g_->contiguous() : Tensor();
  Tensor out = at::empty(g.defined() ? g.sizes() : x.sizes(), x.options());
  if (out.numel() == 0) return out;
  const bool f64 = x.scalar_type() == at::kDouble;
  const void* gp = g.defined() ? g.data_ptr() : nullptr;
  const int64_t n = x.numel();
  const Isa isa = pick_isa();
  at::parallel_for(0, out.numel(), kGrain, [&](int64_t k0, int64_t k1) {
    switch (isa) {
      case Isa::AVX512: return avx512::ratio_range(y.data_ptr(), x.data_ptr(), gp, out.data_ptr(), f64, n, k0, k1);
      case Isa::AVX2: return avx2::ratio_range(y.data_ptr(), x.data_ptr(), gp, out.data_ptr(), f64, n, k0, k1);
      case Isa::BASE: return base::ratio_range(y.data_ptr(), x.data_ptr(), gp, out.data_ptr(), f64, n, k0, k1);
    }
  });
  return out;
}

Tensor sign_sum_cpu(const Tensor& A_, const Tensor& B_, const Tensor& x_) {
  check_sign_sum(A_, B_, x_);
  TORCH_CHECK(x_.device().is_cpu(), "sign_sum: the CPU kernel got a tensor on ", x_.device());
  const Tensor A = A_.contiguous(), B = B_.contiguous(), x = x_.contiguous();
  Tensor out = at::empty(A.sizes(), A.options());
  if (A.numel() == 0) return out;
  const bool f64 = x.scalar_type() == at::kDouble;
  const int64_t n = x.numel();
  const Isa isa = pick_isa();
  at::parallel_for(0, A.numel(), kGrain, [&](int64_t k0, int64_t k1) {
    switch (isa) {
      case Isa::AVX512: return avx512::sign_sum_range(x.data_ptr(), A.data_ptr(), B.data_ptr(), out.data_ptr(), f64, n, k0, k1);
      case Isa::AVX2: return avx2::sign_sum_range(x.data_ptr(), A.data_ptr(), B.data_ptr(), out.data_ptr(), f64, n, k0, k1);
      case Isa::BASE: return base::sign_sum_range(x.data_ptr(), A.data_ptr(), B.data_ptr(), out.data_ptr(), f64, n, k0, k1);
    }
  });
  return out;
}

}  // namespace
}  // namespace cpu
}  // namespace lrp_ext

TORCH_LIBRARY_IMPL(lrp_ext, CPU, m) {
  m.impl("sign_sum", &lrp_ext::cpu::sign_sum_cpu);
  m.impl("safe_ratio", &lrp_ext::cpu::safe_ratio_cpu);
  m.impl("coefficients", &lrp_ext::cpu::coefficients_cpu);
  m.impl("signed_weights", &lrp_ext::cpu::signed_weights_cpu);
}
