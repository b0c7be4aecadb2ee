/* The finiteness scan of a float32 array before a kernel changes anything, shared by
   _adam.pyx (gradients) and _ema.pyx (the averaged weights). */
#ifndef SNN_FINITE_H
#define SNN_FINITE_H

#include <stddef.h>
#include <string.h>

typedef float snn_fin_f8 __attribute__((vector_size(32)));

static inline snn_fin_f8 snn_fin_ld(const float *p) { snn_fin_f8 x; memcpy(&x, p, 32); return x; }

/* 1 if all n floats are finite: x - x is 0 for finite x, NaN for NaN and infinities, and a
   NaN stays in its lane's sum. Four independent vector sums: with one, the add latency made
   the scan of W1's 2.4 M floats twice as slow as np.isfinite. */
static int snn_all_finite(const float *g, ptrdiff_t n) {
    const snn_fin_f8 zero = {0};
    snn_fin_f8 a0 = zero, a1 = zero, a2 = zero, a3 = zero;
    float tail = 0.0f;
    ptrdiff_t i = 0;
    for (; i + 32 <= n; i += 32) {
        snn_fin_f8 x0 = snn_fin_ld(g + i), x1 = snn_fin_ld(g + i + 8);
        snn_fin_f8 x2 = snn_fin_ld(g + i + 16), x3 = snn_fin_ld(g + i + 24);
        a0 += x0 - x0; a1 += x1 - x1; a2 += x2 - x2; a3 += x3 - x3;
    }
    for (; i + 8 <= n; i += 8) {
        snn_fin_f8 x = snn_fin_ld(g + i);
        a0 += x - x;
    }
    for (; i < n; i++) tail += g[i] - g[i];
    a0 = (a0 + a1) + (a2 + a3);
    for (int l = 0; l < 8; l++) tail += a0[l];
    return tail == 0.0f;
}

#endif
