/* fg_rows_base.c -- fg_rows.h's block kernels for the baseline instruction set
 * (x86-64: SSE2, two doubles per vector; elsewhere the compiler's default,
 * e.g. NEON on aarch64; MSVC: plain doubles).  See fg_batch.c for the dispatch. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("O3")
#endif

#if defined(__GNUC__) || defined(__clang__)
#define FG_W 2
#else
#define FG_W 1
#endif
#define FG_ROWS_FN(x) fg_rows_##x##_base
#define FG_ROWS_STORAGE
#include "fg_rows.h"
