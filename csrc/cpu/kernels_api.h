// Interface between the torch-side CPU code (dense.cpp) and the per-ISA SIMD engines.
#pragma once
#include <cstdint>

namespace lrp_ext {
namespace cpu {

enum Combo : int { ID = 0, POS = 1, SQ = 2, SPLIT = 3, MERGE = 4, CROSS = 5 };
// weight storage; the accumulation type is double for W_F64 and float otherwise
enum WType : int { W_F32 = 0, W_F64 = 1, W_BF16 = 2 };

// The engine copy this CPU runs (csrc/cpu/dense.cpp): AVX-512, AVX2 + FMA, or SSE2.
enum class Isa { AVX512, AVX2, BASE };
Isa pick_isa();

struct Job {
  int combo;
  int wtype;
  const void* W;  // (O, I) contiguous
  int64_t N, O, I;
  const void* x;  // forward: (KI, N, I); backward: (KI, N, O) — accumulation type, contiguous
  void* out;      // forward only: (KO, N, O)
};

// The model-level elementwise stage of a layer rule (csrc/cpu/elementwise.cpp): per output,
// from z, g (r = z ⊙ g, or r = g), P and M, the coefficient(s) of rule kind `kind` (rule::Kind:
// EPS, ZPLUS, GAMMA, AB or GAMMA_MIXED). Rows of `inner` contiguous values; out: (rows, 2, inner)
// for the two-coefficient rules, (2, rows, inner) for GAMMA_MIXED (its second half `half`
// values on), (rows, inner) otherwise; g and out have `rows` rows, z, P and M `zrows` (row r of
// g reads row r mod zrows of z).
struct CoefJob {
  int kind;
  bool f64;      // double, else float
  bool times_z;  // r = z ⊙ g (g a gradient), else r = g (g a relevance)
  const void *z, *g, *P, *M;  // P unused (null) for EPS, S for GAMMA_MIXED; M null: M = z − P
  void* out;
  int64_t inner, zrows, half;
  double e, gamma, alpha, beta;
};

#define LRP_DECLARE_ISA(ns)                                                            \
  namespace ns {                                                                       \
  /* values [k0, k1) of row `row` */                                                   \
  void coef_range(const CoefJob& job, int64_t row, int64_t k0, int64_t k1);            \
  /* out[k] = y[k] / x[k], 0 where x[k] == 0 (times g[k] with g, y and x read at k mod n), */ \
  /* for k in [k0, k1) */                                                               \
  void ratio_range(const void* y, const void* x, const void* g, void* out, bool f64,    \
                   int64_t n, int64_t k0, int64_t k1);                                  \
  /* out[k] = rule::sign_sum(x[k mod n], A[k], B[k]) for k in [k0, k1) */              \
  void sign_sum_range(const void* x, const void* A, const void* B, void* out, bool f64, \
                      int64_t n, int64_t k0, int64_t k1);                               \
  void forward_range(const Job& job, int64_t o0, int64_t o1);                          \
  /* buf: (KO, N, I), must be zeroed by the caller; rows [o0, o1) are added into it */ \
  void backward_range(const Job& job, int64_t o0, int64_t o1, void* buf);              \
  }
LRP_DECLARE_ISA(avx512)
LRP_DECLARE_ISA(avx2)
LRP_DECLARE_ISA(base)
#undef LRP_DECLARE_ISA

}  // namespace cpu
}  // namespace lrp_ext
