/* The compiled backend of snnfast's NIR runtime (snnfast.nir.run(..., backend="compiled")).
 *
 * A plan is the graph's nodes in step order as a list of operations on one float arena per
 * thread (each node's output, a Conv2d's drive, the neurons' state). A call runs whole
 * samples -- all T steps through all operations -- and the caller spreads the samples over
 * threads (OpenMP, one workspace each), so no result depends on the thread count.
 *
 * Every float32 operation is the one the NumPy runtime's "ordered" mode does, in the same
 * order, each product rounded on its own (built with -ffp-contract=off):
 *   Affine: from 0, add x_i * W[:, i] for the nonzero inputs i ascending, then the bias;
 *   Conv:   from 0, add x * w for the nonzero inputs in (channel, row, column) order, which
 *           for every output is the (input channel, ky, kx) order; then the bias;
 *   pools:  from 0, add the window in (ky, kx) order (padding skipped: adding +0 to a sum
 *           that started at +0 changes nothing), the mean as that sum / (kh kw);
 *   neurons: see nir_neuron.
 * Skipping a zero input is exact: it would add x * w = +-0 (finite weights) to a sum that
 * started at +0, which changes no bit.
 *
 * Layouts are the NIR (C, H, W) order, except a Conv's drive, accumulated channel-last
 * (OH, OW, O) so that an event adds contiguous O/groups-wide rows of the weights stored
 * (C_in, kh, kw, O/groups).
 */
#ifndef SNN_NIR_H
#define SNN_NIR_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

/* snn_add_row; the engine's other static functions go unused here */
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#endif
#include "snn_engine.h"
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

enum { NIR_INPUT = 0, NIR_GATHER = 1, NIR_AFFINE = 2, NIR_CONV = 3, NIR_POOL = 4,
       NIR_SCALE = 5, NIR_THRESHOLD = 6, NIR_NEURON = 7 };
enum { NIR_RESET_ZERO = 0, NIR_RESET_SUBTRACT = 1 };

typedef struct {
    int kind;
    int in, out;               /* arena offsets (floats) of the input and the output */
    int n_in, n_out;
    const float *x;            /* INPUT: the input (N, T, n_out), float32 ... */
    const unsigned char *x8;   /* ... or uint8 (x NULL), converted here */
    int n_src;                 /* GATHER: out = src[0] + src[1] + ... (in this order) */
    const int *src;
    const float *w, *bias;     /* AFFINE: w (n_in, n_out), bias (n_out);
                                  CONV: w (C, kh, kw, O/groups), bias (O) */
    int acc;                   /* CONV: arena offset of the channel-last drive */
    int C, H, W, O, OH, OW, kh, kw, cig, cog;    /* CONV and POOL shapes */
    /* CONV taps per input row y: ytap_ptr[y] .. ytap_ptr[y+1]-1 index (ytap_k, ytap_o), the
     * kernel rows ky and output rows oy it reaches; likewise per input column */
    const int *ytap_ptr, *ytap_k, *ytap_o, *xtap_ptr, *xtap_k, *xtap_o;
    int avg, sh, sw, ph, pw;   /* POOL */
    const float *p;            /* SCALE: scale, THRESHOLD: threshold (n_in) */
    int v, i;                  /* NEURON: arena offsets of v and (Cuba) i, else -1 */
    int cuba, spiking, reset;
    int uniform;               /* 1: every coefficient array below holds one value */
    const float *beta, *leak, *c_x, *c_i, *a_s, *g_s, *thr, *after;
                               /* after: v_reset (reset zero) or v_threshold - v_reset */
    /* counters (NULL: not counted) */
    const int64_t *fanout;     /* AFFINE/CONV: effective fan-out per input */
    int64_t *eff;              /* (N, T): sum of the fan-outs of the nonzero inputs */
    unsigned char *bin;        /* (N, T): 1 if every nonzero input is -1 or 1 */
    int64_t *nz;               /* NEURON/THRESHOLD: (N,) nonzero outputs */
    int64_t *mu;               /* NEURON: (N,) membrane updates (all units at t = 0) */
} nir_op;

/* After every step, n floats at arena offset src are copied to dst[(sample, t)]. */
typedef struct {
    int src, n;
    float *dst;                /* (N, T, n) */
} nir_rec;

typedef struct {
    int T, n_ops, n_rec;
    const nir_op *ops;
    const nir_rec *rec;
    int arena;                 /* floats of one thread's arena */
    int max_in;                /* the largest input of an AFFINE/CONV (event list size) */
    int max_v;                 /* the largest neuron node (membrane copy when counting) */
} nir_plan;

typedef struct {
    float *arena;              /* 64-byte aligned: no two threads share a cache line */
    int *ev_idx;
    float *ev_val;
    float *v_old;
} nir_ws;

static void nir_ws_free(nir_ws *ws)
{
    if (!ws) return;
    free(ws->arena); free(ws->ev_idx); free(ws->ev_val); free(ws->v_old);
    free(ws);
}

static void *nir_alloc(size_t bytes)
{
    void *p = NULL;
    bytes = (bytes + 63) / 64 * 64 + 64;      /* whole lines, never 0 */
    if (posix_memalign(&p, 64, bytes)) return NULL;
    memset(p, 0, bytes);
    return p;
}

static nir_ws *nir_ws_new(const nir_plan *pl)
{
    nir_ws *ws = (nir_ws *)calloc(1, sizeof(nir_ws));
    if (!ws) return NULL;
    ws->arena = (float *)nir_alloc((size_t)pl->arena * sizeof(float));
    ws->ev_idx = (int *)nir_alloc((size_t)pl->max_in * sizeof(int));
    ws->ev_val = (float *)nir_alloc((size_t)pl->max_in * sizeof(float));
    ws->v_old = (float *)nir_alloc((size_t)pl->max_v * sizeof(float));
    if (!ws->arena || !ws->ev_idx || !ws->ev_val || !ws->v_old) {
        nir_ws_free(ws);
        return NULL;
    }
    return ws;
}

/* Bit j set iff x[j] != 0 (NaN too, as C's !=), for the 16 floats at x. */
static inline unsigned nir_nonzero_mask16(const float *x)
{
#if defined(__AVX512F__)
    return (unsigned)_mm512_cmp_ps_mask(_mm512_loadu_ps(x), _mm512_setzero_ps(), _CMP_NEQ_UQ);
#elif defined(__AVX__)
    const __m256 z = _mm256_setzero_ps();
    return (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x), z, _CMP_NEQ_UQ)) |
           (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + 8), z,
                                                      _CMP_NEQ_UQ)) << 8;
#else
    unsigned mask = 0;
    for (int j = 0; j < 16; j++) mask |= (unsigned)(x[j] != 0.0f) << j;
    return mask;
#endif
}

/* The nonzero inputs (indices ascending, values) into idx/val; their count. Per block of
 * 16 values a bit mask of the nonzero ones, then one step per set bit: spikes are sparse. */
static int nir_events(const float *restrict x, int n, int *restrict idx, float *restrict val)
{
    int m = 0, i0 = 0;
    for (; i0 + 16 <= n; i0 += 16) {
        unsigned mask = nir_nonzero_mask16(x + i0);
        while (mask) {
            const int i = i0 + __builtin_ctz(mask);
            idx[m] = i;
            val[m] = x[i];
            m++;
            mask &= mask - 1;
        }
    }
    for (int i = i0; i < n; i++) {
        idx[m] = i;
        val[m] = x[i];
        m += x[i] != 0.0f;
    }
    return m;
}

/* The counters of a connection op at (sample b, step t). */
static void nir_count_events(const nir_op *op, int T, ptrdiff_t b, int t, const int *idx,
                             const float *val, int m)
{
    int64_t eff = 0;
    int bin = 1;
    for (int e = 0; e < m; e++) {
        eff += op->fanout[idx[e]];
        bin &= val[e] == 1.0f || val[e] == -1.0f;
    }
    op->eff[b * T + t] = eff;
    op->bin[b * T + t] = (unsigned char)bin;
}

static void nir_affine(const nir_op *op, float *restrict a, const int *idx, const float *val,
                       int m)
{
    float *restrict out = a + op->out;
    const int n = op->n_out;
    memset(out, 0, (size_t)n * sizeof(float));
    for (int e = 0; e < m; e++)
        snn_add_row(out, op->w + (size_t)idx[e] * n, val[e], n);
    for (int j = 0; j < n; j++) out[j] = out[j] + op->bias[j];
}

static void nir_conv(const nir_op *op, float *restrict a, const int *idx, const float *val,
                     int m)
{
    float *restrict acc = a + op->acc;
    float *restrict out = a + op->out;
    const int O = op->O, cog = op->cog, HW = op->H * op->W, npix = op->OH * op->OW;
    const int taps = op->kh * op->kw;
    memset(acc, 0, (size_t)npix * O * sizeof(float));
    for (int e = 0; e < m; e++) {
        const int i = idx[e], c = i / HW, y = (i % HW) / op->W, x = i % op->W;
        const float *wc = op->w + (size_t)c * taps * cog;
        float *ac = acc + (size_t)(c / op->cig) * cog;
        const int y0 = op->ytap_ptr[y], y1 = op->ytap_ptr[y + 1];
        const int x0 = op->xtap_ptr[x], x1 = op->xtap_ptr[x + 1];
        for (int p = y0; p < y1; p++) {
            const int ky = op->ytap_k[p], oy = op->ytap_o[p];
            for (int q = x0; q < x1; q++) {
                const int kx = op->xtap_k[q], ox = op->xtap_o[q];
                snn_add_row(ac + ((size_t)oy * op->OW + ox) * O,
                            wc + (size_t)(ky * op->kw + kx) * cog, val[e], cog);
            }
        }
    }
    for (int o = 0; o < O; o++) {            /* to (C, H, W) order, plus the bias */
        float *restrict oc = out + (size_t)o * npix;
        const float b = op->bias[o];
        for (int p = 0; p < npix; p++) oc[p] = acc[(size_t)p * O + o] + b;
    }
}

/* Sum/average pool: every output row adds the window's taps in (ky, kx) order, each tap
 * over the outputs whose input is inside the (unpadded) image. */
static void nir_pool(const nir_op *op, float *restrict a)
{
    const float *restrict in = a + op->in;
    float *restrict out = a + op->out;
    const int H = op->H, W = op->W, OH = op->OH, OW = op->OW, sh = op->sh, sw = op->sw;
    const float div = (float)(op->kh * op->kw);
    for (int c = 0; c < op->C; c++) {
        const float *ic = in + (size_t)c * H * W;
        for (int oy = 0; oy < OH; oy++) {
            float *restrict o = out + ((size_t)c * OH + oy) * OW;
            for (int ox = 0; ox < OW; ox++) o[ox] = 0.0f;
            for (int ky = 0; ky < op->kh; ky++) {
                const int y = oy * sh - op->ph + ky;
                if (y < 0 || y >= H) continue;
                for (int kx = 0; kx < op->kw; kx++) {
                    /* x = ox sw - pw + kx in [0, W) */
                    const int d = kx - op->pw;
                    const int lo = d >= 0 ? 0 : (-d + sw - 1) / sw;
                    int hi = W - 1 - d < 0 ? 0 : (W - 1 - d) / sw + 1;
                    if (hi > OW) hi = OW;
                    const float *restrict row = ic + (size_t)y * W + d;
                    if (sw == 1) {
                        for (int ox = lo; ox < hi; ox++) o[ox] += row[ox];
                    } else {
                        for (int ox = lo; ox < hi; ox++) o[ox] += row[ox * sw];
                    }
                }
            }
            if (op->avg)
                for (int ox = 0; ox < OW; ox++) o[ox] = o[ox] / div;
        }
    }
}

static void nir_gather(const nir_op *op, float *restrict a)
{
    float *out = a + op->out;
    const int n = op->n_out;
    memcpy(out, a + op->src[0], (size_t)n * sizeof(float));
    for (int s = 1; s < op->n_src; s++) {
        const float *restrict y = a + op->src[s];
        for (int j = 0; j < n; j++) out[j] = out[j] + y[j];
    }
}

/* One step of I, IF, LI, LIF, CubaLI, CubaLIF (coefficients per unit, float32):
 *     v' = v beta + leak;  Cuba: v' = v' + c_i i,  i = i a_s + g_s x;  v' = v' + c_x x
 * each product and sum rounded on its own; spiking nodes then emit z = v' > thr and reset
 * where z: v' = v_reset ("zero") or v' - (thr - v_reset) ("subtract"). The output is z,
 * or v' itself for the non-spiking nodes (their output is their membrane).
 * The flags are constants at every call (nir_neuron): one branch-free loop per case;
 * ``uni``: every coefficient array holds one value, read as a scalar. */
static inline void nir_neuron_k(const nir_op *op, float *restrict a, const int uni,
                                const int cuba, const int spiking, const int sub)
{
    const float *restrict x = a + op->in;
    float *restrict out = a + op->out;
    float *restrict v = a + op->v;
    float *restrict cur = cuba ? a + op->i : NULL;
    const float *restrict beta = op->beta, *restrict leak = op->leak, *restrict cx = op->c_x;
    const float *restrict ci = op->c_i, *restrict as = op->a_s, *restrict gs = op->g_s;
    const float *restrict thr = op->thr, *restrict after = op->after;
    const int n = op->n_out;
    for (int j = 0; j < n; j++) {
        const int c = uni ? 0 : j;
        float u = v[j] * beta[c] + leak[c];
        if (cuba) {
            u = u + ci[c] * cur[j];
            cur[j] = cur[j] * as[c] + gs[c] * x[j];
        }
        u = u + cx[c] * x[j];
        if (spiking) {          /* both values computed: a select, no branch */
            const float th = thr[c], af = after[c];
            const int z = u > th;
            const float r = sub ? u - af : af;
            v[j] = z ? r : u;
            out[j] = z ? 1.0f : 0.0f;
        } else {
            v[j] = u;
        }
    }
}

#define NIR_NEURON_CASE(uni, cuba, spk, sub) \
    case (uni) * 8 + (cuba) * 4 + (spk) * 2 + (sub): \
        nir_neuron_k(op, a, uni, cuba, spk, sub); break;
#define NIR_NEURON_CASES(uni, cuba) \
    NIR_NEURON_CASE(uni, cuba, 0, 0) NIR_NEURON_CASE(uni, cuba, 1, 0) \
    NIR_NEURON_CASE(uni, cuba, 1, 1)

static void nir_neuron(const nir_op *op, float *restrict a)
{
    const int spk = op->spiking != 0;
    const int key = (op->uniform != 0) * 8 + (op->cuba != 0) * 4 + spk * 2 +
                    (spk && op->reset == NIR_RESET_SUBTRACT);
    switch (key) {
    NIR_NEURON_CASES(0, 0) NIR_NEURON_CASES(0, 1) NIR_NEURON_CASES(1, 0)
    NIR_NEURON_CASES(1, 1)
    default: break;
    }
}

static int64_t nir_nonzero(const float *y, int n)
{
    int64_t c = 0;
    for (int j = 0; j < n; j++) c += y[j] != 0.0f;
    return c;
}

static void nir_op_step(const nir_plan *pl, const nir_op *op, nir_ws *ws, ptrdiff_t b, int t)
{
    float *a = ws->arena;
    switch (op->kind) {
    case NIR_INPUT:
        if (op->x) {
            memcpy(a + op->out, op->x + ((size_t)b * pl->T + t) * op->n_out,
                   (size_t)op->n_out * sizeof(float));
        } else {
            const unsigned char *restrict x8 = op->x8 + ((size_t)b * pl->T + t) * op->n_out;
            float *restrict y = a + op->out;
            for (int j = 0; j < op->n_out; j++) y[j] = (float)x8[j];
        }
        break;
    case NIR_GATHER:
        nir_gather(op, a);
        break;
    case NIR_AFFINE:
    case NIR_CONV: {
        int m = nir_events(a + op->in, op->n_in, ws->ev_idx, ws->ev_val);
        if (op->fanout) nir_count_events(op, pl->T, b, t, ws->ev_idx, ws->ev_val, m);
        if (op->kind == NIR_AFFINE) nir_affine(op, a, ws->ev_idx, ws->ev_val, m);
        else nir_conv(op, a, ws->ev_idx, ws->ev_val, m);
        break;
    }
    case NIR_POOL:
        nir_pool(op, a);
        break;
    case NIR_SCALE: {
        const float *restrict x = a + op->in;
        float *restrict y = a + op->out;
        for (int j = 0; j < op->n_out; j++) y[j] = x[j] * op->p[j];
        break;
    }
    case NIR_THRESHOLD: {
        const float *restrict x = a + op->in;
        float *restrict y = a + op->out;
        for (int j = 0; j < op->n_out; j++) y[j] = (float)(x[j] > op->p[j]);
        if (op->nz) op->nz[b] += nir_nonzero(y, op->n_out);
        break;
    }
    case NIR_NEURON:
        if (op->mu && t > 0)
            memcpy(ws->v_old, a + op->v, (size_t)op->n_out * sizeof(float));
        nir_neuron(op, a);
        if (op->nz) op->nz[b] += nir_nonzero(a + op->out, op->n_out);
        if (op->mu) {
            int64_t c = op->n_out;
            if (t > 0) {
                const float *v = a + op->v;
                c = 0;
                for (int j = 0; j < op->n_out; j++) c += v[j] != ws->v_old[j];
            }
            op->mu[b] += c;
        }
        break;
    }
}

/* Sample b, all T steps from the zero state; writes its records and counters. */
static void nir_run_sample(const nir_plan *pl, nir_ws *ws, ptrdiff_t b)
{
    memset(ws->arena, 0, (size_t)pl->arena * sizeof(float));
    for (int k = 0; k < pl->n_ops; k++) {
        const nir_op *op = &pl->ops[k];
        if (op->nz) op->nz[b] = 0;
        if (op->mu) op->mu[b] = 0;
    }
    for (int t = 0; t < pl->T; t++) {
        for (int k = 0; k < pl->n_ops; k++) nir_op_step(pl, &pl->ops[k], ws, b, t);
        for (int r = 0; r < pl->n_rec; r++) {
            const nir_rec *rc = &pl->rec[r];
            memcpy(rc->dst + ((size_t)b * pl->T + t) * rc->n, ws->arena + rc->src,
                   (size_t)rc->n * sizeof(float));
        }
    }
}

#endif /* SNN_NIR_H */
