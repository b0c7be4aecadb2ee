/* Which instruction-set extensions the running CPU (and its operating system) supports, asked
   through the compiler's __builtin_cpu_supports. This file is compiled WITHOUT -march=native
   (see setup.py: PORTABLE_EXTENSIONS), so it runs on any x86-64 and can refuse a kernel build
   that targeted a newer CPU before that build executes an illegal instruction. */
#ifndef SNN_CPU_H
#define SNN_CPU_H
#include <string.h>

/* 1 if the CPU has the feature, 0 if not, -1 if this checker cannot tell (unknown name,
   not x86, or a compiler without __builtin_cpu_supports). Names as in GCC's documentation. */
static int snn_cpu_supports(const char *name) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
/* __builtin_cpu_supports takes a string literal only, hence one test per name */
#define SNN_TRY(F) if (strcmp(name, F) == 0) return __builtin_cpu_supports(F) ? 1 : 0;
    SNN_TRY("sse3") SNN_TRY("ssse3") SNN_TRY("sse4.1") SNN_TRY("sse4.2") SNN_TRY("popcnt")
    SNN_TRY("avx") SNN_TRY("avx2") SNN_TRY("fma") SNN_TRY("bmi") SNN_TRY("bmi2")
    SNN_TRY("avx512f") SNN_TRY("avx512bw") SNN_TRY("avx512vl") SNN_TRY("avx512dq")
    SNN_TRY("avx512cd") SNN_TRY("avx512vnni") SNN_TRY("avx512ifma") SNN_TRY("avx512vbmi")
    SNN_TRY("avx512vbmi2") SNN_TRY("avx512bitalg") SNN_TRY("avx512vpopcntdq")
    SNN_TRY("aes") SNN_TRY("pclmul") SNN_TRY("sse4a") SNN_TRY("fma4") SNN_TRY("xop")
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
    /* names older compilers (and clang) may not know: an unknown name is a compile error */
    SNN_TRY("avx512bf16") SNN_TRY("avx512fp16") SNN_TRY("gfni") SNN_TRY("vpclmulqdq")
    SNN_TRY("vaes") SNN_TRY("f16c") SNN_TRY("movbe") SNN_TRY("lzcnt") SNN_TRY("avxvnni")
    SNN_TRY("adx")
#endif
#undef SNN_TRY
#else
    (void)name;
#endif
    return -1;
}
#endif /* SNN_CPU_H */
