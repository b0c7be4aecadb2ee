# cython: language_level=3
"""Binding of the compiled inference engine (private; use :mod:`snnfast.engine`).

The C code is ``ext/snn_engine.h``. :func:`run` fills its plan from the stage tables that
``snnfast.engine`` builds and runs every sample's whole forward pass (all T steps, all
stages) with OpenMP over samples, the GIL released, one workspace per thread. The arguments
are validated by the Python wrapper; this module trusts them.
"""
from cython.parallel cimport parallel, prange
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc


cdef extern from "snn_engine.h" nogil:
    ctypedef struct snn_stage:
        int src_size, n_pre
        const int *pre
        int n_in, conv, n_out, O, H, W, kh, kw, OH, OW
        const int *ytap_ptr
        const int *ytap_k
        const int *ytap_o
        const int *xtap_ptr
        const int *xtap_k
        const int *xtap_o
        const float *w
        int w_stride, fan_out, block
        const float *bias
        int n_post
        const int *post
        int n_neur
        float beta, thr, scale
        int reset, period, phase, cumulative, incremental

    ctypedef struct snn_plan:
        int T, n_stages
        const snn_stage *st
        int P, hybrid, n_det
        const unsigned char *det_table
        uint64_t key
        const unsigned char *images
        const uint64_t *ids
        const float *frames
        int64_t *counts
        int64_t *last_counts
        int *list_idx
        float *list_val
        int64_t list_cap
        int64_t *upd_start
        int64_t *upd_count
        unsigned char *upd_reset
        unsigned char *rec_in
        unsigned char *rec_spk
        int rec_total
        const int *rec_off
        float *rec_v

    ctypedef struct snn_ws:
        pass

    snn_ws *snn_ws_new(const snn_plan *pl)
    void snn_ws_free(snn_ws *ws)
    void snn_run_item(const snn_plan *pl, snn_ws *ws, int k, int phase, Py_ssize_t i,
                      Py_ssize_t B)
    void snn_count_spikes(const snn_plan *pl, int k, Py_ssize_t b)
    int snn_n_blocks(const snn_stage *st)


cdef const int *_ints(const int[::1] a):
    return &a[0]


cdef const float *_floats(const float[::1] a):
    if a is None:
        return NULL
    return &a[0]


cdef void _fill_stage(snn_stage *s, dict d) except *:
    """One stage's table (see snnfast.engine._stage_table) into the C struct. The arrays stay
    alive in the caller's list for the duration of the run."""
    s.src_size, s.n_pre, s.n_in, s.conv, s.n_out = d["src_size"], d["n_pre"], d["n_in"], \
        d["conv"], d["n_out"]
    s.O, s.H, s.W, s.kh, s.kw, s.OH, s.OW = d["conv_shape"]
    s.pre, s.post, s.n_post = _ints(d["pre"]), _ints(d["post"]), d["n_post"]
    s.ytap_ptr, s.ytap_k, s.ytap_o = _ints(d["ytap_ptr"]), _ints(d["ytap_k"]), _ints(d["ytap_o"])
    s.xtap_ptr, s.xtap_k, s.xtap_o = _ints(d["xtap_ptr"]), _ints(d["xtap_k"]), _ints(d["xtap_o"])
    s.w, s.bias = _floats(d["w"]), _floats(d["bias"])
    s.w_stride, s.fan_out, s.block = d["w_stride"], d["fan_out"], d["block"]
    s.n_neur, s.beta, s.thr, s.scale = d["n_neur"], d["beta"], d["thr"], d["scale"]
    s.reset, s.period, s.phase = d["reset"], d["period"], d["phase"]
    s.cumulative, s.incremental = d["cumulative"], d["incremental"]


def run(list stages, int T, bint hybrid, int n_det, const unsigned char[:, ::1] det_table,
        uint64_t key, const unsigned char[:, ::1] images, const uint64_t[::1] ids,
        const float[:, :, ::1] frames, int64_t[:, :, ::1] counts, int64_t[:, ::1] last_counts,
        unsigned char[:, :, ::1] rec_in, unsigned char[:, :, ::1] rec_spk,
        float[:, ::1] rec_v, const int[::1] rec_off, int[:, ::1] list_idx,
        float[:, ::1] list_val, int64_t[:, ::1] upd_start, int64_t[:, ::1] upd_count,
        unsigned char[:, ::1] upd_reset, int n_threads):
    """Forward pass of ``counts.shape[0]`` samples; fills ``counts`` (B, 1 + 2 stages, T),
    ``last_counts`` (B, last stage's neurons), writes
    ``rec_spk`` (B, T, total neurons) and, unless None, ``rec_in`` (B, T, P) and ``rec_v``
    (B, total neurons). Inputs: ``images`` (B, P) and ``ids`` (B) for the Hybrid encoder,
    else ``frames`` (B, T, P); the unused ones are (1, 1[, 1]) dummies. Scratch of the
    column-blocked Linear stages: ``list_idx``, ``list_val`` (B, T x their largest input)
    and ``upd_*`` (B, T) (or (1, 1) dummies if there are none).

    The stages run one after the other on the whole batch (each reads the previous one's
    spikes from ``rec_spk``): OpenMP over samples; a column-blocked Linear stage first lists
    each sample's rows per update (over samples), then adds them over (column block,
    sample) pairs, blocks outermost: a thread keeps its blocks' weights in its cache."""
    cdef Py_ssize_t B = counts.shape[0], b, i, nb
    cdef int n_stages = len(stages), k, phase, failed = 0
    cdef snn_plan plan
    cdef snn_ws *ws = NULL
    cdef snn_stage *st = <snn_stage *>malloc(n_stages * sizeof(snn_stage))
    if st == NULL:
        raise MemoryError("snnfast.engine: cannot allocate the plan")
    try:
        for k in range(n_stages):
            _fill_stage(&st[k], stages[k])
        plan.T, plan.n_stages, plan.st = T, n_stages, st
        plan.P = images.shape[1] if hybrid else frames.shape[2]
        plan.hybrid, plan.n_det, plan.det_table, plan.key = hybrid, n_det, &det_table[0, 0], key
        plan.images, plan.ids, plan.frames = &images[0, 0], &ids[0], &frames[0, 0, 0]
        plan.counts, plan.last_counts = &counts[0, 0, 0], &last_counts[0, 0]
        plan.rec_in = NULL if rec_in is None else &rec_in[0, 0, 0]
        plan.rec_spk, plan.rec_total = &rec_spk[0, 0, 0], rec_spk.shape[2]
        plan.rec_v = NULL if rec_v is None else &rec_v[0, 0]
        plan.rec_off = &rec_off[0]
        plan.list_idx, plan.list_val, plan.list_cap = &list_idx[0, 0], &list_val[0, 0], \
            list_idx.shape[1]
        plan.upd_start, plan.upd_count = &upd_start[0, 0], &upd_count[0, 0]
        plan.upd_reset = &upd_reset[0, 0]
        for k in range(n_stages):
            for phase in range(2 if st[k].block > 0 else 1):
                nb = B if phase == 0 else snn_n_blocks(&st[k]) * B
                with nogil, parallel(num_threads=n_threads):
                    ws = snn_ws_new(&plan)       # per thread: its own allocations
                    for i in prange(nb, schedule="static"):
                        if ws == NULL:
                            failed += 1
                        else:
                            snn_run_item(&plan, ws, k, phase, i, B)
                    snn_ws_free(ws)
                if failed:
                    raise MemoryError("snnfast.engine: cannot allocate a thread's workspace")
            if st[k].block > 0:
                for b in prange(B, nogil=True, schedule="static", num_threads=n_threads):
                    snn_count_spikes(&plan, k, b)
    finally:
        free(st)
