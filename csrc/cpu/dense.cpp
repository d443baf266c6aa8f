// CPU kernels of the dense rules: argument checks, path choice and the fused epilogues.
//
// Every rule is two products over W plus cheap elementwise stages. With p = a_i W_oi,
// P = sum p⁺ + b⁺ and M = sum p⁻ + b⁻ (so z = P + M), the spec's rules reduce to:
//   gamma      c⁺ = (1+γ)s_p + s_n, c⁻ = s_p + (1+γ)s_n with s_p = R[z>0]/stab(z+γP),
//              s_n = R[z<0]/stab(z+γM)
//   alpha_beta c⁺ = αR/stab(P), c⁻ = −βR/stab(M)
//   and R_in = a⁺ ⊙ (c⁺W⁺ + c⁻W⁻) + a⁻ ⊙ (c⁻W⁺ + c⁺W⁻) (the a⁻ half vanishes when a ≥ 0).
// epsilon, z⁺ (β = 0), w² and z^B need one coefficient per output.
//
// Two paths: "fused" streams W once per product and applies ρ (W⁺, W⁻, W²) while reading it
// (kernels.h, one copy per ISA), for the memory-bound small batch; "gemm" builds the modified
// weights once per call (W⁺, [W⁺; W⁻] or W² in one pass over W) and calls ATen's matmul (MKL /
// oneDNN) into the stacked buffers, for the compute-bound large batch. The elementwise stages
// are the same loops for both; their coefficient math is csrc/rule_math.h, shared with the CUDA
// kernels. Skipping the a⁻ terms when a >= 0 gives the same numbers: the mixed-sign plan performs
// the same operations plus exact zeros, and the input side adds 0·t where the reference adds
// a⁻ ⊙ t2 (NaN where t2 is not finite; rule::nonneg_input). Testing knobs, read at each call: LRP_EXT_CPU_PATH=auto|fused|gemm,
// LRP_EXT_CPU_ISA=auto|avx512|avx2|scalar, LRP_EXT_ASSUME_MIXED=1 (never skip the a⁻ terms).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <functional>
#include <type_traits>
#include <vector>
#include <cstdlib>
#include <cstring>
#include <sys/mman.h>

#include "cpu/kernels_api.h"
#include "lrp.h"
#include "rule_math.h"

namespace lrp_ext {
namespace cpu {

// LRP_EXT_CPU_ISA=auto|avx512|avx2|scalar, read at each call.
Isa pick_isa() {
  static const bool has512 = __builtin_cpu_supports("avx512f") &&
                             __builtin_cpu_supports("avx512bw") &&
                             __builtin_cpu_supports("avx512vl") &&
                             __builtin_cpu_supports("avx512dq");
  static const bool has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const char* want = std::getenv("LRP_EXT_CPU_ISA");
  if (!want) want = "";
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

namespace {

using at::Tensor;

// ---------------------------------------------------------------- configuration knobs
const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
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

// Work is handed out dynamically in blocks of rows: on a machine where other processes take a
// core now and then, a static split leaves every thread waiting for the slowest one.
int64_t rows_per_task(const Job& job, int64_t threads) {
  const int64_t per_row = std::max<int64_t>(1, job.N) * job.I;
  int64_t rows = std::max<int64_t>(16, (int64_t(1) << 18) / per_row);  // >= ~1 MB of work
  rows = std::min<int64_t>(rows, (job.O + 4 * threads - 1) / (4 * threads));  // >= 4 per thread
  return std::max<int64_t>(16, (rows + 15) / 16 * 16);  // whole row tiles
}

template <class F> void dynamic_rows(const Job& job, int64_t threads, const F& f) {
  const int64_t rows = rows_per_task(job, threads);
  const int64_t tasks = (job.O + rows - 1) / rows;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(threads, tasks), 1, [&](int64_t, int64_t) {
    const int64_t tid = std::min<int64_t>(at::get_thread_num(), threads - 1);
    for (int64_t k; (k = next.fetch_add(1)) < tasks;)
      f(tid, k * rows, std::min(job.O, (k + 1) * rows));
  });
}

void run_forward(const Job& job) {
  const Isa isa = pick_isa();
  dynamic_rows(job, at::get_num_threads(), [&](int64_t, int64_t o0, int64_t o1) {
    switch (isa) {
      case Isa::AVX512: return avx512::forward_range(job, o0, o1);
      case Isa::AVX2: return avx2::forward_range(job, o0, o1);
      case Isa::BASE: return base::forward_range(job, o0, o1);
    }
  });
}

// Row-parallel backward: the rows are cut into a few more segments than threads, each segment
// accumulating into its own buffer, handed out dynamically and summed in a fixed order, so the
// result does not depend on which thread ran which segment.
Tensor run_backward(const Job& job, int64_t KO, at::ScalarType acc) {
  const Isa isa = pick_isa();
  const int64_t threads = at::get_num_threads();
  const int64_t segs = std::max<int64_t>(1, std::min<int64_t>(threads > 1 ? 2 * threads : 1,
                                                              job.O / 64));
  const int64_t per = (job.O + segs - 1) / segs;
  Tensor buf = at::zeros({segs, KO, job.N, job.I}, at::TensorOptions().dtype(acc));
  const int64_t esz = at::elementSize(acc);
  char* base_ptr = static_cast<char*>(buf.data_ptr());
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(threads, segs), 1, [&](int64_t, int64_t) {
    for (int64_t k; (k = next.fetch_add(1)) < segs;) {
      const int64_t o0 = std::min(job.O, k * per), o1 = std::min(job.O, o0 + per);
      void* dst = base_ptr + k * KO * job.N * job.I * esz;
      switch (isa) {
        case Isa::AVX512: avx512::backward_range(job, o0, o1, dst); break;
        case Isa::AVX2: avx2::backward_range(job, o0, o1, dst); break;
        case Isa::BASE: base::backward_range(job, o0, o1, dst); break;
      }
    }
  });
  return segs == 1 ? buf[0] : buf.sum(0);
}

// ---------------------------------------------------------------- rule plans
// kind: the rule's coefficient math (rule_math.h, shared with the CUDA kernels)
enum class Fin { A, NONNEG, TWO, PLAIN };

struct Params {
  double e = 1e-6, gamma = 0, alpha = 1, beta = 0;
};

struct Plan {
  Combo fwd, bwd;
  int kind;
  Fin fin;
  int ki() const { return fwd == MERGE || fwd == CROSS ? 2 : 1; }
  int kz() const { return fwd == SPLIT || fwd == CROSS ? 2 : 1; }
  int kc() const { return bwd == MERGE || bwd == CROSS ? 2 : 1; }
  int kt() const { return bwd == SPLIT || bwd == CROSS ? 2 : 1; }
};

using rule::pos;
using rule::neg;
template <class T> inline T stab(T z, double e) { return rule::stab<T>(z, T(e)); }

// parallel over rows n of an (N, L) elementwise stage
void par_rows(int64_t N, int64_t L, const std::function<void(int64_t, int64_t)>& f) {
  at::parallel_for(0, N, std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(1, L)), f);
}

// f(std::integral_constant<int, K>) for the run-time rule kind: one loop per rule, compiled
// with the rule's math inlined.
template <class F> void with_kind(int kind, const F& f) {
  switch (kind) {
    case rule::EPS: return f(std::integral_constant<int, rule::EPS>{});
    case rule::ZPLUS: return f(std::integral_constant<int, rule::ZPLUS>{});
    case rule::BOX: return f(std::integral_constant<int, rule::BOX>{});
    case rule::WSQ: return f(std::integral_constant<int, rule::WSQ>{});
    case rule::GAMMA: return f(std::integral_constant<int, rule::GAMMA>{});
    default: return f(std::integral_constant<int, rule::AB>{});
  }
}

// Forward epilogue: z (kz, N, O) (or the row sums zrow (1, O) of w²) -> coefficients c (kc, N, O).
template <class T>
void epilogue(int kind, const Params& pr, const T* z, T* c, const T* R, const T* b,
              const T* zrow, int64_t N, int64_t O) {
  const int64_t NO = N * O;
  const rule::Params<T> rp{T(pr.e), T(pr.gamma), T(pr.alpha), T(pr.beta)};
  with_kind(kind, [&](auto k) {
    constexpr int K = decltype(k)::value;
    par_rows(N, O, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        const T* r = R + n * O;
        T* c0 = c + n * O;
        if constexpr (rule::is_signed(K)) {
          const T* z0 = z + n * O;
          const T* z1 = z + NO + n * O;
          T* c1 = c + NO + n * O;
          for (int64_t o = 0; o < O; ++o)
            rule::pair<K, T>(rp, z0[o], z1[o], r[o], b ? b[o] : T(0), c0[o], c1[o]);
        } else {
          const T* s = K == rule::WSQ ? zrow : z + n * O;
          for (int64_t o = 0; o < O; ++o) c0[o] = rule::single<K, T>(rp, s[o], r[o], b ? b[o] : T(0));
        }
      }
    });
  });
}

// Rows of the forward inputs x (ki, N, I) holding an infinite or NaN entry, where the products
// a⁺W⁺ (or u W⁺) of the kernels form inf·0 = NaN for the zero half of W. gamma and z_box
// recompute their forward sums there from one product per term (rule::signed_term, box_term),
// as the reference's z = aWᵀ does; alpha_beta's reference forms a⁺W⁺ itself and keeps the NaN.
template <class T>
std::vector<int64_t> nonfinite_rows(const T* x, int ki, bool both, int64_t N, int64_t I) {
  std::vector<int64_t> rows;
  std::vector<char> bad(N, 0);
  par_rows(N, I, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const T* x0 = x + n * I;
      const T* x1 = x + (N + n) * I;
      bool any = false;
      if (both)  // z_box: u and v both infinite (an infinite a); an infinite bound alone keeps
                 // the reference's NaN from −low·W⁺ (or −high·W⁻)
        for (int64_t i = 0; i < I; ++i) any |= !std::isfinite(x0[i]) && !std::isfinite(x1[i]);
      else
        for (int k = 0; k < ki; ++k)
          for (int64_t i = 0; i < I; ++i) any |= !std::isfinite(x[(k * N + n) * I + i]);
      bad[n] = any;
    }
  });
  for (int64_t n = 0; n < N; ++n)
    if (bad[n]) rows.push_back(n);
  return rows;
}

template <class T, class WT>
void refix_rows(int kind, const std::vector<int64_t>& rows, const WT* W, const T* x, int ki,
                T* z, int64_t N, int64_t O, int64_t I) {
  at::parallel_for(0, int64_t(rows.size()) * O, 1, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t n = rows[j / O], o = j % O;
      const T* x0 = x + n * I;
      const T* x1 = ki == 2 ? x + (N + n) * I : nullptr;
      const WT* w = W + o * I;
      if (kind == rule::GAMMA) {  // x: a, or a⁺ and a⁻
        T P = 0, M = 0;
        for (int64_t i = 0; i < I; ++i)
          rule::signed_term<T>(x1 ? x0[i] + x1[i] : x0[i], T(w[i]), P, M);
        z[n * O + o] = P;
        z[(N + n) * O + o] = M;
      } else {  // BOX, x: u and v
        T s = 0;
        for (int64_t i = 0; i < I; ++i) s += rule::box_term<T>(x0[i], x1[i], T(w[i]));
        z[n * O + o] = s;
      }
    }
  });
}

template <class T>
void refix_nonfinite(int kind, const Tensor& Wc, const T* x, int ki, T* z, int64_t N, int64_t O,
                     int64_t I) {
  if (kind != rule::GAMMA && kind != rule::BOX) return;
  const std::vector<int64_t> rows = nonfinite_rows(x, ki, kind == rule::BOX, N, I);
  if (rows.empty()) return;
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, Wc.scalar_type(), "lrp_ext_refix", [&] {
    refix_rows<T, scalar_t>(kind, rows, Wc.data_ptr<scalar_t>(), x, ki, z, N, O, I);
  });
}

// Backward epilogue: t (kt, N, I) and the forward inputs x (ki, N, I) -> R_in (N, I):
// a ⊙ t0 (Fin::A), the same for a signed rule on a >= 0 (Fin::NONNEG, rule::nonneg_input),
// x0 ⊙ t0 + x1 ⊙ t1 (Fin::TWO), or t0 (Fin::PLAIN).
template <class T, class Out>
void finish(Fin fin, const T* t, const T* x, Out* out, int64_t N, int64_t I) {
  const int64_t NI = N * I;
  par_rows(N, I, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const T* t0 = t + n * I;
      const T* t1 = t + NI + n * I;
      const T* x0 = x + n * I;
      const T* x1 = x + NI + n * I;
      Out* dst = out + n * I;
      switch (fin) {
        case Fin::A:
          for (int64_t i = 0; i < I; ++i) dst[i] = static_cast<Out>(x0[i] * t0[i]);
          break;
        case Fin::NONNEG:
          for (int64_t i = 0; i < I; ++i) dst[i] = static_cast<Out>(rule::nonneg_input(x0[i], t0[i]));
          break;
        case Fin::TWO:
          for (int64_t i = 0; i < I; ++i) dst[i] = static_cast<Out>(x0[i] * t0[i] + x1[i] * t1[i]);
          break;
        case Fin::PLAIN:
          for (int64_t i = 0; i < I; ++i) dst[i] = static_cast<Out>(t0[i]);
          break;
      }
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

// One pass over W building ρ(W) in the accumulation type T for the gemm path: W⁺ (POS),
// [W⁺; W⁻] as (2, O, I) (PAIR) or W² (SQ, also writing the row sums of W² to rowsum).
enum class Build { POS, PAIR, SQ };
template <class T, class WT>
void build_into(const WT* W, int64_t O, int64_t I, Build kind, T* v, T* rowsum) {
  at::parallel_for(0, O, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, I)),
                   [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      const WT* w = W + o * I;
      T* r = v + o * I;
      switch (kind) {
        case Build::POS: for (int64_t i = 0; i < I; ++i) r[i] = pos(T(w[i])); break;
        case Build::PAIR: {
          T* rn = v + (O + o) * I;
          for (int64_t i = 0; i < I; ++i) {
            const T x = T(w[i]);
            r[i] = pos(x);
            rn[i] = neg(x);
          }
          break;
        }
        case Build::SQ: {
          for (int64_t i = 0; i < I; ++i) { const T x = T(w[i]); r[i] = x * x; }
          T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
          int64_t i = 0;
          for (; i + 4 <= I; i += 4) { s0 += r[i]; s1 += r[i + 1]; s2 += r[i + 2]; s3 += r[i + 3]; }
          for (; i < I; ++i) s0 += r[i];
          rowsum[o] = (s0 + s1) + (s2 + s3);
          break;
        }
      }
    }
  });
}

// Scratch tensors of many MB: fresh pages fault in one 4 KiB page at a time, which on some
// machines costs more than the matmul that fills them. Ask for transparent huge pages.
Tensor scratch(at::IntArrayRef sizes, at::ScalarType dtype) {
  int64_t numel = 1;
  for (auto s : sizes) numel *= s;
  const size_t bytes = size_t(numel) * at::elementSize(dtype);
  constexpr size_t kHuge = size_t(2) << 20;
  if (bytes < 2 * kHuge) return at::empty(sizes, at::TensorOptions().dtype(dtype));
  const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
  void* p = nullptr;
  if (posix_memalign(&p, kHuge, rounded) != 0 || p == nullptr)
    return at::empty(sizes, at::TensorOptions().dtype(dtype));
#ifdef MADV_HUGEPAGE
  madvise(p, rounded, MADV_HUGEPAGE);
#endif
  return at::from_blob(p, sizes, [](void* q) { std::free(q); }, at::TensorOptions().dtype(dtype));
}

// The modified weights and the intermediate products of the gemm path live in per-thread
// buffers kept between calls (up to kKeepBytes each; larger ones are allocated per call): at
// large batch, faulting in fresh pages for them cost about a sixth of a gamma call. They never
// leave run_plan.
constexpr size_t kKeepBytes = size_t(256) << 20;

enum Slot { WEIGHTS = 0, ZBUF, CBUF, TBUF, SLOTS };
Tensor kept_scratch(Slot slot, at::IntArrayRef sizes, at::ScalarType dtype) {
  int64_t numel = 1;
  for (auto s : sizes) numel *= s;
  const size_t bytes = size_t(numel) * at::elementSize(dtype);
  if (bytes > kKeepBytes) return scratch(sizes, dtype);
  struct Kept {
    void* p = nullptr;
    size_t n = 0;
    ~Kept() { std::free(p); }
  };
  thread_local Kept slots[SLOTS];
  Kept& kept = slots[slot];
  if (kept.n < bytes) {
    constexpr size_t kHuge = size_t(2) << 20;
    const size_t rounded = (bytes + kHuge - 1) / kHuge * kHuge;
    std::free(kept.p);
    kept.p = nullptr;
    kept.n = 0;
    if (posix_memalign(&kept.p, kHuge, rounded) != 0 || kept.p == nullptr) {
      kept.p = nullptr;
      return scratch(sizes, dtype);
    }
#ifdef MADV_HUGEPAGE
    madvise(kept.p, rounded, MADV_HUGEPAGE);
#endif
    kept.n = rounded;
  }
  return at::from_blob(kept.p, sizes, at::TensorOptions().dtype(dtype));
}

template <class T>
Tensor build(const Tensor& Wc, Build kind, at::ScalarType acc, Tensor* rowsum = nullptr) {
  const int64_t O = Wc.size(0), I = Wc.size(1);
  Tensor V = kind == Build::PAIR ? kept_scratch(WEIGHTS, {2, O, I}, acc) : kept_scratch(WEIGHTS, {O, I}, acc);
  T* rs = nullptr;
  if (rowsum) {
    *rowsum = at::empty({1, O}, V.options());
    rs = rowsum->data_ptr<T>();
  }
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, Wc.scalar_type(), "lrp_ext_build", [&] {
    build_into<T, scalar_t>(Wc.data_ptr<scalar_t>(), O, I, kind, V.data_ptr<T>(), rs);
  });
  return V;
}

// C (rows of a (K, N, L) stack) = A @ B (+ C when accumulate)
void mm_into(const Tensor& C, const Tensor& A, const Tensor& B, bool accumulate = false) {
  if (accumulate)
    C.addmm_(A, B);
  else
    at::mm_out(const_cast<Tensor&>(C), A, B);
}

// The whole rule: two products and three elementwise stages on the prepared inputs.
// x: the forward inputs (ki, N, I) in T (a; a⁺/a⁻; or u/v).
template <class T>
Tensor run_plan(const Plan& pl, const Params& pr, const Tensor& Wc, const Tensor& x,
                const Tensor& RT, const Tensor& bT, const Tensor& a_like) {
  const int64_t N = x.size(1), I = Wc.size(1), O = Wc.size(0);
  const at::ScalarType acc = x.scalar_type();
  const auto opt = at::TensorOptions().dtype(acc);
  const int kz = pl.kz(), kc = pl.kc(), kt = pl.kt();
  Job job{};
  job.wtype = wtype_of(Wc.scalar_type());
  job.W = Wc.data_ptr();
  job.O = O;
  job.I = I;
  job.N = N;

  Tensor z, c = kept_scratch(CBUF, {kc, N, O}, acc), t, zrow;
  if (use_fused(N)) {
    if (pl.kind == rule::WSQ) {  // w² needs only the row sums of W² (the same for every sample)
      zrow = at::empty({1, O}, opt);
      Tensor ones = at::ones({1, I}, opt);
      Job j1 = job;
      j1.combo = SQ;
      j1.N = 1;
      j1.x = ones.data_ptr();
      j1.out = zrow.data_ptr();
      run_forward(j1);
    } else {
      z = at::empty({kz, N, O}, opt);
      job.combo = pl.fwd;
      job.x = x.data_ptr();
      job.out = z.data_ptr();
      run_forward(job);
      refix_nonfinite<T>(pl.kind, Wc, x.data_ptr<T>(), pl.ki(), z.data_ptr<T>(), N, O, I);
    }
    epilogue<T>(pl.kind, pr, z.defined() ? z.data_ptr<T>() : nullptr, c.data_ptr<T>(),
                RT.data_ptr<T>(), bT.defined() ? bT.data_ptr<T>() : nullptr,
                zrow.defined() ? zrow.data_ptr<T>() : nullptr, N, O);
    job.combo = pl.bwd;
    job.x = c.data_ptr();
    t = run_backward(job, kt, acc);
  } else {
    // gemm path: ρ(W) built once, ATen matmuls write straight into the stacked buffers. The
    // signed plans use W⁺ and W⁻ (never W − W⁺: the sums of one sign must not cancel), with
    // the mixed-sign plan's products a superset of the a >= 0 plan's, in the same order.
    Tensor Wp, Wn;
    if (pl.fwd == ID) {
      Wp = Wc;  // no copy for float32 / float64
      if (Wc.scalar_type() != acc) Wp = kept_scratch(WEIGHTS, Wc.sizes(), acc).copy_(Wc);
    } else if (pl.fwd == SQ) {
      Wp = build<T>(Wc, Build::SQ, acc, &zrow);
    } else if (pl.fwd == POS) {
      Wp = build<T>(Wc, Build::POS, acc);
    } else {
      Tensor pair = build<T>(Wc, Build::PAIR, acc);
      Wp = pair[0];
      Wn = pair[1];
    }
    z = kept_scratch(ZBUF, {kz, N, O}, acc);
    switch (pl.fwd) {
      case ID: case POS: mm_into(z[0], x[0], Wp.t()); break;
      case SQ: break;
      case SPLIT:  // [a W⁺ᵀ, a W⁻ᵀ]
        mm_into(z[0], x[0], Wp.t());
        mm_into(z[1], x[0], Wn.t());
        break;
      case MERGE:  // x0 W⁺ᵀ + x1 W⁻ᵀ
        mm_into(z[0], x[0], Wp.t());
        mm_into(z[0], x[1], Wn.t(), true);
        break;
      case CROSS:  // [x0 W⁺ᵀ + x1 W⁻ᵀ, x0 W⁻ᵀ + x1 W⁺ᵀ]
        mm_into(z[0], x[0], Wp.t());
        mm_into(z[0], x[1], Wn.t(), true);
        mm_into(z[1], x[0], Wn.t());
        mm_into(z[1], x[1], Wp.t(), true);
        break;
    }
    if (pl.fwd != SQ)
      refix_nonfinite<T>(pl.kind, Wc, x.data_ptr<T>(), pl.ki(), z.data_ptr<T>(), N, O, I);
    epilogue<T>(pl.kind, pr, pl.fwd == SQ ? nullptr : z.data_ptr<T>(), c.data_ptr<T>(),
                RT.data_ptr<T>(), bT.defined() ? bT.data_ptr<T>() : nullptr,
                zrow.defined() ? zrow.data_ptr<T>() : nullptr, N, O);
    t = kept_scratch(TBUF, {kt, N, I}, acc);
    switch (pl.bwd) {
      case ID: case POS: case SQ: mm_into(t[0], c[0], Wp); break;
      case MERGE:  // c⁺ W⁺ + c⁻ W⁻
        mm_into(t[0], c[0], Wp);
        mm_into(t[0], c[1], Wn, true);
        break;
      case SPLIT:  // [c W⁺, c W⁻]
        mm_into(t[0], c[0], Wp);
        mm_into(t[1], c[0], Wn);
        break;
      case CROSS:  // [c⁺ W⁺ + c⁻ W⁻, c⁻ W⁺ + c⁺ W⁻]
        mm_into(t[0], c[0], Wp);
        mm_into(t[0], c[1], Wn, true);
        mm_into(t[1], c[1], Wp);
        mm_into(t[1], c[0], Wn, true);
        break;
    }
  }

  Tensor out = at::empty({N, I}, a_like.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, out.scalar_type(), "lrp_ext_finish", [&] {
    finish<T, scalar_t>(pl.fin, t.data_ptr<T>(), x.data_ptr<T>(), out.data_ptr<scalar_t>(), N,
                        I);
  });
  return out;
}

struct Prepared {
  Tensor R2, a2, W, b, out_shape_like;
  int64_t N, O, I;
  at::ScalarType acc;
};

// number of samples: the product of the leading (batch) dims
int64_t batch_of(const Tensor& a) {
  int64_t n = 1;
  for (int64_t d = 0; d + 1 < a.dim(); ++d) n *= a.size(d);
  return n;
}

Prepared prepare(const Tensor& R, const Tensor& a, const Tensor& W,
                 const c10::optional<Tensor>& b) {
  Prepared p;
  p.O = W.size(0);
  p.I = W.size(1);
  wtype_of(a.scalar_type());
  p.acc = a.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  p.N = batch_of(a);
  p.a2 = a.reshape({p.N, p.I}).to(p.acc).contiguous();
  p.R2 = R.reshape({p.N, p.O}).to(p.acc).contiguous();
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
    const Tensor x = x1.defined() ? at::stack({x0, x1}) : x0.unsqueeze(0);
    AT_DISPATCH_FLOATING_TYPES(p.acc, "lrp_ext_cpu", [&] {
      out = run_plan<scalar_t>(pl, pr, p.W, x, p.R2, p.b, a);
    });
  }
  return out.view(a.sizes());
}

// ---------------------------------------------------------------- the ops
// The argument checks are lrp.cpp's check_<op>, shared with the CUDA kernels.
Tensor epsilon_cpu(const Tensor& R, const Tensor& a, const Tensor& W,
                   const c10::optional<Tensor>& b, double epsilon) {
  check_epsilon(R, a, W, b, epsilon);
  Prepared p = prepare(R, a, W, b);
  Params pr;
  pr.e = epsilon;
  return dispatch_plan({ID, ID, rule::EPS, Fin::A}, pr, p, p.a2, Tensor(), a);
}

// gamma and alpha_beta share the two-coefficient plans; z⁺ (β = 0) needs only P.
Tensor signed_rule(int kind, const Tensor& R, const Tensor& a, const Tensor& W,
                   const c10::optional<Tensor>& b, const Params& pr) {
  Prepared p = prepare(R, a, W, b);
  const bool nonneg = all_nonneg(p.a2);
  const bool zplus = kind == rule::AB && pr.beta == 0;
  if (nonneg) {
    Plan pl = zplus ? Plan{POS, POS, rule::ZPLUS, Fin::NONNEG}
                    : Plan{SPLIT, MERGE, kind, Fin::NONNEG};
    return dispatch_plan(pl, pr, p, p.a2, Tensor(), a);
  }
  auto [ap, an] = split_signs(p.a2);
  Plan pl = zplus ? Plan{MERGE, SPLIT, rule::ZPLUS, Fin::TWO} : Plan{CROSS, CROSS, kind, Fin::TWO};
  return dispatch_plan(pl, pr, p, ap, an, a);
}

Tensor gamma_cpu(const Tensor& R, const Tensor& a, const Tensor& W,
                 const c10::optional<Tensor>& b, double gamma, double stabilizer) {
  check_gamma(R, a, W, b, gamma, stabilizer);
  Params pr;
  pr.gamma = gamma;
  pr.e = stabilizer;
  return signed_rule(rule::GAMMA, R, a, W, b, pr);
}

Tensor alpha_beta_cpu(const Tensor& R, const Tensor& a, const Tensor& W,
                      const c10::optional<Tensor>& b, double alpha, double beta,
                      double stabilizer) {
  check_alpha_beta(R, a, W, b, alpha, beta, stabilizer);
  Params pr;
  pr.alpha = alpha;
  pr.beta = beta;
  pr.e = stabilizer;
  return signed_rule(rule::AB, R, a, W, b, pr);
}

Tensor w_square_cpu(const Tensor& R, const Tensor& a, const Tensor& W,
                    const c10::optional<Tensor>& b, double stabilizer) {
  check_w_square(R, a, W, b, stabilizer);
  Prepared p = prepare(R, a, W, b);
  Params pr;
  pr.e = stabilizer;
  return dispatch_plan({SQ, SQ, rule::WSQ, Fin::PLAIN}, pr, p, p.a2, Tensor(), a);
}

Tensor z_box_cpu(const Tensor& R, const Tensor& a, const Tensor& W, const Tensor& low,
                 const Tensor& high, double stabilizer) {
  check_z_box(R, a, W, low, high, stabilizer);
  Prepared p = prepare(R, a, W, c10::nullopt);
  Tensor u = (p.a2 - low.expand(a.sizes()).reshape({p.N, p.I}).to(p.acc)).contiguous();
  Tensor v = (p.a2 - high.expand(a.sizes()).reshape({p.N, p.I}).to(p.acc)).contiguous();
  Params pr;
  pr.e = stabilizer;
  return dispatch_plan({MERGE, SPLIT, rule::BOX, Fin::TWO}, pr, p, u, v, a);
}

// flat: z_j = I for every output, so R_in_i = sum_j R_j / stab(I, e) for every input i.
Tensor flat_cpu(const Tensor& R, const Tensor& a, const Tensor& W, double stabilizer) {
  check_flat(R, a, W, stabilizer);
  const int64_t O = W.size(0), I = W.size(1);
  const at::ScalarType acc = a.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t N = batch_of(a);
  Tensor R2 = R.reshape({N, O}).to(acc).contiguous();
  Tensor out = at::empty({N, I}, a.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "lrp_ext_flat", [&] {
    using T = scalar_t;
    const T z = stab<T>(T(I), stabilizer);
    Tensor rs = at::empty({N}, R2.options());
    const T* r = R2.data_ptr<T>();
    T* s = rs.data_ptr<T>();
    par_rows(N, O, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        T acc_v = 0;
        for (int64_t o = 0; o < O; ++o) acc_v += r[n * O + o] / z;
        s[n] = acc_v;
      }
    });
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, out.scalar_type(), "lrp_ext_flat_out", [&] {
      scalar_t* dst = out.data_ptr<scalar_t>();
      par_rows(N, I, [&](int64_t n0, int64_t n1) {
        for (int64_t n = n0; n < n1; ++n)
          for (int64_t i = 0; i < I; ++i) dst[n * I + i] = static_cast<scalar_t>(s[n]);
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
