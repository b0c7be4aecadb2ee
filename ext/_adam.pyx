# Fused Adam step (one pass over param, grad, m, v instead of NumPy's ~10 temporaries).
#
# Called only through snnfast._convsnn_kernels.adam_step (which validates the arguments and
# computes the bias-correction constants). Elementwise, so any chunking gives the same bits.
from cython.parallel cimport prange

cdef extern from "snn_adam8.h":     # the vector formula, shared with _convsnn_w1.pyx
    pass

cdef extern from *:
    """
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
    """
    Py_ssize_t snn_adam_chunk(float *p, const float *g, float *m, float *v, Py_ssize_t n, float b1,
                        float omb1, float b2, float omb2, float step_size, float rbc2,
                        float eps) nogil

cdef enum:
    CHUNK = 16384  # floats per work item: 64 KiB per stream, amortises the scheduling


def adam_step_into(float[::1] param, const float[::1] grad, float[::1] m, float[::1] v,
                   float beta1, float one_minus_beta1, float beta2, float one_minus_beta2,
                   float step_size, float rbc2, float eps, int n_threads):
    """In-place Adam on flat arrays (see snnfast._convsnn_kernels.adam_step).

    Returns the number of non-finite gradient elements met (their parameters are now NaN).
    """
    cdef Py_ssize_t n = param.shape[0]
    cdef Py_ssize_t nchunk = (n + CHUNK - 1) // CHUNK
    cdef Py_ssize_t c, lo, cnt, nonfinite = 0
    if n == 0:
        return 0
    for c in prange(nchunk, nogil=True, schedule='static', num_threads=n_threads):
        lo = c * CHUNK
        cnt = n - lo if n - lo < CHUNK else CHUNK
        nonfinite += snn_adam_chunk(&param[lo], &grad[lo], &m[lo], &v[lo], cnt, beta1, one_minus_beta1,
                       beta2, one_minus_beta2, step_size, rbc2, eps)
    return nonfinite
