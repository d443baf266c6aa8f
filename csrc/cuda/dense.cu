// CUDA kernels of the dense LRP rules (docs/rules.md), registered for the CUDA dispatch key.
//
// Algebra (p = a_i W_oi, P_o = sum_i p+ + b+, M_o = sum_i p- + b-, so z = P + M):
//   gamma:      z_p = z + g P, z_n = z + g M, s_p = R [z>0] / stab(z_p), s_n = R [z<0] / stab(z_n),
//               c+ = (1+g) s_p + s_n,  c- = s_p + (1+g) s_n
//   alpha_beta: c+ = alpha R / stab(P),  c- = -beta R / stab(M)
//   both:       R_in = a+ t1 + a- t2,  t1 = c+ W+ + c- W-,  t2 = c- W+ + c+ W-
//   epsilon:    c = R / stab(a W^T + b),  R_in = a (c W)
//   z_box:      u = a - low, v = a - high, z = u W+^T + v W-^T, c = R / stab(z),
//               R_in = u (c W+) + v (c W-)
//   w_square:   z_o = sum_i W_oi^2 + b_o^2, R_in = (R / stab(z)) W^2
//   flat:       R_in_i = sum_o R_o / stab(I)
// Every rule is two passes over W.  Two paths:
//   fused (small batch, memory-bound on W): a forward kernel that reads W once (one warp per
//     output row, NT batch rows per block) and writes the coefficients, and a backward kernel that
//     reads W once more (16-byte column slices, split over O rows for occupancy, partial sums
//     combined deterministically by a second small kernel) and applies the input-side epilogue.
//   gemm (large batch, compute-bound): the sign-split weights are built once per call by one
//     elementwise kernel, the products go through ATen's matmul (cuBLAS), and the elementwise
//     stages between them are one fused kernel each.
// LRP_EXT_CUDA_PATH=auto|fused|gemm (read on every call) overrides the choice.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraphsUtils.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <utility>

#include "lrp.h"
#include "rule_math.h"

namespace lrp_ext {
namespace {

constexpr int kNT = 4;            // batch rows per tile of the fused kernels
constexpr int kFwdWarps = 4;      // forward: one warp per output row, 4 rows per block
constexpr int kFwdUnroll = 4;     // forward: 16-byte chunks of a W row in flight per lane
constexpr int kBwdThreads = 256;  // backward: one 16-byte column slice of W per thread
constexpr int kBwdUnroll = 4;     // backward: W rows in flight per thread (2 where registers
                                  // would spill: two sums per element with 2- or 8-byte types)
constexpr int kEwThreads = 256;   // elementwise kernels

// forward modes of the fused kernel: which sums over i
enum FwdMode : int { F_PLAIN = 0, F_SIGNED = 1, F_ZBOX = 2 };
// backward modes: which sums over o
enum BwdMode : int { B_PLAIN = 0, B_SIGNED = 1, B_SPLIT = 2, B_SQUARE = 3 };
// input-side epilogue
enum Epi : int { EPI_MUL = 0, EPI_SIGNED = 1, EPI_ZBOX = 2, EPI_COPY = 3 };
// coefficient layouts of the gemm path
enum CoefLayout : int { L_SINGLE = 0, L_NONNEG = 1, L_MIXED = 2 };

// the rule (rule::Kind) and its scalars; the coefficient math is rule_math.h, shared with the CPU
template <typename acc_t>
struct RuleParams {
  int rule;
  rule::Params<acc_t> p;
};

__host__ __device__ inline int64_t ceil_div(int64_t x, int64_t y) { return (x + y - 1) / y; }
__device__ __forceinline__ int64_t imin(int64_t x, int64_t y) { return x < y ? x : y; }

using rule::pos;
using rule::neg;

// ---- 16-byte loads kept raw (a uint4) until use, unpacked into V accumulation-type values ----
// gather(): the same 16 bytes from element loads, zero past `limit` (unaligned rows, tails).
template <typename T> struct Unpack;
template <> struct Unpack<float> {
  static constexpr int V = 4;
  __device__ __forceinline__ static void run(const uint4& u, float (&x)[4]) {
    x[0] = __uint_as_float(u.x); x[1] = __uint_as_float(u.y);
    x[2] = __uint_as_float(u.z); x[3] = __uint_as_float(u.w);
  }
  __device__ __forceinline__ static uint4 gather(const float* p, int64_t i, int64_t limit) {
    unsigned w[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) w[j] = i + j < limit ? __float_as_uint(p[i + j]) : 0u;
    return make_uint4(w[0], w[1], w[2], w[3]);
  }
};
template <> struct Unpack<double> {
  static constexpr int V = 2;
  __device__ __forceinline__ static void run(const uint4& u, double (&x)[2]) {
    x[0] = __hiloint2double(static_cast<int>(u.y), static_cast<int>(u.x));
    x[1] = __hiloint2double(static_cast<int>(u.w), static_cast<int>(u.z));
  }
  __device__ __forceinline__ static uint4 gather(const double* p, int64_t i, int64_t limit) {
    const double d0 = i < limit ? p[i] : 0.0, d1 = i + 1 < limit ? p[i + 1] : 0.0;
    return make_uint4(static_cast<unsigned>(__double2loint(d0)),
                      static_cast<unsigned>(__double2hiint(d0)),
                      static_cast<unsigned>(__double2loint(d1)),
                      static_cast<unsigned>(__double2hiint(d1)));
  }
};
// 2-byte types: element 2k in the low half of word k, 2k+1 in the high half
template <typename T>
__device__ __forceinline__ uint4 gather16(const T* p, int64_t i, int64_t limit) {
  unsigned w[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const unsigned lo = i + 2 * k < limit ? static_cast<unsigned>(p[i + 2 * k].x) : 0u;
    const unsigned hi = i + 2 * k + 1 < limit ? static_cast<unsigned>(p[i + 2 * k + 1].x) : 0u;
    w[k] = lo | (hi << 16);
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}
__device__ __forceinline__ float h2f(unsigned bits) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(bits & 0xffffu)));
}
template <> struct Unpack<c10::Half> {
  static constexpr int V = 8;
  __device__ __forceinline__ static void run(const uint4& u, float (&x)[8]) {
    const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) { x[2 * k] = h2f(w[k]); x[2 * k + 1] = h2f(w[k] >> 16); }
  }
  __device__ __forceinline__ static uint4 gather(const c10::Half* p, int64_t i, int64_t limit) {
    return gather16(p, i, limit);
  }
};
template <> struct Unpack<c10::BFloat16> {
  static constexpr int V = 8;
  __device__ __forceinline__ static void run(const uint4& u, float (&x)[8]) {
    const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      x[2 * k] = __uint_as_float(w[k] << 16);
      x[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
    }
  }
  __device__ __forceinline__ static uint4 gather(const c10::BFloat16* p, int64_t i,
                                                 int64_t limit) {
    return gather16(p, i, limit);
  }
};

// Raw bytes of p[i .. i+V) (16 bytes): vb = 16, 8 or 4 loads them in vectors of vb bytes, vb = 0
// (and row tails) element by element. vb is chosen per tensor on the host (vec_bytes): every row
// start and every i (a multiple of V) is then vb-aligned.
template <typename T>
__device__ __forceinline__ uint4 load_raw(const T* __restrict__ p, int64_t i, int64_t limit,
                                          int vb) {
  constexpr int V = Unpack<T>::V;
  if (vb != 0 && i + V <= limit) {
    const T* q = p + i;
    if (vb == 16) return __ldg(reinterpret_cast<const uint4*>(q));
    if (vb == 8) {
      const uint2* r = reinterpret_cast<const uint2*>(q);
      const uint2 lo = __ldg(r), hi = __ldg(r + 1);
      return make_uint4(lo.x, lo.y, hi.x, hi.y);
    }
    const unsigned* r = reinterpret_cast<const unsigned*>(q);
    return make_uint4(__ldg(r), __ldg(r + 1), __ldg(r + 2), __ldg(r + 3));
  }
  return Unpack<T>::gather(p, i, limit);
}

// V consecutive elements p[i .. i+V) as accumulation-type values (zeros past `limit`).
template <typename T, typename acc_t, int V>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, int64_t i, int64_t limit,
                                         int vb, acc_t (&x)[V]) {
  Unpack<T>::run(load_raw(p, i, limit, vb), x);
}

// float16 holds coefficients only up to 65504: when the largest finite |c| of batch row n (its
// float bits in rowmax[n], recorded only above 2^15) exceeds 2^15, the gemm path stores row n's
// c * 2^-e(n) and multiplies row n of the products by 2^e(n) (row n of c W depends on row n of c
// alone). Powers of two: exact, except for coefficients of that row pushed below float16's
// normal range; the other rows keep theirs.
constexpr float kHalfScaleAbove = 32768.f;
__device__ __forceinline__ int coef_exponent(const int* rowmax, int64_t n) {
  if (rowmax == nullptr) return 0;
  const float m = __int_as_float(rowmax[n]);
  if (!(m > 32768.f)) return 0;
  int e;
  frexpf(m / 32768.f, &e);  // m / 2^15 = f 2^e, f in [0.5, 1)
  return e;
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Output-side coefficients from the forward sums (s1, s2), R and the bias of one (n, o).
template <typename acc_t>
__device__ __forceinline__ void coefficients(const RuleParams<acc_t>& p, acc_t s1, acc_t s2,
                                             acc_t r, acc_t bias, acc_t& c0, acc_t& c1) {
  rule::coefficients(p.rule, p.p, s1, s2, r, bias, c0, c1);
}

// Input-side epilogue of element idx of the (N, I) result. EPI_SIGNED: where a >= 0 is known and
// t2 was not formed, the caller passes t2 = t1 (rule::nonneg_input's 0 · t1).
template <typename T, typename acc_t>
__device__ __forceinline__ acc_t epilogue(int mode, acc_t t1, acc_t t2, const T* __restrict__ a,
                                          const T* __restrict__ lo, const T* __restrict__ hi,
                                          int64_t idx) {
  switch (mode) {
    case EPI_MUL: return static_cast<acc_t>(a[idx]) * t1;
    case EPI_SIGNED: return rule::signed_input(static_cast<acc_t>(a[idx]), t1, t2);
    case EPI_ZBOX: {
      const acc_t x = static_cast<acc_t>(a[idx]);
      return (x - static_cast<acc_t>(lo[idx])) * t1 + (x - static_cast<acc_t>(hi[idx])) * t2;
    }
    default: return t1;
  }
}

// ---------------------------------------------------------------------------------------------
// Fused forward: block = kFwdWarps warps, warp w owns output row o; the block owns kNT batch rows.
// blockIdx.x = o_tile * n_tiles + n_tile (batch tiles of one W row slice run side by side and
// share it through L2).  Writes C0 (N, O), C1 when given and, for F_SIGNED with negflag given,
// negflag[n_tile] = any(a < 0) over the tile's rows (the backward skips t2 for tiles without
// negative inputs): the warp of row 0, which reads every input of the tile, is the only one
// that tracks it.  vb_*: vector widths per tensor (load_raw).
template <typename T, int MODE>
__global__ void __launch_bounds__(kFwdWarps * 32)
fwd_fused_kernel(const T* __restrict__ a, const T* __restrict__ lo, const T* __restrict__ hi,
                 const T* __restrict__ W, const T* __restrict__ b, const T* __restrict__ R,
                 int64_t N, int64_t O, int64_t I, int64_t n_tiles, int vb_w, int vb_a, int vb_lh,
                 RuleParams<at::opmath_type<T>> prm, at::opmath_type<T>* __restrict__ C0,
                 at::opmath_type<T>* __restrict__ C1, int* __restrict__ negflag) {
  using acc_t = at::opmath_type<T>;
  constexpr int V = Unpack<T>::V;
  constexpr int64_t STEP = 32 * V;
  constexpr int U = MODE == F_ZBOX ? 2 : kFwdUnroll;  // z_box streams three inputs
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n_tile = blockIdx.x % n_tiles;
  const int64_t o_tile = blockIdx.x / n_tiles;
  const int64_t o = o_tile * kFwdWarps + warp;
  if (o >= O) return;
  const int64_t n0 = n_tile * kNT;
  const int nv = static_cast<int>(imin(kNT, N - n0));

  acc_t s1[kNT], s2[kNT];
#pragma unroll
  for (int n = 0; n < kNT; ++n) { s1[n] = acc_t(0); s2[n] = acc_t(0); }
  bool seen_neg = false;
  const bool track = MODE == F_SIGNED && negflag != nullptr && o == 0;  // warp-uniform
  // the reference's forward sums: z = aWᵀ-like for gamma, a⁺W⁺ + a⁻W⁻ for alpha_beta and z⁺
  // (they differ only where an input or weight is infinite)
  const bool split = MODE == F_SIGNED && prm.rule != rule::GAMMA;
  const T* __restrict__ Wrow = W + o * I;

  for (int64_t i = static_cast<int64_t>(lane) * V; i < I; i += STEP * U) {
    uint4 wr[U];
#pragma unroll
    for (int u = 0; u < U; ++u) wr[u] = load_raw(Wrow, i + u * STEP, I, vb_w);
#pragma unroll
    for (int n = 0; n < kNT; ++n) {
      if (n < nv) {
        const int64_t row = (n0 + n) * I;
        uint4 xr[U], lr[U], hr[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          xr[u] = load_raw(a + row, i + u * STEP, I, vb_a);
          if (MODE == F_ZBOX) {
            lr[u] = load_raw(lo + row, i + u * STEP, I, vb_lh);
            hr[u] = load_raw(hi + row, i + u * STEP, I, vb_lh);
          }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
          acc_t w[V], x[V];
          Unpack<T>::run(wr[u], w);
          Unpack<T>::run(xr[u], x);
          if (MODE == F_ZBOX) {
            acc_t l[V], h[V];
            Unpack<T>::run(lr[u], l);
            Unpack<T>::run(hr[u], h);
#pragma unroll
            for (int j = 0; j < V; ++j) s1[n] += rule::box_term(x[j] - l[j], x[j] - h[j], w[j]);
          } else if (MODE == F_SIGNED) {
            if (split) {  // alpha_beta, z⁺
#pragma unroll
              for (int j = 0; j < V; ++j) rule::split_term(x[j], w[j], s1[n], s2[n]);
            } else {  // gamma
#pragma unroll
              for (int j = 0; j < V; ++j) rule::signed_term(x[j], w[j], s1[n], s2[n]);
            }
            if (track) {
#pragma unroll
              for (int j = 0; j < V; ++j) seen_neg |= x[j] < acc_t(0);
            }
          } else {
#pragma unroll
            for (int j = 0; j < V; ++j) s1[n] += x[j] * w[j];
          }
        }
      }
    }
  }
#pragma unroll
  for (int n = 0; n < kNT; ++n) {
    s1[n] = warp_sum(s1[n]);
    if (MODE == F_SIGNED) s2[n] = warp_sum(s2[n]);
  }
  if (track) {
    // row 0's warp has read every input of this batch tile
    const bool any = __any_sync(0xffffffffu, seen_neg);
    if (lane == 0) negflag[n_tile] = any ? 1 : 0;
  }
  const acc_t bias = b != nullptr ? static_cast<acc_t>(b[o]) : acc_t(0);
#pragma unroll
  for (int n = 0; n < kNT; ++n) {
    if (lane == n && n < nv) {
      const int64_t idx = (n0 + n) * O + o;
      acc_t c0, c1;
      coefficients(prm, s1[n], s2[n], static_cast<acc_t>(R[idx]), bias, c0, c1);
      C0[idx] = c0;
      if (C1 != nullptr) C1[idx] = c1;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Fused backward: thread owns V consecutive columns i of W (one 16-byte load per row), the block
// owns kNT batch rows and the O-row range of one split.  blockIdx.x = (split * i_tiles + i_tile)
// * n_tiles + n_tile.  With one split the epilogue is applied here; otherwise the partial sums go
// to ws (nsplit, 2, N, I) and finalize_kernel adds them in a fixed order (deterministic).
template <typename T, int MODE, bool T2>
__device__ __forceinline__ void bwd_accumulate(
    const T* __restrict__ W, const at::opmath_type<T>* __restrict__ C0,
    const at::opmath_type<T>* __restrict__ C1, int64_t O, int64_t I, int64_t n0, int nv,
    int64_t i0, int64_t o_begin, int64_t o_end, int vb,
    at::opmath_type<T> (&t1)[kNT][Unpack<T>::V], at::opmath_type<T> (&t2)[kNT][Unpack<T>::V]) {
  using acc_t = at::opmath_type<T>;
  constexpr int V = Unpack<T>::V;
  constexpr int U = (MODE == B_SIGNED || MODE == B_SPLIT) && sizeof(T) != 4 ? 2 : kBwdUnroll;
  for (int64_t o = o_begin; o < o_end; o += U) {
    uint4 wr[U];
#pragma unroll
    for (int u = 0; u < U; ++u)
      wr[u] = o + u < o_end ? load_raw(W + (o + u) * I, i0, I, vb) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const bool valid_o = o + u < o_end;
      acc_t w[V];
      Unpack<T>::run(wr[u], w);
      // the tile's coefficients of row o + u: loads issued together (warp-uniform, L1 hits)
      acc_t cv0[kNT], cv1[kNT];
#pragma unroll
      for (int n = 0; n < kNT; ++n) {
        const bool valid = valid_o && n < nv;
        const int64_t cidx = (n0 + n) * O + o + u;
        cv0[n] = valid ? C0[cidx] : acc_t(0);
        cv1[n] = (MODE == B_SIGNED && valid) ? C1[cidx] : acc_t(0);
      }
#pragma unroll
      for (int n = 0; n < kNT; ++n) {
        if (n >= nv) break;  // block-uniform: a short last tile (N = 1) does no padded work
        const acc_t c0 = cv0[n];
        if (MODE == B_SIGNED) {
          const acc_t c1 = cv1[n];
#pragma unroll
          for (int j = 0; j < V; ++j) {
            const acc_t wp = pos(w[j]), wn = neg(w[j]);
            t1[n][j] += c0 * wp + c1 * wn;
            if (T2) t2[n][j] += c1 * wp + c0 * wn;
          }
        } else if (MODE == B_SPLIT) {
#pragma unroll
          for (int j = 0; j < V; ++j) {
            t1[n][j] += c0 * pos(w[j]);
            if (T2) t2[n][j] += c0 * neg(w[j]);
          }
        } else if (MODE == B_SQUARE) {
#pragma unroll
          for (int j = 0; j < V; ++j) t1[n][j] += c0 * (w[j] * w[j]);
        } else {
#pragma unroll
          for (int j = 0; j < V; ++j) t1[n][j] += c0 * w[j];
        }
      }
    }
  }
}

template <typename T, int MODE>
__global__ void __launch_bounds__(kBwdThreads, 2)
bwd_fused_kernel(const T* __restrict__ W, const at::opmath_type<T>* __restrict__ C0,
                 const at::opmath_type<T>* __restrict__ C1, const int* __restrict__ negflag,
                 int64_t N, int64_t O, int64_t I, int64_t n_tiles, int64_t i_tiles,
                 int64_t rows_per_split, int vb, at::opmath_type<T>* __restrict__ ws,
                 T* __restrict__ out, const T* __restrict__ a, const T* __restrict__ lo,
                 const T* __restrict__ hi, int emode) {
  using acc_t = at::opmath_type<T>;
  constexpr int V = Unpack<T>::V;
  const int64_t n_tile = blockIdx.x % n_tiles;
  const int64_t rest = blockIdx.x / n_tiles;
  const int64_t i_tile = rest % i_tiles;
  const int64_t split = rest / i_tiles;
  const int64_t i0 = (i_tile * kBwdThreads + threadIdx.x) * V;
  if (i0 >= I) return;
  const int64_t n0 = n_tile * kNT;
  const int nv = static_cast<int>(imin(kNT, N - n0));
  const int64_t o_begin = split * rows_per_split;
  const int64_t o_end = imin(O, o_begin + rows_per_split);

  acc_t t1[kNT][V], t2[kNT][V];
#pragma unroll
  for (int n = 0; n < kNT; ++n)
#pragma unroll
    for (int j = 0; j < V; ++j) { t1[n][j] = acc_t(0); t2[n][j] = acc_t(0); }

  // B_SIGNED / B_SPLIT with negflag (gamma, alpha_beta, z⁺): a tile without negative inputs
  // skips t2 and hands t1 in its place to the epilogue (rule::nonneg_input)
  constexpr bool kHasT2 = MODE == B_SIGNED || MODE == B_SPLIT;
  if (kHasT2 && negflag != nullptr && negflag[n_tile] == 0) {
    bwd_accumulate<T, MODE, false>(W, C0, C1, O, I, n0, nv, i0, o_begin, o_end, vb, t1, t2);
#pragma unroll
    for (int n = 0; n < kNT; ++n)
#pragma unroll
      for (int j = 0; j < V; ++j) t2[n][j] = t1[n][j];
  } else {
    bwd_accumulate<T, MODE, true>(W, C0, C1, O, I, n0, nv, i0, o_begin, o_end, vb, t1, t2);
  }

#pragma unroll
  for (int n = 0; n < kNT; ++n) {
    if (n >= nv) continue;
    const int64_t row = (n0 + n) * I;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      if (i0 + j >= I) continue;
      if (ws == nullptr) {
        out[row + i0 + j] = static_cast<T>(epilogue<T, acc_t>(emode, t1[n][j], t2[n][j], a, lo,
                                                               hi, row + i0 + j));
      } else {
        acc_t* part = ws + split * 2 * N * I;
        part[row + i0 + j] = t1[n][j];
        if (kHasT2) part[N * I + row + i0 + j] = t2[n][j];
      }
    }
  }
}

// Sums nsplit partial results (t1 at src1[s * split_stride + n * ld + i], t2 likewise at src2;
// t2 = t1 where src2 is null: a >= 0 known, see epilogue()) and applies the epilogue; rowmax:
// the float16 scaling of the gemm path (coef_exponent).  Tin: the accumulation type (fused
// path) or the products' type (gemm path).
template <typename T, typename Tin>
__global__ void __launch_bounds__(kEwThreads)
finalize_kernel(const Tin* __restrict__ src1, const Tin* __restrict__ src2, int64_t N, int64_t I,
                int64_t ld, int64_t nsplit, int64_t split_stride, const T* __restrict__ a,
                const T* __restrict__ lo, const T* __restrict__ hi, int emode,
                T* __restrict__ out, const int* __restrict__ rowmax) {
  using acc_t = at::opmath_type<T>;
  const int64_t total = N * I;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = idx / I, i = idx - n * I;
    const int64_t off = n * ld + i;
    acc_t t1 = acc_t(0), t2 = acc_t(0);
    for (int64_t s = 0; s < nsplit; ++s) {
      t1 += static_cast<acc_t>(src1[s * split_stride + off]);
      if (src2 != nullptr) t2 += static_cast<acc_t>(src2[s * split_stride + off]);
    }
    if (src2 == nullptr) t2 = t1;
    if (rowmax != nullptr) {
      const acc_t post = static_cast<acc_t>(ldexpf(1.f, coef_exponent(rowmax, n)));
      t1 *= post;
      t2 *= post;
    }
    out[idx] = static_cast<T>(epilogue<T, acc_t>(emode, t1, t2, a, lo, hi, idx));
  }
}

// Gemm path: the forward products become the coefficients. Tz: the products' type (float for
// 2-byte inputs, so z is not rounded to 8 or 11 bits before 1/z). C (and C2) may be Z (and Z2)
// themselves: each thread reads and then writes the same positions.
//   L_SINGLE (N, O): z = Z[n, o] (+ Z2[n, o]: z⁺ with mixed signs, a⁺W⁺ᵀ + a⁻W⁻ᵀ) -> C = c
//   L_NONNEG (N, 2O): Z = [a W+^T | a W-^T] -> C = [c+ | c-]
//   L_MIXED (N, 2O) each: Z = a+ [W+; W-]^T, Z2 = a- [W+; W-]^T -> C = [c+ | c-], C2 = [c- | c+]
//     (then C [W+; W-] = t1 and C2 [W+; W-] = t2, each a product of the a >= 0 layout's shape)
// measure != nullptr (float16): only record, per row n, the largest finite |c| above 2^15
// (atomicMax on its float bits: non-negative floats order like their bit patterns).
template <typename T, typename Tz>
__global__ void __launch_bounds__(kEwThreads)
coef_gemm_kernel(const Tz* Z, const Tz* Z2, T* C, T* C2, const T* __restrict__ R,
                 const T* __restrict__ b, int64_t N, int64_t O, int layout,
                 RuleParams<at::opmath_type<T>> prm, int* __restrict__ measure,
                 const int* __restrict__ rowmax) {
  using acc_t = at::opmath_type<T>;
  const int64_t total = N * O;
  const int64_t ld = layout == L_SINGLE ? O : 2 * O;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = idx / O, o = idx - n * O;
    const int64_t p = n * ld + o, m = p + O;
    const acc_t r = static_cast<acc_t>(R[idx]);
    const acc_t bias = b != nullptr ? static_cast<acc_t>(b[o]) : acc_t(0);
    acc_t s1, s2 = acc_t(0);
    if (layout == L_SINGLE) {
      s1 = static_cast<acc_t>(Z[p]);
      if (Z2 != nullptr) s1 += static_cast<acc_t>(Z2[p]);
    } else if (layout == L_NONNEG) {
      s1 = static_cast<acc_t>(Z[p]);
      s2 = static_cast<acc_t>(Z[m]);
    } else {
      s1 = static_cast<acc_t>(Z[p]) + static_cast<acc_t>(Z2[m]);  // a+ W+ + a- W-
      s2 = static_cast<acc_t>(Z[m]) + static_cast<acc_t>(Z2[p]);  // a+ W- + a- W+
    }
    acc_t c0, c1;
    coefficients(prm, s1, s2, r, bias, c0, c1);
    if (measure != nullptr) {
      const float m0 = fabsf(static_cast<float>(c0)), m1 = fabsf(static_cast<float>(c1));
      float big = 0.f;
      if (isfinite(m0)) big = fmaxf(big, m0);
      if (isfinite(m1)) big = fmaxf(big, m1);
      if (big > kHalfScaleAbove) atomicMax(measure + n, __float_as_int(big));
      continue;
    }
    const acc_t scale =
        rowmax != nullptr ? static_cast<acc_t>(ldexpf(1.f, -coef_exponent(rowmax, n))) : acc_t(1);
    C[p] = static_cast<T>(c0 * scale);
    if (layout != L_SINGLE) C[m] = static_cast<T>(c1 * scale);
    if (layout == L_MIXED) {
      C2[p] = static_cast<T>(c1 * scale);
      C2[m] = static_cast<T>(c0 * scale);
    }
  }
}

// Gemm path, gamma and z_box: rows of a holding an infinite or NaN entry (z_box: where u and v
// both are, as the CPU decides). The
// stacked products a W+^T form inf*0 = NaN for the zero half of W where the reference's aW^T has
// ±inf (rule::signed_term, rule::box_term); those rows get their forward sums recomputed from
// one product per term. nonfinite_rows_kernel: flags[n] = any(!isfinite) over row n (block per
// row); refix_kernel: thread per (n, o), returning at once for the other rows.
template <typename T>
__global__ void __launch_bounds__(kEwThreads)
nonfinite_rows_kernel(const T* __restrict__ a, const T* __restrict__ lo, const T* __restrict__ hi,
                      int64_t N, int64_t I, int* __restrict__ flags) {
  using acc_t = at::opmath_type<T>;
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    bool bad = false;
    for (int64_t i = threadIdx.x; i < I; i += blockDim.x) {
      const int64_t k = n * I + i;
      const acc_t x = static_cast<acc_t>(a[k]);
      if (lo == nullptr)
        bad |= !isfinite(x);
      else  // an infinite a makes u and v infinite; an infinite bound alone keeps its NaN
        bad |= !isfinite(x - static_cast<acc_t>(lo[k])) && !isfinite(x - static_cast<acc_t>(hi[k]));
    }
    bad = __syncthreads_or(bad);
    if (threadIdx.x == 0) flags[n] = bad ? 1 : 0;
  }
}

// layout L_NONNEG: Z (N, 2O) = [P | M]; L_MIXED: Z = [P | M] and Z2 = 0 (coef_gemm_kernel adds
// them); L_SINGLE (z_box): Z (N, O) = z.
template <typename T, typename Tz>
__global__ void __launch_bounds__(kEwThreads)
refix_kernel(const int* __restrict__ flags, const T* __restrict__ a, const T* __restrict__ lo,
             const T* __restrict__ hi, const T* __restrict__ W, int64_t N, int64_t O, int64_t I,
             int layout, Tz* __restrict__ Z, Tz* __restrict__ Z2) {
  using acc_t = at::opmath_type<T>;
  const int64_t total = N * O;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = idx / O, o = idx - n * O;
    if (flags[n] == 0) continue;
    const T* x = a + n * I;
    const T* w = W + o * I;
    if (layout == L_SINGLE) {
      acc_t z = acc_t(0);
      for (int64_t i = 0; i < I; ++i) {
        const acc_t xi = static_cast<acc_t>(x[i]);
        z += rule::box_term(xi - static_cast<acc_t>(lo[n * I + i]),
                            xi - static_cast<acc_t>(hi[n * I + i]), static_cast<acc_t>(w[i]));
      }
      Z[idx] = static_cast<Tz>(z);
      continue;
    }
    acc_t P = acc_t(0), M = acc_t(0);
    for (int64_t i = 0; i < I; ++i)
      rule::signed_term(static_cast<acc_t>(x[i]), static_cast<acc_t>(w[i]), P, M);
    const int64_t p = n * 2 * O + o;
    Z[p] = static_cast<Tz>(P);
    Z[p + O] = static_cast<Tz>(M);
    if (Z2 != nullptr) {
      Z2[p] = Tz(0);
      Z2[p + O] = Tz(0);
    }
  }
}

// Gemm path: W+ and W- side by side, rows ([W+; W-], (2O, I)) or columns ([W+ | W-], (O, 2I));
// only W+ (O, I) when !with_neg.
template <typename T>
__global__ void __launch_bounds__(kEwThreads)
split_w_kernel(const T* __restrict__ W, T* __restrict__ out, int64_t O, int64_t I, bool cols,
               bool with_neg) {
  using acc_t = at::opmath_type<T>;
  const int64_t total = O * I;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = idx / I, i = idx - o * I;
    const acc_t w = static_cast<acc_t>(W[idx]);
    const int64_t p = cols ? o * 2 * I + i : idx;
    const int64_t m = cols ? p + I : total + idx;
    out[p] = static_cast<T>(pos(w));
    if (with_neg) out[m] = static_cast<T>(neg(w));
  }
}

// w_square: warp per row o, zs = stab(sum_i W_oi^2 + b_o^2).  Writes C0[n, o] = R[n, o] / zs
// (fused path) and/or W2s[o, i] = W_oi^2 / zs (gemm path: R_in = R W2s).
template <typename T>
__global__ void __launch_bounds__(kFwdWarps * 32, 8)
wsq_kernel(const T* __restrict__ W, const T* __restrict__ b, const T* __restrict__ R, int64_t N,
           int64_t O, int64_t I, int vb, at::opmath_type<T> eps,
           at::opmath_type<T>* __restrict__ C0, T* __restrict__ W2s) {
  using acc_t = at::opmath_type<T>;
  constexpr int V = Unpack<T>::V;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t o = static_cast<int64_t>(blockIdx.x) * kFwdWarps + warp;
  if (o >= O) return;
  const T* __restrict__ Wrow = W + o * I;
  acc_t z = acc_t(0);
  for (int64_t i = static_cast<int64_t>(lane) * V; i < I; i += 32 * V * 2) {
    acc_t w0[V], w1[V];
    load_vec<T, acc_t, V>(Wrow, i, I, vb, w0);
    load_vec<T, acc_t, V>(Wrow, i + 32 * V, I, vb, w1);
#pragma unroll
    for (int j = 0; j < V; ++j) z += w0[j] * w0[j] + w1[j] * w1[j];
  }
  z = warp_sum(z);
  const acc_t bias = b != nullptr ? static_cast<acc_t>(b[o]) : acc_t(0);
  const rule::Params<acc_t> rp{eps, acc_t(0), acc_t(1), acc_t(0)};
  const acc_t zs = rule::stab(z + bias * bias, eps);  // single<WSQ>'s divisor, for W2s
  if (C0 != nullptr)
    for (int64_t n = lane; n < N; n += 32)
      C0[n * O + o] = rule::single<rule::WSQ>(rp, z, static_cast<acc_t>(R[n * O + o]), bias);
  if (W2s != nullptr)
    for (int64_t i = lane; i < I; i += 32) {
      const acc_t w = static_cast<acc_t>(Wrow[i]);
      W2s[o * I + i] = static_cast<T>(w * w / zs);
    }
}

// flat: R_in[n, i] = sum_o R[n, o] / stab(I, e); block per batch row.
template <typename T>
__global__ void __launch_bounds__(kEwThreads)
flat_kernel(const T* __restrict__ R, int64_t N, int64_t O, int64_t I, at::opmath_type<T> zs,
            T* __restrict__ out) {
  using acc_t = at::opmath_type<T>;
  __shared__ acc_t partial[kEwThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    acc_t s = acc_t(0);
    for (int64_t o = threadIdx.x; o < O; o += blockDim.x) s += static_cast<acc_t>(R[n * O + o]);
    s = warp_sum(s);
    if (lane == 0) partial[warp] = s;
    __syncthreads();
    acc_t tot = acc_t(0);
#pragma unroll
    for (int k = 0; k < kEwThreads / 32; ++k) tot += partial[k];
    __syncthreads();  // partial is reused by the next row
    const T v = static_cast<T>(tot / zs);
    for (int64_t i = threadIdx.x; i < I; i += blockDim.x) out[n * I + i] = v;
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

struct Dense {
  at::Tensor R, a, W, b;  // (N, O), (N, I), (O, I), (O,) or undefined; all contiguous
  int64_t N, O, I;
};

Dense flatten(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
              const c10::optional<at::Tensor>& b) {
  Dense d;
  d.O = W.size(0);
  d.I = W.size(1);
  d.N = 1;
  for (int64_t k = 0; k + 1 < a.dim(); ++k) d.N *= a.size(k);
  d.a = a.reshape({d.N, d.I}).contiguous();
  d.R = R.reshape({d.N, d.O}).contiguous();
  d.W = W.contiguous();
  if (b.has_value()) d.b = b->contiguous();
  return d;
}

template <typename T>
T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// Widest vector load (16, 8 or 4 bytes, at least one element; 0: element loads) that every row
// of a (rows, I) tensor of element size es starting at p allows: decided per tensor, so one
// misaligned tensor keeps the others' 16-byte loads.
int vec_bytes(const at::Tensor& t, int64_t I) {
  if (!t.defined()) return 0;
  const int64_t es = t.element_size();
  const uintptr_t addr = reinterpret_cast<uintptr_t>(t.data_ptr());
  for (int vb : {16, 8, 4})
    if (vb >= es && addr % vb == 0 && (I * es) % vb == 0) return vb;
  return 0;
}

bool assume_mixed() {
  const char* v = std::getenv("LRP_EXT_ASSUME_MIXED");
  return v != nullptr && std::string(v) == "1";
}

// Whether the gemm path of gamma / alpha_beta / z⁺ takes the mixed-sign layout. The layouts
// differ in the shapes of the matrix products, so the choice is made on the host: one read of
// any(a < 0), except while a CUDA graph is being captured (no synchronisation allowed: the mixed
// layout, correct for any a) and under LRP_EXT_ASSUME_MIXED=1.
bool gemm_mixed(const at::Tensor& a) {
  if (assume_mixed()) return true;
  if (at::cuda::currentStreamCaptureStatus() != at::cuda::CaptureStatus::None) return true;
  return at::lt(a, 0).any().item<bool>();
}

int64_t elementwise_blocks(int64_t total) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return std::max<int64_t>(1, std::min<int64_t>(ceil_div(total, kEwThreads), sms * 16));
}

// Largest batch (rows N after flattening) for which the fused path is chosen automatically.
// Not measured (see benchmarks/CUDA_NOTES.md): from the flop/byte balance of the fused kernels.
int64_t fused_max_n(at::ScalarType st) {
  return (st == at::kHalf || st == at::kBFloat16) ? 16 : 32;
}

bool use_fused(int64_t N, at::ScalarType st) {
  const char* env = std::getenv("LRP_EXT_CUDA_PATH");
  const std::string v = env != nullptr ? env : "";
  if (v.empty() || v == "auto") return N <= fused_max_n(st);
  if (v == "fused") return true;
  if (v == "gemm") return false;
  TORCH_CHECK(false, "LRP_EXT_CUDA_PATH must be 'auto', 'fused' or 'gemm', got '", v, "'");
  return false;
}

constexpr int64_t kMaxGrid = 2147483647;

// Fused backward over the coefficients C0 (and C1): writes the (N, I) result.
template <typename T, int BMODE>
at::Tensor fused_backward(const Dense& d, const at::Tensor& C0, const at::Tensor& C1,
                          const at::Tensor& negflag, int emode, const at::Tensor& lo,
                          const at::Tensor& hi) {
  using acc_t = at::opmath_type<T>;
  constexpr int V = Unpack<T>::V;
  const int64_t N = d.N, O = d.O, I = d.I;
  const int64_t n_tiles = ceil_div(N, kNT);
  const int64_t i_tiles = ceil_div(I, static_cast<int64_t>(kBwdThreads) * V);
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t base = n_tiles * i_tiles;
  int64_t nsplit = 1;
  const int64_t target = 4 * sms;  // blocks wanted so that even N = 1 fills the chip
  if (base < target) {
    nsplit = ceil_div(target, base);
    nsplit = std::min<int64_t>(nsplit, std::max<int64_t>(1, O / 64));  // >= 64 rows per split
    // partial sums written and read back stay under a quarter of W's bytes
    const int64_t cap = (O * static_cast<int64_t>(sizeof(T))) /
                        (16 * N * static_cast<int64_t>(sizeof(acc_t)));
    nsplit = std::max<int64_t>(1, std::min<int64_t>(nsplit, cap));
  }
  const int64_t rows = ceil_div(O, nsplit);
  nsplit = ceil_div(O, rows);
  const int64_t grid = base * nsplit;
  TORCH_CHECK(grid <= kMaxGrid, "lrp_ext (CUDA): batch too large for the fused path (N=", N,
              "); use LRP_EXT_CUDA_PATH=auto or gemm");
  auto out = at::empty({N, I}, d.a.options());
  at::Tensor ws;
  if (nsplit > 1) ws = at::empty({nsplit, 2, N, I}, C0.options());
  auto stream = at::cuda::getCurrentCUDAStream();
  bwd_fused_kernel<T, BMODE><<<static_cast<unsigned>(grid), kBwdThreads, 0, stream>>>(
      d.W.data_ptr<T>(), C0.data_ptr<acc_t>(), ptr_or_null<acc_t>(C1), ptr_or_null<int>(negflag),
      N, O, I, n_tiles, i_tiles, rows, vec_bytes(d.W, I), ptr_or_null<acc_t>(ws),
      out.data_ptr<T>(), d.a.data_ptr<T>(), ptr_or_null<T>(lo), ptr_or_null<T>(hi), emode);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (nsplit > 1) {
    const bool has_t2 = BMODE == B_SIGNED || BMODE == B_SPLIT;  // the kernel wrote t2 (or t1)
    const acc_t* part = ws.data_ptr<acc_t>();
    finalize_kernel<T, acc_t><<<elementwise_blocks(N * I), kEwThreads, 0, stream>>>(
        part, has_t2 ? part + N * I : nullptr, N, I, I, nsplit, 2 * N * I,
        d.a.data_ptr<T>(), ptr_or_null<T>(lo), ptr_or_null<T>(hi), emode, out.data_ptr<T>(),
        nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

// Fused forward (coefficients) then fused backward. F_SIGNED: two coefficients for gamma and
// alpha_beta, one for z⁺ (whose backward is B_SPLIT: t1 = c W⁺, t2 = c W⁻).
template <typename T, int FMODE, int BMODE>
at::Tensor fused_path(const Dense& d, const RuleParams<at::opmath_type<T>>& prm, int emode,
                      const at::Tensor& lo, const at::Tensor& hi) {
  using acc_t = at::opmath_type<T>;
  const int64_t N = d.N, O = d.O, I = d.I;
  const int64_t n_tiles = ceil_div(N, kNT);
  const int64_t grid = n_tiles * ceil_div(O, kFwdWarps);
  TORCH_CHECK(grid <= kMaxGrid, "lrp_ext (CUDA): batch too large for the fused path (N=", N,
              "); use LRP_EXT_CUDA_PATH=auto or gemm");
  const auto acc_opts = d.a.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  at::Tensor C0 = at::empty({N, O}, acc_opts);
  at::Tensor C1, negflag;
  if (FMODE == F_SIGNED) {
    if (rule::is_signed(prm.rule)) C1 = at::empty({N, O}, acc_opts);
    if (!assume_mixed()) negflag = at::empty({n_tiles}, d.a.options().dtype(at::kInt));
  }
  // low and high share one width: both are (N, I) contiguous copies made by z_box_cuda
  const int vb_lh = FMODE == F_ZBOX ? std::min(vec_bytes(lo, I), vec_bytes(hi, I)) : 0;
  auto stream = at::cuda::getCurrentCUDAStream();
  fwd_fused_kernel<T, FMODE><<<static_cast<unsigned>(grid), kFwdWarps * 32, 0, stream>>>(
      d.a.data_ptr<T>(), ptr_or_null<T>(lo), ptr_or_null<T>(hi), d.W.data_ptr<T>(),
      ptr_or_null<T>(d.b), d.R.data_ptr<T>(), N, O, I, n_tiles, vec_bytes(d.W, I),
      vec_bytes(d.a, I), vb_lh, prm,
      C0.data_ptr<acc_t>(), ptr_or_null<acc_t>(C1), ptr_or_null<int>(negflag));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return fused_backward<T, BMODE>(d, C0, C1, negflag, emode, lo, hi);
}

// Matrix product for the gemm path: float32 output for 2-byte inputs (cuBLAS accumulates in
// float32 either way; this keeps z and the products unrounded), else the inputs' dtype.  ATen's
// matmul honours allowTF32CuBLAS for float32.  Where a torch refuses the out_dtype overload for
// these inputs (its dtype check: "out_dtype ..."), this call takes the plain product; any other
// error (out of memory, an earlier fault) propagates, and nothing is remembered across calls.
// launch_coef_gemm scales float16 coefficients whichever type the products have.
at::Tensor mm_acc(const at::Tensor& x, const at::Tensor& y) {
  const auto st = x.scalar_type();
  if (st == at::kHalf || st == at::kBFloat16) {
    try {
      return at::mm(x, y, at::kFloat);
    } catch (const c10::Error& e) {
      if (std::string(e.what_without_backtrace()).find("out_dtype") == std::string::npos) throw;
    }
  }
  return at::mm(x, y);
}

template <typename T, typename Tz>
void coef_launch(const at::Tensor& Z, const at::Tensor& Z2, const at::Tensor& C,
                 const at::Tensor& C2, const Dense& d, int layout,
                 const RuleParams<at::opmath_type<T>>& prm, int* measure, const int* rowmax) {
  coef_gemm_kernel<T, Tz><<<elementwise_blocks(d.N * d.O), kEwThreads, 0,
                            at::cuda::getCurrentCUDAStream()>>>(
      Z.data_ptr<Tz>(), ptr_or_null<Tz>(Z2), ptr_or_null<T>(C), ptr_or_null<T>(C2),
      d.R.data_ptr<T>(), ptr_or_null<T>(d.b), d.N, d.O, layout, prm, measure, rowmax);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Coefficients from the forward products Z (and Z2), in place when they have the element type;
// returns {C, C2} (layouts at coef_gemm_kernel).  For float16 the largest |c| of each row is
// measured first (one extra pass, no host synchronisation) and a row's coefficients are stored
// scaled by a power of two when they would overflow; *rowmax_out carries that to the finalize.
template <typename T>
std::pair<at::Tensor, at::Tensor> launch_coef_gemm(const at::Tensor& Z, const at::Tensor& Z2,
                                                   const Dense& d, int layout,
                                                   const RuleParams<at::opmath_type<T>>& prm,
                                                   at::Tensor* rowmax_out) {
  using acc_t = at::opmath_type<T>;
  const bool inplace = Z.scalar_type() == d.a.scalar_type();
  TORCH_CHECK(!Z2.defined() || Z2.scalar_type() == Z.scalar_type(),
              "lrp_ext (CUDA): products of one call differ in dtype");
  auto run = [&](const at::Tensor& C, const at::Tensor& C2, int* measure, const int* rowmax) {
    if (inplace)
      coef_launch<T, T>(Z, Z2, C, C2, d, layout, prm, measure, rowmax);
    else
      coef_launch<T, acc_t>(Z, Z2, C, C2, d, layout, prm, measure, rowmax);
  };
  at::Tensor rowmax;
  if (d.a.scalar_type() == at::kHalf) {
    rowmax = at::zeros({d.N}, d.a.options().dtype(at::kInt));
    run(at::Tensor(), at::Tensor(), rowmax.data_ptr<int>(), nullptr);
  }
  const bool two = layout == L_MIXED;
  at::Tensor C = inplace ? Z : at::empty(Z.sizes(), d.a.options());
  at::Tensor C2 = !two ? at::Tensor() : inplace ? Z2 : at::empty(Z2.sizes(), d.a.options());
  run(C, C2, nullptr, ptr_or_null<int>(rowmax));
  if (rowmax_out != nullptr) *rowmax_out = rowmax;
  return {C, C2};
}

// Input-side epilogue over the backward products (element type or float32): t1 at src1 + n*ld + i,
// t2 at src2 (or src2_off elements after src1) or, when neither is given, t2 = t1 (a >= 0).
template <typename T>
at::Tensor launch_finalize(const at::Tensor& src1, const at::Tensor& src2, int64_t src2_off,
                           const Dense& d, int64_t ld, int emode, const at::Tensor& lo,
                           const at::Tensor& hi, const at::Tensor& rowmax) {
  using acc_t = at::opmath_type<T>;
  TORCH_CHECK(!src2.defined() || src2.scalar_type() == src1.scalar_type(),
              "lrp_ext (CUDA): products of one call differ in dtype");
  auto out = at::empty({d.N, d.I}, d.a.options());
  const int64_t blocks = elementwise_blocks(d.N * d.I);
  auto stream = at::cuda::getCurrentCUDAStream();
  auto go = [&](auto* s1) {
    using Tin = std::remove_cv_t<std::remove_pointer_t<decltype(s1)>>;
    const Tin* s2 = src2.defined() ? src2.data_ptr<Tin>() : src2_off >= 0 ? s1 + src2_off : nullptr;
    finalize_kernel<T, Tin><<<blocks, kEwThreads, 0, stream>>>(
        s1, s2, d.N, d.I, ld, 1, 0, d.a.data_ptr<T>(), ptr_or_null<T>(lo), ptr_or_null<T>(hi),
        emode, out.data_ptr<T>(), ptr_or_null<int>(rowmax));
  };
  if (src1.scalar_type() == d.a.scalar_type())
    go(src1.data_ptr<T>());
  else
    go(src1.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// [W+; W-] (2O, I) (rows), [W+ | W-] (O, 2I) (cols), or W+ alone (O, I) when !with_neg.
template <typename T>
at::Tensor split_weight(const Dense& d, bool cols, bool with_neg = true) {
  auto out = !with_neg ? at::empty({d.O, d.I}, d.W.options())
             : cols    ? at::empty({d.O, 2 * d.I}, d.W.options())
                       : at::empty({2 * d.O, d.I}, d.W.options());
  split_w_kernel<T><<<elementwise_blocks(d.O * d.I), kEwThreads, 0,
                      at::cuda::getCurrentCUDAStream()>>>(d.W.data_ptr<T>(), out.data_ptr<T>(),
                                                          d.O, d.I, cols && with_neg, with_neg);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// Gemm path of gamma / z_box: forward sums of the rows with a non-finite input recomputed in
// Z (and Z2) before the coefficients (refix_kernel). No host synchronisation: two small kernels.
template <typename T>
void refix_nonfinite(const Dense& d, const at::Tensor& lo, const at::Tensor& hi, int layout,
                     const at::Tensor& Z, const at::Tensor& Z2) {
  using acc_t = at::opmath_type<T>;
  auto flags = at::empty({d.N}, d.a.options().dtype(at::kInt));
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto rows_grid = static_cast<unsigned>(std::min<int64_t>(d.N, 65535));
  nonfinite_rows_kernel<T><<<rows_grid, kEwThreads, 0, stream>>>(
      d.a.data_ptr<T>(), ptr_or_null<T>(lo), ptr_or_null<T>(hi), d.N, d.I, flags.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  auto go = [&](auto* z) {
    using Tz = std::remove_pointer_t<decltype(z)>;
    refix_kernel<T, Tz><<<elementwise_blocks(d.N * d.O), kEwThreads, 0, stream>>>(
        flags.data_ptr<int>(), d.a.data_ptr<T>(), ptr_or_null<T>(lo), ptr_or_null<T>(hi),
        d.W.data_ptr<T>(), d.N, d.O, d.I, layout, z, ptr_or_null<Tz>(Z2));
  };
  if (Z.scalar_type() == d.a.scalar_type())
    go(Z.data_ptr<T>());
  else
    go(Z.data_ptr<acc_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---- per rule: one entry for every rule, the rule's paths chosen by its kind ----

template <typename T>
at::Tensor gemm_single(const Dense& d, const RuleParams<at::opmath_type<T>>& prm) {  // epsilon
  at::Tensor rowmax;
  auto C = launch_coef_gemm<T>(mm_acc(d.a, d.W.t()), at::Tensor(), d, L_SINGLE, prm, &rowmax).first;
  return launch_finalize<T>(mm_acc(C, d.W), at::Tensor(), -1, d, d.I, EPI_MUL, at::Tensor(),
                            at::Tensor(), rowmax);
}

// gamma, alpha_beta (two coefficients: [W+; W-] stacked rows) and z⁺ (one coefficient: W+ alone
// for a >= 0, W+ and W- for mixed signs)
template <typename T>
at::Tensor gemm_signed(const Dense& d, const RuleParams<at::opmath_type<T>>& prm) {
  const bool mixed = gemm_mixed(d.a);
  at::Tensor rowmax;
  if (prm.rule == rule::ZPLUS) {
    auto Ws = split_weight<T>(d, /*cols=*/false, /*with_neg=*/mixed);  // W+ or [W+; W-]
    const at::Tensor Wp = mixed ? Ws.narrow(0, 0, d.O) : Ws;
    if (!mixed) {
      auto C = launch_coef_gemm<T>(mm_acc(d.a, Wp.t()), at::Tensor(), d, L_SINGLE, prm, &rowmax);
      return launch_finalize<T>(mm_acc(C.first, Wp), at::Tensor(), -1, d, d.I, EPI_SIGNED,
                                at::Tensor(), at::Tensor(), rowmax);
    }
    const at::Tensor Wn = Ws.narrow(0, d.O, d.O);
    auto C = launch_coef_gemm<T>(mm_acc(d.a.clamp_min(0), Wp.t()), mm_acc(d.a.clamp_max(0), Wn.t()),
                                 d, L_SINGLE, prm, &rowmax);
    return launch_finalize<T>(mm_acc(C.first, Wp), mm_acc(C.first, Wn), -1, d, d.I, EPI_SIGNED,
                              at::Tensor(), at::Tensor(), rowmax);
  }
  auto Wst = split_weight<T>(d, /*cols=*/false);  // [W+; W-] (2O, I)
  const bool refix = prm.rule == rule::GAMMA;  // alpha_beta's reference forms a⁺W⁺ itself
  if (!mixed) {
    auto Z = mm_acc(d.a, Wst.t());
    if (refix) refix_nonfinite<T>(d, at::Tensor(), at::Tensor(), L_NONNEG, Z, at::Tensor());
    auto C = launch_coef_gemm<T>(Z, at::Tensor(), d, L_NONNEG, prm, &rowmax);
    return launch_finalize<T>(mm_acc(C.first, Wst), at::Tensor(), -1, d, d.I, EPI_SIGNED,
                              at::Tensor(), at::Tensor(), rowmax);  // (N, I) = t1, t2 := t1
  }
  // each product has the a >= 0 layout's shape, so the a⁺ half matches it bit for bit
  auto Z = mm_acc(d.a.clamp_min(0), Wst.t()), Z2 = mm_acc(d.a.clamp_max(0), Wst.t());
  if (refix) refix_nonfinite<T>(d, at::Tensor(), at::Tensor(), L_MIXED, Z, Z2);
  auto C = launch_coef_gemm<T>(Z, Z2, d, L_MIXED, prm, &rowmax);
  return launch_finalize<T>(mm_acc(C.first, Wst), mm_acc(C.second, Wst), -1, d, d.I, EPI_SIGNED,
                            at::Tensor(), at::Tensor(), rowmax);
}

template <typename T>
at::Tensor gemm_zbox(const Dense& d, const at::Tensor& lo, const at::Tensor& hi,
                     const RuleParams<at::opmath_type<T>>& prm) {
  auto U = at::cat({d.a - lo, d.a - hi}, 1);       // [u | v] (N, 2I)
  auto Wcat = split_weight<T>(d, /*cols=*/true);   // [W+ | W-] (O, 2I)
  Dense nb = d;
  nb.b = at::Tensor();                             // the bias cancels in z_box
  at::Tensor rowmax;
  auto Z = mm_acc(U, Wcat.t());
  refix_nonfinite<T>(d, lo, hi, L_SINGLE, Z, at::Tensor());
  auto C = launch_coef_gemm<T>(Z, at::Tensor(), nb, L_SINGLE, prm, &rowmax);
  auto Tm = mm_acc(C.first, Wcat);                 // [c W+ | c W-] (N, 2I)
  return launch_finalize<T>(Tm, at::Tensor(), d.I, d, 2 * d.I, EPI_ZBOX, lo, hi, rowmax);
}

template <typename T>
at::Tensor wsq_impl(const Dense& d, double eps) {
  using acc_t = at::opmath_type<T>;
  const bool fused = use_fused(d.N, d.a.scalar_type());
  const int vb = vec_bytes(d.W, d.I);
  const auto grid = static_cast<unsigned>(ceil_div(d.O, kFwdWarps));
  auto stream = at::cuda::getCurrentCUDAStream();
  if (fused) {
    at::Tensor C0 =
        at::empty({d.N, d.O}, d.a.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    wsq_kernel<T><<<grid, kFwdWarps * 32, 0, stream>>>(
        d.W.data_ptr<T>(), ptr_or_null<T>(d.b), d.R.data_ptr<T>(), d.N, d.O, d.I, vb,
        static_cast<acc_t>(eps), C0.data_ptr<acc_t>(), nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return fused_backward<T, B_SQUARE>(d, C0, at::Tensor(), at::Tensor(), EPI_COPY, at::Tensor(),
                                       at::Tensor());
  }
  auto W2s = at::empty({d.O, d.I}, d.W.options());
  wsq_kernel<T><<<grid, kFwdWarps * 32, 0, stream>>>(
      d.W.data_ptr<T>(), ptr_or_null<T>(d.b), d.R.data_ptr<T>(), d.N, d.O, d.I, vb,
      static_cast<acc_t>(eps), nullptr, W2s.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return at::mm(d.R, W2s);
}

// The one entry of the dense rules that go through coefficients (epsilon, gamma, alpha_beta,
// z⁺, z_box): fused or gemm path by the batch size, the kernels' modes by the rule.
template <typename T>
at::Tensor rule_impl(const Dense& d, const RuleParams<at::opmath_type<T>>& prm,
                     const at::Tensor& lo, const at::Tensor& hi) {
  const bool fused = use_fused(d.N, d.a.scalar_type());
  switch (prm.rule) {
    case rule::EPS:
      return fused ? fused_path<T, F_PLAIN, B_PLAIN>(d, prm, EPI_MUL, lo, hi)
                   : gemm_single<T>(d, prm);
    case rule::BOX:
      return fused ? fused_path<T, F_ZBOX, B_SPLIT>(d, prm, EPI_ZBOX, lo, hi)
                   : gemm_zbox<T>(d, lo, hi, prm);
    case rule::ZPLUS:
      return fused ? fused_path<T, F_SIGNED, B_SPLIT>(d, prm, EPI_SIGNED, lo, hi)
                   : gemm_signed<T>(d, prm);
    default:  // GAMMA, AB
      return fused ? fused_path<T, F_SIGNED, B_SIGNED>(d, prm, EPI_SIGNED, lo, hi)
                   : gemm_signed<T>(d, prm);
  }
}

// ---- op entry points ----

// Empty cases answered without a kernel; returns true when `out` holds the answer.
bool trivial(const Dense& d, const at::Tensor& a, at::Tensor& out) {
  if (d.N == 0 || d.I == 0) {
    out = at::empty(a.sizes(), a.options());
    return true;
  }
  if (d.O == 0) {
    out = at::zeros(a.sizes(), a.options());
    return true;
  }
  return false;
}

#define LRP_DISPATCH(TYPE, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, "lrp_ext_cuda", __VA_ARGS__)

template <typename T>
RuleParams<at::opmath_type<T>> params(int kind, double e, double gamma = 0, double alpha = 1,
                                      double beta = 0) {
  using acc_t = at::opmath_type<T>;
  return {kind, {static_cast<acc_t>(e), static_cast<acc_t>(gamma), static_cast<acc_t>(alpha),
                 static_cast<acc_t>(beta)}};
}

// The one entry of every dense op (after its checks, lrp.cpp): device guard, flattening to
// (N, I) / (N, O), empty cases, dtype dispatch; f(d, (T*)nullptr) computes the (N, I) result.
template <class F>
at::Tensor run_dense(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                     const c10::optional<at::Tensor>& b, const F& f) {
  c10::cuda::CUDAGuard guard(a.device());
  const Dense d = flatten(R, a, W, b);
  at::Tensor out;
  if (trivial(d, a, out)) return out;
  LRP_DISPATCH(a.scalar_type(), [&] { out = f(d, static_cast<scalar_t*>(nullptr)); });
  return out.view(a.sizes());
}

#define LRP_TYPE(tag) std::remove_pointer_t<decltype(tag)>

at::Tensor epsilon_cuda(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                        const c10::optional<at::Tensor>& b, double epsilon) {
  check_epsilon(R, a, W, b, epsilon);
  return run_dense(R, a, W, b, [&](const Dense& d, auto* tag) {
    using T = LRP_TYPE(tag);
    return rule_impl<T>(d, params<T>(rule::EPS, epsilon), at::Tensor(), at::Tensor());
  });
}

at::Tensor gamma_cuda(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                      const c10::optional<at::Tensor>& b, double gamma, double stabilizer) {
  check_gamma(R, a, W, b, gamma, stabilizer);
  return run_dense(R, a, W, b, [&](const Dense& d, auto* tag) {
    using T = LRP_TYPE(tag);
    return rule_impl<T>(d, params<T>(rule::GAMMA, stabilizer, gamma), at::Tensor(),
                        at::Tensor());
  });
}

// beta = 0 is z⁺: one coefficient (the β term is not formed: with stabilizer 0 it would be 0/0)
at::Tensor alpha_beta_cuda(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                           const c10::optional<at::Tensor>& b, double alpha, double beta,
                           double stabilizer) {
  check_alpha_beta(R, a, W, b, alpha, beta, stabilizer);
  const int kind = beta == 0 ? rule::ZPLUS : rule::AB;
  return run_dense(R, a, W, b, [&](const Dense& d, auto* tag) {
    using T = LRP_TYPE(tag);
    return rule_impl<T>(d, params<T>(kind, stabilizer, 0, alpha, beta), at::Tensor(),
                        at::Tensor());
  });
}

at::Tensor w_square_cuda(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                         const c10::optional<at::Tensor>& b, double stabilizer) {
  check_w_square(R, a, W, b, stabilizer);
  return run_dense(R, a, W, b, [&](const Dense& d, auto* tag) {
    return wsq_impl<LRP_TYPE(tag)>(d, stabilizer);
  });
}

at::Tensor z_box_cuda(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                      const at::Tensor& low, const at::Tensor& high, double stabilizer) {
  check_z_box(R, a, W, low, high, stabilizer);
  return run_dense(R, a, W, c10::nullopt, [&](const Dense& d, auto* tag) {
    using T = LRP_TYPE(tag);
    const auto lo = low.expand(a.sizes()).reshape({d.N, d.I}).contiguous();
    const auto hi = high.expand(a.sizes()).reshape({d.N, d.I}).contiguous();
    return rule_impl<T>(d, params<T>(rule::BOX, stabilizer), lo, hi);
  });
}

// flat reads neither a nor W: its own kernel, no Dense
at::Tensor flat_cuda(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                     double stabilizer) {
  check_flat(R, a, W, stabilizer);
  c10::cuda::CUDAGuard guard(a.device());
  const int64_t O = W.size(0), I = W.size(1);
  int64_t N = 1;
  for (int64_t k = 0; k + 1 < a.dim(); ++k) N *= a.size(k);
  if (N == 0 || I == 0) return at::empty(a.sizes(), a.options());
  const auto R2 = R.reshape({N, O}).contiguous();
  auto out = at::empty({N, I}, a.options());
  LRP_DISPATCH(a.scalar_type(), [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t zs = rule::stab(static_cast<acc_t>(I), static_cast<acc_t>(stabilizer));
    const auto grid = static_cast<unsigned>(std::min<int64_t>(N, 65535 * 16));
    flat_kernel<scalar_t><<<grid, kEwThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        R2.data_ptr<scalar_t>(), N, O, I, zs, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.view(a.sizes());
}

#undef LRP_TYPE
#undef LRP_DISPATCH

}  // namespace
}  // namespace lrp_ext

TORCH_LIBRARY_IMPL(lrp_ext, CUDA, m) {
  m.impl("epsilon", &lrp_ext::epsilon_cuda);
  m.impl("gamma", &lrp_ext::gamma_cuda);
  m.impl("alpha_beta", &lrp_ext::alpha_beta_cuda);
  m.impl("flat", &lrp_ext::flat_cuda);
  m.impl("w_square", &lrp_ext::w_square_cuda);
  m.impl("z_box", &lrp_ext::z_box_cuda);
}
