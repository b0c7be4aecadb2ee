/* C kernels of snnfast._convsnn_fc (the Cython module ext/_convsnn_fc.pyx is only their binding). */
#ifndef SNN_CONVSNN_FC_H
#define SNN_CONVSNN_FC_H
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

/* The sizes come from the arrays (the network description): nconv conv neurons (rows of
   W1, stride of a step's spike list), nhid hidden neurons (columns of W1, stride of the
   hidden outputs) in blocks of bw columns. */
typedef struct {
    const float *W;          /* this block of W1: nconv x bw */
    const float *bias;       /* b1 + block offset */
    const int32_t *upd_t;    /* U: the update steps */
    int U;
    float beta, thr, scale;
    int reset;               /* 0 halve, 1 subtract, 2 zero */
    int nhid;                /* hidden neurons: the row stride of nh, ih and rec */
} snn_hid_cfg;

typedef struct {
    const uint16_t *list;    /* the sample's plan: per update its rows to add, then to subtract */
    const int32_t *ops;      /* U x 3: clear the accumulator first?, #adds, #subtractions */
    int32_t *nh;             /* n_h row + block offset */
    float *ih;               /* ih_sum row + block offset */
    int32_t *part;           /* T hidden-spike counts of this (block, sample) */
    uint8_t *rec;            /* NULL, or spikes row + block offset (stride nhid per step) */
} snn_hid_smp;

/* The hidden LIF update of one sample's tile (always inlined so the tile arrays, indexed
   by constants after unrolling, can live in registers). */
static inline __attribute__((always_inline)) void snn_hid_update(
        const snn_vf *acc, snn_vf *v, snn_vf *ihs, snn_vi *nh, int nv, const snn_hid_cfg *c,
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
        if (s->rec) {
            uint8_t *r = s->rec + (size_t)t * c->nhid + i * SNN_VW;
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
#define SNN_SUB_ROW(ACC, J, BW) do {                                                        \
    const float *r_ = W + (size_t)(J) * (BW);                                               \
    for (int i_ = 0; i_ < NV; i_++) ACC[i_] -= snn_ldv(r_ + i_ * SNN_VW);                  \
} while (0)

/* OP the rows of lists x0[0..n0) into a0 and x1[0..n1) into a1, interleaved: per column
   each sum is still sequential in its list's order, but the two independent dependency
   chains hide the add latency that a single narrow tile would be bound by. */
#define SNN_LOCK2(OP, BW, A0, X0, N0, A1, X1, N1) do {                                      \
    const uint16_t *const p0_ = (X0), *const p1_ = (X1);                                    \
    const int n0_ = (N0), n1_ = (N1), nm_ = n0_ < n1_ ? n0_ : n1_;                           \
    int k_ = 0;                                                                             \
    for (; k_ < nm_; k_++) { OP(A0, p0_[k_], BW); OP(A1, p1_[k_], BW); }                    \
    for (int j_ = k_; j_ < n1_; j_++) OP(A1, p1_[j_], BW);                                  \
    for (; k_ < n0_; k_++) OP(A0, p0_[k_], BW);                                             \
} while (0)

/* Four lists in lockstep while all last (the k-th rows of four samples, whose sorted
   lists advance through j at similar speed, often share lines already in L1), then the
   rest two at a time. */
#define SNN_LOCK4(OP, BW, X, N) do {                                                        \
    const int m01_ = N[0] < N[1] ? N[0] : N[1], m23_ = N[2] < N[3] ? N[2] : N[3];           \
    const int m4_ = m01_ < m23_ ? m01_ : m23_;                                              \
    for (int k4_ = 0; k4_ < m4_; k4_++) {                                                   \
        OP(a0, X[0][k4_], BW); OP(a1, X[1][k4_], BW);                                       \
        OP(a2, X[2][k4_], BW); OP(a3, X[3][k4_], BW);                                       \
    }                                                                                       \
    SNN_LOCK2(OP, BW, a0, X[0] + m4_, N[0] - m4_, a1, X[1] + m4_, N[1] - m4_);              \
    SNN_LOCK2(OP, BW, a2, X[2] + m4_, N[2] - m4_, a3, X[3] + m4_, N[3] - m4_);              \
} while (0)

/* One block for one or two samples (s1 may be NULL). A macro so that NV is a compile-time
   constant. */
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
    const uint16_t *x0 = s0->list, *x1 = s1 ? s1->list : NULL;                              \
    for (int u = 0; u < c->U; u++) {                                                        \
        const int32_t *o0 = s0->ops + 3 * u;                                                \
        if (o0[0]) for (int i = 0; i < NV; i++) a0[i] = zero;                               \
        if (s1) {                                                                           \
            const int32_t *o1 = s1->ops + 3 * u;                                            \
            if (o1[0]) for (int i = 0; i < NV; i++) a1[i] = zero;                           \
            SNN_LOCK2(SNN_ADD_ROW, BW, a0, x0, o0[1], a1, x1, o1[1]);                       \
            SNN_LOCK2(SNN_SUB_ROW, BW, a0, x0 + o0[1], o0[2], a1, x1 + o1[1], o1[2]);       \
            x1 += o1[1] + o1[2];                                                            \
        } else {                                                                            \
            for (int k = 0; k < o0[1]; k++) SNN_ADD_ROW(a0, x0[k], BW);                     \
            for (int k = 0; k < o0[2]; k++) SNN_SUB_ROW(a0, x0[o0[1] + k], BW);             \
        }                                                                                   \
        x0 += o0[1] + o0[2];                                                                \
        const int t = c->upd_t[u];                                                          \
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

/* Four samples in lockstep (all non-NULL). */
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
    const uint16_t *x[4] = {s[0].list, s[1].list, s[2].list, s[3].list};                    \
    for (int u = 0; u < c->U; u++) {                                                        \
        const int32_t *o[4] = {s[0].ops + 3 * u, s[1].ops + 3 * u, s[2].ops + 3 * u,        \
                               s[3].ops + 3 * u};                                           \
        if (o[0][0]) for (int i = 0; i < NV; i++) a0[i] = zero;                             \
        if (o[1][0]) for (int i = 0; i < NV; i++) a1[i] = zero;                             \
        if (o[2][0]) for (int i = 0; i < NV; i++) a2[i] = zero;                             \
        if (o[3][0]) for (int i = 0; i < NV; i++) a3[i] = zero;                             \
        const int na[4] = {o[0][1], o[1][1], o[2][1], o[3][1]};                             \
        const int ns[4] = {o[0][2], o[1][2], o[2][2], o[3][2]};                             \
        const uint16_t *xs[4] = {x[0] + na[0], x[1] + na[1], x[2] + na[2], x[3] + na[3]};  \
        SNN_LOCK4(SNN_ADD_ROW, BW, x, na);                                                  \
        SNN_LOCK4(SNN_SUB_ROW, BW, xs, ns);                                                 \
        for (int q = 0; q < 4; q++) x[q] = xs[q] + ns[q];                                   \
        const int t = c->upd_t[u];                                                          \
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

/* Samples b .. b+ns-1 (ns <= 4) of one block; pointers are the first sample's rows;
   lists + off[q], ops + q*U*3: each sample's plan. Four samples run in lockstep when
   their four tiles fit the registers (<= 4 vectors each: bw <= 32 with AVX2, <= 64 with
   AVX-512), else two pairs run one after the other. */
static void snn_hid_group(int bw, const float *W, const float *bias, const int32_t *upd_t,
                          int U, float beta, float thr, float scale, int reset, int ns,
                          const uint16_t *lists, const int64_t *off, const int32_t *ops,
                          int32_t *nh, float *ih, int32_t *part, uint8_t *rec, int T,
                          int nhid) {
    const snn_hid_cfg c = {W, bias, upd_t, U, beta, thr, scale, reset, nhid};
    snn_hid_smp s[4];
    for (int q = 0; q < ns; q++) {
        snn_hid_smp e = {lists + off[q], ops + (size_t)q * U * 3,
                         nh + (size_t)q * nhid, ih + (size_t)q * nhid, part + (size_t)q * T,
                         rec ? rec + (size_t)q * T * nhid : NULL};
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

/* 64-bit words of a step's spike bitset over nconv conv neurons */
static inline int snn_nwords(int nconv) { return (nconv + 63) / 64; }

/* bits[t] = the spikes of step t as a bitset (nw words), for t = 0..last. */
static void snn_bitsets(const uint16_t *idx, const int32_t *cnt, int last, uint64_t *bits,
                        int nconv, int nw) {
    memset(bits, 0, (size_t)(last + 1) * nw * sizeof *bits);
    for (int t = 0; t <= last; t++) {
        const int n = cnt[t];
        const uint16_t *row = idx + (size_t)t * nconv;
        uint64_t *bt = bits + (size_t)t * nw;
        /* the word is built in a register (the list is ascending) and stored every time:
           a read-modify-write per spike would chain through memory */
        uint64_t w = 0;
        int wi = 0;
        for (int k = 0; k < n; k++) {
            const int j = row[k];
            /* a mask, not a conditional: gcc would branch, and the branch is random */
            const uint64_t same = -(uint64_t)((j >> 6) == wi);
            w = (w & same) | (uint64_t)1 << (j & 63);
            wi = j >> 6;
            bt[wi] = w;
        }
    }
}

/* Append the set bits of word w (neurons 64*wi + bit) to list, twice where also set in
   w2 (a subset of w); returns the new length. */
static inline int32_t snn_emit(uint64_t w, uint64_t w2, int wi, uint16_t *list, int32_t n) {
    for (; w; w &= w - 1) {
        const int b = __builtin_ctzll(w);
        list[n] = list[n + 1] = (uint16_t)(64 * wi + b);
        n += 1 + (int32_t)(w2 >> b & 1);
    }
    return n;
}

/* The incremental form of a window [t0, t1] after the window [p0, p1], both of at most
   two steps: per neuron d = its spike count in the window minus in the previous one
   (-2..2); ad gets the neurons with d > 0 (twice for d = 2), sb those with d < 0, each
   j ascending. ad and sb need one spare slot. */
static void snn_window_diff(const uint64_t *bits, int t0, int t1, int p0, int p1,
                            uint16_t *ad, int32_t *na, uint16_t *sb, int32_t *ns, int nw) {
    const uint64_t *a = bits + (size_t)t0 * nw, *c = bits + (size_t)p0 * nw;
    const uint64_t *b = t1 > t0 ? bits + (size_t)t1 * nw : NULL;
    const uint64_t *e = p1 > p0 ? bits + (size_t)p1 * nw : NULL;
    int32_t nad = 0, nsb = 0;
    for (int w = 0; w < nw; w++) {
        const uint64_t x = a[w], y = b ? b[w] : 0, u = c[w], v = e ? e[w] : 0;
        const uint64_t cur = x | y, cur2 = x & y, prev = u | v, prev2 = u & v;
        const uint64_t cur1 = x ^ y, prev1 = u ^ v;
        /* d >= 1: spiked now and not before, or twice now and once before */
        const uint64_t up = (cur & ~prev) | (cur2 & prev1), up2 = cur2 & ~prev;
        const uint64_t down = (prev & ~cur) | (prev2 & cur1), down2 = prev2 & ~cur;
        nad = snn_emit(up, up2, w, ad, nad);
        nsb = snn_emit(down, down2, w, sb, nsb);
    }
    *na = nad;
    *ns = nsb;
}

/* One sample's plan (see hidden_forward_into): for each update u, the rows its
   accumulator gets, written to out (capacity: the sample's spikes up to the last
   update), and ops[3u..3u+3) = (clear first?, #adds, #subtractions). mode 0: cumulative
   (the window's spikes, step and j ascending; never cleared); 1: window (the same, on a
   cleared accumulator); 2: window, incremental where both this window and the previous
   one span at most two steps and that takes fewer rows (snn_window_diff): additions,
   then subtractions. bits: (last + 1) x snn_nwords(nconv) words of scratch; ad, sb:
   cap + 1 each, cap >= the sample's spikes up to the last update. */
static void snn_hid_plan(const uint16_t *idx, const int32_t *cnt, const int32_t *upd_t,
                         int U, int mode, uint16_t *out, int32_t *ops, uint64_t *bits,
                         uint16_t *ad, uint16_t *sb, int nconv) {
    const int nw = snn_nwords(nconv);
    if (mode == 2) snn_bitsets(idx, cnt, upd_t[U - 1], bits, nconv, nw);
    int t0 = 0, p0 = 0, p1 = -1;          /* this window [t0, t1], the previous [p0, p1] */
    for (int u = 0; u < U; u++) {
        const int t1 = upd_t[u];
        int32_t *op = ops + 3 * u;
        int32_t nwin = 0;
        for (int t = t0; t <= t1; t++) nwin += cnt[t];
        int planned = 0;
        if (mode == 2 && u > 0 && t1 - t0 <= 1 && p1 - p0 <= 1) {
            int32_t na, ns;
            snn_window_diff(bits, t0, t1, p0, p1, ad, &na, sb, &ns, nw);
            if (na + ns < nwin) {
                memcpy(out, ad, (size_t)na * sizeof *out);
                memcpy(out + na, sb, (size_t)ns * sizeof *out);
                out += na + ns;
                op[0] = 0; op[1] = na; op[2] = ns;
                planned = 1;
            }
        }
        if (!planned) {
            for (int t = t0; t <= t1; t++) {
                memcpy(out, idx + (size_t)t * nconv, (size_t)cnt[t] * sizeof *out);
                out += cnt[t];
            }
            op[0] = mode != 0; op[1] = nwin; op[2] = 0;
        }
        p0 = t0; p1 = t1; t0 = t1 + 1;
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

/* Number of spike indices >= nconv in one sample's valid lists, plus one for every
   count outside [0, nconv] (whose list is then not read). */
static int64_t snn_count_bad(const uint16_t *idx, const int32_t *cnt, int T, int nconv) {
    int64_t bad = 0;
    for (int t = 0; t < T; t++) {
        if (cnt[t] < 0 || cnt[t] > nconv) { bad++; continue; }
        for (int k = 0; k < cnt[t]; k++) bad += idx[(size_t)t * nconv + k] >= nconv;
    }
    return bad;
}

#endif /* SNN_CONVSNN_FC_H */
