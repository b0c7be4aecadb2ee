# Fused Adam step (one pass over param, grad, m, v instead of NumPy's ~10 temporaries).
#
# Called only through snnfast._convsnn_kernels.adam_step(_many), which compute the
# bias-correction constants. Elementwise, so any chunking gives the same bits.
# adam_step_many_into validates its arrays itself, through NumPy's C API: a model steps its
# five small parameters every batch, and validating 20 arrays in Python cost ~0.2 ms of a
# ~13 ms training step, five times the update itself.
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cython.parallel cimport prange
cimport numpy as cnp

cnp.import_array()

cdef extern from "snn_adam8.h":     # the vector formula, shared with _convsnn_w1.pyx
    pass

cdef extern from "snn_finite.h":    # the finiteness scan, shared with _ema.pyx
    bint _all_finite "snn_all_finite"(const float *g, Py_ssize_t n) nogil

cdef extern from "snn_adam.h":
    Py_ssize_t snn_adam_chunk(float *p, const float *g, float *m, float *v, Py_ssize_t n, float b1,
                        float omb1, float b2, float omb2, float step_size, float rbc2,
                        float eps) nogil

cdef enum:
    CHUNK = 16384  # floats per work item: 64 KiB per stream, amortises the scheduling


cdef Py_ssize_t _adam_flat(float *p, const float *g, float *m, float *v, Py_ssize_t n,
                           float b1, float omb1, float b2, float omb2, float step_size,
                           float rbc2, float eps, int n_threads) noexcept nogil:
    cdef Py_ssize_t nchunk = (n + CHUNK - 1) // CHUNK
    cdef Py_ssize_t c, lo, cnt, nonfinite = 0
    if nchunk == 1:             # no parallel region for a small array
        return snn_adam_chunk(p, g, m, v, n, b1, omb1, b2, omb2, step_size, rbc2, eps)
    for c in prange(nchunk, schedule='static', num_threads=n_threads):
        lo = c * CHUNK
        cnt = n - lo if n - lo < CHUNK else CHUNK
        nonfinite += snn_adam_chunk(p + lo, g + lo, m + lo, v + lo, cnt, b1, omb1, b2, omb2,
                                    step_size, rbc2, eps)
    return nonfinite


cdef cnp.ndarray _checked(object a, str name, Py_ssize_t i, cnp.ndarray like, bint write):
    """``a`` as an ndarray if float32, C-contiguous, writeable if ``write`` and of
    ``like``'s shape (unless ``like`` is None); else a TypeError or ValueError naming it."""
    if not cnp.PyArray_Check(a):
        raise TypeError(f"{name}[{i}] must be a numpy.ndarray, got {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) != cnp.NPY_FLOAT32:
        raise ValueError(f"{name}[{i}] must have dtype float32, got {(<object>arr).dtype}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(f"{name}[{i}] must be C-contiguous (use numpy.ascontiguousarray)")
    if write and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{name}[{i}] must be writeable")
    if like is not None and not cnp.PyArray_SAMESHAPE(arr, like):
        raise ValueError(f"{name}[{i}] must have the shape of params[{i}] {(<object>like).shape}, "
                         f"got {(<object>arr).shape}")
    return arr


cdef tuple _LISTS = ("params", "grads", "ms", "vs")


cdef int _overlap(const char **lo, const char **hi, Py_ssize_t n, Py_ssize_t *a,
                  Py_ssize_t *b) noexcept nogil:
    """1 and the slots ``a < b`` of the first two byte ranges ``[lo, hi)`` that overlap while
    at least one is written, else 0. Slot ``4*i + k`` is entry ``i`` of list ``k``
    (params, grads, ms, vs); only grads (k = 1) are read-only, so a gradient may be shared.
    Every array is C-contiguous, so its byte range is exactly the memory it uses: the test
    is exact (np.shares_memory's general search is not needed). O(n^2): 190 pairs for the
    model's 5 entries."""
    cdef Py_ssize_t x, y
    for x in range(n):
        if lo[x] == hi[x]:          # an empty array uses no memory
            continue
        for y in range(x + 1, n):
            if (x % 4 != 1 or y % 4 != 1) and lo[x] < hi[y] and lo[y] < hi[x]:
                a[0], b[0] = x, y
                return 1
    return 0


cdef _check_disjoint(list arrs):
    """ValueError naming two arrays of the (validated) entries ``arrs`` that share memory
    while the kernel writes one of them: the result would depend on the order of the
    updates (or silently use one moment for two parameters)."""
    cdef Py_ssize_t n = 4 * len(arrs), i, k, a = 0, b = 0
    cdef const char **lo = <const char **>PyMem_Malloc(2 * max(n, 1) * sizeof(char *))
    if lo == NULL:
        raise MemoryError()
    cdef const char **hi = lo + n
    cdef cnp.ndarray arr
    cdef int found
    try:
        for i in range(len(arrs)):
            for k in range(4):
                arr = <cnp.ndarray>arrs[i][k]
                lo[4 * i + k] = <const char *>cnp.PyArray_DATA(arr)
                hi[4 * i + k] = lo[4 * i + k] + cnp.PyArray_NBYTES(arr)
        found = _overlap(lo, hi, n, &a, &b)
    finally:
        PyMem_Free(lo)
    if found:
        x, y = f"{_LISTS[a % 4]}[{a // 4}]", f"{_LISTS[b % 4]}[{b // 4}]"
        raise ValueError(f"{x} and {y} share memory: params, ms and vs are updated in place, "
                         "so each must be distinct from (and not overlap) every other array")


def adam_step_many_into(list params, list grads, list ms, list vs, float beta1,
                        float one_minus_beta1, float beta2, float one_minus_beta2,
                        float step_size, float rbc2, float eps, int n_threads,
                        bint check_finite):
    """Validate the four lists of arrays, then Adam in place on each (param, grad, m, v).

    Every array written (params, ms, vs) must not share memory with any other array of any
    entry. With ``check_finite`` a non-finite gradient raises before anything changes.
    Returns the number of non-finite gradient elements met (their parameters are now NaN).
    """
    cdef Py_ssize_t n = len(params), i, nonfinite = 0
    if not len(grads) == len(ms) == len(vs) == n:
        raise ValueError("params, grads, ms and vs must have the same length")
    cdef list arrs = []
    cdef cnp.ndarray p, g, m, v
    for i in range(n):
        p = _checked(params[i], "params", i, None, True)
        g = _checked(grads[i], "grads", i, p, False)
        m = _checked(ms[i], "ms", i, p, True)
        v = _checked(vs[i], "vs", i, p, True)
        arrs.append((p, g, m, v))
    _check_disjoint(arrs)       # the kernel reads one array while writing another
    if check_finite:
        for i in range(n):
            g = <cnp.ndarray>arrs[i][1]
            if not _all_finite(<float *>cnp.PyArray_DATA(g), cnp.PyArray_SIZE(g)):
                raise ValueError(f"grads[{i}] contains NaN or infinite values")
    for p, g, m, v in arrs:
        with nogil:
            nonfinite += _adam_flat(<float *>cnp.PyArray_DATA(p), <float *>cnp.PyArray_DATA(g),
                                    <float *>cnp.PyArray_DATA(m), <float *>cnp.PyArray_DATA(v),
                                    cnp.PyArray_SIZE(p), beta1, one_minus_beta1, beta2,
                                    one_minus_beta2, step_size, rbc2, eps, n_threads)
    return nonfinite
