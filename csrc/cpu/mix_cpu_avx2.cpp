// The mix kernels of mix_cpu_kernels.h compiled for AVX2 + FMA (x86-64 with GCC or Clang only);
// mix_cpu.cpp calls them when the CPU supports both. Every header is included before the target
// pragma, so inline functions shared with other files keep their baseline code.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../checks.h"
#include "../common.h"
#include "cpu_math.h"

#if SUPERMIX_CPU_AVX2
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define SUPERMIX_CPU_ISA avx2
#include "mix_cpu_kernels.h"
#undef SUPERMIX_CPU_ISA
#pragma GCC pop_options
#endif
