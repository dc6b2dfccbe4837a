// Portability macros shared by the C++ and CUDA translation units.
#pragma once

#if defined(__CUDACC__)
#define VILG_HD __host__ __device__ __forceinline__
#define VILG_DEVICE __device__ __forceinline__
#else
#define VILG_HD inline
#define VILG_DEVICE inline
#endif

// Hot CPU loops get an AVX2+FMA clone chosen at load time, so one binary stays portable.
#if !defined(__CUDACC__) && defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VILG_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define VILG_CPU_CLONES
#endif
