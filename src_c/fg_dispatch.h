/* fg_dispatch.h -- which dispatch targets this compiler builds (preprocessor
 * only, no includes: the target files include it before their pragmas). */
#ifndef FG_DISPATCH_H
#define FG_DISPATCH_H

/* x86-64 with GCC or Clang: AVX2 and AVX-512 copies of the row kernels,
 * chosen at run time with __builtin_cpu_supports.  Elsewhere (MSVC, aarch64,
 * ...) only the baseline copy exists. */
#if (defined(__x86_64__)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(FG_NO_DISPATCH)
#define FG_HAVE_X86_TARGETS 1
#else
#define FG_HAVE_X86_TARGETS 0
#endif

#endif /* FG_DISPATCH_H */
