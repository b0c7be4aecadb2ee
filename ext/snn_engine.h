/* The compiled inference engine of any snnfast Network description (see docs/network.rst).
 *
 * One sample at a time runs all T steps through all stages (a stage: pools/Flatten on its
 * source, one Conv2d or Linear, pools/Flatten on the current, a LIF/IF layer); the caller
 * runs samples in parallel, one workspace per thread. Every float32 sum follows the order
 * that snnfast.reference documents (events in (step, flat input index) order, each adding
 * x * w as a product rounded on its own: this file must be built with -ffp-contract=off), so
 * the results equal the reference bit for bit and do not depend on the thread count.
 *
 * Layouts: a Conv2d's drive is accumulated channel-last (OH, OW, O), so that one event adds
 * contiguous O-wide rows of the weights stored (C, kh, kw, O); everything else (currents,
 * pools, membrane potentials, spikes) is in the description's (C, H, W) order, in which the
 * next stage reads its events.
 */
#ifndef SNN_ENGINE_H
#define SNN_ENGINE_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* A pool is 10 ints: kind (0 sum, 1 avg, 2 max), C, H, W, kh, kw, sh, sw, OH, OW. */
enum { SNN_POOL_FIELDS = 10 };
enum { SNN_RESET_ZERO = 0, SNN_RESET_SUBTRACT = 1, SNN_RESET_HALVE = 2 };

typedef struct {
    int src_size;              /* elements of the source (encoder frame or previous spikes) */
    int n_pre;                 /* pools on the source, each SNN_POOL_FIELDS ints */
    const int *pre;
    int n_in;                  /* elements of the synaptic layer's input (event indices) */
    int conv;                  /* 1: Conv2d, 0: Linear */
    int n_out;                 /* elements of the synaptic layer's output */
    int O, H, W, kh, kw, OH, OW;          /* Conv2d: input H, W; output OH, OW */
    /* Conv2d taps per input row y: ytap_ptr[y] .. ytap_ptr[y+1]-1 index (ytap_k, ytap_o),
     * the kernel rows ky and output rows oy it reaches; likewise per input column x */
    const int *ytap_ptr, *ytap_k, *ytap_o, *xtap_ptr, *xtap_k, *xtap_o;
    const float *w;            /* Linear: (n_in, w_stride) rows, or with column blocks each
                                  block (n_in, its width) contiguous, one after the other
                                  (a power-of-two row stride would thrash the cache's sets);
                                  Conv2d: (C, kh, kw, O) */
    int w_stride;              /* Linear: floats between two weight rows */
    int fan_out;               /* Linear: synaptic operations per event (all its outputs) */
    int block;                 /* Linear: > 0 runs in column blocks of this width */
    const float *bias;         /* NULL, or (n_out) for Linear, (O) for Conv2d */
    int n_post;                /* pools on the current */
    const int *post;
    int n_neur;                /* neurons of the spiking layer */
    float beta, thr, scale;
    int reset, period, phase, cumulative;
    int incremental;           /* window drive of period 2 on spikes: the incremental form */
} snn_stage;

typedef struct {
    int T, n_stages;
    const snn_stage *st;
    int P;                     /* elements of one input frame */
    int hybrid;                /* 1: Hybrid encoder (uint8 images), 0: Direct (float frames) */
    int n_det;                 /* Hybrid: deterministic steps (t < n_det use det_table) */
    const unsigned char *det_table;    /* (min(T, n_det), 256): spike of pixel value u */
    uint64_t key;              /* Hybrid: the (seed, epoch) key of the Bernoulli steps */
    const unsigned char *images;       /* Hybrid: (B, P) */
    const uint64_t *ids;               /* Hybrid: (B) sample ids */
    const float *frames;               /* Direct: (B, T, P) */
    int64_t *counts;           /* (B, 1 + 2 n_stages, T): input, then per stage spikes, ops */
    /* column-blocked Linear stages: each sample's rows to add, per update (phase 0), then
     * added per (column block, sample) (phase 1) */
    int *list_idx;             /* (B, list_cap): the rows' input indices */
    float *list_val;           /* (B, list_cap): their coefficients */
    int64_t list_cap;
    int64_t *upd_start;        /* (B, T): where an update's rows start in the sample's list */
    int64_t *upd_count;        /* (B, T): how many */
    unsigned char *upd_reset;  /* (B, T): 1 if the update's drive starts from 0 */
    unsigned char *rec_in;     /* NULL or (B, T, P): the encoder's spikes (Hybrid) */
    unsigned char *rec_spk;    /* (B, T, rec_total): every stage's spikes (the next stage's
                                  source: the stages run one after the other on the batch);
                                  written whole, need not be zeroed */
    int64_t *last_counts;      /* (B, last stage's n_neur): its spikes over the run (need
                                  not be zeroed) */
    int rec_total;
    const int *rec_off;        /* per stage, its offset in a rec_spk / rec_v row */
    float *rec_v;              /* NULL or (B, rec_total): membrane potentials after step T-1 */
} snn_plan;

/* Per-thread state of one stage. */
typedef struct {
    float *acc;                /* the synaptic drive before bias (Conv2d: channel-last) */
    float *cur_a, *cur_b;      /* the current, ping-pong through the post pools */
    float *v;                  /* membrane potentials */
    unsigned char *spk;        /* this step's spikes, dense (C, H, W) order */
    int *spk_idx;              /* and their indices, ascending */
    int n_spk;
    float *pre_a, *pre_b;      /* the source, ping-pong through the pre pools */
    int *src_idx;              /* the source's spikes (indices) at this step */
    int *ev_idx;               /* this step's events */
    float *ev_val;
    int *win_idx[2];           /* incremental: the window's steps' events */
    int win_n[2];
    unsigned char *cnt_cur, *cnt_prev;  /* incremental: spikes per input this/last window */
    int win_steps, have_prev;
    int64_t ops;               /* synaptic operations since the last update */
    int *list_idx;             /* phase 0 of a blocked stage: rows go here, not into acc */
    float *list_val;
    int64_t list_n, list_mark; /* rows listed so far, and at the last update */
    int list_reset;            /* the incremental form's choice: 1 direct (from 0) */
} snn_ws_stage;

typedef struct {
    int n_stages;
    snn_ws_stage *s;
    unsigned char *in_spk;     /* Hybrid: the encoder's spikes of this step */
    int *in_idx;
    int64_t *dummy;            /* T counters nobody reads (a column block's spike counts) */
    int ok;
} snn_ws;

static inline int snn_pool_size(const int *p) { return p[1] * p[8] * p[9]; }

static int snn_max_pool_size(int base, int n, const int *pools)
{
    int m = base;
    for (int i = 0; i < n; i++) {
        int s = snn_pool_size(pools + i * SNN_POOL_FIELDS);
        if (s > m) m = s;
    }
    return m;
}

static void *snn_zalloc(size_t n, size_t size, int *ok)
{
    void *p = calloc(n ? n : 1, size);
    if (!p) *ok = 0;
    return p;
}

static void snn_ws_free(snn_ws *ws)
{
    if (!ws) return;
    if (ws->s) {
        for (int k = 0; k < ws->n_stages; k++) {
            snn_ws_stage *s = &ws->s[k];
            free(s->acc); free(s->cur_a); free(s->cur_b); free(s->v); free(s->spk);
            free(s->spk_idx); free(s->src_idx); free(s->pre_a); free(s->pre_b); free(s->ev_idx);
            free(s->ev_val); free(s->win_idx[0]); free(s->win_idx[1]); free(s->cnt_cur);
            free(s->cnt_prev);
        }
        free(ws->s);
    }
    free(ws->in_spk); free(ws->in_idx); free(ws->dummy);
    free(ws);
}

/* A thread's workspace (each buffer its own allocation: no two threads share a line). */
static snn_ws *snn_ws_new(const snn_plan *pl)
{
    snn_ws *ws = (snn_ws *)calloc(1, sizeof(snn_ws));
    if (!ws) return NULL;
    ws->ok = 1;
    ws->n_stages = pl->n_stages;
    ws->s = (snn_ws_stage *)snn_zalloc(pl->n_stages, sizeof(snn_ws_stage), &ws->ok);
    ws->in_spk = (unsigned char *)snn_zalloc(pl->P, 1, &ws->ok);
    ws->in_idx = (int *)snn_zalloc(pl->P, sizeof(int), &ws->ok);
    ws->dummy = (int64_t *)snn_zalloc(pl->T, sizeof(int64_t), &ws->ok);
    if (!ws->s) { snn_ws_free(ws); return NULL; }
    for (int k = 0; k < pl->n_stages; k++) {
        const snn_stage *st = &pl->st[k];
        snn_ws_stage *s = &ws->s[k];
        int ncur = snn_max_pool_size(st->n_out, st->n_post, st->post);
        int npre = snn_max_pool_size(st->src_size, st->n_pre, st->pre);
        s->acc = (float *)snn_zalloc(st->n_out, sizeof(float), &ws->ok);
        s->cur_a = (float *)snn_zalloc(ncur, sizeof(float), &ws->ok);
        s->cur_b = (float *)snn_zalloc(ncur, sizeof(float), &ws->ok);
        s->v = (float *)snn_zalloc(st->n_neur, sizeof(float), &ws->ok);
        s->spk = (unsigned char *)snn_zalloc(st->n_neur, 1, &ws->ok);
        s->spk_idx = (int *)snn_zalloc(st->n_neur, sizeof(int), &ws->ok);
        s->pre_a = (float *)snn_zalloc(npre, sizeof(float), &ws->ok);
        s->pre_b = (float *)snn_zalloc(npre, sizeof(float), &ws->ok);
        s->src_idx = (int *)snn_zalloc(st->src_size, sizeof(int), &ws->ok);
        s->ev_idx = (int *)snn_zalloc(npre, sizeof(int), &ws->ok);
        s->ev_val = (float *)snn_zalloc(npre, sizeof(float), &ws->ok);
        if (st->incremental) {
            for (int j = 0; j < 2; j++)
                s->win_idx[j] = (int *)snn_zalloc(st->n_in, sizeof(int), &ws->ok);
            s->cnt_cur = (unsigned char *)snn_zalloc(st->n_in, 1, &ws->ok);
            s->cnt_prev = (unsigned char *)snn_zalloc(st->n_in, 1, &ws->ok);
        }
    }
    if (!ws->ok) { snn_ws_free(ws); return NULL; }
    return ws;
}

/* ------------------------------------------------------------------ layer operations */

/* acc += x * w over n floats; x = 1 and x = -1 give the same bits as the product. */
static inline void snn_add_row(float *restrict acc, const float *restrict w, float x, int n)
{
    if (x == 1.0f) {
        for (int j = 0; j < n; j++) acc[j] += w[j];
    } else if (x == -1.0f) {
        for (int j = 0; j < n; j++) acc[j] -= w[j];
    } else {
        for (int j = 0; j < n; j++) acc[j] += x * w[j];
    }
}

/* Add one event (input index i, value x) to the drive; returns its synaptic operations. */
static inline int64_t snn_add_event(const snn_stage *st, float *restrict acc, int i, float x)
{
    if (!st->conv) {
        snn_add_row(acc, st->w + (size_t)i * st->w_stride, x, st->n_out);
        return st->fan_out;
    }
    const int O = st->O, kh = st->kh, kw = st->kw, HW = st->H * st->W;
    const int c = i / HW, y = (i % HW) / st->W, xx = i % st->W;
    const int y0 = st->ytap_ptr[y], y1 = st->ytap_ptr[y + 1];
    const int x0 = st->xtap_ptr[xx], x1 = st->xtap_ptr[xx + 1];
    for (int a = y0; a < y1; a++) {
        const int ky = st->ytap_k[a], oy = st->ytap_o[a];
        for (int b = x0; b < x1; b++) {
            const int kx = st->xtap_k[b], ox = st->xtap_o[b];
            snn_add_row(acc + ((size_t)oy * st->OW + ox) * O,
                        st->w + ((size_t)(c * kh + ky) * kw + kx) * O, x, O);
        }
    }
    return (int64_t)O * (y1 - y0) * (x1 - x0);
}

/* The 2 x 2, stride 2 sum (avg = 0) or mean (avg = 1) pool, the common case: the same sums
 * as snn_pool's loops, unrolled (``avg`` a constant at each call: one loop per kind). */
static inline void snn_pool_2x2(const float *restrict in, float *restrict out, int C, int W,
                                int OH, int OW, int avg)
{
    for (int c = 0; c < C * OH; c++) {            /* (channel, output row) pairs */
        const float *r0 = in + (size_t)c * 2 * W, *r1 = r0 + W;
        float *o = out + (size_t)c * OW;
        for (int ox = 0; ox < OW; ox++) {
            float r = 0.0f;                        /* from +0, as snn_pool: -0 sums to +0 */
            r += r0[2 * ox];
            r += r0[2 * ox + 1];
            r += r1[2 * ox];
            r += r1[2 * ox + 1];
            o[ox] = avg ? r / 4.0f : r;
        }
    }
}

/* A pool (C, H, W) -> (C, OH, OW): sums in (ky, kx) order from 0, the mean as that sum
 * divided by kh kw, or the maximum. */
static void snn_pool(const int *p, const float *restrict in, float *restrict out)
{
    const int kind = p[0], C = p[1], H = p[2], W = p[3], kh = p[4], kw = p[5];
    const int sh = p[6], sw = p[7], OH = p[8], OW = p[9];
    const float div = (float)(kh * kw);
    /* snn_pool_2x2 walks the input two rows per output row: no row may be left over */
    if (kind != 2 && kh == 2 && kw == 2 && sh == 2 && sw == 2 && H == 2 * OH) {
        if (kind == 1) snn_pool_2x2(in, out, C, W, OH, OW, 1);
        else snn_pool_2x2(in, out, C, W, OH, OW, 0);
        return;
    }
    for (int c = 0; c < C; c++) {
        const float *ic = in + (size_t)c * H * W;
        float *oc = out + (size_t)c * OH * OW;
        for (int oy = 0; oy < OH; oy++) {
            for (int ox = 0; ox < OW; ox++) {
                const float *win = ic + (size_t)oy * sh * W + (size_t)ox * sw;
                float r;
                if (kind == 2) {
                    r = win[0];
                    for (int ky = 0; ky < kh; ky++)
                        for (int kx = 0; kx < kw; kx++) {
                            float u = win[ky * W + kx];
                            r = u > r ? u : r;
                        }
                } else {
                    r = 0.0f;
                    for (int ky = 0; ky < kh; ky++)
                        for (int kx = 0; kx < kw; kx++) r += win[ky * W + kx];
                    if (kind == 1) r = r / div;
                }
                oc[oy * OW + ox] = r;
            }
        }
    }
}

/* Run pools in turn on a ping-pong pair; returns the buffer holding the result. */
static float *snn_pools(int n, const int *pools, float *a, float *b)
{
    for (int i = 0; i < n; i++) {
        snn_pool(pools + i * SNN_POOL_FIELDS, a, b);
        float *t = a; a = b; b = t;
    }
    return a;
}

/* ------------------------------------------------------------------ one stage, one step */

/* This step's events of stage k (indices ascending): spikes of the source (values 1, *val
 * set to NULL) or the nonzero values after the pre pools / of real-valued frames. */
static int snn_events(const snn_stage *st, snn_ws_stage *s, const unsigned char *src_spk,
                      const int *src_idx, int src_n, const float *src_dense,
                      const int **idx, const float **val)
{
    if (st->n_pre == 0 && src_spk) {
        *idx = src_idx; *val = NULL;
        return src_n;
    }
    const float *x = src_dense;
    if (st->n_pre) {
        if (src_spk)
            for (int i = 0; i < st->src_size; i++) s->pre_a[i] = (float)src_spk[i];
        else
            memcpy(s->pre_a, src_dense, (size_t)st->src_size * sizeof(float));
        x = snn_pools(st->n_pre, st->pre, s->pre_a, s->pre_b);
    }
    int m = 0;
    for (int i = 0; i < st->n_in; i++) {
        if (x[i] != 0.0f) { s->ev_idx[m] = i; s->ev_val[m] = x[i]; m++; }
    }
    *idx = s->ev_idx; *val = s->ev_val;
    return m;
}

/* Add an event to the drive, or (phase 0 of a column-blocked Linear stage) list it. */
static inline int64_t snn_put(const snn_stage *st, snn_ws_stage *s, float *acc, int i, float x)
{
    if (s->list_idx) {
        s->list_idx[s->list_n] = i;
        s->list_val[s->list_n] = x;
        s->list_n++;
        return st->fan_out;
    }
    return snn_add_event(st, acc, i, x);
}

static int64_t snn_add_events(const snn_stage *st, snn_ws_stage *s, float *acc,
                              const int *idx, const float *val, int m)
{
    int64_t ops = 0;
    for (int e = 0; e < m; e++) ops += snn_put(st, s, acc, idx[e], val ? val[e] : 1.0f);
    return ops;
}

/* The incremental form's update of the drive (see snnfast.reference._window_events):
 * returns -1 (use the direct sum) or the synaptic operations of the rows it added. */
static int64_t snn_incremental(const snn_stage *st, snn_ws_stage *s)
{
    int n_up = 0, n_down = 0, n_ev = s->win_n[0] + (s->win_steps > 1 ? s->win_n[1] : 0);
    for (int i = 0; i < st->n_in; i++) {
        int d = (int)s->cnt_cur[i] - (int)s->cnt_prev[i];
        if (d > 0) n_up += d; else n_down -= d;
    }
    if (n_up + n_down >= n_ev) return -1;
    int64_t ops = 0;
    for (int i = 0; i < st->n_in; i++)
        for (int d = (int)s->cnt_cur[i] - (int)s->cnt_prev[i]; d > 0; d--)
            ops += snn_put(st, s, s->acc, i, 1.0f);
    for (int i = 0; i < st->n_in; i++)
        for (int d = (int)s->cnt_prev[i] - (int)s->cnt_cur[i]; d > 0; d--)
            ops += snn_put(st, s, s->acc, i, -1.0f);
    return ops;
}

/* The drive at an update of an incremental stage; returns its synaptic operations. */
static int64_t snn_incremental_drive(const snn_stage *st, snn_ws_stage *s)
{
    int64_t ops = s->have_prev ? snn_incremental(st, s) : -1;
    s->list_reset = ops < 0;
    if (ops < 0) {
        memset(s->acc, 0, (size_t)st->n_out * sizeof(float));
        ops = 0;
        for (int j = 0; j < s->win_steps; j++)
            ops += snn_add_events(st, s, s->acc, s->win_idx[j], NULL, s->win_n[j]);
    }
    unsigned char *t = s->cnt_prev; s->cnt_prev = s->cnt_cur; s->cnt_cur = t;
    memset(s->cnt_cur, 0, (size_t)st->n_in);
    s->have_prev = 1;
    return ops;
}

/* The LIF/IF update of n neurons: v = v * beta, v = v + cur * scale (each rounded), spike
 * where v > thr, then the reset (``reset`` a constant at each call: one loop per mode). */
static inline void snn_lif(float *restrict v, const float *restrict cur,
                           unsigned char *restrict spk, int n, float beta, float thr,
                           float scale, int reset)
{
    for (int i = 0; i < n; i++) {
        float u = v[i] * beta;
        u = u + cur[i] * scale;
        const int z = u > thr;
        const float r = reset == SNN_RESET_ZERO ? 0.0f :
                        reset == SNN_RESET_SUBTRACT ? u - thr : u * 0.5f;
        v[i] = z ? r : u;
        spk[i] = (unsigned char)z;
    }
}

/* Bias (to (C, H, W) order), post pools, scale, then the LIF/IF update; fills spk/spk_idx. */
static void snn_neurons(const snn_stage *st, snn_ws_stage *s)
{
    float *cur = s->cur_a;
    if (st->conv) {
        const int O = st->O, npix = st->OH * st->OW;
        for (int o = 0; o < O; o++) {
            float *co = cur + (size_t)o * npix;
            if (st->bias) {
                const float b = st->bias[o];
                for (int p = 0; p < npix; p++) co[p] = s->acc[(size_t)p * O + o] + b;
            } else {
                for (int p = 0; p < npix; p++) co[p] = s->acc[(size_t)p * O + o];
            }
        }
    } else if (st->bias) {
        for (int j = 0; j < st->n_out; j++) cur[j] = s->acc[j] + st->bias[j];
    } else {
        memcpy(cur, s->acc, (size_t)st->n_out * sizeof(float));
    }
    cur = snn_pools(st->n_post, st->post, cur, cur == s->cur_a ? s->cur_b : s->cur_a);
    const float beta = st->beta, thr = st->thr, scale = st->scale;
    const int nn = st->n_neur;
    /* one branch-free (vectorisable) loop per reset mode */
    switch (st->reset) {
    case SNN_RESET_ZERO:
        snn_lif(s->v, cur, s->spk, nn, beta, thr, scale, SNN_RESET_ZERO); break;
    case SNN_RESET_SUBTRACT:
        snn_lif(s->v, cur, s->spk, nn, beta, thr, scale, SNN_RESET_SUBTRACT); break;
    default:
        snn_lif(s->v, cur, s->spk, nn, beta, thr, scale, SNN_RESET_HALVE); break;
    }
    int n = 0;
    for (int i = 0; i < nn; i++) {       /* the spikes' indices, ascending, branch-free */
        s->spk_idx[n] = i;
        n += s->spk[i];
    }
    s->n_spk = n;
}

/* Stage k at step t given its source; writes its counters (spikes, synaptic operations). */
static void snn_stage_step(const snn_stage *st, snn_ws_stage *s, int t,
                           const unsigned char *src_spk, const int *src_idx, int src_n,
                           const float *src_dense, int64_t *c_spk, int64_t *c_ops)
{
    for (int j = 0; j < s->n_spk; j++) s->spk[s->spk_idx[j]] = 0;
    s->n_spk = 0;
    const int *idx;
    const float *val;
    int m = snn_events(st, s, src_spk, src_idx, src_n, src_dense, &idx, &val);
    if (st->incremental) {
        int j = s->win_steps++;
        memcpy(s->win_idx[j], idx, (size_t)m * sizeof(int));
        s->win_n[j] = m;
        for (int e = 0; e < m; e++) s->cnt_cur[idx[e]]++;
    } else {
        if (s->win_steps == 0 && !st->cumulative)
            memset(s->acc, 0, (size_t)st->n_out * sizeof(float));
        s->win_steps++;
        s->ops += snn_add_events(st, s, s->acc, idx, val, m);
    }
    if (t % st->period != st->phase) {
        c_spk[t] = 0; c_ops[t] = 0;
        return;
    }
    c_ops[t] = st->incremental ? snn_incremental_drive(st, s) : s->ops;
    s->ops = 0;
    s->win_steps = 0;
    if (s->list_idx) {           /* phase 0: note the update's rows; no neurons yet */
        s->list_reset = st->incremental ? s->list_reset : !st->cumulative;
        return;
    }
    snn_neurons(st, s);
    c_spk[t] = s->n_spk;
}

/* ------------------------------------------------------------------ encoder, one sample */

static inline uint64_t snn_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* The Hybrid encoder's spikes of sample b at step t into ws->in_spk / in_idx; their count. */
static int snn_hybrid_step(const snn_plan *pl, snn_ws *ws, ptrdiff_t b, int t)
{
    const unsigned char *img = pl->images + (size_t)b * pl->P;
    int n = 0;
    if (t < pl->n_det) {
        const unsigned char *tab = pl->det_table + (size_t)t * 256;
        for (int p = 0; p < pl->P; p++) {
            unsigned char z = tab[img[p]];
            ws->in_spk[p] = z;
            if (z) ws->in_idx[n++] = p;
        }
    } else {
        const uint64_t key = snn_mix64(pl->key ^ pl->ids[b]);
        for (int p = 0; p < pl->P; p++) {
            uint64_t u24 = snn_mix64(key ^ (((uint64_t)t << 32) | (uint64_t)p)) >> 40;
            unsigned char z = u24 * 255u < ((uint64_t)img[p] << 24);
            ws->in_spk[p] = z;
            if (z) ws->in_idx[n++] = p;
        }
    }
    return n;
}

static void snn_reset_stage(const snn_stage *st, snn_ws_stage *s)
{
    memset(s->acc, 0, (size_t)st->n_out * sizeof(float));
    memset(s->v, 0, (size_t)st->n_neur * sizeof(float));
    memset(s->spk, 0, (size_t)st->n_neur);
    s->n_spk = 0; s->win_steps = 0; s->have_prev = 0; s->ops = 0;
    if (st->incremental) {
        memset(s->cnt_cur, 0, (size_t)st->n_in);
        memset(s->cnt_prev, 0, (size_t)st->n_in);
    }
}

/* The source of stage k at step t of sample b: the encoder's output (stage 0; its count
 * goes to the "input" counter) or the previous stage's spikes, read back from rec_spk. */
static int snn_source(const snn_plan *pl, snn_ws *ws, int k, ptrdiff_t b, int t,
                      const unsigned char **spk, const int **idx, const float **dense)
{
    int n = 0;
    *spk = NULL; *idx = NULL; *dense = NULL;
    if (k > 0) {
        const snn_stage *prev = &pl->st[k - 1];
        int *out = ws->s[k].src_idx;
        const unsigned char *row = pl->rec_spk + ((size_t)b * pl->T + t) * pl->rec_total
                                   + pl->rec_off[k - 1];
        for (int i = 0; i < prev->n_neur; i++) {     /* branch-free: spikes are sparse */
            out[n] = i;
            n += row[i];
        }
        *spk = row; *idx = out;
    } else if (pl->hybrid) {
        n = snn_hybrid_step(pl, ws, b, t);
        *spk = ws->in_spk; *idx = ws->in_idx;
        if (pl->rec_in)
            memcpy(pl->rec_in + ((size_t)b * pl->T + t) * pl->P, ws->in_spk, (size_t)pl->P);
    } else {
        const float *x = pl->frames + ((size_t)b * pl->T + t) * pl->P;
        for (int p = 0; p < pl->P; p++) n += x[p] != 0.0f;
        *dense = x;
    }
    return n;
}

/* This step's spikes of stage k (or of its column block from neuron j0) into rec_spk (the
 * whole row slice: the buffer is not zeroed beforehand), and into the last stage's counts
 * (zeroed at t = 0). */
static void snn_put_spikes(const snn_plan *pl, const snn_stage *st, const snn_ws_stage *s,
                           int k, int j0, ptrdiff_t b, int t)
{
    if (k == pl->n_stages - 1 && t == 0)
        memset(pl->last_counts + (size_t)b * pl->st[k].n_neur + j0, 0,
               (size_t)st->n_neur * sizeof(int64_t));
    unsigned char *r = pl->rec_spk + ((size_t)b * pl->T + t) * pl->rec_total
                       + pl->rec_off[k] + j0;
    memset(r, 0, (size_t)st->n_neur);
    for (int j = 0; j < s->n_spk; j++) r[s->spk_idx[j]] = 1;
    if (k == pl->n_stages - 1) {
        int64_t *c = pl->last_counts + (size_t)b * pl->st[k].n_neur + j0;
        for (int j = 0; j < s->n_spk; j++) c[s->spk_idx[j]]++;
    }
}

/* All T steps of stage ``st`` (stage k, or a column block of it starting at neuron j0) for
 * sample b; spikes to rec_spk, counters to c_spk / c_ops (T each). */
static void snn_run_steps(const snn_plan *pl, snn_ws *ws, int k, const snn_stage *st, int j0,
                          ptrdiff_t b, int64_t *c_spk, int64_t *c_ops)
{
    const int T = pl->T;
    snn_ws_stage *s = &ws->s[k];
    int64_t *c_in = pl->counts + (size_t)b * (1 + 2 * pl->n_stages) * T;
    snn_reset_stage(st, s);
    for (int t = 0; t < T; t++) {
        const unsigned char *spk;
        const int *idx;
        const float *dense;
        int n = snn_source(pl, ws, k, b, t, &spk, &idx, &dense);
        if (k == 0) c_in[t] = n;
        snn_stage_step(st, s, t, spk, idx, n, dense, c_spk, c_ops);
        snn_put_spikes(pl, st, s, k, j0, b, t);
    }
    if (pl->rec_v)
        memcpy(pl->rec_v + (size_t)b * pl->rec_total + pl->rec_off[k] + j0, s->v,
               (size_t)st->n_neur * sizeof(float));
}

/* Stage k of sample b, whole (not column-blocked). */
static void snn_run_stage(const snn_plan *pl, snn_ws *ws, int k, ptrdiff_t b)
{
    const int T = pl->T;
    int64_t *cnt = pl->counts + (size_t)b * (1 + 2 * pl->n_stages) * T;
    snn_run_steps(pl, ws, k, &pl->st[k], 0, b, cnt + (size_t)(1 + 2 * k) * T,
                  cnt + (size_t)(2 + 2 * k) * T);
}

/* Number of column blocks of stage k (1 if it is not blocked). */
static int snn_n_blocks(const snn_stage *st)
{
    return st->block > 0 ? (st->n_out + st->block - 1) / st->block : 1;
}

/* Phase 0 of a column-blocked Linear stage k, sample b: the events, windows and the
 * incremental form's choices of the whole stage, as lists of rows per update (and the
 * synaptic operations); no weights are read. */
static void snn_list_rows(const snn_plan *pl, snn_ws *ws, int k, ptrdiff_t b)
{
    const snn_stage *st = &pl->st[k];
    const int T = pl->T;
    snn_ws_stage *s = &ws->s[k];
    int64_t *cnt = pl->counts + (size_t)b * (1 + 2 * pl->n_stages) * T;
    snn_reset_stage(st, s);
    s->list_idx = pl->list_idx + (size_t)b * pl->list_cap;
    s->list_val = pl->list_val + (size_t)b * pl->list_cap;
    s->list_n = s->list_mark = 0;
    for (int t = 0; t < T; t++) {
        const unsigned char *spk;
        const int *idx;
        const float *dense;
        int n = snn_source(pl, ws, k, b, t, &spk, &idx, &dense);
        if (k == 0) cnt[t] = n;
        snn_stage_step(st, s, t, spk, idx, n, dense, ws->dummy, cnt + (size_t)(2 + 2 * k) * T);
        if (t % st->period == st->phase) {
            size_t u = (size_t)b * T + t;
            pl->upd_start[u] = s->list_mark;
            pl->upd_count[u] = s->list_n - s->list_mark;
            pl->upd_reset[u] = (unsigned char)s->list_reset;
            s->list_mark = s->list_n;
        }
    }
    s->list_idx = NULL;
    s->list_val = NULL;
}

/* Phase 1: column block ``blk`` of the Linear stage k for sample b adds the listed rows of
 * its weight columns and updates its neurons. A block's neurons only depend on its columns,
 * so the blocks run apart, each keeping its slice of the weights in cache while the samples
 * stream through; the rows and their order are the whole stage's, so are the sums. */
static void snn_add_rows(const snn_plan *pl, snn_ws *ws, int k, int blk, ptrdiff_t b)
{
    const snn_stage *st = &pl->st[k];
    const int T = pl->T, j0 = blk * st->block;
    snn_stage sub = *st;
    sub.n_out = sub.n_neur = (st->n_out - j0 < st->block) ? st->n_out - j0 : st->block;
    sub.w = st->w + (size_t)j0 * st->n_in;     /* blocks stored one after the other */
    sub.w_stride = sub.n_out;
    sub.bias = st->bias ? st->bias + j0 : NULL;
    snn_ws_stage *s = &ws->s[k];
    snn_reset_stage(&sub, s);
    const int *li = pl->list_idx + (size_t)b * pl->list_cap;
    const float *lv = pl->list_val + (size_t)b * pl->list_cap;
    for (int t = 0; t < T; t++) {
        for (int j = 0; j < s->n_spk; j++) s->spk[s->spk_idx[j]] = 0;
        s->n_spk = 0;
        if (t % st->period == st->phase) {
            size_t u = (size_t)b * T + t;
            if (pl->upd_reset[u]) memset(s->acc, 0, (size_t)sub.n_out * sizeof(float));
            const int64_t e0 = pl->upd_start[u], e1 = e0 + pl->upd_count[u];
            for (int64_t e = e0; e < e1; e++) snn_add_event(&sub, s->acc, li[e], lv[e]);
            snn_neurons(&sub, s);
        }
        snn_put_spikes(pl, &sub, s, k, j0, b, t);
    }
    if (pl->rec_v)
        memcpy(pl->rec_v + (size_t)b * pl->rec_total + pl->rec_off[k] + j0, s->v,
               (size_t)sub.n_neur * sizeof(float));
}

/* Work item i of stage k on a batch of B: sample i (phase 0), or (block i / B, sample
 * i % B) of a column-blocked stage's phase 1 (blocks outermost, so that a static split
 * over threads gives each thread whole blocks). */
static void snn_run_item(const snn_plan *pl, snn_ws *ws, int k, int phase, ptrdiff_t i,
                         ptrdiff_t B)
{
    if (pl->st[k].block <= 0)
        snn_run_stage(pl, ws, k, i);
    else if (phase == 0)
        snn_list_rows(pl, ws, k, i);
    else
        snn_add_rows(pl, ws, k, (int)(i / B), i % B);
}

/* The spike counters of a column-blocked stage k of sample b, from its recorded spikes. */
static void snn_count_spikes(const snn_plan *pl, int k, ptrdiff_t b)
{
    const int T = pl->T, n = pl->st[k].n_neur;
    int64_t *c = pl->counts + ((size_t)b * (1 + 2 * pl->n_stages) + 1 + 2 * k) * T;
    for (int t = 0; t < T; t++) {
        const unsigned char *row = pl->rec_spk + ((size_t)b * T + t) * pl->rec_total
                                   + pl->rec_off[k];
        int64_t m = 0;
        for (int i = 0; i < n; i++) m += row[i];
        c[t] = m;
    }
}

#endif
