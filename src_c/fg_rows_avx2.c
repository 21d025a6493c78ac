/* fg_rows_avx2.c -- fg_rows.h's block kernels compiled for AVX2 (+FMA CPUs:
 * four doubles per vector), on x86-64 with GCC or Clang only; selected at
 * import when the CPU has them (fg_batch.c).  -ffp-contract=off holds here
 * too: the same rounding as the baseline, only wider vectors. */
#include "fg_dispatch.h"

#if FG_HAVE_X86_TARGETS
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC optimize("O3")
#pragma GCC target("avx2,fma")
#endif
#define FG_W 4
#define FG_TV 8
#define FG_ROWS_FN(x) fg_rows_##x##_avx2
#define FG_ROWS_STORAGE
#include "fg_rows.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#else
typedef int fg_no_avx2_here;   /* ISO C: a translation unit is not empty */
#endif
