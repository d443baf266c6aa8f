// Interface between the torch-side CPU code (dense.cpp) and the per-ISA SIMD engines.
#pragma once
#include <cstdint>

namespace lrp_ext {
namespace cpu {

enum Combo : int { ID = 0, POS = 1, SQ = 2, SPLIT = 3, MERGE = 4, CROSS = 5 };
// weight storage; the accumulation type is double for W_F64 and float otherwise
enum WType : int { W_F32 = 0, W_F64 = 1, W_BF16 = 2 };

struct Job {
  int combo;
  int wtype;
  const void* W;  // (O, I) contiguous
  int64_t N, O, I;
  const void* x;  // forward: (KI, N, I); backward: (KI, N, O) — accumulation type, contiguous
  void* out;      // forward only: (KO, N, O)
};

#define LRP_DECLARE_ISA(ns)                                                            \
  namespace ns {                                                                       \
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
