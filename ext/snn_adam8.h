/* Adam on 8 floats: the one formula of snnfast's fused Adam steps, used by _adam.pyx (any
   array) and by _convsnn_w1.pyx (inside the pass over W1), so both give the same bits:

       m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*(g*g);  p = p - step_size * (m / (sqrt(v)*rbc2 + eps))

   Every product and sum is rounded on its own (the extensions build with -ffp-contract=off). */
#ifndef SNN_ADAM8_H
#define SNN_ADAM8_H

#include <math.h>
#include <string.h>
#if defined(__AVX__)
#include <immintrin.h>
#endif

typedef float snn_adam_f8 __attribute__((vector_size(32)));

/* IEEE sqrt is correctly rounded, so the vector and scalar forms give the same bits;
   explicit because sqrtf's errno semantics stop the auto-vectoriser. */
static inline snn_adam_f8 snn_adam_sqrt8(snn_adam_f8 x) {
#if defined(__AVX__)
    return (snn_adam_f8)_mm256_sqrt_ps((__m256)x);
#else
    for (int l = 0; l < 8; l++) x[l] = sqrtf(x[l]);
    return x;
#endif
}

/* One Adam step on p[0..8), m[0..8), v[0..8) in place, with gradient g. */
static inline void snn_adam8(float *p, float *m, float *v, snn_adam_f8 g, float b1,
                             float omb1, float b2, float omb2, float step_size, float rbc2,
                             float eps) {
    const snn_adam_f8 one = {1, 1, 1, 1, 1, 1, 1, 1};
    snn_adam_f8 pi, mi, vi;
    memcpy(&pi, p, 32);
    memcpy(&mi, m, 32);
    memcpy(&vi, v, 32);
    mi = (one * b1) * mi + (one * omb1) * g;
    vi = (one * b2) * vi + (one * omb2) * (g * g);
    const snn_adam_f8 denom = snn_adam_sqrt8(vi) * (one * rbc2) + one * eps;
    memcpy(m, &mi, 32);
    memcpy(v, &vi, 32);
    pi = pi - (one * step_size) * (mi / denom);
    memcpy(p, &pi, 32);
}

#endif
