/* fg_rows_avx512.c -- fg_rows.h's block kernels compiled for AVX-512 (F, DQ,
 * VL: eight doubles per vector, 512-bit vectors preferred), on x86-64 with
 * GCC or Clang only; selected at import when the CPU has them (fg_batch.c). */
#include "fg_dispatch.h"

#if FG_HAVE_X86_TARGETS
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma"))), apply_to = function)
#else
#pragma GCC optimize("O3")
#pragma GCC target("avx512f,avx512dq,avx512vl,avx2,fma,prefer-vector-width=512")
#endif
#define FG_W 8
#define FG_TV 8
#define FG_ROWS_FN(x) fg_rows_##x##_avx512
#define FG_ROWS_STORAGE
#include "fg_rows.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#else
typedef int fg_no_avx512_here;
#endif
