// SIMD engines of the CPU kernels, free of torch headers so that each ISA translation unit
// (isa_avx512.cpp, isa_avx2.cpp, isa_base.cpp) can compile them with its own target options.
// Everything but the two entry points has internal linkage, so no inline function compiled
// for one ISA can be picked by the linker for another.
//
// Both products stream W (O, I) row by row. A "combo" says which transforms of each weight w
// enter and how the (one or two) input channels combine into the (one or two) outputs:
//   ID    : o0 += x0 * w                    POS : o0 += x0 * w⁺           SQ : o0 += x0 * w²
//   SPLIT : o0 += x0 * w⁺;  o1 += x0 * w⁻
//   MERGE : o0 += x0 * w⁺ + x1 * w⁻
//   CROSS : o0 += x0 * w⁺ + x1 * w⁻;  o1 += x0 * w⁻ + x1 * w⁺
// forward_range contracts over I (x: (KI, N, I) -> out: (KO, N, O)), backward_range over O
// (x: (KI, N, O) coefficients -> buf: (KO, N, I), accumulated over the rows [o0, o1)).
// w⁺ = (w < 0 ? 0 : w) and w⁻ = (w > 0 ? 0 : w) keep NaN, as torch.clamp does.
#ifndef LRP_ISA
#error "define LRP_ISA before including kernels.h"
#endif
#include "kernels_api.h"
#include "rule_math.h"

namespace lrp_ext {
namespace cpu {
namespace LRP_ISA {
namespace {

// One vector is one register of the ISA (LRP_VBYTES: 64 for AVX-512, 32 for AVX2, 16 for SSE2)
// and the register blocking below is sized to the register file (32 zmm, 16 ymm/xmm).
#ifndef LRP_VBYTES
#define LRP_VBYTES 16
#endif
constexpr int kBytes = LRP_VBYTES;
constexpr bool kWide = kBytes == 64;

template <class T> struct Vec;
template <> struct Vec<float> {
  typedef float type __attribute__((vector_size(kBytes)));
  static constexpr int L = kBytes / 4;
};
template <> struct Vec<double> {
  typedef double type __attribute__((vector_size(kBytes)));
  static constexpr int L = kBytes / 8;
};
typedef uint16_t U16v __attribute__((vector_size(kBytes / 2)));
typedef uint32_t U32v __attribute__((vector_size(kBytes)));

struct BF16 { uint16_t bits; };

template <class V> inline V load(const void* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}
template <class V> inline void store(void* p, const V& v) { __builtin_memcpy(p, &v, sizeof(V)); }

// W element / chunk in the accumulation type T
template <class T> inline T scalar_w(const T* p) { return *p; }
inline float scalar_w(const BF16* p) {
  uint32_t u = uint32_t(p->bits) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
template <class T> inline typename Vec<T>::type chunk_w(const T* p) {
  return load<typename Vec<T>::type>(p);
}
inline Vec<float>::type chunk_w(const BF16* p) {
  U32v u = __builtin_convertvector(load<U16v>(p), U32v) << 16;
  return load<Vec<float>::type>(&u);
}

template <class V> inline V pos(V w) { return w < 0 ? V{} : w; }
template <class V> inline V neg(V w) { return w > 0 ? V{} : w; }
inline float pos(float w) { return w < 0 ? 0.f : w; }
inline float neg(float w) { return w > 0 ? 0.f : w; }
inline double pos(double w) { return w < 0 ? 0. : w; }
inline double neg(double w) { return w > 0 ? 0. : w; }

constexpr int ki_of(int c) { return (c == MERGE || c == CROSS) ? 2 : 1; }
constexpr int ko_of(int c) { return (c == SPLIT || c == CROSS) ? 2 : 1; }

template <class V> struct Prep { V p, n; };

template <int C, class V> inline Prep<V> prep(V w) {
  if constexpr (C == ID) return {w, w};
  else if constexpr (C == POS) return {pos(w), w};
  else if constexpr (C == SQ) return {w * w, w};
  else return {pos(w), neg(w)};
}

// a * b + c as one fused multiply-add where the ISA has it, spelled out so that it does not
// depend on the compiler's contraction choices (the build uses -ffp-contract=off): the same
// term gives the same bits in every combo and every register blocking.
template <class V> inline V fmadd(V a, V b, V c) {
#if LRP_VBYTES == 64
  if constexpr (sizeof(a[0]) == 4)
    return (V)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
  else
    return (V)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c);
#elif LRP_VBYTES == 32
  if constexpr (sizeof(a[0]) == 4)
    return (V)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
  else
    return (V)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
#else
  return a * b + c;
#endif
}
#if LRP_VBYTES > 16
inline float fmadd(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
inline double fmadd(double a, double b, double c) { return __builtin_fma(a, b, c); }
#else
inline float fmadd(float a, float b, float c) { return a * b + c; }
inline double fmadd(double a, double b, double c) { return a * b + c; }
#endif

// One FMA per term, in the same order in every combo: with x1 = 0 the two-input combos add
// exact zeros, so skipping the a⁻ terms (a >= 0) gives bit-identical results.
template <int C, class V, class X> inline void accum(const Prep<V>& w, const X* x, V* acc) {
  if constexpr (C == ID || C == POS || C == SQ) {
    acc[0] = fmadd(V(x[0]), w.p, acc[0]);
  } else if constexpr (C == SPLIT) {
    acc[0] = fmadd(V(x[0]), w.p, acc[0]);
    acc[1] = fmadd(V(x[0]), w.n, acc[1]);
  } else if constexpr (C == MERGE) {
    acc[0] = fmadd(V(x[0]), w.p, acc[0]);
    acc[0] = fmadd(V(x[1]), w.n, acc[0]);
  } else {
    acc[0] = fmadd(V(x[0]), w.p, acc[0]);
    acc[0] = fmadd(V(x[1]), w.n, acc[0]);
    acc[1] = fmadd(V(x[0]), w.n, acc[1]);
    acc[1] = fmadd(V(x[1]), w.p, acc[1]);
  }
}

template <class V, class T> inline T hsum(const V& v) {
  constexpr int L = sizeof(V) / sizeof(T);
  T lanes[L];
  __builtin_memcpy(lanes, &v, sizeof(V));
  // pairwise, so the result does not depend on a long sequential chain
#pragma GCC unroll 16
  for (int w = L / 2; w >= 1; w /= 2)
#pragma GCC unroll 16
    for (int j = 0; j < w; ++j) lanes[j] += lanes[j + w];
  return lanes[0];
}

// Tiling: OT weight rows x KT inputs of W stay in L1 while every batch row uses them; the
// forward keeps per-(row, sample) vector partial sums in an L1 tile, the backward adds a whole
// row tile into the (KO, N, I) buffer at once, so the buffer crosses L2 once per OT rows.
constexpr int OT = 16;
constexpr int KT = 256;  // a multiple of every vector length
constexpr int NG = 16;   // samples per forward accumulator tile

constexpr bool single(int c) { return c == ID || c == POS || c == SQ; }
// samples per register block (forward and backward)
template <int C> constexpr int nb_of() { return kWide ? (single(C) ? 4 : 2) : (single(C) ? 2 : 1); }

// acc[ob][nb][k] (vector partial sums, tile strides so/sn) += combo over inputs [i0, i1)
template <int C, class T, class WT, int OB, int NB>
inline void fwd_micro(const WT* w0, const T* x0, int64_t I, int64_t xk, int64_t i0, int64_t i1,
                      typename Vec<T>::type* acc, int so, int sn) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::L, KI = ki_of(C), KO = ko_of(C);
  V a[OB][NB][KO];
#pragma GCC unroll 8
  for (int ob = 0; ob < OB; ++ob)
#pragma GCC unroll 8
    for (int nb = 0; nb < NB; ++nb)
#pragma GCC unroll 2
      for (int k = 0; k < KO; ++k) a[ob][nb][k] = acc[ob * so + nb * sn + k];
  for (int64_t i = i0; i < i1; i += L) {
    Prep<V> w[OB];
#pragma GCC unroll 8
    for (int ob = 0; ob < OB; ++ob) w[ob] = prep<C>(chunk_w(w0 + ob * I + i));
#pragma GCC unroll 8
    for (int nb = 0; nb < NB; ++nb) {
      V xv[KI];
#pragma GCC unroll 2
      for (int k = 0; k < KI; ++k) xv[k] = load<V>(x0 + k * xk + nb * I + i);
#pragma GCC unroll 8
      for (int ob = 0; ob < OB; ++ob) accum<C>(w[ob], xv, a[ob][nb]);
    }
  }
#pragma GCC unroll 8
  for (int ob = 0; ob < OB; ++ob)
#pragma GCC unroll 8
    for (int nb = 0; nb < NB; ++nb)
#pragma GCC unroll 2
      for (int k = 0; k < KO; ++k) acc[ob * so + nb * sn + k] = a[ob][nb][k];
}

// out[k][n][o] = sum_i combo(W[o][i], x[k][n][i]) for rows o in [o0, o1)
template <int C, class T, class WT>
void fwd_rows(const WT* W, const T* x, T* out, int64_t N, int64_t O, int64_t I, int64_t o0,
              int64_t o1) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::L, KI = ki_of(C), KO = ko_of(C), NB = nb_of<C>();
  constexpr int sn = KO, so = NG * KO;
  V acc[OT * NG * KO];
  const int64_t Iv = I / L * L, xk = N * I;
  for (int64_t ot = o0; ot < o1; ot += OT) {
    const int on = int(o1 - ot < OT ? o1 - ot : OT);
    const WT* wt = W + ot * I;
    for (int64_t ng = 0; ng < N; ng += NG) {
      const int nn = int(N - ng < NG ? N - ng : NG);
      const T* xg = x + ng * I;
      for (int j = 0; j < OT * NG * KO; ++j) acc[j] = V{};
      for (int64_t it = 0; it < Iv; it += KT) {
        const int64_t ie = it + KT < Iv ? it + KT : Iv;
        int ob = 0;
        for (; ob + 4 <= on; ob += 4) {
          int nb = 0;
          for (; nb + NB <= nn; nb += NB)
            fwd_micro<C, T, WT, 4, NB>(wt + ob * I, xg + nb * I, I, xk, it, ie,
                                       acc + ob * so + nb * sn, so, sn);
          for (; nb < nn; ++nb)
            fwd_micro<C, T, WT, 4, 1>(wt + ob * I, xg + nb * I, I, xk, it, ie,
                                      acc + ob * so + nb * sn, so, sn);
        }
        for (; ob < on; ++ob) {
          int nb = 0;
          for (; nb + NB <= nn; nb += NB)
            fwd_micro<C, T, WT, 1, NB>(wt + ob * I, xg + nb * I, I, xk, it, ie,
                                       acc + ob * so + nb * sn, so, sn);
          for (; nb < nn; ++nb)
            fwd_micro<C, T, WT, 1, 1>(wt + ob * I, xg + nb * I, I, xk, it, ie,
                                      acc + ob * so + nb * sn, so, sn);
        }
      }
      for (int ob = 0; ob < on; ++ob) {
        for (int nb = 0; nb < nn; ++nb) {
          T s[KO];
          for (int k = 0; k < KO; ++k) s[k] = hsum<V, T>(acc[ob * so + nb * sn + k]);
          for (int64_t i = Iv; i < I; ++i) {
            Prep<T> w = prep<C>(T(scalar_w(wt + ob * I + i)));
            T xv[KI];
            for (int k = 0; k < KI; ++k) xv[k] = xg[k * xk + nb * I + i];
            accum<C>(w, xv, s);
          }
          for (int k = 0; k < KO; ++k) out[k * N * O + (ng + nb) * O + ot + ob] = s[k];
        }
      }
    }
  }
}

// every lane = c (x - 0 is exact for every x, so the subtraction folds into a broadcast)
template <class V, class T> inline V splat(T c) {
#if LRP_VBYTES == 64
  if constexpr (sizeof(T) == 4) return (V)_mm512_set1_ps(c); else return (V)_mm512_set1_pd(c);
#elif LRP_VBYTES == 32
  if constexpr (sizeof(T) == 4) return (V)_mm256_set1_ps(c); else return (V)_mm256_set1_pd(c);
#else
  return c - V{};
#endif
}

// buf[k][n][i0:i1] += sum over the OB rows of combo(W[o][i], c[k][n][o]); the OB products of a
// chunk go to four partial sums so that no long chain of dependent FMAs forms.
template <int C, class T, class WT, int OB, int NB>
inline void bwd_micro(const WT* w0, const T* c0, T* b0, int64_t I, int64_t ck, int64_t bk,
                      int64_t O, int64_t i0, int64_t i1) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::L, KI = ki_of(C), KO = ko_of(C);
  constexpr int P = OB < 4 ? OB : 4;
  for (int64_t i = i0; i < i1; i += L) {
    Prep<V> w[OB];
#pragma GCC unroll 16
    for (int ob = 0; ob < OB; ++ob) w[ob] = prep<C>(chunk_w(w0 + ob * I + i));
#pragma GCC unroll 4
    for (int nb = 0; nb < NB; ++nb) {
      V part[P][KO];
#pragma GCC unroll 4
      for (int p = 0; p < P; ++p)
#pragma GCC unroll 2
        for (int k = 0; k < KO; ++k) part[p][k] = V{};
#pragma GCC unroll 16
      for (int ob = 0; ob < OB; ++ob) {
        V cv[KI];
#pragma GCC unroll 2
        for (int k = 0; k < KI; ++k) cv[k] = splat<V, T>(c0[k * ck + nb * O + ob]);
        accum<C>(w[ob], cv, part[ob % P]);
      }
#pragma GCC unroll 2
      for (int k = 0; k < KO; ++k) {
        V sum = part[0][k];
#pragma GCC unroll 4
        for (int p = 1; p < P; ++p) sum += part[p][k];
        store(b0 + k * bk + nb * I + i, load<V>(b0 + k * bk + nb * I + i) + sum);
      }
    }
  }
}

template <int C, class T, class WT, int OB>
inline void bwd_tile(const WT* w0, const T* c0, T* b0, int64_t N, int64_t O, int64_t I,
                     int64_t i0, int64_t i1) {
  constexpr int NB = nb_of<C>();
  const int64_t ck = N * O, bk = N * I;
  int64_t n = 0;
  for (; n + NB <= N; n += NB)
    bwd_micro<C, T, WT, OB, NB>(w0, c0 + n * O, b0 + n * I, I, ck, bk, O, i0, i1);
  for (; n < N; ++n) bwd_micro<C, T, WT, OB, 1>(w0, c0 + n * O, b0 + n * I, I, ck, bk, O, i0, i1);
}

// buf[k][n][i] += sum_{o in [o0, o1)} combo(W[o][i], c[k][n][o])
template <int C, class T, class WT>
void bwd_rows(const WT* W, const T* c, T* buf, int64_t N, int64_t O, int64_t I, int64_t o0,
              int64_t o1) {
  constexpr int L = Vec<T>::L, KI = ki_of(C), KO = ko_of(C);
  // rows per register pass; the same for every combo, so that the partial sums group the rows
  // alike in the a >= 0 and the mixed-sign plans
  constexpr int OBF = kWide ? 8 : 4;
  const int64_t Iv = I / L * L;
  for (int64_t ot = o0; ot < o1; ot += OT) {
    const int on = int(o1 - ot < OT ? o1 - ot : OT);
    const WT* wt = W + ot * I;
    for (int64_t it = 0; it < Iv; it += KT) {
      const int64_t ie = it + KT < Iv ? it + KT : Iv;
      int ob = 0;
      for (; ob + OBF <= on; ob += OBF)
        bwd_tile<C, T, WT, OBF>(wt + ob * I, c + ot + ob, buf, N, O, I, it, ie);
      for (; ob + 4 <= on; ob += 4)
        bwd_tile<C, T, WT, 4>(wt + ob * I, c + ot + ob, buf, N, O, I, it, ie);
      for (; ob < on; ++ob) bwd_tile<C, T, WT, 1>(wt + ob * I, c + ot + ob, buf, N, O, I, it, ie);
    }
    for (int64_t i = Iv; i < I; ++i) {
      for (int ob = 0; ob < on; ++ob) {
        Prep<T> w = prep<C>(T(scalar_w(wt + ob * I + i)));
        for (int64_t n = 0; n < N; ++n) {
          T cv[KI], acc[KO];
          for (int k = 0; k < KI; ++k) cv[k] = c[k * N * O + n * O + ot + ob];
          for (int k = 0; k < KO; ++k) acc[k] = buf[k * N * I + n * I + i];
          accum<C>(w, cv, acc);
          for (int k = 0; k < KO; ++k) buf[k * N * I + n * I + i] = acc[k];
        }
      }
    }
  }
}

template <bool FWD, int C, class T, class WT>
void rows(const WT* W, const T* x, T* out, int64_t N, int64_t O, int64_t I, int64_t o0,
          int64_t o1) {
  if constexpr (FWD)
    fwd_rows<C, T, WT>(W, x, out, N, O, I, o0, o1);
  else
    bwd_rows<C, T, WT>(W, x, out, N, O, I, o0, o1);
}

template <bool FWD, class T, class WT>
void by_combo(const Job& j, int64_t o0, int64_t o1, T* out) {
  auto W = static_cast<const WT*>(j.W);
  auto x = static_cast<const T*>(j.x);
  switch (j.combo) {
    case ID: return rows<FWD, ID, T, WT>(W, x, out, j.N, j.O, j.I, o0, o1);
    case POS: return rows<FWD, POS, T, WT>(W, x, out, j.N, j.O, j.I, o0, o1);
    case SQ: return rows<FWD, SQ, T, WT>(W, x, out, j.N, j.O, j.I, o0, o1);
    case SPLIT: return rows<FWD, SPLIT, T, WT>(W, x, out, j.N, j.O, j.I, o0, o1);
    case MERGE: return rows<FWD, MERGE, T, WT>(W, x, out, j.N, j.O, j.I, o0, o1);
    case CROSS: return rows<FWD, CROSS, T, WT>(W, x, out, j.N, j.O, j.I, o0, o1);
  }
}

template <bool FWD>
void by_type(const Job& j, int64_t o0, int64_t o1, void* out) {
  switch (j.wtype) {
    case W_F32: return by_combo<FWD, float, float>(j, o0, o1, static_cast<float*>(out));
    case W_F64: return by_combo<FWD, double, double>(j, o0, o1, static_cast<double*>(out));
    case W_BF16: return by_combo<FWD, float, BF16>(j, o0, o1, static_cast<float*>(out));
  }
}

// TZ: r = z ⊙ g; HM: M is given (else M = z − P). Compile-time flags, so that the loop has no
// conditional loads and vectorizes.
template <int K, class T, bool TZ, bool HM>
void coef_row(const CoefJob& j, int64_t row, int64_t k0, int64_t k1) {
  const int64_t n = j.inner, zr = row % j.zrows;
  const T* __restrict__ z = static_cast<const T*>(j.z) + zr * n;
  const T* __restrict__ g = static_cast<const T*>(j.g) + row * n;
  const T* __restrict__ P = static_cast<const T*>(j.P) + (j.P ? zr * n : 0);
  const T* __restrict__ M = static_cast<const T*>(j.M) + (j.M ? zr * n : 0);
  T* __restrict__ o0 = static_cast<T*>(j.out) + row * n * (rule::is_signed(K) ? 2 : 1);
  T* __restrict__ o1 = o0 + (K == rule::GAMMA_MIXED ? j.half : n);
  const rule::Params<T> p{T(j.e), T(j.gamma), T(j.alpha), T(j.beta)};
  for (int64_t k = k0; k < k1; ++k) {
    const T zk = z[k];
    const T r = TZ ? zk * g[k] : g[k];
    if constexpr (rule::is_signed(K)) {
      const T Pk = P[k];
      T cp, cn;
      rule::pair_pmz<K>(p, Pk, HM ? M[k] : zk - Pk, zk, r, cp, cn);
      o0[k] = cp;
      o1[k] = cn;
    } else if constexpr (K == rule::GAMMA_MIXED) {
      T cs, cd;
      rule::gamma_mixed(p, P[k], zk, r, cs, cd);
      o0[k] = cs;
      o1[k] = cd;
    } else if constexpr (K == rule::EPS) {
      o0[k] = rule::single<K>(p, zk, r, T(0));
    } else {
      o0[k] = rule::single<K>(p, P[k], r, T(0));
    }
  }
}

template <class T, bool TZ, bool HM>
void coef_kind(const CoefJob& j, int64_t row, int64_t k0, int64_t k1) {
  switch (j.kind) {
    case rule::EPS: return coef_row<rule::EPS, T, TZ, false>(j, row, k0, k1);
    case rule::ZPLUS: return coef_row<rule::ZPLUS, T, TZ, false>(j, row, k0, k1);
    case rule::GAMMA: return coef_row<rule::GAMMA, T, TZ, HM>(j, row, k0, k1);
    case rule::GAMMA_MIXED: return coef_row<rule::GAMMA_MIXED, T, TZ, false>(j, row, k0, k1);
    default: return coef_row<rule::AB, T, TZ, HM>(j, row, k0, k1);
  }
}

template <class T>
void coef_type(const CoefJob& j, int64_t row, int64_t k0, int64_t k1) {
  if (j.times_z)
    return j.M ? coef_kind<T, true, true>(j, row, k0, k1) : coef_kind<T, true, false>(j, row, k0, k1);
  return j.M ? coef_kind<T, false, true>(j, row, k0, k1) : coef_kind<T, false, false>(j, row, k0, k1);
}

// Values [k0, k1) of L stacked copies of an n-value tensor x: f(i0, i1, base) for each run
// within one copy (x's value of i is x[i - base]), so that the inner loops have no modulo and
// vectorize.
template <class F>
inline void copy_runs(int64_t n, int64_t k0, int64_t k1, F f) {
  for (int64_t k = k0; k < k1;) {
    const int64_t base = k / n * n, end = k1 < base + n ? k1 : base + n;
    f(k, end, base);
    k = end;
  }
}

template <class T>
void ratio_loop(const T* __restrict__ y, const T* __restrict__ x, const T* __restrict__ g,
                T* __restrict__ out, int64_t n, int64_t k0, int64_t k1) {
  if (g == nullptr) {
    for (int64_t k = k0; k < k1; ++k) out[k] = rule::safe_ratio(y[k], x[k]);
    return;
  }
  copy_runs(n, k0, k1, [&](int64_t i0, int64_t i1, int64_t base) {
    const T* __restrict__ xb = x - base;
    const T* __restrict__ yb = y - base;
    for (int64_t i = i0; i < i1; ++i) out[i] = g[i] * rule::safe_ratio(yb[i], xb[i]);
  });
}

// x has n values, A, B and out L·n (L stacked gradients of x's shape)
template <class T>
void sign_sum_loop(const T* __restrict__ x, const T* __restrict__ A, const T* __restrict__ B,
                   T* __restrict__ out, int64_t n, int64_t k0, int64_t k1) {
  copy_runs(n, k0, k1, [&](int64_t i0, int64_t i1, int64_t base) {
    const T* __restrict__ xb = x - base;
    for (int64_t i = i0; i < i1; ++i) out[i] = rule::sign_sum(xb[i], A[i], B[i]);
  });
}

}  // namespace

void sign_sum_range(const void* x, const void* A, const void* B, void* out, bool f64, int64_t n,
                    int64_t k0, int64_t k1) {
  if (f64)
    return sign_sum_loop(static_cast<const double*>(x), static_cast<const double*>(A),
                         static_cast<const double*>(B), static_cast<double*>(out), n, k0, k1);
  sign_sum_loop(static_cast<const float*>(x), static_cast<const float*>(A),
                static_cast<const float*>(B), static_cast<float*>(out), n, k0, k1);
}

void ratio_range(const void* y, const void* x, const void* g, void* out, bool f64, int64_t n,
                 int64_t k0, int64_t k1) {
  if (f64)
    return ratio_loop(static_cast<const double*>(y), static_cast<const double*>(x),
                      static_cast<const double*>(g), static_cast<double*>(out), n, k0, k1);
  ratio_loop(static_cast<const float*>(y), static_cast<const float*>(x),
             static_cast<const float*>(g), static_cast<float*>(out), n, k0, k1);
}

void coef_range(const CoefJob& j, int64_t row, int64_t k0, int64_t k1) {
  return j.f64 ? coef_type<double>(j, row, k0, k1) : coef_type<float>(j, row, k0, k1);
}

void forward_range(const Job& job, int64_t o0, int64_t o1) {
  by_type<true>(job, o0, o1, job.out);
}

void backward_range(const Job& job, int64_t o0, int64_t o1, void* buf) {
  by_type<false>(job, o0, o1, buf);
}

}  // namespace LRP_ISA
}  // namespace cpu
}  // namespace lrp_ext
