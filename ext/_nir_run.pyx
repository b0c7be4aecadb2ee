# cython: language_level=3
"""Binding of the NIR runtime's compiled backend (private; use :func:`snnfast.nir.run`).

The C code is ``ext/snn_nir.h``. :func:`run` fills the plan from the operation tables that
``snnfast.nir.compiled`` builds and runs every sample (all T steps, all nodes) with OpenMP
over samples, the GIL released, one workspace per thread. The Python side validates
everything; this module trusts its arguments.
"""
from cython.parallel cimport parallel, prange
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free


cdef extern from "snn_nir.h" nogil:
    ctypedef struct nir_op:
        int kind, in_ "in", out, n_in, n_out
        const float *x
        const unsigned char *x8
        int n_src
        const int *src
        const float *w
        const float *bias
        int acc, C, H, W, O, OH, OW, kh, kw, cig, cog
        const int *ytap_ptr
        const int *ytap_k
        const int *ytap_o
        const int *xtap_ptr
        const int *xtap_k
        const int *xtap_o
        int avg, sh, sw, ph, pw
        const float *p
        int v, i, cuba, spiking, reset, uniform
        const float *beta
        const float *leak
        const float *c_x
        const float *c_i
        const float *a_s
        const float *g_s
        const float *thr
        const float *after
        const int64_t *fanout
        int64_t *eff
        unsigned char *bin
        int64_t *nz
        int64_t *mu

    ctypedef struct nir_rec:
        int src, n
        float *dst

    ctypedef struct nir_plan:
        int T, n_ops, n_rec
        const nir_op *ops
        const nir_rec *rec
        int arena, max_in, max_v

    ctypedef struct nir_ws:
        pass

    nir_ws *nir_ws_new(const nir_plan *pl)
    void nir_ws_free(nir_ws *ws)
    void nir_run_sample(const nir_plan *pl, nir_ws *ws, Py_ssize_t b)


cdef const float *_f(d, str key) except? NULL:
    cdef const float[::1] a
    v = d.get(key)
    if v is None:
        return NULL
    a = v
    return &a[0]


cdef const int *_i(d, str key) except? NULL:
    cdef const int[::1] a
    v = d.get(key)
    if v is None:
        return NULL
    a = v
    return &a[0]


cdef int64_t *_l(d, str key) except? NULL:
    cdef int64_t[::1] a
    v = d.get(key)
    if v is None:
        return NULL
    a = v.reshape(-1)
    return &a[0]


cdef void _fill(nir_op *o, dict d) except *:
    """One operation's table into the C struct. The arrays stay alive in the caller's list
    for the duration of the run (counters: C-contiguous arrays, written in place)."""
    cdef unsigned char[::1] bin_
    cdef const unsigned char[::1] x8
    cdef const int64_t[::1] fan
    o.kind, o.in_, o.out = d["kind"], d.get("in", 0), d.get("out", 0)
    o.n_in, o.n_out = d.get("n_in", 0), d["n_out"]
    o.x = _f(d, "x")
    o.x8 = NULL
    if d.get("x8") is not None:
        x8 = d["x8"]
        o.x8 = &x8[0]
    o.n_src, o.src = d.get("n_src", 0), _i(d, "src")
    o.w, o.bias, o.p = _f(d, "w"), _f(d, "bias"), _f(d, "p")
    o.acc = d.get("acc", 0)
    o.C, o.H, o.W, o.O, o.OH, o.OW, o.kh, o.kw, o.cig, o.cog = \
        d.get("shape", (0,) * 10)
    o.ytap_ptr, o.ytap_k, o.ytap_o = _i(d, "ytap_ptr"), _i(d, "ytap_k"), _i(d, "ytap_o")
    o.xtap_ptr, o.xtap_k, o.xtap_o = _i(d, "xtap_ptr"), _i(d, "xtap_k"), _i(d, "xtap_o")
    o.avg, o.sh, o.sw, o.ph, o.pw = d.get("pool", (0,) * 5)
    o.v, o.i = d.get("v", -1), d.get("i", -1)
    o.cuba, o.spiking, o.reset = d.get("cuba", 0), d.get("spiking", 0), d.get("reset", 0)
    o.uniform = d.get("uniform", 0)
    o.beta, o.leak, o.c_x = _f(d, "beta"), _f(d, "leak"), _f(d, "c_x")
    o.c_i, o.a_s, o.g_s = _f(d, "c_i"), _f(d, "a_s"), _f(d, "g_s")
    o.thr, o.after = _f(d, "thr"), _f(d, "after")
    o.fanout = NULL
    o.bin = NULL
    if d.get("fanout") is not None:
        fan = d["fanout"]
        o.fanout = &fan[0]
        bin_ = d["bin"].reshape(-1)
        o.bin = &bin_[0]
    o.eff, o.nz, o.mu = _l(d, "eff"), _l(d, "nz"), _l(d, "mu")


def run(list ops, list recs, int T, Py_ssize_t N, int arena, int max_in, int max_v,
        int n_threads):
    """Run ``N`` samples of ``T`` steps through ``ops`` (dicts, see
    ``snnfast.nir.compiled``); ``recs`` are ``(arena offset, size, float32 (N, T, size))``
    copied after every step. Counter arrays in the op dicts are written in place."""
    cdef int n_ops = len(ops), n_rec = len(recs), k, failed = 0
    cdef Py_ssize_t b
    cdef float[:, :, ::1] dst
    cdef nir_plan plan
    cdef nir_ws *ws = NULL
    cdef nir_op *o = <nir_op *>calloc(max(n_ops, 1), sizeof(nir_op))
    cdef nir_rec *r = <nir_rec *>calloc(max(n_rec, 1), sizeof(nir_rec))
    try:
        if o == NULL or r == NULL:
            raise MemoryError("snnfast.nir: cannot allocate the plan")
        for k in range(n_ops):
            _fill(&o[k], ops[k])
        for k in range(n_rec):
            dst = recs[k][2]
            r[k].src, r[k].n, r[k].dst = recs[k][0], recs[k][1], &dst[0, 0, 0]
        plan.T, plan.n_ops, plan.n_rec, plan.ops, plan.rec = T, n_ops, n_rec, o, r
        plan.arena, plan.max_in, plan.max_v = arena, max_in, max_v
        with nogil, parallel(num_threads=n_threads):
            ws = nir_ws_new(&plan)          # per thread: its own allocations
            for b in prange(N, schedule="dynamic", chunksize=1):
                if ws == NULL:
                    failed += 1
                else:
                    nir_run_sample(&plan, ws, b)
            nir_ws_free(ws)
        if failed:
            raise MemoryError("snnfast.nir: cannot allocate a thread's workspace")
    finally:
        free(o)
        free(r)
