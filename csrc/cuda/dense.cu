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
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "lrp.h"

namespace lrp_ext {
namespace {

constexpr int kNT = 4;            // batch rows per tile of the fused kernels
constexpr int kFwdWarps = 4;      // forward: one warp per output row, 4 rows per block
constexpr int kFwdUnroll = 4;     // forward: 16-byte chunks of a W row in flight per lane
constexpr int kBwdThreads = 256;  // backward: one 16-byte column slice of W per thread
constexpr int kBwdUnroll = 4;     // backward: W rows in flight per thread (2 where registers
                                  // would spill: two sums per element with 2- or 8-byte types)
constexpr int kEwThreads = 256;   // elementwise kernels

enum Rule : int { RULE_EPS = 0, RULE_GAMMA = 1, RULE_AB = 2, RULE_ZBOX = 3 };
// forward modes of the fused kernel: which sums over i
enum FwdMode : int { F_PLAIN = 0, F_SIGNED = 1, F_ZBOX = 2 };
// backward modes: which sums over o
enum BwdMode : int { B_PLAIN = 0, B_SIGNED = 1, B_SPLIT = 2, B_SQUARE = 3 };
// input-side epilogue
enum Epi : int { EPI_MUL = 0, EPI_SIGNED = 1, EPI_ZBOX = 2, EPI_COPY = 3 };
// coefficient layouts of the gemm path
enum CoefLayout : int { L_SINGLE = 0, L_NONNEG = 1, L_MIXED = 2 };

template <typename acc_t>
struct RuleParams {
  int rule;
  acc_t eps, gamma, alpha, beta;
};

__host__ __device__ inline int64_t ceil_div(int64_t x, int64_t y) { return (x + y - 1) / y; }
__device__ __forceinline__ int64_t imin(int64_t x, int64_t y) { return x < y ? x : y; }

// positive / negative parts that propagate NaN like torch.clamp
template <typename acc_t>
__device__ __forceinline__ acc_t pos(acc_t x) { return x < acc_t(0) ? acc_t(0) : x; }
template <typename acc_t>
__device__ __forceinline__ acc_t neg(acc_t x) { return x > acc_t(0) ? acc_t(0) : x; }
// z + e sgn(z), sgn(-0.0) = +1, NaN stays NaN
template <typename acc_t>
__device__ __forceinline__ acc_t stab(acc_t z, acc_t e) { return z + (z >= acc_t(0) ? e : -e); }

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

// Raw bytes of p[i .. i+V): one 16-byte load when allowed, else element loads.
template <typename T>
__device__ __forceinline__ uint4 load_raw(const T* __restrict__ p, int64_t i, int64_t limit,
                                          bool vec_ok) {
  constexpr int V = Unpack<T>::V;
  if (vec_ok && i + V <= limit) return __ldg(reinterpret_cast<const uint4*>(p + i));
  return Unpack<T>::gather(p, i, limit);
}

// V consecutive elements p[i .. i+V) as accumulation-type values (zeros past `limit`).
template <typename T, typename acc_t, int V>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, int64_t i, int64_t limit,
                                         bool vec_ok, acc_t (&x)[V]) {
  Unpack<T>::run(load_raw(p, i, limit, vec_ok), x);
}

// float16 holds coefficients only up to 65504: when the largest finite |c| of a call (its float
// bits in *cmax) exceeds 2^15, the gemm path stores c * 2^-e and multiplies the products by 2^e.
// Powers of two: exact, except for coefficients pushed below float16's normal range.
__device__ __forceinline__ int coef_exponent(const int* cmax) {
  if (cmax == nullptr) return 0;
  const float m = __int_as_float(*cmax);
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
  if (p.rule == RULE_EPS) {
    c0 = r / stab(s1 + bias, p.eps);
    c1 = acc_t(0);
  } else if (p.rule == RULE_ZBOX) {
    c0 = r / stab(s1, p.eps);
    c1 = acc_t(0);
  } else {
    const acc_t P = s1 + pos(bias), M = s2 + neg(bias);
    if (p.rule == RULE_GAMMA) {
      const acc_t z = P + M;
      const acc_t sp = r * (z > acc_t(0) ? acc_t(1) : acc_t(0)) / stab(z + p.gamma * P, p.eps);
      const acc_t sn = r * (z < acc_t(0) ? acc_t(1) : acc_t(0)) / stab(z + p.gamma * M, p.eps);
      c0 = (acc_t(1) + p.gamma) * sp + sn;
      c1 = sp + (acc_t(1) + p.gamma) * sn;
    } else {  // RULE_AB
      c0 = p.alpha * r / stab(P, p.eps);
      c1 = -p.beta * r / stab(M, p.eps);
    }
  }
}

// Input-side epilogue of element idx of the (N, I) result.
template <typename T, typename acc_t>
__device__ __forceinline__ acc_t epilogue(int mode, acc_t t1, acc_t t2, const T* __restrict__ a,
                                          const T* __restrict__ lo, const T* __restrict__ hi,
                                          int64_t idx) {
  switch (mode) {
    case EPI_MUL: return static_cast<acc_t>(a[idx]) * t1;
    case EPI_SIGNED: {
      const acc_t x = static_cast<acc_t>(a[idx]);
      return pos(x) * t1 + neg(x) * t2;
    }
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
// share it through L2).  Writes C0/C1 (N, O) and, for F_SIGNED, negflag[n_tile] = any(a < 0)
// over the tile's rows (the backward skips t2 for tiles without negative inputs).
template <typename T, int MODE>
__global__ void __launch_bounds__(kFwdWarps * 32)
fwd_fused_kernel(const T* __restrict__ a, const T* __restrict__ lo, const T* __restrict__ hi,
                 const T* __restrict__ W, const T* __restrict__ b, const T* __restrict__ R,
                 int64_t N, int64_t O, int64_t I, int64_t n_tiles, bool vec_ok,
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
  const T* __restrict__ Wrow = W + o * I;

  for (int64_t i = static_cast<int64_t>(lane) * V; i < I; i += STEP * U) {
    uint4 wr[U];
#pragma unroll
    for (int u = 0; u < U; ++u) wr[u] = load_raw(Wrow, i + u * STEP, I, vec_ok);
#pragma unroll
    for (int n = 0; n < kNT; ++n) {
      if (n < nv) {
        const int64_t row = (n0 + n) * I;
        uint4 xr[U], lr[U], hr[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
          xr[u] = load_raw(a + row, i + u * STEP, I, vec_ok);
          if (MODE == F_ZBOX) {
            lr[u] = load_raw(lo + row, i + u * STEP, I, vec_ok);
            hr[u] = load_raw(hi + row, i + u * STEP, I, vec_ok);
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
            for (int j = 0; j < V; ++j)
              s1[n] += (x[j] - l[j]) * pos(w[j]) + (x[j] - h[j]) * neg(w[j]);
          } else if (MODE == F_SIGNED) {
#pragma unroll
            for (int j = 0; j < V; ++j) {
              const acc_t prod = x[j] * w[j];
              s1[n] += pos(prod);
              s2[n] += neg(prod);
              seen_neg |= x[j] < acc_t(0);
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
  if (MODE == F_SIGNED && negflag != nullptr && o == 0) {
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
    int64_t i0, int64_t o_begin, int64_t o_end, bool vec_ok,
    at::opmath_type<T> (&t1)[kNT][Unpack<T>::V], at::opmath_type<T> (&t2)[kNT][Unpack<T>::V]) {
  using acc_t = at::opmath_type<T>;
  constexpr int V = Unpack<T>::V;
  constexpr int U = (MODE == B_SIGNED || MODE == B_SPLIT) && sizeof(T) != 4 ? 2 : kBwdUnroll;
  for (int64_t o = o_begin; o < o_end; o += U) {
    uint4 wr[U];
#pragma unroll
    for (int u = 0; u < U; ++u)
      wr[u] = o + u < o_end ? load_raw(W + (o + u) * I, i0, I, vec_ok) : make_uint4(0, 0, 0, 0);
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
            t2[n][j] += c0 * neg(w[j]);
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
                 int64_t rows_per_split, bool vec_ok, at::opmath_type<T>* __restrict__ ws,
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

  if (MODE == B_SIGNED && (negflag == nullptr || negflag[n_tile] != 0))
    bwd_accumulate<T, MODE, true>(W, C0, C1, O, I, n0, nv, i0, o_begin, o_end, vec_ok, t1, t2);
  else
    bwd_accumulate<T, MODE, false>(W, C0, C1, O, I, n0, nv, i0, o_begin, o_end, vec_ok, t1, t2);

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
        if (MODE == B_SIGNED || MODE == B_SPLIT) part[N * I + row + i0 + j] = t2[n][j];
      }
    }
  }
}

// Sums nsplit partial results (t1 at src[s * split_stride + n * ld + i], t2 at the same plus
// t2_off, or zero when t2_off < 0) and applies the epilogue.  Tin: the accumulation type
// (fused path) or the element type (gemm path).
template <typename T, typename Tin>
__global__ void __launch_bounds__(kEwThreads)
finalize_kernel(const Tin* __restrict__ src, int64_t N, int64_t I, int64_t ld, int64_t t2_off,
                int64_t nsplit, int64_t split_stride, const T* __restrict__ a,
                const T* __restrict__ lo, const T* __restrict__ hi, int emode,
                T* __restrict__ out, const int* __restrict__ cmax) {
  using acc_t = at::opmath_type<T>;
  const acc_t post = static_cast<acc_t>(ldexpf(1.f, coef_exponent(cmax)));
  const int64_t total = N * I;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = idx / I, i = idx - n * I;
    const int64_t off = n * ld + i;
    acc_t t1 = acc_t(0), t2 = acc_t(0);
    for (int64_t s = 0; s < nsplit; ++s) {
      t1 += static_cast<acc_t>(src[s * split_stride + off]);
      if (t2_off >= 0) t2 += static_cast<acc_t>(src[s * split_stride + t2_off + off]);
    }
    t1 *= post;
    t2 *= post;
    out[idx] = static_cast<T>(epilogue<T, acc_t>(emode, t1, t2, a, lo, hi, idx));
  }
}

// Gemm path: the forward products Z (layout below) become the coefficients C (same layout; C may
// be Z itself: each thread reads and then writes the same positions).  Tz: the products' type
// (float for 2-byte inputs, so z is not rounded to 8 or 11 bits before 1/z).
//   L_SINGLE (N, O): z = Z[n, o] -> c
//   L_NONNEG (N, 2O): [a W+^T | a W-^T] -> [c+ | c-]
//   L_MIXED (2N, 2O): rows [a+; a-] times [W+; W-]^T -> rows [[c+ | c-]; [c- | c+]]
template <typename T, typename Tz>
__global__ void __launch_bounds__(kEwThreads)
coef_gemm_kernel(const Tz* Z, T* C, const T* __restrict__ R, const T* __restrict__ b, int64_t N,
                 int64_t O, int layout, RuleParams<at::opmath_type<T>> prm,
                 int* __restrict__ measure, const int* __restrict__ cmax) {
  // measure != nullptr: only record the largest finite |c| (atomicMax on its float bits)
  using acc_t = at::opmath_type<T>;
  const int64_t total = N * O;
  const acc_t scale = static_cast<acc_t>(ldexpf(1.f, -coef_exponent(cmax)));
  float largest = 0.f;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = idx / O, o = idx - n * O;
    const acc_t r = static_cast<acc_t>(R[idx]);
    const acc_t bias = b != nullptr ? static_cast<acc_t>(b[o]) : acc_t(0);
    acc_t c0, c1;
    if (measure != nullptr) {
      acc_t s1, s2 = acc_t(0);
      if (layout == L_SINGLE) {
        s1 = static_cast<acc_t>(Z[idx]);
      } else if (layout == L_NONNEG) {
        s1 = static_cast<acc_t>(Z[n * 2 * O + o]);
        s2 = static_cast<acc_t>(Z[n * 2 * O + O + o]);
      } else {
        s1 = static_cast<acc_t>(Z[n * 2 * O + o]) + static_cast<acc_t>(Z[(N + n) * 2 * O + O + o]);
        s2 = static_cast<acc_t>(Z[n * 2 * O + O + o]) + static_cast<acc_t>(Z[(N + n) * 2 * O + o]);
      }
      coefficients(prm, s1, s2, r, bias, c0, c1);
      const float m0 = fabsf(static_cast<float>(c0)), m1 = fabsf(static_cast<float>(c1));
      if (isfinite(m0)) largest = fmaxf(largest, m0);
      if (isfinite(m1)) largest = fmaxf(largest, m1);
      continue;
    }
    if (layout == L_SINGLE) {
      coefficients(prm, static_cast<acc_t>(Z[idx]), acc_t(0), r, bias, c0, c1);
      C[idx] = static_cast<T>(c0 * scale);
    } else if (layout == L_NONNEG) {
      const int64_t p = n * 2 * O + o, m = p + O;
      coefficients(prm, static_cast<acc_t>(Z[p]), static_cast<acc_t>(Z[m]), r, bias, c0, c1);
      C[p] = static_cast<T>(c0 * scale);
      C[m] = static_cast<T>(c1 * scale);
    } else {
      const int64_t pp = n * 2 * O + o, pn = pp + O;              // a+ W+, a+ W-
      const int64_t np = (N + n) * 2 * O + o, nn = np + O;        // a- W+, a- W-
      const acc_t s1 = static_cast<acc_t>(Z[pp]) + static_cast<acc_t>(Z[nn]);
      const acc_t s2 = static_cast<acc_t>(Z[pn]) + static_cast<acc_t>(Z[np]);
      coefficients(prm, s1, s2, r, bias, c0, c1);
      C[pp] = static_cast<T>(c0 * scale);
      C[pn] = static_cast<T>(c1 * scale);
      C[np] = static_cast<T>(c1 * scale);
      C[nn] = static_cast<T>(c0 * scale);
    }
  }
  if (measure != nullptr) {
    // non-negative floats order like their bit patterns
#pragma unroll
    for (int off = 16; off > 0; off >>= 1)
      largest = fmaxf(largest, __shfl_xor_sync(0xffffffffu, largest, off));
    if (threadIdx.x % 32 == 0 && largest > 0.f) atomicMax(measure, __float_as_int(largest));
  }
}

// Gemm path: W+ and W- side by side, rows ([W+; W-], (2O, I)) or columns ([W+ | W-], (O, 2I)).
template <typename T>
__global__ void __launch_bounds__(kEwThreads)
split_w_kernel(const T* __restrict__ W, T* __restrict__ out, int64_t O, int64_t I, bool cols) {
  using acc_t = at::opmath_type<T>;
  const int64_t total = O * I;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t o = idx / I, i = idx - o * I;
    const acc_t w = static_cast<acc_t>(W[idx]);
    const int64_t p = cols ? o * 2 * I + i : idx;
    const int64_t m = cols ? p + I : total + idx;
    out[p] = static_cast<T>(pos(w));
    out[m] = static_cast<T>(neg(w));
  }
}

// w_square: warp per row o, zs = stab(sum_i W_oi^2 + b_o^2).  Writes C0[n, o] = R[n, o] / zs
// (fused path) and/or W2s[o, i] = W_oi^2 / zs (gemm path: R_in = R W2s).
template <typename T>
__global__ void __launch_bounds__(kFwdWarps * 32, 8)
wsq_kernel(const T* __restrict__ W, const T* __restrict__ b, const T* __restrict__ R, int64_t N,
           int64_t O, int64_t I, bool vec_ok, at::opmath_type<T> eps,
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
    load_vec<T, acc_t, V>(Wrow, i, I, vec_ok, w0);
    load_vec<T, acc_t, V>(Wrow, i + 32 * V, I, vec_ok, w1);
#pragma unroll
    for (int j = 0; j < V; ++j) z += w0[j] * w0[j] + w1[j] * w1[j];
  }
  z = warp_sum(z);
  if (b != nullptr) {
    const acc_t bo = static_cast<acc_t>(b[o]);
    z += bo * bo;
  }
  const acc_t zs = stab(z, eps);
  if (C0 != nullptr)
    for (int64_t n = lane; n < N; n += 32) C0[n * O + o] = static_cast<acc_t>(R[n * O + o]) / zs;
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

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

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
  const bool vec_ok = I % V == 0 && aligned16(d.W.data_ptr());
  auto stream = at::cuda::getCurrentCUDAStream();
  bwd_fused_kernel<T, BMODE><<<static_cast<unsigned>(grid), kBwdThreads, 0, stream>>>(
      d.W.data_ptr<T>(), C0.data_ptr<acc_t>(), ptr_or_null<acc_t>(C1), ptr_or_null<int>(negflag),
      N, O, I, n_tiles, i_tiles, rows, vec_ok, ptr_or_null<acc_t>(ws), out.data_ptr<T>(),
      d.a.data_ptr<T>(), ptr_or_null<T>(lo), ptr_or_null<T>(hi), emode);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (nsplit > 1) {
    const bool has_t2 = BMODE == B_SIGNED || BMODE == B_SPLIT;
    finalize_kernel<T, acc_t><<<elementwise_blocks(N * I), kEwThreads, 0, stream>>>(
        ws.data_ptr<acc_t>(), N, I, I, has_t2 ? N * I : -1, nsplit, 2 * N * I,
        d.a.data_ptr<T>(), ptr_or_null<T>(lo), ptr_or_null<T>(hi), emode, out.data_ptr<T>(),
        nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

// Fused forward (coefficients) then fused backward.
template <typename T, int FMODE, int BMODE>
at::Tensor fused_path(const Dense& d, const RuleParams<at::opmath_type<T>>& prm, int emode,
                      const at::Tensor& lo, const at::Tensor& hi) {
  using acc_t = at::opmath_type<T>;
  constexpr int V = Unpack<T>::V;
  const int64_t N = d.N, O = d.O, I = d.I;
  const int64_t n_tiles = ceil_div(N, kNT);
  const int64_t grid = n_tiles * ceil_div(O, kFwdWarps);
  TORCH_CHECK(grid <= kMaxGrid, "lrp_ext (CUDA): batch too large for the fused path (N=", N,
              "); use LRP_EXT_CUDA_PATH=auto or gemm");
  const auto acc_opts = d.a.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  at::Tensor C0 = at::empty({N, O}, acc_opts);
  at::Tensor C1, negflag;
  if (FMODE == F_SIGNED) {
    C1 = at::empty({N, O}, acc_opts);
    negflag = at::empty({n_tiles}, d.a.options().dtype(at::kInt));
  }
  bool vec_ok = I % V == 0 && aligned16(d.W.data_ptr()) && aligned16(d.a.data_ptr());
  if (FMODE == F_ZBOX) vec_ok = vec_ok && aligned16(lo.data_ptr()) && aligned16(hi.data_ptr());
  auto stream = at::cuda::getCurrentCUDAStream();
  fwd_fused_kernel<T, FMODE><<<static_cast<unsigned>(grid), kFwdWarps * 32, 0, stream>>>(
      d.a.data_ptr<T>(), ptr_or_null<T>(lo), ptr_or_null<T>(hi), d.W.data_ptr<T>(),
      ptr_or_null<T>(d.b), d.R.data_ptr<T>(), N, O, I, n_tiles, vec_ok, prm,
      C0.data_ptr<acc_t>(), ptr_or_null<acc_t>(C1), ptr_or_null<int>(negflag));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return fused_backward<T, BMODE>(d, C0, C1, negflag, emode, lo, hi);
}

// Matrix product for the gemm path: float32 output for 2-byte inputs (cuBLAS accumulates in
// float32 either way; this keeps z and the products unrounded), else the inputs' dtype.  ATen's
// matmul honours allowTF32CuBLAS for float32.  Falls back to the plain product where the
// out_dtype overload is refused.
at::Tensor mm_acc(const at::Tensor& x, const at::Tensor& y) {
  static std::atomic<bool> out_dtype_ok{true};
  const auto st = x.scalar_type();
  if ((st == at::kHalf || st == at::kBFloat16) && out_dtype_ok.load()) {
    try {
      return at::mm(x, y, at::kFloat);
    } catch (const c10::Error&) {
      out_dtype_ok.store(false);
    }
  }
  return at::mm(x, y);
}

// Coefficients from the forward products Z (in place when Z has the element type).  For float16
// the largest |c| is measured first (one extra pass over Z, no host synchronisation) and the
// coefficients are stored scaled by a power of two when they would overflow; `cmax` (returned
// through *cmax_out) carries that to launch_finalize.
template <typename T>
at::Tensor launch_coef_gemm(const at::Tensor& Z, const Dense& d, int layout,
                            const RuleParams<at::opmath_type<T>>& prm, at::Tensor* cmax_out) {
  using acc_t = at::opmath_type<T>;
  const int64_t blocks = elementwise_blocks(d.N * d.O);
  auto stream = at::cuda::getCurrentCUDAStream();
  if (Z.scalar_type() == d.a.scalar_type()) {
    coef_gemm_kernel<T, T><<<blocks, kEwThreads, 0, stream>>>(
        Z.data_ptr<T>(), Z.data_ptr<T>(), d.R.data_ptr<T>(), ptr_or_null<T>(d.b), d.N, d.O,
        layout, prm, nullptr, nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return Z;
  }
  at::Tensor cmax;
  if (d.a.scalar_type() == at::kHalf) {
    cmax = at::zeros({1}, d.a.options().dtype(at::kInt));
    coef_gemm_kernel<T, acc_t><<<blocks, kEwThreads, 0, stream>>>(
        Z.data_ptr<acc_t>(), nullptr, d.R.data_ptr<T>(), ptr_or_null<T>(d.b), d.N, d.O, layout,
        prm, cmax.data_ptr<int>(), nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  auto C = at::empty(Z.sizes(), d.a.options());
  coef_gemm_kernel<T, acc_t><<<blocks, kEwThreads, 0, stream>>>(
      Z.data_ptr<acc_t>(), C.data_ptr<T>(), d.R.data_ptr<T>(), ptr_or_null<T>(d.b), d.N, d.O,
      layout, prm, nullptr, ptr_or_null<int>(cmax));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (cmax_out != nullptr) *cmax_out = cmax;
  return C;
}

// Input-side epilogue over the backward products src (element type or float32).
template <typename T>
at::Tensor launch_finalize(const at::Tensor& src, const Dense& d, int64_t ld, int64_t t2_off,
                           int emode, const at::Tensor& lo, const at::Tensor& hi,
                           const at::Tensor& cmax) {
  using acc_t = at::opmath_type<T>;
  auto out = at::empty({d.N, d.I}, d.a.options());
  const int64_t blocks = elementwise_blocks(d.N * d.I);
  auto stream = at::cuda::getCurrentCUDAStream();
  if (src.scalar_type() == d.a.scalar_type()) {
    finalize_kernel<T, T><<<blocks, kEwThreads, 0, stream>>>(
        src.data_ptr<T>(), d.N, d.I, ld, t2_off, 1, 0, d.a.data_ptr<T>(), ptr_or_null<T>(lo),
        ptr_or_null<T>(hi), emode, out.data_ptr<T>(), ptr_or_null<int>(cmax));
  } else {
    finalize_kernel<T, acc_t><<<blocks, kEwThreads, 0, stream>>>(
        src.data_ptr<acc_t>(), d.N, d.I, ld, t2_off, 1, 0, d.a.data_ptr<T>(),
        ptr_or_null<T>(lo), ptr_or_null<T>(hi), emode, out.data_ptr<T>(), ptr_or_null<int>(cmax));
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

template <typename T>
at::Tensor split_weight(const Dense& d, bool cols) {
  auto out = cols ? at::empty({d.O, 2 * d.I}, d.W.options()) : at::empty({2 * d.O, d.I},
                                                                          d.W.options());
  split_w_kernel<T><<<elementwise_blocks(d.O * d.I), kEwThreads, 0,
                      at::cuda::getCurrentCUDAStream()>>>(d.W.data_ptr<T>(), out.data_ptr<T>(),
                                                          d.O, d.I, cols);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// ---- per rule ----

template <typename T>
at::Tensor epsilon_impl(const Dense& d, double eps) {
  using acc_t = at::opmath_type<T>;
  const RuleParams<acc_t> prm{RULE_EPS, static_cast<acc_t>(eps), 0, 0, 0};
  if (use_fused(d.N, d.a.scalar_type()))
    return fused_path<T, F_PLAIN, B_PLAIN>(d, prm, EPI_MUL, at::Tensor(), at::Tensor());
  at::Tensor cmax;
  auto C = launch_coef_gemm<T>(mm_acc(d.a, d.W.t()), d, L_SINGLE, prm, &cmax);
  auto Tm = mm_acc(C, d.W);
  return launch_finalize<T>(Tm, d, d.I, -1, EPI_MUL, at::Tensor(), at::Tensor(), cmax);
}

template <typename T>
at::Tensor signed_impl(const Dense& d, const RuleParams<at::opmath_type<T>>& prm) {
  if (use_fused(d.N, d.a.scalar_type()))
    return fused_path<T, F_SIGNED, B_SIGNED>(d, prm, EPI_SIGNED, at::Tensor(), at::Tensor());
  // one device-to-host read decides whether the a- products are needed at all
  const bool mixed = at::lt(d.a, 0).any().item<bool>();
  auto Wst = split_weight<T>(d, /*cols=*/false);  // [W+; W-] (2O, I)
  at::Tensor Z;
  if (mixed)
    Z = mm_acc(at::cat({d.a.clamp_min(0), d.a.clamp_max(0)}, 0), Wst.t());  // (2N, 2O)
  else
    Z = mm_acc(d.a, Wst.t());  // (N, 2O)
  at::Tensor cmax;
  auto C = launch_coef_gemm<T>(Z, d, mixed ? L_MIXED : L_NONNEG, prm, &cmax);
  auto Tm = mm_acc(C, Wst);  // (N, I) = t1, or (2N, I) = [t1; t2]
  return launch_finalize<T>(Tm, d, d.I, mixed ? d.N * d.I : -1, EPI_SIGNED, at::Tensor(),
                            at::Tensor(), cmax);
}

template <typename T>
at::Tensor zbox_impl(const Dense& d, const at::Tensor& lo, const at::Tensor& hi, double eps) {
  using acc_t = at::opmath_type<T>;
  const RuleParams<acc_t> prm{RULE_ZBOX, static_cast<acc_t>(eps), 0, 0, 0};
  if (use_fused(d.N, d.a.scalar_type()))
    return fused_path<T, F_ZBOX, B_SPLIT>(d, prm, EPI_ZBOX, lo, hi);
  auto U = at::cat({d.a - lo, d.a - hi}, 1);       // [u | v] (N, 2I)
  auto Wcat = split_weight<T>(d, /*cols=*/true);   // [W+ | W-] (O, 2I)
  Dense nb = d;
  nb.b = at::Tensor();                             // the bias cancels in z_box
  at::Tensor cmax;
  auto C = launch_coef_gemm<T>(mm_acc(U, Wcat.t()), nb, L_SINGLE, prm, &cmax);  // (N, O)
  auto Tm = mm_acc(C, Wcat);                       // [c W+ | c W-] (N, 2I)
  return launch_finalize<T>(Tm, d, 2 * d.I, d.I, EPI_ZBOX, lo, hi, cmax);
}

template <typename T>
at::Tensor wsq_impl(const Dense& d, double eps) {
  using acc_t = at::opmath_type<T>;
  constexpr int V = Unpack<T>::V;
  const bool fused = use_fused(d.N, d.a.scalar_type());
  const bool vec_ok = d.I % V == 0 && aligned16(d.W.data_ptr());
  const auto grid = static_cast<unsigned>(ceil_div(d.O, kFwdWarps));
  auto stream = at::cuda::getCurrentCUDAStream();
  if (fused) {
    at::Tensor C0 =
        at::empty({d.N, d.O}, d.a.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    wsq_kernel<T><<<grid, kFwdWarps * 32, 0, stream>>>(
        d.W.data_ptr<T>(), ptr_or_null<T>(d.b), d.R.data_ptr<T>(), d.N, d.O, d.I, vec_ok,
        static_cast<acc_t>(eps), C0.data_ptr<acc_t>(), nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return fused_backward<T, B_SQUARE>(d, C0, at::Tensor(), at::Tensor(), EPI_COPY, at::Tensor(),
                                       at::Tensor());
  }
  auto W2s = at::empty({d.O, d.I}, d.W.options());
  wsq_kernel<T><<<grid, kFwdWarps * 32, 0, stream>>>(
      d.W.data_ptr<T>(), ptr_or_null<T>(d.b), d.R.data_ptr<T>(), d.N, d.O, d.I, vec_ok,
      static_cast<acc_t>(eps), nullptr, W2s.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return at::mm(d.R, W2s);
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

at::Tensor epsilon_cuda(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                        const c10::optional<at::Tensor>& b, double epsilon) {
  check_dense("epsilon", R, a, W, b);
  c10::cuda::CUDAGuard guard(a.device());
  const Dense d = flatten(R, a, W, b);
  at::Tensor out;
  if (trivial(d, a, out)) return out;
  LRP_DISPATCH(a.scalar_type(), [&] { out = epsilon_impl<scalar_t>(d, epsilon); });
  return out.view(a.sizes());
}

at::Tensor gamma_cuda(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                      const c10::optional<at::Tensor>& b, double gamma, double stabilizer) {
  check_dense("gamma", R, a, W, b);
  c10::cuda::CUDAGuard guard(a.device());
  const Dense d = flatten(R, a, W, b);
  at::Tensor out;
  if (trivial(d, a, out)) return out;
  LRP_DISPATCH(a.scalar_type(), [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const RuleParams<acc_t> prm{RULE_GAMMA, static_cast<acc_t>(stabilizer),
                                static_cast<acc_t>(gamma), 0, 0};
    out = signed_impl<scalar_t>(d, prm);
  });
  return out.view(a.sizes());
}

at::Tensor alpha_beta_cuda(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                           const c10::optional<at::Tensor>& b, double alpha, double beta,
                           double stabilizer) {
  check_dense("alpha_beta", R, a, W, b);
  c10::cuda::CUDAGuard guard(a.device());
  const Dense d = flatten(R, a, W, b);
  at::Tensor out;
  if (trivial(d, a, out)) return out;
  LRP_DISPATCH(a.scalar_type(), [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const RuleParams<acc_t> prm{RULE_AB, static_cast<acc_t>(stabilizer), 0,
                                static_cast<acc_t>(alpha), static_cast<acc_t>(beta)};
    out = signed_impl<scalar_t>(d, prm);
  });
  return out.view(a.sizes());
}

at::Tensor flat_cuda(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                     double stabilizer) {
  check_dense("flat", R, a, W, c10::nullopt);
  c10::cuda::CUDAGuard guard(a.device());
  const int64_t O = W.size(0), I = W.size(1);
  int64_t N = 1;
  for (int64_t k = 0; k + 1 < a.dim(); ++k) N *= a.size(k);
  if (N == 0 || I == 0) return at::empty(a.sizes(), a.options());
  const auto R2 = R.reshape({N, O}).contiguous();
  auto out = at::empty({N, I}, a.options());
  LRP_DISPATCH(a.scalar_type(), [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t zs = static_cast<acc_t>(I) + static_cast<acc_t>(stabilizer);  // I > 0
    const auto grid = static_cast<unsigned>(std::min<int64_t>(N, 65535 * 16));
    flat_kernel<scalar_t><<<grid, kEwThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        R2.data_ptr<scalar_t>(), N, O, I, zs, out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out.view(a.sizes());
}

at::Tensor w_square_cuda(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                         const c10::optional<at::Tensor>& b, double stabilizer) {
  check_dense("w_square", R, a, W, b);
  c10::cuda::CUDAGuard guard(a.device());
  const Dense d = flatten(R, a, W, b);
  at::Tensor out;
  if (trivial(d, a, out)) return out;
  LRP_DISPATCH(a.scalar_type(), [&] { out = wsq_impl<scalar_t>(d, stabilizer); });
  return out.view(a.sizes());
}

at::Tensor z_box_cuda(const at::Tensor& R, const at::Tensor& a, const at::Tensor& W,
                      const at::Tensor& low, const at::Tensor& high, double stabilizer) {
  check_dense("z_box", R, a, W, c10::nullopt);
  check_bounds(a, low, high);
  c10::cuda::CUDAGuard guard(a.device());
  const Dense d = flatten(R, a, W, c10::nullopt);
  at::Tensor out;
  if (trivial(d, a, out)) return out;
  const auto lo = low.expand(a.sizes()).reshape({d.N, d.I}).contiguous();
  const auto hi = high.expand(a.sizes()).reshape({d.N, d.I}).contiguous();
  LRP_DISPATCH(a.scalar_type(), [&] { out = zbox_impl<scalar_t>(d, lo, hi, stabilizer); });
  return out.view(a.sizes());
}

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
