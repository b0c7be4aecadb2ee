# Running average of the weights, avg = avg*d + (1-d)*p, in one pass (NumPy needs three and a
# 9 MB temporary for W1). Each product and the sum are rounded on their own
# (-ffp-contract=off): the same bits as ``avg *= d; avg += (1-d) * p`` in NumPy float32.
#
# Called only through snnfast._convsnn_kernels.ema_step (which validates the arguments).
# Elementwise, so any chunking gives the same bits.
from cython.parallel cimport prange

cdef extern from "snn_finite.h":    # the finiteness scan, shared with _adam.pyx
    bint snn_all_finite(const float *g, Py_ssize_t n) nogil

cdef enum:
    CHUNK = 16384  # floats per work item


def all_finite(const float[::1] p, int n_threads):
    """True if every element of the flat float32 array ``p`` is finite."""
    cdef Py_ssize_t n = p.shape[0], nchunk = (n + CHUNK - 1) // CHUNK
    cdef Py_ssize_t c, lo, bad = 0
    if n == 0:
        return True
    if nchunk == 1:             # no parallel region for a small array
        return snn_all_finite(&p[0], n)
    for c in prange(nchunk, nogil=True, schedule='static', num_threads=n_threads):
        lo = c * CHUNK
        bad += not snn_all_finite(&p[lo], min(n - lo, <Py_ssize_t>CHUNK))
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
