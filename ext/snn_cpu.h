/* Which instruction-set extensions the running CPU (and its operating system) supports, asked
   through the compiler's __builtin_cpu_supports, and which register states the operating
   system saves (XCR0). This file is compiled for the architecture's baseline CPU (see setup.py:
   PORTABLE_EXTENSIONS), so it runs on any x86-64: snnfast._dispatch asks it which kernel
   variant to load, and import snnfast refuses a build that targeted a newer CPU, before any
   kernel executes an illegal instruction. */
#ifndef SNN_CPU_H
#define SNN_CPU_H
#include <string.h>
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

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
/* XCR0, the register states the operating system saves on a context switch (bit 1 SSE, 2 AVX,
   5-7 AVX-512), 0 if it does not enable XSAVE (then no AVX code may run), -1 if this checker
   cannot tell (not x86-64, or another compiler). AVX code needs bits 1-2, AVX-512 code 1-2 and
   5-7: a CPU may have the instructions while the OS (or hypervisor) leaves them unusable. */
static long long snn_cpu_xcr0(void) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    unsigned int a, b, c, d, lo, hi;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return -1;
    if (!(c & (1u << 27))) return 0;                  /* CPUID.1:ECX.OSXSAVE */
    /* xgetbv as bytes: assemblers older than the instruction accept them */
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(lo), "=d"(hi) : "c"(0));
    return (long long)(((unsigned long long)hi << 32) | lo);
#else
    return -1;
#endif
}
#endif /* SNN_CPU_H */
