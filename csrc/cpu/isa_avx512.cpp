// The SIMD engines compiled for AVX-512 (chosen at run time when the CPU has it).
#include <cstdint>
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2")
#define LRP_VBYTES 64
#define LRP_ISA avx512
#include "kernels.h"
