/* C kernels of snnfast._adam (the Cython module ext/_adam.pyx is only their binding). */
#ifndef SNN_ADAM_H
#define SNN_ADAM_H
#include "snn_adam8.h"   /* snn_adam8: the one Adam formula */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
typedef float snn_a8f __attribute__((vector_size(32)));
typedef int32_t snn_a8i __attribute__((vector_size(32)));

static inline snn_a8f snn_a_ld(const float *p) { snn_a8f x; memcpy(&x, p, 32); return x; }

static inline float snn_adam_one(float *p, float g, float *m, float *v, float b1,
                                 float omb1, float b2, float omb2, float step_size,
                                 float rbc2, float eps) {
    float mi = b1 * *m + omb1 * g;
    float vi = b2 * *v + omb2 * (g * g);
    float denom = sqrtf(vi) * rbc2 + eps;
    *m = mi;
    *v = vi;
    return *p - step_size * (mi / denom);
}

static ptrdiff_t snn_adam_chunk(float *p, const float *g, float *m, float *v, ptrdiff_t n,
                                float b1, float omb1, float b2, float omb2, float step_size,
                                float rbc2, float eps) {
    const snn_a8f zero = {0};
    snn_a8i bad = (snn_a8i)zero;   /* fused finiteness count: g - g != 0 for NaN/inf */
    ptrdiff_t i = 0, nonfinite = 0;
    for (; i + 8 <= n; i += 8) {
        snn_a8f gi = snn_a_ld(g + i);
        bad -= (gi - gi) != zero;
        snn_adam8(p + i, m + i, v + i, gi, b1, omb1, b2, omb2, step_size, rbc2, eps);
    }
    for (int l = 0; l < 8; l++) nonfinite += bad[l];
    for (; i < n; i++) {
        nonfinite += (g[i] - g[i]) != 0.0f;
        p[i] = snn_adam_one(p + i, g[i], m + i, v + i, b1, omb1, b2, omb2, step_size,
                            rbc2, eps);
    }
    return nonfinite;
}

#endif /* SNN_ADAM_H */
