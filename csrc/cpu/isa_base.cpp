// The SIMD engines for any x86-64 (SSE2) or other CPU: the portable fallback.
#include <cstdint>
#define LRP_VBYTES 16
#define LRP_ISA base
#include "kernels.h"
