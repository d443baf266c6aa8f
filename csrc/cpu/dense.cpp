// CPU kernels of the dense rules: argument checks, path choice and the fused epilogues.
//
// Every rule is two products over W plus cheap elementwise stages. With p = a_i W_oi,
// P = sum p⁺ + b⁺ and M = sum p⁻ + b⁻ (so z = P + M), the spec's rules reduce to:
//   gamma      c⁺ = (1+γ)s_p + s_n, c⁻ = s_p + (1+γ)s_n with s_p = R[z>0]/stab(z+γP),
//              s_n = R[z<0]/stab(z+γM)
//   alpha_beta c⁺ = αR/stab(P), c⁻ = −βR/stab(M)
//   and R_in = a⁺ ⊙ (c⁺W⁺ + c⁻W⁻) + a⁻ ⊙ (c⁻W⁺ + c⁺W⁻) (the a⁻ half vanishes when a ≥ 0).
// epsilon, z⁺ (β = 0), w² and z^B need one coefficient per output; see plan_for().
//
// Two paths: "fused" streams W once per product and applies ρ (W⁺, W⁻, W²) while reading it
// (kernels.h, one copy per ISA), for the memory-bound small batch; "gemm" builds the modified
// weights once (stacked so that one matmul yields every partial product) and calls ATen's
// matmul (MKL / oneDNN), for the compute-bound large batch. The elementwise stages are the same
// loops for both. Testing knobs, read at each call: LRP_EXT_CPU_PATH=auto|fused|gemm,
// LRP_EXT_CPU_ISA=auto|avx512|avx2|scalar, LRP_EXT_ASSUME_MIXED=1 (never skip the a⁻ terms).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <functional>
#include <cstdlib>
#include <cstring>

#include "cpu/kernels_api.h"
#include "lrp.h"

namespace lrp_ext {
namespace cpu {
namespace {

using at::Tensor;

// ---------------------------------------------------------------- configuration knobs
const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

enum class Isa { AVX512, AVX2, BASE };

Isa pick_isa() {
  static const bool has512 = __builtin_cpu_supports("avx512f") &&
                             __builtin_cpu_supports("avx512bw") &&
                             __builtin_cpu_supports("avx512vl") &&
                             __builtin_cpu_supports("avx512dq");
  static const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const char* want = env("LRP_EXT_CPU_ISA");
  if (!std::strcmp(want, "scalar")) return Isa::BASE;
  if (!std::strcmp(want, "avx2")) {
    TORCH_CHECK(has2, "LRP_EXT_CPU_ISA=avx2 but this CPU lacks AVX2/FMA");
    return Isa::AVX2;
  }
  if (!std::strcmp(want, "avx512")) {
    TORCH_CHECK(has512, "LRP_EXT_CPU_ISA=avx512 but this CPU lacks AVX-512");
    return Isa::AVX512;
  }
  return has512 ? Isa::AVX512 : has2 ? Isa::AVX2 : Isa::BASE;
}

// Largest batch for which streaming W in the fused kernels beats building modified weights
// and calling MKL (measured with benchmarks/bench_layers.py; see README).
constexpr int64_t kFusedMaxN = 32;

bool use_fused(int64_t N) {
  const char* p = env("LRP_EXT_CPU_PATH");
  if (!std::strcmp(p, "fused")) return true;
  if (!std::strcmp(p, "gemm")) return false;
  return N <= kFusedMaxN;
}

bool assume_mixed() { return !std::strcmp(env("LRP_EXT_ASSUME_MIXED"), "1"); }

void run_forward(const Job& job) {
  const Isa isa = pick_isa();
  constexpr int64_t kRows = 8;  // a multiple of every register block's row count
  const int64_t blocks = (job.O + kRows - 1) / kRows;
  const int64_t work = std::max<int64_t>(1, job.N) * job.I * kRows;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, work));
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    const int64_t o0 = b0 * kRows, o1 = std::min(job.O, b1 * kRows);
    switch (isa) {
      case Isa::AVX512: return avx512::forward_range(job, o0, o1);
      case Isa::AVX2: return avx2::forward_range(job, o0, o1);
      case Isa::BASE: return base::forward_range(job, o0, o1);
    }
  });
}

// Row-parallel backward: each chunk of rows accumulates into its own buffer, summed after.
Tensor run_backward(const Job& job, int64_t KO, at::ScalarType acc) {
  const Isa isa = pick_isa();
  const int64_t min_rows = std::max<int64_t>(8, (int64_t(1) << 15) / std::max<int64_t>(1, job.I));
  const int64_t chunks = std::max<int64_t>(
      1, std::min<int64_t>(at::get_num_threads(), job.O / min_rows));
  Tensor buf = at::zeros({chunks, KO, job.N, job.I}, at::TensorOptions().dtype(acc));
  const int64_t per = (job.O + chunks - 1) / chunks;
  const int64_t esz = at::elementSize(acc);
  char* base_ptr = static_cast<char*>(buf.data_ptr());
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t o0 = std::min(job.O, c * per), o1 = std::min(job.O, o0 + per);
      void* dst = base_ptr + c * KO * job.N * job.I * esz;
      switch (isa) {
        case Isa::AVX512: avx512::backward_range(job, o0, o1, dst); break;
        case Isa::AVX2: avx2::backward_range(job, o0, o1, dst); break;
        case Isa::BASE: base::backward_range(job, o0, o1, dst); break;
      }
    }
  });
  return chunks == 1 ? buf[0] : buf.sum(0);
}

// ---------------------------------------------------------------- rule plans
enum class Epi { EPS, ZPLUS, BOX, GAMMA, AB, WSQ };
enum class Fin { A, TWO, PLAIN };

struct Params {
  double e = 1e-6, gamma = 0, alpha = 1, beta = 0;
};

struct Plan {
  Combo fwd, bwd;
  Epi epi;
  Fin fin;
  int ki() const { return fwd == MERGE || fwd == CROSS ? 2 : 1; }
  int kz() const { return fwd == SPLIT || fwd == CROSS ? 2 : 1; }
  int kc() const { return bwd == MERGE || bwd == CROSS ? 2 : 1; }
  int kt() const { return bwd == SPLIT || bwd == CROSS ? 2 : 1; }
};

// Strided view of a (K, N, L) array: element (k, n, l) at p[k * sk + n * sn + l].
template <class T> struct Arr {
  T* p;
  int64_t sk, sn;
  T& operator()(int64_t k, int64_t n, int64_t l) const { return p[k * sk + n * sn + l]; }
};
// fused layout (K, N, L) contiguous; gemm layout (N, K * L) for a stacked matmul
template <class T> Arr<T> arr(const Tensor& t, int64_t K, int64_t N, int64_t L, bool fused) {
  return fused ? Arr<T>{t.data_ptr<T>(), N * L, L} : Arr<T>{t.data_ptr<T>(), L, K * L};
}

template <class T> inline T stab(T z, double e) { return z + T(e) * (z >= 0 ? T(1) : T(-1)); }
template <class T> inline T pos(T x) { return x < 0 ? T(0) : x; }
template <class T> inline T neg(T x) { return x > 0 ? T(0) : x; }

void par(int64_t n, const std::function<void(int64_t, int64_t)>& f) {
  at::parallel_for(0, n, 1 << 14, f);
}

// forward epilogue: z (kz, N, O) -> coefficients c (kc, N, O)
template <class T>
void epilogue(const Plan& pl, const Params& pr, Arr<T> z, Arr<T> c, const T* R, const T* b,
              const T* zrow, int64_t N, int64_t O) {
  par(N * O, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t n = j / O, o = j % O;
      const T r = R[j];
      switch (pl.epi) {
        case Epi::EPS:
          c(0, n, o) = r / stab<T>(z(0, n, o) + (b ? b[o] : T(0)), pr.e);
          break;
        case Epi::ZPLUS:
          c(0, n, o) = T(pr.alpha) * r / stab<T>(z(0, n, o) + (b ? pos(b[o]) : T(0)), pr.e);
          break;
        case Epi::BOX:
          c(0, n, o) = r / stab<T>(z(0, n, o), pr.e);
          break;
        case Epi::WSQ:
          c(0, n, o) = r / stab<T>(zrow[o] + (b ? b[o] * b[o] : T(0)), pr.e);
          break;
        case Epi::GAMMA: {
          const T P = z(0, n, o) + (b ? pos(b[o]) : T(0));
          const T M = z(1, n, o) + (b ? neg(b[o]) : T(0));
          const T zz = P + M, g = T(pr.gamma);
          const T sp = r * T(zz > 0 ? 1 : 0) / stab<T>(zz + g * P, pr.e);
          const T sn = r * T(zz < 0 ? 1 : 0) / stab<T>(zz + g * M, pr.e);
          c(0, n, o) = sp + sn + g * sp;
          c(1, n, o) = sp + sn + g * sn;
          break;
        }
        case Epi::AB: {
          const T P = z(0, n, o) + (b ? pos(b[o]) : T(0));
          const T M = z(1, n, o) + (b ? neg(b[o]) : T(0));
          c(0, n, o) = T(pr.alpha) * r / stab<T>(P, pr.e);
          c(1, n, o) = -T(pr.beta) * r / stab<T>(M, pr.e);
          break;
        }
      }
    }
  });
}

// backward epilogue: t (kt, N, I) and the forward inputs x (ki, N, I) -> R_in (N, I)
template <class T, class Out>
void finish(const Plan& pl, Arr<T> t, Arr<T> x, const T* a, Out* out, int64_t N, int64_t I) {
  par(N * I, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t n = j / I, i = j % I;
      T v;
      switch (pl.fin) {
        case Fin::A: v = a[j] * t(0, n, i); break;
        case Fin::TWO: v = x(0, n, i) * t(0, n, i) + x(1, n, i) * t(1, n, i); break;
        default: v = t(0, n, i);
      }
      out[j] = static_cast<Out>(v);
    }
  });
}

WType wtype_of(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return W_F32;
    case at::kDouble: return W_F64;
    case at::kBFloat16: return W_BF16;
    default: TORCH_CHECK(false, "lrp_ext CPU kernels support float32, float64 and bfloat16, got ",
                         s);
  }
}

// Modified weights for the gemm path, in the accumulation type T:
//   ID/POS/SQ: (O, I) W, W⁺, W²;  SPLIT: [W⁺; W⁻] (2O, I);  MERGE: [W⁺ | W⁻] (O, 2I);
//   CROSS: [[W⁺, W⁻], [W⁻, W⁺]] (2O, 2I).
template <class T, class WT>
Tensor build_weights(const WT* W, int64_t O, int64_t I, Combo kind, at::ScalarType acc) {
  const int64_t rows = (kind == SPLIT || kind == CROSS) ? 2 * O : O;
  const int64_t cols = (kind == MERGE || kind == CROSS) ? 2 * I : I;
  Tensor V = at::empty({rows, cols}, at::TensorOptions().dtype(acc));
  T* v = V.data_ptr<T>();
  at::parallel_for(0, O, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, I)),
                   [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      const WT* w = W + o * I;
      T* r0 = v + o * cols;
      switch (kind) {
        case ID: for (int64_t i = 0; i < I; ++i) r0[i] = T(w[i]); break;
        case POS: for (int64_t i = 0; i < I; ++i) r0[i] = pos(T(w[i])); break;
        case SQ: for (int64_t i = 0; i < I; ++i) { const T x = T(w[i]); r0[i] = x * x; } break;
        case SPLIT: {
          T* r1 = v + (O + o) * cols;
          for (int64_t i = 0; i < I; ++i) { const T x = T(w[i]); r0[i] = pos(x); r1[i] = neg(x); }
          break;
        }
        case MERGE:
          for (int64_t i = 0; i < I; ++i) { const T x = T(w[i]); r0[i] = pos(x); r0[I + i] = neg(x); }
          break;
        case CROSS: {
          T* r1 = v + (O + o) * cols;
          for (int64_t i = 0; i < I; ++i) {
            const T x = T(w[i]);
            r0[i] = r1[I + i] = pos(x);
            r0[I + i] = r1[i] = neg(x);
          }
          break;
        }
      }
    }
  });
  return V;
}

// The whole rule: inputs prepared, two products, three elementwise stages.
// x0/x1: the forward inputs (a, or a⁺/a⁻, or u/v), as (N, I) in T.
template <class T>
Tensor run_plan(const Plan& pl, const Params& pr, const Tensor& Wc, const Tensor& a2T,
                const Tensor& x0, const Tensor& x1, const Tensor& RT, const Tensor& bT,
                const Tensor& a_like) {
  const int64_t N = a2T.size(0), I = Wc.size(1), O = Wc.size(0);
  const at::ScalarType acc = a2T.scalar_type();
  const auto opt = at::TensorOptions().dtype(acc);
  const bool fused = use_fused(N);
  const int ki = pl.ki(), kz = pl.kz(), kc = pl.kc(), kt = pl.kt();
  Job job{};
  job.wtype = wtype_of(Wc.scalar_type());
  job.W = Wc.data_ptr();
  job.O = O;
  job.I = I;

  // forward inputs, laid out for the path
  Tensor x = ki == 1 ? x0 : (fused ? at::stack({x0, x1}) : at::cat({x0, x1}, 1));
  Arr<T> xa = arr<T>(x, ki, N, I, fused);

  // w² needs only the row sums of W² (the same for every sample)
  Tensor zrow;
  if (pl.epi == Epi::WSQ) {
    zrow = at::empty({1, O}, opt);
    Tensor ones = at::ones({1, I}, opt);
    Job j1 = job;
    j1.combo = SQ;
    j1.N = 1;
    j1.x = ones.data_ptr();
    j1.out = zrow.data_ptr();
    run_forward(j1);
  }

  Tensor Vb, z, c, t;
  if (fused) {
    if (pl.epi != Epi::WSQ) {
      z = at::empty({kz, N, O}, opt);
      job.combo = pl.fwd;
      job.N = N;
      job.x = x.data_ptr();
      job.out = z.data_ptr();
      run_forward(job);
    }
    c = at::empty({kc, N, O}, opt);
  } else {
    const void* Wp = Wc.data_ptr();
    auto build = [&](Combo kind) {
      switch (job.wtype) {
        case W_F64: return build_weights<T, double>(static_cast<const double*>(Wp), O, I, kind, acc);
        case W_BF16: return build_weights<T, c10::BFloat16>(static_cast<const c10::BFloat16*>(Wp), O, I, kind, acc);
        default: return build_weights<T, float>(static_cast<const float*>(Wp), O, I, kind, acc);
      }
    };
    // the backward's stacked weights are the forward's for every plan (see the table above)
    Vb = build(pl.bwd == MERGE ? SPLIT : pl.bwd == SPLIT ? MERGE : pl.bwd);
    if (pl.epi != Epi::WSQ) z = at::mm(x, Vb.t());
    c = at::empty({N, kc * O}, opt);
  }
  Arr<T> za = z.defined() ? arr<T>(z, kz, N, O, fused) : Arr<T>{nullptr, 0, 0};
  Arr<T> ca = arr<T>(c, kc, N, O, fused);
  epilogue<T>(pl, pr, za, ca, RT.data_ptr<T>(), bT.defined() ? bT.data_ptr<T>() : nullptr,
              zrow.defined() ? zrow.data_ptr<T>() : nullptr, N, O);

  if (fused) {
    job.combo = pl.bwd;
    job.N = N;
    job.x = c.data_ptr();
    t = run_backward(job, kt, acc);
  } else {
    t = at::mm(c, Vb);
  }
  Arr<T> ta = arr<T>(t, kt, N, I, fused);

  Tensor out = at::empty({N, I}, a_like.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, out.scalar_type(), "lrp_ext_finish", [&] {
    finish<T, scalar_t>(pl, ta, xa, a2T.data_ptr<T>(), out.data_ptr<scalar_t>(), N, I);
  });
  return out;
}

struct Prepared {
  Tensor R2, a2, W, b, out_shape_like;
  int64_t N, O, I;
  at::ScalarType acc;
};

Prepared prepare(const Tensor& R, const Tensor& a, const Tensor& W,
                 const c10::optional<Tensor>& b) {
  Prepared p;
  p.O = W.size(0);
  p.I = W.size(1);
  wtype_of(a.scalar_type());
  p.acc = a.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  p.a2 = a.reshape({-1, p.I}).to(p.acc).contiguous();
  p.R2 = R.reshape({-1, p.O}).to(p.acc).contiguous();
  p.N = p.a2.size(0);
  p.W = W.contiguous();
  if (b.has_value()) p.b = b->to(p.acc).contiguous();
  return p;
}

bool all_nonneg(const Tensor& aT) {
  if (assume_mixed()) return false;
  return AT_DISPATCH_FLOATING_TYPES(aT.scalar_type(), "lrp_ext_nonneg", [&] {
    const scalar_t* p = aT.data_ptr<scalar_t>();
    const int64_t n = aT.numel();
    std::atomic<bool> neg_seen{false};
    at::parallel_for(0, n, 1 << 16, [&](int64_t i0, int64_t i1) {
      bool any = false;
      for (int64_t i = i0; i < i1; ++i) any |= p[i] < 0;
      if (any) neg_seen = true;
    });
    return !neg_seen.load();
  });
}

std::pair<Tensor, Tensor> split_signs(const Tensor& aT) {
  return {aT.clamp_min(0), aT.clamp_max(0)};
}

Tensor dispatch_plan(const Plan& pl, const Params& pr, const Prepared& p, const Tensor& x0,
                     const Tensor& x1, const Tensor& a) {
  Tensor out;
  if (p.N == 0 || p.I == 0) {
    out = at::empty({p.N, p.I}, a.options());
  } else {
    AT_DISPATCH_FLOATING_TYPES(p.acc, "lrp_ext_cpu", [&] {
      out = run_plan<scalar_t>(pl, pr, p.W, p.a2, x0, x1, p.R2, p.b, a);
    });
  }
  return out.view(a.sizes());
}

// ---------------------------------------------------------------- the ops
Tensor epsilon_cpu(const Tensor& R, const Tensor& a, const Tensor& W,
                   const c10::optional<Tensor>& b, double epsilon) {
  check_dense("epsilon", R, a, W, b);
  Prepared p = prepare(R, a, W, b);
  Params pr;
  pr.e = epsilon;
  return dispatch_plan({ID, ID, Epi::EPS, Fin::A}, pr, p, p.a2, Tensor(), a);
}

// gamma and alpha_beta share the two-coefficient plans; z⁺ (β = 0) needs only P.
Tensor signed_rule(const char* name, Epi epi, const Tensor& R, const Tensor& a, const Tensor& W,
                   const c10::optional<Tensor>& b, const Params& pr) {
  check_dense(name, R, a, W, b);
  Prepared p = prepare(R, a, W, b);
  const bool nonneg = all_nonneg(p.a2);
  const bool zplus = epi == Epi::AB && pr.beta == 0;
  if (nonneg) {
    Plan pl = zplus ? Plan{POS, POS, Epi::ZPLUS, Fin::A} : Plan{SPLIT, MERGE, epi, Fin::A};
    return dispatch_plan(pl, pr, p, p.a2, Tensor(), a);
  }
  auto [ap, an] = split_signs(p.a2);
  Plan pl = zplus ? Plan{MERGE, SPLIT, Epi::ZPLUS, Fin::TWO} : Plan{CROSS, CROSS, epi, Fin::TWO};
  return dispatch_plan(pl, pr, p, ap, an, a);
}

Tensor gamma_cpu(const Tensor& R, const Tensor& a, const Tensor& W,
                 const c10::optional<Tensor>& b, double gamma, double stabilizer) {
  Params pr;
  pr.gamma = gamma;
  pr.e = stabilizer;
  return signed_rule("gamma", Epi::GAMMA, R, a, W, b, pr);
}

Tensor alpha_beta_cpu(const Tensor& R, const Tensor& a, const Tensor& W,
                      const c10::optional<Tensor>& b, double alpha, double beta,
                      double stabilizer) {
  TORCH_CHECK(alpha >= 0 && beta >= 0 && std::abs(alpha - beta - 1.0) <= 1e-9,
              "alpha_beta needs alpha >= 0, beta >= 0 and alpha - beta = 1, got alpha=", alpha,
              ", beta=", beta);
  Params pr;
  pr.alpha = alpha;
  pr.beta = beta;
  pr.e = stabilizer;
  return signed_rule("alpha_beta", Epi::AB, R, a, W, b, pr);
}

Tensor w_square_cpu(const Tensor& R, const Tensor& a, const Tensor& W,
                    const c10::optional<Tensor>& b, double stabilizer) {
  check_dense("w_square", R, a, W, b);
  Prepared p = prepare(R, a, W, b);
  Params pr;
  pr.e = stabilizer;
  return dispatch_plan({SQ, SQ, Epi::WSQ, Fin::PLAIN}, pr, p, p.a2, Tensor(), a);
}

Tensor z_box_cpu(const Tensor& R, const Tensor& a, const Tensor& W, const Tensor& low,
                 const Tensor& high, double stabilizer) {
  check_dense("z_box", R, a, W, c10::nullopt);
  check_bounds(a, low, high);
  Prepared p = prepare(R, a, W, c10::nullopt);
  Tensor u = (p.a2 - low.expand(a.sizes()).reshape({-1, p.I}).to(p.acc)).contiguous();
  Tensor v = (p.a2 - high.expand(a.sizes()).reshape({-1, p.I}).to(p.acc)).contiguous();
  Params pr;
  pr.e = stabilizer;
  return dispatch_plan({MERGE, SPLIT, Epi::BOX, Fin::TWO}, pr, p, u, v, a);
}

// flat: z_j = I for every output, so R_in_i = sum_j R_j / stab(I, e) for every input i.
Tensor flat_cpu(const Tensor& R, const Tensor& a, const Tensor& W, double stabilizer) {
  check_dense("flat", R, a, W, c10::nullopt);
  const int64_t O = W.size(0), I = W.size(1);
  const at::ScalarType acc = a.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  Tensor R2 = R.reshape({-1, O}).to(acc).contiguous();
  const int64_t N = R2.size(0);
  Tensor out = at::empty({N, I}, a.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "lrp_ext_flat", [&] {
    using T = scalar_t;
    const T z = stab<T>(T(I), stabilizer);
    Tensor rs = at::empty({N}, R2.options());
    const T* r = R2.data_ptr<T>();
    T* s = rs.data_ptr<T>();
    par(N, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        T acc_v = 0;
        for (int64_t o = 0; o < O; ++o) acc_v += r[n * O + o] / z;
        s[n] = acc_v;
      }
    });
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out.scalar_type(), "lrp_ext_flat_out", [&] {
      scalar_t* dst = out.data_ptr<scalar_t>();
      par(N * I, [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) dst[j] = static_cast<scalar_t>(s[j / I]);
      });
    });
  });
  return out.view(a.sizes());
}

}  // namespace
}  // namespace cpu
}  // namespace lrp_ext

TORCH_LIBRARY_IMPL(lrp_ext, CPU, m) {
  m.impl("epsilon", &lrp_ext::cpu::epsilon_cpu);
  m.impl("gamma", &lrp_ext::cpu::gamma_cpu);
  m.impl("alpha_beta", &lrp_ext::cpu::alpha_beta_cpu);
  m.impl("flat", &lrp_ext::cpu::flat_cpu);
  m.impl("w_square", &lrp_ext::cpu::w_square_cpu);
  m.impl("z_box", &lrp_ext::cpu::z_box_cpu);
}
