// The rules' scalar algebra, one copy for both backends: the CPU epilogues (csrc/cpu/dense.cpp)
// and the CUDA kernels (csrc/cuda/dense.cu) call these functions, so the CPU suite runs the very
// formulas the GPU runs. Plain inline functions for the host compiler, __host__ __device__ for
// nvcc. Definitions: docs/rules.md.
//
// With p = a_i W_oi, P = Σ p⁺ + b⁺ and M = Σ p⁻ + b⁻ (so z = P + M), every rule is one or two
// coefficients per output (n, o) from its forward sums:
//   epsilon     c = R / stab(z + b)
//   z⁺ (β = 0)  c = αR / stab(P)         (one coefficient: the β term is not formed at all)
//   z_box       c = R / stab(z)           (z = Σ u W⁺ + v W⁻, u = a − low, v = a − high)
//   w²          c = R / stab(Σ W² + b²)
//   gamma       c⁺ = (1+γ)s_p + s_n, c⁻ = s_p + (1+γ)s_n,
//               s_p = R[z>0]/stab(z+γP), s_n = R[z<0]/stab(z+γM)
//   alpha_beta  c⁺ = αR/stab(P), c⁻ = −βR/stab(M)
// and, at model level, γ on an input of both signs from z and S = Σ|a||W| + |b| (gamma_mixed).
#pragma once

#if defined(__CUDACC__)
#define LRP_HD __host__ __device__ __forceinline__
#else
#define LRP_HD inline
#endif

namespace lrp_ext {
namespace rule {

enum Kind : int { EPS = 0, ZPLUS = 1, BOX = 2, WSQ = 3, GAMMA = 4, AB = 5, GAMMA_MIXED = 6 };

// rules with two coefficients per output (c⁺, c⁻)
LRP_HD constexpr bool is_signed(int kind) { return kind == GAMMA || kind == AB; }

template <class T> struct Params {
  T e, gamma, alpha, beta;
};

// positive / negative parts that propagate NaN like torch.clamp
template <class T> LRP_HD T pos(T x) { return x < T(0) ? T(0) : x; }
template <class T> LRP_HD T neg(T x) { return x > T(0) ? T(0) : x; }
// z + e sgn(z) with sgn(-0.0) = +1; NaN stays NaN
template <class T> LRP_HD T stab(T z, T e) { return z + (z >= T(0) ? e : -e); }

// y / x, 0 where x == 0 (also -0.0); NaN stays NaN.
template <class T> LRP_HD T safe_ratio(T y, T x) { return x == T(0) ? T(0) : y / x; }

// Forward term of one (i, o) pair for the signed rules: p⁺ into P, p⁻ into M. Taken from the
// product, not as a⁺W⁺ + a⁻W⁻: with a = ±inf the latter forms inf·0 = NaN where the
// reference's z = aWᵀ (and gamma's z + γP) has ±inf.
template <class T> LRP_HD void signed_term(T x, T w, T& P, T& M) {
  const T p = x * w;
  P += pos(p);
  M += neg(p);
}
// The same sums as alpha_beta's reference forms them, a⁺W⁺ + a⁻W⁻ and a⁺W⁻ + a⁻W⁺ (NaN from
// inf·0 included: z_α and z_β are defined that way). Equal to signed_term for finite values.
template <class T> LRP_HD void split_term(T x, T w, T& P, T& M) {
  const T xp = pos(x), xn = neg(x), wp = pos(w), wn = neg(w);
  P += xp * wp + xn * wn;
  M += xp * wn + xn * wp;
}
// Forward term of z_box: u w⁺ + v w⁻ as one product (u = a − low, v = a − high): the reference
// forms a·w − low·w⁺ − high·w⁻, which has no inf·0 for an infinite a and w ≠ 0.
template <class T> LRP_HD T box_term(T u, T v, T w) { return (w > T(0) ? u : v) * w; }

// One-coefficient rules: c from the forward sum s (without bias) and the bias.
template <int K, class T> LRP_HD T single(const Params<T>& p, T s, T r, T bias) {
  if (K == EPS) return r / stab(s + bias, p.e);
  if (K == ZPLUS) return p.alpha * r / stab(s + pos(bias), p.e);
  if (K == WSQ) return r / stab(s + bias * bias, p.e);
  return r / stab(s, p.e);  // BOX: the bias cancels
}

// Two-coefficient rules: (c⁺, c⁻) from the sums with the bias in them, P and M, and z (= P + M,
// or the layer's own output when the caller has it: the model-level elementwise stage).
template <int K, class T>
LRP_HD void pair_pmz(const Params<T>& p, T P, T M, T z, T r, T& cp, T& cn) {
  if (K == GAMMA) {
    const T sp = r * T(z > T(0) ? 1 : 0) / stab(z + p.gamma * P, p.e);
    const T sn = r * T(z < T(0) ? 1 : 0) / stab(z + p.gamma * M, p.e);
    cp = sp + sn + p.gamma * sp;
    cn = sp + sn + p.gamma * sn;
  } else {  // AB
    cp = p.alpha * r / stab(P, p.e);
    cn = -p.beta * r / stab(M, p.e);
  }
}
// γ on an input of both signs (the model-level stage): with u = Σ a W (z = u + b) and
// S = Σ |a||W| + |b|, the forward sums are P = ½(z + S) and M = ½(z − S) (Σ p⁺ = ½(u + Σ|a||W|),
// and b⁺ − ½b = ½|b|). Returns cs = ½(c⁺ + c⁻) and cd = ½(c⁺ − c⁻): the input side's sums
// t₁ = c⁺W⁺ + c⁻W⁻ and t₂ = c⁻W⁺ + c⁺W⁻ are then A + B and A − B with A = cs W, B = cd |W|
// (sign_sum). The rule reads P only where z > 0 and M only where z < 0.
template <class T> LRP_HD void gamma_mixed(const Params<T>& p, T S, T z, T r, T& cs, T& cd) {
  T cp, cn;
  pair_pmz<GAMMA>(p, T(0.5) * (z + S), T(0.5) * (z - S), z, r, cp, cn);
  cs = T(0.5) * (cp + cn);
  cd = T(0.5) * (cp - cn);
}
// The gradient at an input of both signs from those sums: t₁ = A + B where x >= 0 (NaN
// included), t₂ = A − B where x < 0.
template <class T> LRP_HD T sign_sum(T x, T A, T B) { return x < T(0) ? A - B : A + B; }

// The same from the sums of p⁺ (s1) and p⁻ (s2) and the bias.
template <int K, class T>
LRP_HD void pair(const Params<T>& p, T s1, T s2, T r, T bias, T& cp, T& cn) {
  const T P = s1 + pos(bias), M = s2 + neg(bias);
  pair_pmz<K>(p, P, M, P + M, r, cp, cn);
}

// Both kinds by a run-time rule (the CUDA kernels take the rule as an argument to keep the
// number of template instantiations down); c1 = 0 for the one-coefficient rules.
template <class T>
LRP_HD void coefficients(int kind, const Params<T>& p, T s1, T s2, T r, T bias, T& c0, T& c1) {
  c1 = T(0);
  switch (kind) {
    case EPS: c0 = single<EPS>(p, s1, r, bias); break;
    case ZPLUS: c0 = single<ZPLUS>(p, s1, r, bias); break;
    case WSQ: c0 = single<WSQ>(p, s1, r, bias); break;
    case BOX: c0 = single<BOX>(p, s1, r, bias); break;
    case GAMMA: pair<GAMMA>(p, s1, s2, r, bias, c0, c1); break;
    default: pair<AB>(p, s1, s2, r, bias, c0, c1); break;
  }
}

// Input side of the signed rules and z⁺: a⁺ t1 + a⁻ t2.
template <class T> LRP_HD T signed_input(T x, T t1, T t2) { return pos(x) * t1 + neg(x) * t2; }
// The same where a >= 0 is known and t2 was not formed. The reference still adds a⁻ ⊙ t2 =
// 0 · t2, which is NaN where t2 is ±inf or NaN; t2 (Σ c⁻W⁺ + c⁺W⁻) is non-finite exactly where
// t1 (Σ c⁺W⁺ + c⁻W⁻) is (one non-finite coefficient or weight reaches both through an inf·w or
// an inf·0), barring overflow, so 0 · t1 stands in for it.
template <class T> LRP_HD T nonneg_input(T x, T t1) { return x * t1 + T(0) * t1; }

}  // namespace rule
}  // namespace lrp_ext
