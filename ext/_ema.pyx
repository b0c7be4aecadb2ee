# Running average of the weights, avg = avg*d + (1-d)*p, in one pass (NumPy needs three and a
# 9 MB temporary for W1). Each product and the sum are rounded on their own
# (-ffp-contract=off): the same bits as ``avg *= d; avg += (1-d) * p`` in NumPy float32.
#
# Called only through snnfast._convsnn_kernels.ema_step (which validates the arguments).
# Elementwise, so any chunking gives the same bits.
from cython.parallel cimport prange

cdef extern from *:
    """
    #include <stddef.h>
    #include <string.h>
    typedef float snn_e8f __attribute__((vector_size(32)));

    static inline snn_e8f snn_e_ld(const float *p) { snn_e8f x; memcpy(&x, p, 32); return x; }

    /* 1 if all n floats are finite: x - x is 0 for finite x, NaN for NaN and infinities, and
       a NaN stays in its lane's sum. Four independent sums hide the add latency (as in
       _adam.pyx's scan). A count fused into the update instead made it 20-30 % slower where
       the arrays are in cache (3 more operations per vector). */
    static int snn_ema_finite(const float *g, ptrdiff_t n) {
        const snn_e8f zero = {0};
        snn_e8f a0 = zero, a1 = zero, a2 = zero, a3 = zero;
        float tail = 0.0f;
        ptrdiff_t i = 0;
        for (; i + 32 <= n; i += 32) {
            snn_e8f x0 = snn_e_ld(g + i), x1 = snn_e_ld(g + i + 8);
            snn_e8f x2 = snn_e_ld(g + i + 16), x3 = snn_e_ld(g + i + 24);
            a0 += x0 - x0; a1 += x1 - x1; a2 += x2 - x2; a3 += x3 - x3;
        }
        for (; i < n; i++) tail += g[i] - g[i];
        a0 = (a0 + a1) + (a2 + a3);
        for (int l = 0; l < 8; l++) tail += a0[l];
        return tail == 0.0f;
    }
    """
    bint snn_ema_finite(const float *g, Py_ssize_t n) nogil

cdef enum:
    CHUNK = 16384  # floats per work item


def all_finite(const float[::1] p, int n_threads):
    """True if every element of the flat float32 array ``p`` is finite."""
    cdef Py_ssize_t n = p.shape[0], nchunk = (n + CHUNK - 1) // CHUNK
    cdef Py_ssize_t c, lo, bad = 0
    if n == 0:
        return True
    if nchunk == 1:             # no parallel region for a small array
        return snn_ema_finite(&p[0], n)
    for c in prange(nchunk, nogil=True, schedule='static', num_threads=n_threads):
        lo = c * CHUNK
        bad += not snn_ema_finite(&p[lo], min(n - lo, <Py_ssize_t>CHUNK))
    return bad == 0


def ema_into(float[::1] avg, const float[::1] p, float decay, float one_minus_decay,
             int n_threads):
    """In place: avg = avg*decay + one_minus_decay*p (flat float32 arrays)."""
    cdef Py_ssize_t n = avg.shape[0], nchunk = (n + CHUNK - 1) // CHUNK
    cdef Py_ssize_t c, i, hi
    for c in prange(nchunk, nogil=True, schedule='static', num_threads=n_threads):
        hi = n if n < (c + 1) * CHUNK else (c + 1) * CHUNK
        for i in range(c * CHUNK, hi):
            avg[i] = avg[i] * decay + one_minus_decay * p[i]
