# Spike-driven FC1 (conv -> hidden) + hidden LIF for all T steps.
#
# Called only through snnfast._convsnn_kernels (which validates every argument).
# W1 is stored in blocks of bw columns ([1024/bw][2304][bw]); OpenMP runs over (block, sample
# pair) items, one whole block per hand-out, so a thread sweeps all samples through a block
# that stays in its L2 cache. Per sample the bw-wide drive accumulator lives in vector
# registers while every conv spike adds its row (step ascending, j ascending: the contract's
# order, so every column's float32 sum is the oracle's, bit for bit, for any thread count).
# Four samples run in lockstep: their independent sums hide the add latency, and a row that
# several of them need (their sorted lists advance through j at similar speed) is fetched
# from L2 once and then found in L1.
#
# Measured on the 2-core AVX2 EPYC (512 KiB L2, thread CPU time, MNIST, bw 32): ~1 vector
# add per cycle, about the rate at which L2 delivers rows (32 B/cycle); 4-sample lockstep
# was ~10-15 % faster than 2-sample interleave, software prefetch gave nothing measurable.
from cython.parallel cimport prange
from libc.stdint cimport uint8_t, uint16_t, int32_t, int64_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__AVX512F__)
    #define SNN_VW 16
    #else
    #define SNN_VW 8
    #endif
    /* Generic vectors: one hardware register each (AVX-512: 16 lanes, else 8). */
    typedef float snn_vf __attribute__((vector_size(SNN_VW * 4)));
    typedef int32_t snn_vi __attribute__((vector_size(SNN_VW * 4)));

    static inline snn_vf snn_ldv(const float *p) { snn_vf x; memcpy(&x, p, sizeof x); return x; }
    static inline void snn_stv(float *p, snn_vf x) { memcpy(p, &x, sizeof x); }
    static inline void snn_stvi(int32_t *p, snn_vi x) { memcpy(p, &x, sizeof x); }
    static inline snn_vf snn_sel(snn_vi m, snn_vf a, snn_vf b) {  /* m ? a : b */
        return (snn_vf)(((snn_vi)a & m) | ((snn_vi)b & ~m));
    }

    typedef struct {
        const float *W;          /* this block of W1: 2304 x bw */
        const float *bias;       /* b1 + block offset */
        const uint8_t *upd;      /* T: 1 on hidden-update steps */
        int last;                /* last update step: later spikes never reach the layer */
        float beta, thr, scale;
        int reset, window;       /* reset: 0 halve, 1 subtract, 2 zero */
    } snn_hid_cfg;

    typedef struct {
        const uint16_t *idx;     /* the sample's spike lists: T x 2304 */
        const int32_t *cnt;      /* T */
        int32_t *nh;             /* n_h row + block offset */
        float *ih;               /* ih_sum row + block offset */
        int32_t *part;           /* T hidden-spike counts of this (block, sample) */
        uint8_t *rec;            /* NULL, or spikes row + block offset (stride 1024 per step) */
    } snn_hid_smp;

    /* The hidden LIF update of one sample's tile (always inlined so the tile arrays, indexed
       by constants after unrolling, can live in registers). */
    static inline __attribute__((always_inline)) void snn_hid_update(
            snn_vf *acc, snn_vf *v, snn_vf *ihs, snn_vi *nh, int nv, const snn_hid_cfg *c,
            const snn_hid_smp *s, int t) {
        const snn_vf zero = {0}, one = zero + 1.0f;
        const snn_vf vbeta = one * c->beta, vthr = one * c->thr, vscale = one * c->scale;
        snn_vi cnt = (snn_vi)zero;
        for (int i = 0; i < nv; i++) {
            snn_vf cur = acc[i] + snn_ldv(c->bias + i * SNN_VW);
            cur = cur * vscale;
            ihs[i] += cur;
            snn_vf vv = vbeta * v[i];
            vv = vv + cur;
            snn_vi m = vv > vthr;
            nh[i] -= m;
            cnt -= m;
            if (c->reset == 0) vv = snn_sel(m, vv * (one * 0.5f), vv);
            else if (c->reset == 1) vv = snn_sel(m, vv - vthr, vv);
            else vv = snn_sel(m, zero, vv);
            v[i] = vv;
            if (c->window) acc[i] = zero;
            if (s->rec) {
                uint8_t *r = s->rec + (size_t)t * 1024 + i * SNN_VW;
                for (int l = 0; l < SNN_VW; l++) r[l] = (uint8_t)(m[l] & 1);
            }
        }
        int32_t total = 0;
        for (int l = 0; l < SNN_VW; l++) total += cnt[l];
        s->part[t] = total;
    }

    #define SNN_ADD_ROW(ACC, J, BW) do {                                                        \
        const float *r_ = W + (size_t)(J) * (BW);                                               \
        for (int i_ = 0; i_ < NV; i_++) ACC[i_] += snn_ldv(r_ + i_ * SNN_VW);                  \
    } while (0)

    /* One block for one or two samples (s1 may be NULL). A macro so that NV is a compile-time
       constant. Two samples interleave their row adds: per column each sample's sum is still
       sequential (the contract's order), but the two independent dependency chains hide the
       add latency that a single narrow tile would be bound by. */
    #define SNN_DEF_HID(BW)                                                                     \
    static void snn_hid_##BW(const snn_hid_cfg *c, const snn_hid_smp *s0,                      \
                             const snn_hid_smp *s1) {                                           \
        enum { NV = (BW) / SNN_VW };                                                            \
        const float *const W = c->W;                                                            \
        const snn_vf zero = {0};                                                                \
        snn_vf a0[NV], a1[NV], v0[NV], v1[NV], i0[NV], i1[NV];                                  \
        snn_vi h0[NV], h1[NV];                                                                  \
        for (int i = 0; i < NV; i++) {                                                          \
            a0[i] = a1[i] = v0[i] = v1[i] = i0[i] = i1[i] = zero;                               \
            h0[i] = h1[i] = (snn_vi)zero;                                                       \
        }                                                                                       \
        for (int t = 0; t <= c->last; t++) {                                                    \
            const uint16_t *x0 = s0->idx + (size_t)t * 2304;                                    \
            const int n0 = s0->cnt[t];                                                          \
            int k = 0;                                                                          \
            if (s1) {                                                                           \
                const uint16_t *x1 = s1->idx + (size_t)t * 2304;                                \
                const int n1 = s1->cnt[t], nm = n0 < n1 ? n0 : n1;                             \
                for (; k < nm; k++) { SNN_ADD_ROW(a0, x0[k], BW); SNN_ADD_ROW(a1, x1[k], BW); } \
                for (int k1 = k; k1 < n1; k1++) SNN_ADD_ROW(a1, x1[k1], BW);                    \
            }                                                                                   \
            for (; k < n0; k++) SNN_ADD_ROW(a0, x0[k], BW);                                     \
            if (!c->upd[t]) continue;                                                           \
            snn_hid_update(a0, v0, i0, h0, NV, c, s0, t);                                       \
            if (s1) snn_hid_update(a1, v1, i1, h1, NV, c, s1, t);                               \
        }                                                                                       \
        for (int i = 0; i < NV; i++) {                                                          \
            snn_stvi(s0->nh + i * SNN_VW, h0[i]);                                               \
            snn_stv(s0->ih + i * SNN_VW, i0[i]);                                                \
            if (s1) { snn_stvi(s1->nh + i * SNN_VW, h1[i]); snn_stv(s1->ih + i * SNN_VW, i1[i]); } \
        }                                                                                       \
    }
    SNN_DEF_HID(16)
    SNN_DEF_HID(32)
    SNN_DEF_HID(64)
    SNN_DEF_HID(128)
    SNN_DEF_HID(256)

    /* Four samples in lockstep (all non-NULL): while all four lists last, the k-th spikes of
       the four samples are added together, so rows that several samples share (the lists
       advance through j at similar speed) come from L1 after the first load from L2; the
       rest is finished two samples at a time. */
    #define SNN_DEF_HID4(BW)                                                                    \
    static void snn_hid4_##BW(const snn_hid_cfg *c, const snn_hid_smp *s) {                    \
        enum { NV = (BW) / SNN_VW };                                                            \
        const float *const W = c->W;                                                            \
        const snn_vf zero = {0};                                                                \
        snn_vf a0[NV], a1[NV], a2[NV], a3[NV], v[4][NV], ih[4][NV];                              \
        snn_vi h[4][NV];                                                                        \
        for (int i = 0; i < NV; i++) {                                                          \
            a0[i] = a1[i] = a2[i] = a3[i] = zero;                                               \
            for (int q = 0; q < 4; q++) { v[q][i] = ih[q][i] = zero; h[q][i] = (snn_vi)zero; }  \
        }                                                                                       \
        for (int t = 0; t <= c->last; t++) {                                                    \
            const uint16_t *x0 = s[0].idx + (size_t)t * 2304, *x1 = s[1].idx + (size_t)t * 2304; \
            const uint16_t *x2 = s[2].idx + (size_t)t * 2304, *x3 = s[3].idx + (size_t)t * 2304; \
            const int n0 = s[0].cnt[t], n1 = s[1].cnt[t], n2 = s[2].cnt[t], n3 = s[3].cnt[t];  \
            const int m01 = n0 < n1 ? n0 : n1, m23 = n2 < n3 ? n2 : n3;                         \
            const int m = m01 < m23 ? m01 : m23;                                                \
            int k = 0;                                                                          \
            for (; k < m; k++) {                                                                \
                SNN_ADD_ROW(a0, x0[k], BW); SNN_ADD_ROW(a1, x1[k], BW);                         \
                SNN_ADD_ROW(a2, x2[k], BW); SNN_ADD_ROW(a3, x3[k], BW);                         \
            }                                                                                   \
            int k0 = k, k1 = k;                                                                 \
            for (; k0 < m01; k0++) { SNN_ADD_ROW(a0, x0[k0], BW); SNN_ADD_ROW(a1, x1[k0], BW); } \
            for (k1 = k0; k1 < n1; k1++) SNN_ADD_ROW(a1, x1[k1], BW);                           \
            for (; k0 < n0; k0++) SNN_ADD_ROW(a0, x0[k0], BW);                                  \
            int k2 = k;                                                                         \
            for (; k2 < m23; k2++) { SNN_ADD_ROW(a2, x2[k2], BW); SNN_ADD_ROW(a3, x3[k2], BW); } \
            for (k1 = k2; k1 < n3; k1++) SNN_ADD_ROW(a3, x3[k1], BW);                           \
            for (; k2 < n2; k2++) SNN_ADD_ROW(a2, x2[k2], BW);                                  \
            if (!c->upd[t]) continue;                                                           \
            snn_hid_update(a0, v[0], ih[0], h[0], NV, c, &s[0], t);                             \
            snn_hid_update(a1, v[1], ih[1], h[1], NV, c, &s[1], t);                             \
            snn_hid_update(a2, v[2], ih[2], h[2], NV, c, &s[2], t);                             \
            snn_hid_update(a3, v[3], ih[3], h[3], NV, c, &s[3], t);                             \
        }                                                                                       \
        for (int q = 0; q < 4; q++)                                                             \
            for (int i = 0; i < NV; i++) {                                                      \
                snn_stvi(s[q].nh + i * SNN_VW, h[q][i]);                                        \
                snn_stv(s[q].ih + i * SNN_VW, ih[q][i]);                                        \
            }                                                                                   \
    }
    SNN_DEF_HID4(16)
    SNN_DEF_HID4(32)
    SNN_DEF_HID4(64)

    /* Samples b .. b+ns-1 (ns <= 4) of one block; pointers are the first sample's rows.
       Four samples run in lockstep when their four tiles fit the registers (<= 4 vectors
       each: bw <= 32 with AVX2, <= 64 with AVX-512), else two pairs run one after the other. */
    static void snn_hid_group(int bw, const float *W, const float *bias, const uint8_t *upd,
                              int last, float beta, float thr, float scale, int reset,
                              int window, int ns, const uint16_t *idx, const int32_t *cnt,
                              int32_t *nh, float *ih, int32_t *part, uint8_t *rec, int T) {
        const snn_hid_cfg c = {W, bias, upd, last, beta, thr, scale, reset, window};
        snn_hid_smp s[4];
        for (int q = 0; q < ns; q++) {
            snn_hid_smp e = {idx + (size_t)q * T * 2304, cnt + (size_t)q * T,
                             nh + (size_t)q * 1024, ih + (size_t)q * 1024, part + (size_t)q * T,
                             rec ? rec + (size_t)q * T * 1024 : NULL};
            s[q] = e;
        }
        if (ns == 4 && bw <= 4 * SNN_VW && bw <= 64) {
            switch (bw) {
                case 16: snn_hid4_16(&c, s); return;
                case 32: snn_hid4_32(&c, s); return;
                case 64: snn_hid4_64(&c, s); return;
            }
        }
        for (int q = 0; q < ns; q += 2) {
            const snn_hid_smp *s1 = q + 1 < ns ? &s[q + 1] : NULL;
            switch (bw) {
                case 16: snn_hid_16(&c, &s[q], s1); break;
                case 32: snn_hid_32(&c, &s[q], s1); break;
                case 64: snn_hid_64(&c, &s[q], s1); break;
                case 128: snn_hid_128(&c, &s[q], s1); break;
                case 256: snn_hid_256(&c, &s[q], s1); break;
            }
        }
    }

    /* 1 if all n floats are finite (x*0 is NaN for NaN and +-inf). Runs on a block just
       before its first use, so it doubles as the prefetch of that block into L2. */
    static int snn_all_finite(const float *w, size_t n) {
        const snn_vf zero = {0};
        snn_vf acc = zero;
        size_t i = 0;
        for (; i + SNN_VW <= n; i += SNN_VW) acc += snn_ldv(w + i) * zero;
        float tail = 0.0f;
        for (; i < n; i++) tail += w[i] * 0.0f;
        for (int l = 0; l < SNN_VW; l++) tail += acc[l];
        return tail == 0.0f;
    }

    /* Number of spike indices >= 2304 in one sample's valid lists, plus one for every
       count outside [0, 2304] (whose list is then not read). */
    static int64_t snn_count_bad(const uint16_t *idx, const int32_t *cnt, int T) {
        int64_t bad = 0;
        for (int t = 0; t < T; t++) {
            if (cnt[t] < 0 || cnt[t] > 2304) { bad++; continue; }
            for (int k = 0; k < cnt[t]; k++) bad += idx[(size_t)t * 2304 + k] >= 2304;
        }
        return bad;
    }
    """
    void snn_hid_group(int bw, const float *W, const float *bias, const uint8_t *upd, int last,
                       float beta, float thr, float scale, int reset, int window, int ns,
                       const uint16_t *idx, const int32_t *cnt, int32_t *nh, float *ih,
                       int32_t *part, uint8_t *rec, int T) nogil
    int64_t snn_count_bad(const uint16_t *idx, const int32_t *cnt, int T) nogil
    int snn_all_finite(const float *w, size_t n) nogil
    int SNN_VW


def vector_width():
    """Floats per vector register the kernels were compiled for (8: AVX2, 16: AVX-512)."""
    return SNN_VW


def hidden_forward_into(const uint16_t[:, :, ::1] spk_idx, const int32_t[:, ::1] spk_cnt,
                        const float[:, :, ::1] W1b, const float[::1] b1,
                        const uint8_t[::1] is_update, float beta, float thr, float scale,
                        int reset, int drive, int32_t[:, ::1] n_h, float[:, ::1] ih_sum,
                        int32_t[:, :, ::1] part, int64_t[:, ::1] hid_count,
                        int64_t[:, ::1] fc1_adds, uint8_t[:, :, ::1] rec, bint record,
                        int n_threads):
    """Fill the preallocated outputs (see snnfast._convsnn_kernels.hidden_forward).

    ``part`` (zeroed, one count per block, sample and step) is scratch; ``n_h``, ``ih_sum``,
    ``hid_count`` and ``fc1_adds`` are written in full (they may be uninitialised).
    Returns ``(n_bad, n_nonfinite_blocks)``: ``n_bad`` counts spike indices >= 2304 and
    spike counts outside [0, 2304]; if it is nonzero nothing is computed. With non-finite
    blocks of W1b the outputs are garbage and must be discarded.
    """
    cdef Py_ssize_t B = spk_cnt.shape[0], T = spk_cnt.shape[1]
    cdef Py_ssize_t nblk = W1b.shape[0], bw = W1b.shape[2]
    cdef Py_ssize_t ngroup = (B + 3) // 4
    cdef Py_ssize_t p, k, b
    cdef int last = -1, t
    cdef int64_t bad = 0, rows, total
    cdef int nonfinite = 0
    cdef uint8_t *rec_p
    for t in range(T):
        if is_update[t]:
            last = t
    if last < 0 or B == 0:
        return 0, 0
    with nogil:
        # cheap guard (one pass over the spike lists) so the hot loop can index W1 unchecked
        for b in prange(B, schedule='static', num_threads=n_threads):
            bad += snn_count_bad(&spk_idx[b, 0, 0], &spk_cnt[b, 0], <int>T)
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
                nonfinite += 1 - snn_all_finite(&W1b[k, 0, 0], 2304 * bw)
            rec_p = &rec[b, 0, k * bw] if record else NULL
            snn_hid_group(<int>bw, &W1b[k, 0, 0], &b1[k * bw], &is_update[0], last, beta, thr,
                          scale, reset, drive == 1, 4 if b + 4 <= B else <int>(B - b),
                          &spk_idx[b, 0, 0], &spk_cnt[b, 0], &n_h[b, k * bw],
                          &ih_sum[b, k * bw], &part[k, b, 0], rec_p, <int>T)
    # per-step totals: hidden spikes summed over the blocks; FC1 row adds = the conv spikes
    # since the previous update, counted at the update that adds them
    for b in range(B):
        rows = 0
        for t in range(T):
            total = 0
            for k in range(nblk):
                total += part[k, b, t]
            hid_count[b, t] = total
            if t <= last:
                rows += spk_cnt[b, t]
            fc1_adds[b, t] = rows * 1024 if is_update[t] else 0
            if is_update[t]:
                rows = 0
    return 0, nonfinite
