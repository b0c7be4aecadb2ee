# Spike-driven FC1 (conv -> hidden) + hidden LIF for all T steps.
#
# Called only through snnfast._convsnn_kernels (which validates every argument).
# First each sample's plan is made once (OpenMP over samples): for every hidden update, the
# W1 rows its drive accumulator gets, packed into one list per sample, and whether it is
# cleared first. Directly, these are the rows of the conv spikes since the previous update
# (step ascending, j ascending: the contract's order). Incrementally (windows of <= 2 steps,
# see hidden_forward), the accumulator keeps the previous drive and only the difference is
# added and subtracted: a conv neuron that fires in two consecutive windows, as most active
# ones do, costs nothing; on MNIST that is a third fewer rows. Either way the float32 sums
# are the oracle's, bit for bit, for any thread count.
# Then W1, stored in blocks of bw columns ([nhid/bw][nconv][bw]), is swept: OpenMP runs over
# (block, group of 4 samples) items, one whole block per hand-out, so a thread runs all
# samples through a block while it stays in its L2 cache. Per sample the bw-wide accumulator
# lives in vector registers while the plan's rows are added. Four samples run in lockstep:
# their independent sums hide the add latency, and a row that several of them need (their
# sorted lists advance through j at similar speed) is fetched from L2 once and then found
# in L1.
#
# Measured on the 2-core AVX2 EPYC (512 KiB L2, thread CPU time, MNIST, bw 32): ~1 vector
# add per cycle, about the rate at which L2 delivers rows (32 B/cycle); 4-sample lockstep
# was ~10-15 % faster than 2-sample interleave, software prefetch gave nothing measurable,
# nor did grouping the samples of a batch by spike count. The incremental plan (bitsets of
# the steps, differences word by word) costs ~7 us per sample on one thread more than the
# direct one; FC1 as a whole is 15-25 % faster with it on the default preset.
from cython.parallel cimport prange, threadid
import numpy as np
from libc.stdint cimport uint8_t, uint16_t, int32_t, int64_t, uint64_t

cdef extern from "snn_convsnn_fc.h":
    void snn_hid_group(int bw, const float *W, const float *bias, const int32_t *upd_t, int U,
                       float beta, float thr, float scale, int reset, int ns,
                       const uint16_t *lists, const int64_t *off, const int32_t *ops,
                       int32_t *nh, float *ih, int32_t *part, uint8_t *rec, int T,
                       int nhid) nogil
    void snn_hid_plan(const uint16_t *idx, const int32_t *cnt, const int32_t *upd_t, int U,
                      int mode, uint16_t *out, int32_t *ops, uint64_t *bits, uint16_t *ad,
                      uint16_t *sb, int nconv) nogil
    int64_t snn_count_bad(const uint16_t *idx, const int32_t *cnt, int T, int nconv) nogil
    int snn_nwords(int nconv) nogil
    int snn_all_finite(const float *w, size_t n) nogil
    int SNN_VW


def vector_width():
    """Floats per vector register the kernels were compiled for (8: AVX2, 16: AVX-512)."""
    return SNN_VW


def hidden_forward_into(const uint16_t[:, :, ::1] spk_idx, const int32_t[:, ::1] spk_cnt,
                        const float[:, :, ::1] W1b, const float[::1] b1,
                        const uint8_t[::1] is_update, float beta, float thr, float scale,
                        int reset, int mode, int32_t[:, ::1] n_h, float[:, ::1] ih_sum,
                        int32_t[:, :, ::1] part, int64_t[:, ::1] hid_count,
                        int64_t[:, ::1] fc1_adds, uint8_t[:, :, ::1] rec, bint record,
                        int n_threads):
    """Fill the preallocated outputs (see snnfast._convsnn_kernels.hidden_forward).

    ``mode``: 0 cumulative drive, 1 window, 2 window with incremental updates.
    ``part`` (zeroed, one count per block, sample and step) is scratch; ``n_h``, ``ih_sum``,
    ``hid_count`` and ``fc1_adds`` are written in full (they may be uninitialised).
    The sizes are the arrays': ``nconv = spk_idx.shape[2]`` conv neurons (the rows of W1b),
    ``nhid = n_h.shape[1]`` hidden neurons (``W1b.shape[0] * W1b.shape[2]``; checked by the
    caller).
    Returns ``(n_bad, n_nonfinite_blocks)``: ``n_bad`` counts spike indices >= nconv and
    spike counts outside [0, nconv]; if it is nonzero nothing is computed. With non-finite
    blocks of W1b the outputs are garbage and must be discarded.
    """
    cdef Py_ssize_t B = spk_cnt.shape[0], T = spk_cnt.shape[1]
    cdef Py_ssize_t nblk = W1b.shape[0], bw = W1b.shape[2]
    cdef int nconv = <int>spk_idx.shape[2], nhid = <int>n_h.shape[1]
    cdef Py_ssize_t ngroup = (B + 3) // 4
    cdef Py_ssize_t p, k, b
    cdef int last = -1, t, u, U = 0, nthr = max(n_threads, 1)
    cdef int64_t bad = 0, total, cap = 0, n
    cdef int nonfinite = 0
    cdef uint8_t *rec_p
    for t in range(T):
        if is_update[t]:
            last = t
            U += 1
    if last < 0 or B == 0:
        return 0, 0
    # Each sample's plan: the rows every update adds (and, incrementally, subtracts), packed
    # one sample after the other: at most its spikes up to the last update (counts clamped
    # to [0, nconv] here: out-of-range ones are caught below, before anything is computed)
    cdef int32_t[::1] upd_t = np.flatnonzero(np.asarray(is_update)).astype(np.int32)
    cdef int64_t[::1] off = np.zeros(B + 1, np.int64)
    for b in range(B):
        n = 0
        for t in range(last + 1):
            n += min(max(spk_cnt[b, t], 0), nconv)
        off[b + 1] = off[b] + n
        cap = max(cap, n)
    cdef uint16_t[::1] lists = np.empty(off[B] + 1, np.uint16)   # + 1: &lists[off[B]] stays inside
    cdef int32_t[:, :, ::1] ops = np.empty((B, U, 3), np.int32)
    # per-thread scratch: the spike bitsets of the steps and the addition and subtraction lists
    cdef uint64_t[:, ::1] bits = np.empty((nthr, (last + 1) * snn_nwords(nconv) if mode == 2
                                           else 1), np.uint64)
    cdef uint16_t[:, ::1] lbuf = np.empty((nthr, 2 * (cap + 1)), np.uint16)
    cdef int64_t nb
    with nogil:
        for b in prange(B, schedule='static', num_threads=n_threads):
            # cheap guard (one pass over the sample's lists, which the plan then finds in
            # cache) so that the plan and the hot loop can index unchecked
            nb = snn_count_bad(&spk_idx[b, 0, 0], &spk_cnt[b, 0], <int>T, nconv)
            bad += nb
            if nb == 0:
                snn_hid_plan(&spk_idx[b, 0, 0], &spk_cnt[b, 0], &upd_t[0], U, mode,
                             &lists[off[b]], &ops[b, 0, 0], &bits[threadid(), 0],
                             &lbuf[threadid(), 0], &lbuf[threadid(), cap + 1], nconv)
    if bad:
        return bad, 0
    with nogil:
        # block-major (block, group of 4 samples) items handed out one whole block at a time:
        # a thread runs all samples through a block while it sits in its L2 cache, and the
        # dynamic hand-out keeps both cores busy when other processes steal one of them
        for p in prange(nblk * ngroup, schedule='dynamic', chunksize=ngroup,
                        num_threads=n_threads):
            k = p // ngroup
            b = 4 * (p % ngroup)
            if b == 0:
                # each block's first item is run by exactly one thread: every block is checked
                # once, and the check streams the block into this core's cache before use
                nonfinite += 1 - snn_all_finite(&W1b[k, 0, 0], nconv * bw)
            rec_p = &rec[b, 0, k * bw] if record else NULL
            snn_hid_group(<int>bw, &W1b[k, 0, 0], &b1[k * bw], &upd_t[0], U, beta, thr, scale,
                          reset, 4 if b + 4 <= B else <int>(B - b), &lists[0], &off[b],
                          &ops[b, 0, 0], &n_h[b, k * bw], &ih_sum[b, k * bw], &part[k, b, 0],
                          rec_p, <int>T, nhid)
    # per-step totals: hidden spikes summed over the blocks; FC1 row operations (the rows
    # the plan adds and subtracts, x nhid) at the update that does them
    for b in range(B):
        for t in range(T):
            total = 0
            for k in range(nblk):
                total += part[k, b, t]
            hid_count[b, t] = total
            fc1_adds[b, t] = 0
        for u in range(U):
            fc1_adds[b, upd_t[u]] = (<int64_t>ops[b, u, 1] + ops[b, u, 2]) * nhid
    return 0, nonfinite
