// The SIMD engines compiled for AVX2 + FMA (chosen at run time when the CPU has them).
#include <cstdint>
#pragma GCC target("avx2,fma,f16c,bmi,bmi2")
#define LRP_VBYTES 32
#define LRP_ISA avx2
#include "kernels.h"
