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

namespace lrp_ext {
namespace cpu {
namespace LRP_ISA {
namespace {

constexpr int kBytes = 64;  // one vector: 16 floats or 8 doubles (1, 2 or 4 registers)

template <class T> struct Vec;
template <> struct Vec<float> {
  typedef float type __attribute__((vector_size(kBytes)));
  static constexpr int L = kBytes / 4;
};
template <> struct Vec<double> {
  typedef double type __attribute__((vector_size(kBytes)));
  static constexpr int L = kBytes / 8;
};
typedef uint16_t U16x16 __attribute__((vector_size(32)));
typedef uint32_t U32x16 __attribute__((vector_size(64)));

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
  U32x16 u = __builtin_convertvector(load<U16x16>(p), U32x16) << 16;
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

template <int C, class V, class X> inline void accum(const Prep<V>& w, const X* x, V* acc) {
  if constexpr (C == ID || C == POS || C == SQ) {
    acc[0] += x[0] * w.p;
  } else if constexpr (C == SPLIT) {
    acc[0] += x[0] * w.p;
    acc[1] += x[0] * w.n;
  } else if constexpr (C == MERGE) {
    acc[0] += x[0] * w.p + x[1] * w.n;
  } else {
    acc[0] += x[0] * w.p + x[1] * w.n;
    acc[1] += x[0] * w.n + x[1] * w.p;
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

// out[k][n+nb][o+ob] = sum_i combo(W[o+ob][i], x[k][n+nb][i])
template <int C, class T, class WT, int OB, int NB>
void fwd_block(const WT* W, const T* x, T* out, int64_t N, int64_t O, int64_t I, int64_t o,
               int64_t n) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::L, KI = ki_of(C), KO = ko_of(C);
  V acc[OB][NB][KO];
#pragma GCC unroll 64
  for (int j = 0; j < OB * NB * KO; ++j) (&acc[0][0][0])[j] = V{};
  const WT* wrow = W + o * I;
  const T* xrow = x + n * I;
  int64_t i = 0;
  for (; i + L <= I; i += L) {
    Prep<V> w[OB];
#pragma GCC unroll 8
    for (int ob = 0; ob < OB; ++ob) w[ob] = prep<C>(chunk_w(wrow + ob * I + i));
#pragma GCC unroll 8
    for (int nb = 0; nb < NB; ++nb) {
      V xv[KI];
#pragma GCC unroll 2
      for (int k = 0; k < KI; ++k) xv[k] = load<V>(xrow + k * N * I + nb * I + i);
#pragma GCC unroll 8
      for (int ob = 0; ob < OB; ++ob) accum<C>(w[ob], xv, acc[ob][nb]);
    }
  }
  T s[OB][NB][KO];
#pragma GCC unroll 8
  for (int ob = 0; ob < OB; ++ob)
#pragma GCC unroll 8
    for (int nb = 0; nb < NB; ++nb)
#pragma GCC unroll 2
      for (int k = 0; k < KO; ++k) s[ob][nb][k] = hsum<V, T>(acc[ob][nb][k]);
  for (; i < I; ++i) {
    for (int ob = 0; ob < OB; ++ob) {
      Prep<T> w = prep<C>(T(scalar_w(wrow + ob * I + i)));
      for (int nb = 0; nb < NB; ++nb) {
        T xv[KI];
        for (int k = 0; k < KI; ++k) xv[k] = xrow[k * N * I + nb * I + i];
        accum<C>(w, xv, s[ob][nb]);
      }
    }
  }
  for (int ob = 0; ob < OB; ++ob)
    for (int nb = 0; nb < NB; ++nb)
      for (int k = 0; k < KO; ++k) out[k * N * O + (n + nb) * O + o + ob] = s[ob][nb][k];
}

// buf[k][n+nb][i] += sum_{ob} combo(W[o+ob][i], c[k][n+nb][o+ob])
template <int C, class T, class WT, int OB, int NB>
void bwd_block(const WT* W, const T* c, T* buf, int64_t N, int64_t O, int64_t I, int64_t o,
               int64_t n) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::L, KI = ki_of(C), KO = ko_of(C);
  T cs[OB][NB][KI];
  for (int ob = 0; ob < OB; ++ob)
    for (int nb = 0; nb < NB; ++nb)
      for (int k = 0; k < KI; ++k) cs[ob][nb][k] = c[k * N * O + (n + nb) * O + o + ob];
  const WT* wrow = W + o * I;
  T* brow = buf + n * I;
  int64_t i = 0;
  for (; i + L <= I; i += L) {
    Prep<V> w[OB];
#pragma GCC unroll 8
    for (int ob = 0; ob < OB; ++ob) w[ob] = prep<C>(chunk_w(wrow + ob * I + i));
#pragma GCC unroll 8
    for (int nb = 0; nb < NB; ++nb) {
      V acc[KO];
#pragma GCC unroll 2
      for (int k = 0; k < KO; ++k) acc[k] = load<V>(brow + k * N * I + nb * I + i);
#pragma GCC unroll 8
      for (int ob = 0; ob < OB; ++ob) {
        V cv[KI];
#pragma GCC unroll 2
        for (int k = 0; k < KI; ++k) cv[k] = V{} + cs[ob][nb][k];
        accum<C>(w[ob], cv, acc);
      }
#pragma GCC unroll 2
      for (int k = 0; k < KO; ++k) store(brow + k * N * I + nb * I + i, acc[k]);
    }
  }
  for (; i < I; ++i) {
    for (int ob = 0; ob < OB; ++ob) {
      Prep<T> w = prep<C>(T(scalar_w(wrow + ob * I + i)));
      for (int nb = 0; nb < NB; ++nb) {
        T acc[KO];
        for (int k = 0; k < KO; ++k) acc[k] = brow[k * N * I + nb * I + i];
        accum<C>(w, cs[ob][nb], acc);
        for (int k = 0; k < KO; ++k) brow[k * N * I + nb * I + i] = acc[k];
      }
    }
  }
}

// Register blocking per combo: OB weight rows x NB batch rows (for 32 zmm registers).
template <int C> constexpr int ob_of() { return C == CROSS ? 2 : 4; }
template <int C> constexpr int nb_of() { return (C == ID || C == POS || C == SQ) ? 4 : 2; }

template <bool FWD, int C, class T, class WT, int OB, int NB>
inline void block(const WT* W, const T* x, T* out, int64_t N, int64_t O, int64_t I, int64_t o,
                  int64_t n) {
  if constexpr (FWD)
    fwd_block<C, T, WT, OB, NB>(W, x, out, N, O, I, o, n);
  else
    bwd_block<C, T, WT, OB, NB>(W, x, out, N, O, I, o, n);
}

template <bool FWD, int C, class T, class WT>
void rows(const WT* W, const T* x, T* out, int64_t N, int64_t O, int64_t I, int64_t o0,
          int64_t o1) {
  constexpr int OB = ob_of<C>(), NB = nb_of<C>();
  int64_t o = o0;
  for (; o + OB <= o1; o += OB) {
    int64_t n = 0;
    for (; n + NB <= N; n += NB) block<FWD, C, T, WT, OB, NB>(W, x, out, N, O, I, o, n);
    for (; n < N; ++n) block<FWD, C, T, WT, OB, 1>(W, x, out, N, O, I, o, n);
  }
  for (; o < o1; ++o) {
    int64_t n = 0;
    for (; n + NB <= N; n += NB) block<FWD, C, T, WT, 1, NB>(W, x, out, N, O, I, o, n);
    for (; n < N; ++n) block<FWD, C, T, WT, 1, 1>(W, x, out, N, O, I, o, n);
  }
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

}  // namespace

void forward_range(const Job& job, int64_t o0, int64_t o1) {
  by_type<true>(job, o0, o1, job.out);
}

void backward_range(const Job& job, int64_t o0, int64_t o1, void* buf) {
  by_type<false>(job, o0, o1, buf);
}

}  // namespace LRP_ISA
}  // namespace cpu
}  // namespace lrp_ext
