# The training step's work on W1 in one pass over the blocked weights: the gradient
# g = c^T d (c: conv activity (B, nconv), mostly zero; d: dL/d hidden current (B, nhid)), the
# back product d @ W1^T with the old weights (optional), then the optimiser step in place.
#
# Called only through snnfast._convsnn_kernels (which validates every argument). d comes in
# two layouts: rows padded to SNN_W1_LD floats for the back product, which sweeps whole rows,
# and W1's block layout (nhid/bw, B, bw) for the gradient, which works block by block: there
# the bw columns of all samples are contiguous, where in (B, nhid) they would be nhid floats
# apart (4 KiB for the default preset) and all fall in one L1 set. The sizes (nconv, nhid,
# npos) are the arrays', from the network description.
# Why fused: done separately these are two dense sgemms (151 M multiply-adds each at B = 64),
# a 9 MB gradient written and read back, and an optimiser pass; here W1 (and Adam's m, v)
# stream through the cache once, and the gradient of a row segment is summed in registers
# from the few samples whose conv neuron was active (~10-25 % of them).
#
# The back product is computed only where the caller needs it: entry (b, i) of conv neuron
# i = channel*npos + position p only if act[b, p] (the surrogate gradient needs it only where
# the 5x5 input patch at p is nonzero: ~55 % on MNIST); elsewhere it is 0. The sum over all
# samples, total[i] = (sum_b d[b]) . W1[i], is computed whole, as one more row of products.
#
# With the back product (Adam), work items are tiles of rows of W1 (all of their blocks), which
# the back product needs whole; without it (SGD), items are runs of rows within one block,
# so that block's columns of d stay in L1 (~25 % faster). Either way each weight is updated by
# exactly one thread in a fixed order: results do not depend on the thread count or schedule.
# Float order (-ffp-contract=off: every product and sum is rounded on its own):
#   g[i, j]    = sum over b ascending with c[b, i] != 0 of c[b, i] * d[b, j]
#   back[b, i] = lane sums s_l = sum over j = l (mod 8) ascending of d[b, j] * W1[i, j],
#                then ((s_0 + s_1) + s_2) + ... + s_7
#   total[i]   = the same with d[b] replaced by D = ((d[0] + d[1]) + d[2]) + ... + d[B-1]
# which tests/ reproduce exactly in NumPy.
from cython.parallel cimport prange, threadid
from libc.stdlib cimport calloc, free, malloc
from libc.stdint cimport int32_t, int64_t, uint8_t

cdef extern from "snn_adam8.h":     # Adam's formula, shared with _adam.pyx
    pass

cdef extern from "snn_convsnn_w1.h":
    ctypedef struct snn_w1_opt:
        int adam
        float b1, omb1, b2, omb2, step_size, rbc2, eps
        float rate, decay
    ctypedef struct snn_w1_scratch:
        pass
    ctypedef struct snn_w1_geom:
        int nconv, nhid, npos, ld
    snn_w1_scratch *snn_w1_scratch_new(int B, const snn_w1_geom *g, int bw) nogil
    void snn_w1_scratch_free(snn_w1_scratch *s) nogil
    int64_t snn_w1_tile(float *W, float *M, float *V, int nblk, int bw, int i0, const float *c,
                        const float *d, const float *dc, int B, const uint8_t *act,
                        float *back, float *total, snn_w1_scratch *s,
                        const snn_w1_opt *o, const snn_w1_geom *g) nogil
    void snn_w1_nonzeros(const float *c, int B, int i0, int nr, int32_t *nzb, float *nzc,
                         int *nn, int nconv) nogil
    int64_t snn_w1_block(float *W, float *M, float *V, int bw, int k, int i0, int i1,
                         const float *d, int B, const int32_t *nzb, const float *nzc,
                         const int *nn, const snn_w1_opt *o, int nconv) nogil
    int snn_w1_ld(int nhid) nogil
    int SNN_W1_ROWS


cdef int64_t _run_tiles(float[:, :, ::1] W1b, float *m, float *v, const float[:, ::1] c,
                        const float[:, :, ::1] d, const float *dc, const uint8_t *act,
                        float *back, float *total, snn_w1_opt *o, const snn_w1_geom *g,
                        int n_threads) except -1:
    cdef int nblk = <int>W1b.shape[0], bw = <int>W1b.shape[2], B = <int>c.shape[0]
    cdef int ntile = <int>W1b.shape[1] // SNN_W1_ROWS
    cdef int t, i, n_alloc = max(n_threads, 1)
    cdef int64_t nonfinite = 0
    cdef snn_w1_scratch **s = <snn_w1_scratch **>calloc(n_alloc, sizeof(snn_w1_scratch *))
    if s == NULL:
        raise MemoryError("W1 update: cannot allocate per-thread scratch")
    try:
        for i in range(n_alloc):
            s[i] = snn_w1_scratch_new(B, g, bw)
            if s[i] == NULL:
                raise MemoryError("W1 update: cannot allocate per-thread scratch")
        # dynamic: a neighbour stealing a core must not leave half the tiles waiting
        for t in prange(ntile, nogil=True, schedule='dynamic', chunksize=4,
                        num_threads=n_alloc):
            nonfinite += snn_w1_tile(&W1b[0, 0, 0], m, v, nblk, bw, t * SNN_W1_ROWS,
                                     &c[0, 0], &d[0, 0, 0], dc, B, act, back, total,
                                     s[threadid()], o, g)
    finally:
        for i in range(n_alloc):
            snn_w1_scratch_free(s[i])
        free(s)
    return nonfinite


cdef int64_t _run_blocks(float[:, :, ::1] W1b, const float[:, ::1] c, const float[:, :, ::1] d,
                         snn_w1_opt *o, int n_threads) except -1:
    # Without the back product nothing ties the work to rows of W1, so it runs block by
    # block (items: a quarter of a block's rows), which keeps d's block in L1
    cdef int nblk = <int>W1b.shape[0], bw = <int>W1b.shape[2], B = <int>c.shape[0]
    cdef int nconv = <int>W1b.shape[1]
    cdef int nq = 4, rows = nconv // 4, p, r, t
    cdef size_t cap = <size_t>nconv * max(B, 1)
    cdef int64_t nonfinite = 0
    cdef int32_t *nzb = <int32_t *>malloc(cap * sizeof(int32_t))
    cdef float *nzc = <float *>malloc(cap * sizeof(float))
    cdef int *nn = <int *>malloc(nconv * sizeof(int))
    try:
        if nzb == NULL or nzc == NULL or nn == NULL:
            raise MemoryError("W1 update: cannot allocate the nonzero lists")
        with nogil:
            for t in prange(nconv // SNN_W1_ROWS, schedule='static', num_threads=n_threads):
                r = t * SNN_W1_ROWS
                snn_w1_nonzeros(&c[0, 0], B, r, SNN_W1_ROWS, nzb + <size_t>r * B,
                                nzc + <size_t>r * B, nn + r, nconv)
            for p in prange(nblk * nq, schedule='dynamic', num_threads=n_threads):
                r = (p % nq) * rows
                nonfinite += snn_w1_block(&W1b[0, 0, 0], NULL, NULL, bw, p // nq, r, r + rows,
                                          &d[0, 0, 0], B, nzb + <size_t>r * B,
                                          nzc + <size_t>r * B, nn + r, o, nconv)
    finally:
        free(nzb)
        free(nzc)
        free(nn)
    return nonfinite


def w1_adam_into(float[:, :, ::1] W1b, float[:, :, ::1] m, float[:, :, ::1] v,
                 const float[:, ::1] c, const float[:, :, ::1] d, float[:, ::1] dc,
                 const uint8_t[:, ::1] act, float[:, ::1] back, float[::1] total,
                 float beta1, float one_minus_beta1, float beta2, float one_minus_beta2,
                 float step_size, float rbc2, float eps, int n_threads):
    """Gradient, back product into ``back`` (where ``act``), ``total`` and Adam step (see
    snnfast._convsnn_kernels).

    ``d`` is in W1's block layout, ``dc`` the same values in its first B rows of
    ``row_stride(nhid)`` floats (the first nhid used; the rest zero), then two rows of
    zeros: row B receives the sum of the B rows. ``act`` (B, npos): nonzero where the back
    product of a position is wanted (conv neuron i is at position i % npos). The sizes are
    the arrays' (nconv = W1b.shape[1], nhid = W1b.shape[0] * W1b.shape[2]); the caller
    checks that they chain. Returns a count that is nonzero if the gradient had NaN or
    infinite elements.
    """
    cdef snn_w1_opt o
    cdef snn_w1_geom g
    cdef Py_ssize_t B = c.shape[0], b, j
    g.nconv = <int>W1b.shape[1]
    g.nhid = <int>(W1b.shape[0] * W1b.shape[2])
    g.npos = <int>act.shape[1]
    g.ld = snn_w1_ld(g.nhid)
    if dc.shape[1] != g.ld or dc.shape[0] != B + 2:
        raise ValueError(f"dc must have shape (B + 2, {g.ld})")
    if (act.shape[0] != B or g.npos < 2 or g.npos % 2 or g.nconv % g.npos
            or back.shape[0] != B or back.shape[1] != g.nconv or total.shape[0] != g.nconv):
        raise ValueError("act, back or total has the wrong shape")
    with nogil:
        for j in range(g.ld):           # D = ((d[0] + d[1]) + d[2]) + ..., in float32
            dc[B, j] = dc[0, j]
        for b in range(1, B):
            for j in range(g.ld):
                dc[B, j] = dc[B, j] + dc[b, j]
    o.adam = 1
    o.b1, o.omb1, o.b2, o.omb2 = beta1, one_minus_beta1, beta2, one_minus_beta2
    o.step_size, o.rbc2, o.eps = step_size, rbc2, eps
    o.rate, o.decay = 0, 1
    return _run_tiles(W1b, &m[0, 0, 0], &v[0, 0, 0], c, d, &dc[0, 0], &act[0, 0], &back[0, 0],
                      &total[0], &o, &g, n_threads)


def w1_sgd_into(float[:, :, ::1] W1b, const float[:, ::1] c, const float[:, :, ::1] d,
                float rate, float decay, int n_threads):
    """Gradient and ``W1 = (W1 - rate*g) * decay`` (see snnfast._convsnn_kernels).

    Returns a count that is nonzero if the gradient had NaN or infinite elements.
    """
    cdef snn_w1_opt o
    o.adam = 0
    o.b1 = o.omb1 = o.b2 = o.omb2 = o.step_size = o.rbc2 = o.eps = 0
    o.rate, o.decay = rate, decay
    return _run_blocks(W1b, c, d, &o, n_threads)


def row_stride(int nhid):
    """Row length (floats) of the padded copy of d (``nhid`` columns) that
    :func:`w1_adam_into` reads."""
    return snn_w1_ld(nhid)
