/* C kernels of snnfast._convsnn_w1 (the Cython module ext/_convsnn_w1.pyx is only their binding). */
#ifndef SNN_CONVSNN_W1_H
#define SNN_CONVSNN_W1_H
#include "snn_adam8.h"   /* snn_adam8: the one Adam formula */
#include "snn_alloc.h"   /* snn_aligned_alloc: per-thread scratch */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
typedef float snn_w8 __attribute__((vector_size(32)));
typedef int32_t snn_w8i __attribute__((vector_size(32)));
/* Rows of W1 per tile of the step with the back product. */
enum { SNN_W1_ROWS = 16 };

/* The sizes, from the arrays (the network description): nconv conv neurons (rows of W1;
   a multiple of SNN_W1_ROWS), nhid hidden neurons (columns; a multiple of 16), npos conv
   positions per channel (j = channel*npos + position; even, so a row pair is one
   channel's), ld the row stride of the gathered W1 rows and of d in the back product
   (snn_w1_ld). */
typedef struct { int nconv, nhid, npos, ld; } snn_w1_geom;

/* Row stride for nhid columns: whole vectors, then 64 bytes more. Rows a multiple of
   4 KiB apart (a hidden width that is a multiple of 4 KiB / 4 bytes) put the six streams
   of the back product's inner loop in one L1 set; 64 bytes more took it from ~60 % to
   ~90 % of peak (measured on the AVX2 EPYC). */
static inline int snn_w1_ld(int nhid) { return (nhid + 15) / 16 * 16 + 16; }
/* Cache lines of Adam's m (and of v) prefetched per 4-sample group of the back product */
enum { SNN_W1_PFQ = 8 };

static inline snn_w8 snn_w_ld(const float *p) { snn_w8 x; memcpy(&x, p, 32); return x; }
static inline void snn_w_st(float *p, snn_w8 x) { memcpy(p, &x, 32); }
/* Keep x in a register: without this gcc folds the loads of a value used four times
   into each use, which doubles the load-port traffic of the back product. */
#if defined(__AVX__)
#define SNN_W_PIN(x) __asm__("" : "+x"(x))
#else
#define SNN_W_PIN(x) ((void)0)
#endif

typedef struct {
    int adam;                  /* 1: Adam (m, v); 0: w = (w - rate*g) * decay */
    float b1, omb1, b2, omb2, step_size, rbc2, eps;
    float rate, decay;
} snn_w1_opt;

/* Per-thread scratch: the nonzero inputs (sample, value) of each row of a tile, the
   tile's rows of W1 gathered into rows of ld floats, a row pair's list of rows of dc for
   the back product with its two results per entry, and the tile's list of prefetch
   addresses (npf entries). NULL on allocation failure. Each piece is its own allocation
   of whole cache lines: no two threads share a line. */
typedef struct { int32_t *nzb; float *nzc; float *rows; int32_t *idx; float *out;
                 const char **pfl; int npf; } snn_w1_scratch;

static void snn_w1_scratch_free(snn_w1_scratch *s) {
    if (s) {
        free(s->nzb); free(s->nzc); free(s->rows); free(s->idx); free(s->out);
        free((void *)s->pfl); free(s);
    }
}

/* bw: the block width (the prefetch list holds 2 pointers per SNN_W1_PFQ lines of the
   tile's run of m and of v in each of the nhid / bw blocks). */
static snn_w1_scratch *snn_w1_scratch_new(int B, const snn_w1_geom *g, int bw) {
    snn_w1_scratch *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    size_t n = (size_t)SNN_W1_ROWS * (B > 0 ? B : 1);
    const size_t chunk = 64 * SNN_W1_PFQ, tb = (size_t)SNN_W1_ROWS * bw * sizeof(float);
    s->npf = (int)(2 * (size_t)(g->nhid / bw) * ((tb + chunk - 1) / chunk));
    s->nzb = snn_aligned_alloc(n * sizeof(int32_t));
    s->nzc = snn_aligned_alloc(n * sizeof(float));
    s->rows = snn_aligned_alloc((size_t)SNN_W1_ROWS * g->ld * sizeof(float));
    s->idx = snn_aligned_alloc(((size_t)B + 8) * sizeof(int32_t));
    s->out = snn_aligned_alloc(2 * ((size_t)B + 8) * sizeof(float));
    s->pfl = snn_aligned_alloc(((size_t)s->npf + 2) * sizeof(const char *));
    if (!s->nzb || !s->nzc || !s->rows || !s->idx || !s->out || !s->pfl) {
        snn_w1_scratch_free(s); return NULL;
    }
    return s;
}

static inline float snn_w1_hsum(snn_w8 a) {
    float t = a[0];
    for (int l = 1; l < 8; l++) t += a[l];
    return t;
}

/* Gather rows i0 .. i0+SNN_W1_ROWS-1 of W1 from their blocks into canonical rows. Per
   block the tile's rows are one contiguous run (2 KiB at bw = 32), which the hardware
   prefetcher streams; in W1b the blocks of one row are a multiple of 4 KiB apart. */
static void snn_w1_gather(const float *W, int nblk, int bw, float *rows,
                          const snn_w1_geom *g) {
    const size_t bstride = (size_t)g->nconv * bw;
    for (int k = 0; k < nblk; k++) {
        const float *src = W + k * bstride;
        for (int r = 0; r < SNN_W1_ROWS; r++)
            for (int j = 0; j < bw; j += 8)
                snn_w_st(rows + (size_t)r * g->ld + (size_t)k * bw + j,
                         snn_w_ld(src + (size_t)r * bw + j));
    }
}

/* The back product of two gathered rows w0, w1 with the rows idx[0 .. n) of dc (rows of
   ld floats; n a multiple of 4): out[2k] = dc[idx[k]] . w0, out[2k+1] = dc[idx[k]] . w1,
   over nhid columns. Four rows of dc at a time keep their 2 x 4 lane sums in registers
   over all columns: each loaded vector serves four products. The npf pairs of prefetch
   addresses pf[0 .. 2 npf) (SNN_W1_PFQ lines each) are spread over the groups.
   The column index is a size_t: as an int, under Python's -fwrapv (signed overflow
   defined), gcc sign-extended it and formed each of the six addresses anew per step. Not
   inlined: inside the OpenMP region's function gcc spilled the row pointers and pinned
   vectors of this loop to the stack (AVX2). With both, the run-time width (any nhid) is as
   fast as a compile-time case of the default preset's width was (fused W1 Adam step, B 64,
   one thread: 0.96x its CPU time with AVX2, 0.97x with AVX-512; the rows of d page-aligned,
   see aligned_zeros in snnfast/_convsnn_kernels.py). */
static __attribute__((noinline)) void snn_w1_back_pair(const float *w0, const float *w1, const float *dc,
                             const int32_t *idx, int n, float *out,
                             const char *const *pf, int npf, int nhid, int ld) {
    const snn_w8 zero = {0};
    const int ng = n / 4;
    for (int g = 0; g < ng; g++) {
        for (int q = g * npf / ng; q < (g + 1) * npf / ng; q++)
            for (int l = 0; l < SNN_W1_PFQ; l++) {
                __builtin_prefetch(pf[2 * q] + 64 * l, 1, 2);
                __builtin_prefetch(pf[2 * q + 1] + 64 * l, 1, 2);
            }
        snn_w8 a00 = zero, a01 = zero, a02 = zero, a03 = zero;
        snn_w8 a10 = zero, a11 = zero, a12 = zero, a13 = zero;
        const float *p0 = dc + (size_t)idx[4 * g] * ld;
        const float *p1 = dc + (size_t)idx[4 * g + 1] * ld;
        const float *p2 = dc + (size_t)idx[4 * g + 2] * ld;
        const float *p3 = dc + (size_t)idx[4 * g + 3] * ld;
        for (size_t j = 0; j < (size_t)nhid; j += 8) {
            snn_w8 u = snn_w_ld(w0 + j), v = snn_w_ld(w1 + j);
            snn_w8 x0 = snn_w_ld(p0 + j), x1 = snn_w_ld(p1 + j);
            snn_w8 x2 = snn_w_ld(p2 + j), x3 = snn_w_ld(p3 + j);
            SNN_W_PIN(u); SNN_W_PIN(v); SNN_W_PIN(x0); SNN_W_PIN(x1); SNN_W_PIN(x2);
            SNN_W_PIN(x3);
            a00 += x0 * u; a01 += x1 * u; a02 += x2 * u; a03 += x3 * u;
            a10 += x0 * v; a11 += x1 * v; a12 += x2 * v; a13 += x3 * v;
        }
        float *o = out + 8 * g;
        o[0] = snn_w1_hsum(a00); o[1] = snn_w1_hsum(a10);
        o[2] = snn_w1_hsum(a01); o[3] = snn_w1_hsum(a11);
        o[4] = snn_w1_hsum(a02); o[5] = snn_w1_hsum(a12);
        o[6] = snn_w1_hsum(a03); o[7] = snn_w1_hsum(a13);
    }
}

/* back[., i], back[., i+1] and total[i], total[i+1] for the gathered rows w0, w1 of
   conv neurons i, i+1 (i even: positions p, p+1 of one channel). dc has B rows of d,
   then their sum D (row B) and a row of zeros (row B+1), which pads the list. */
static void snn_w1_back_rows(const float *w0, const float *w1, const float *dc, int B,
                             const uint8_t *act, int i, float *back, float *total,
                             snn_w1_scratch *s, const char *const *pf, int npf,
                             const snn_w1_geom *g) {
    const int p = i % g->npos, npos = g->npos;
    const size_t nconv = (size_t)g->nconv;
    int n = 0;
    for (int b = 0; b < B; b++) {
        /* branch-free as in snn_w1_nonzeros; also clears the row pair's entries */
        s->idx[n] = b;
        n += (act[(size_t)b * npos + p] | act[(size_t)b * npos + p + 1]) != 0;
        back[(size_t)b * nconv + i] = 0.0f;
        back[(size_t)b * nconv + i + 1] = 0.0f;
    }
    const int nb = n;
    s->idx[n++] = B;
    while (n % 4) s->idx[n++] = B + 1;
    snn_w1_back_pair(w0, w1, dc, s->idx, n, s->out, pf, npf, g->nhid, g->ld);
    for (int k = 0; k < nb; k++) {
        const int b = s->idx[k];
        if (act[(size_t)b * npos + p]) back[(size_t)b * nconv + i] = s->out[2 * k];
        if (act[(size_t)b * npos + p + 1])
            back[(size_t)b * nconv + i + 1] = s->out[2 * k + 1];
    }
    total[i] = s->out[2 * nb];
    total[i + 1] = s->out[2 * nb + 1];
}

/* Add c[b] * d[b] of the listed samples to the 8*NV-column gradient g of one row. */
#define SNN_W1_GRAD_ADD(G, NZB, NZC, N) do {                                              \
    const float *db_ = dk + (size_t)(NZB)[N] * bw;                                        \
    const snn_w8 cb_ = zero + (NZC)[N];                                                   \
    for (int q = 0; q < SNN_W1_NV; q++) G[q] += cb_ * snn_w_ld(db_ + 8 * q);              \
} while (0)

/* Gradient and optimiser step (RULE: 1 Adam, 0 SGD) of 8*NV columns (w) of two rows of
   one block, whose nonzero inputs are nzb/nzc[0 .. nn[0]) and nzb/nzc[B .. B + nn[1]).
   The two rows' sums run in lockstep: their independent chains hide the add latency. A
   macro so that NV and the rule are constants: the gradient stays in registers and the
   step has no branch. */
#define SNN_DEF_W1_PAIR(NV, RULE, NAME)                                                    \
static inline snn_w8i NAME(float *w, float *m, float *v, int bw, const float *dk, int B,  \
        const int32_t *nzb, const float *nzc, const int *nn, const snn_w1_opt *o) {        \
    enum { SNN_W1_NV = NV };                                                               \
    const snn_w8 zero = {0}, one = zero + 1.0f;                                            \
    /* a copy: the stores through w, m and v may alias *o, which would force reloads */    \
    const snn_w1_opt c = *o;                                                               \
    const int32_t *b0 = nzb, *b1 = nzb + B;                                                \
    const float *c0 = nzc, *c1 = nzc + B;                                                  \
    const int n0 = nn[0], n1 = nn[1], nm = n0 < n1 ? n0 : n1;                              \
    snn_w8 g0[NV], g1[NV];                                                                 \
    for (int q = 0; q < NV; q++) g0[q] = g1[q] = zero;                                     \
    int n = 0;                                                                             \
    for (; n < nm; n++) { SNN_W1_GRAD_ADD(g0, b0, c0, n); SNN_W1_GRAD_ADD(g1, b1, c1, n); } \
    for (int n_ = n; n_ < n0; n_++) SNN_W1_GRAD_ADD(g0, b0, c0, n_);                       \
    for (; n < n1; n++) SNN_W1_GRAD_ADD(g1, b1, c1, n);                                    \
    snn_w8i bad = (snn_w8i)zero;                                                           \
    for (int q = 0; q < NV; q++) {                                                         \
        bad |= ((g0[q] - g0[q]) != zero) | ((g1[q] - g1[q]) != zero);                      \
        if (RULE) {                                                                        \
            snn_adam8(w + 8 * q, m + 8 * q, v + 8 * q, g0[q], c.b1, c.omb1, c.b2, c.omb2,  \
                      c.step_size, c.rbc2, c.eps);                                          \
            snn_adam8(w + bw + 8 * q, m + bw + 8 * q, v + bw + 8 * q, g1[q], c.b1, c.omb1, \
                      c.b2, c.omb2, c.step_size, c.rbc2, c.eps);                            \
        } else {                                                                           \
            const snn_w8 vr = one * c.rate, vd = one * c.decay;                            \
            snn_w_st(w + 8 * q, (snn_w_ld(w + 8 * q) - vr * g0[q]) * vd);                  \
            snn_w_st(w + bw + 8 * q, (snn_w_ld(w + bw + 8 * q) - vr * g1[q]) * vd);        \
        }                                                                                  \
    }                                                                                      \
    return bad;                                                                            \
}
SNN_DEF_W1_PAIR(2, 0, snn_w1_sgd_16)
SNN_DEF_W1_PAIR(4, 0, snn_w1_sgd_32)
SNN_DEF_W1_PAIR(2, 1, snn_w1_adam_16)
SNN_DEF_W1_PAIR(4, 1, snn_w1_adam_32)

/* Gradient and step of two rows (nonzero lists nzb, nzc, nn as above) over the sub
   columns at offset off of W (and M, V) and dk of d. */
static inline snn_w8i snn_w1_pair(float *W, float *M, float *V, size_t off, int bw, int sub,
                                  const float *dk, int B, const int32_t *nzb,
                                  const float *nzc, const int *nn, const snn_w1_opt *o) {
    if (o->adam)
        return sub == 32
            ? snn_w1_adam_32(W + off, M + off, V + off, bw, dk, B, nzb, nzc, nn, o)
            : snn_w1_adam_16(W + off, M + off, V + off, bw, dk, B, nzb, nzc, nn, o);
    return sub == 32 ? snn_w1_sgd_32(W + off, NULL, NULL, bw, dk, B, nzb, nzc, nn, o)
                     : snn_w1_sgd_16(W + off, NULL, NULL, bw, dk, B, nzb, nzc, nn, o);
}

static int64_t snn_w1_count_bad(snn_w8i bad) {
    int64_t n = 0;
    for (int l = 0; l < 8; l++) n += bad[l] != 0;
    return n;
}

/* The nonzero inputs of rows i0 .. i0+nr-1 of c^T: for row i0+r, the samples
   nzb[r*B .. r*B+nn[r]) (ascending) and their values nzc. */
static void snn_w1_nonzeros(const float *c, int B, int i0, int nr, int32_t *nzb,
                            float *nzc, int *nn, int nconv) {
    for (int r = 0; r < nr; r++) {
        /* branch-free: ~20 % of c is nonzero, in no pattern a predictor could learn; the
           write at n when x is zero is harmless (n <= b < B: inside the row's B slots,
           then overwritten or past nn[r]) */
        int32_t *rb = nzb + (size_t)r * B;
        float *rc = nzc + (size_t)r * B;
        int n = 0;
        for (int b = 0; b < B; b++) {
            const float x = c[(size_t)b * nconv + i0 + r];
            rb[n] = b;
            rc[n] = x;
            n += x != 0.0f;
        }
        nn[r] = n;
    }
}

/* Gradient and step of rows i0 .. i1-1 (an even count) of block k, whose nonzero lists
   start at nzb, nzc, nn (row i0 first; snn_w1_nonzeros). For the step without back
   product the block's columns of d (B x bw, 8 KiB at B = 64, bw = 32) stay in L1 for
   all of these rows, which stream through in memory order. */
static snn_w8i snn_w1_rows(float *W, float *M, float *V, int bw, int k, int i0, int i1,
                           const float *d, int B, const int32_t *nzb, const float *nzc,
                           const int *nn, const snn_w1_opt *o, int nconv) {
    const snn_w8 zero = {0};
    snn_w8i bad = (snn_w8i)zero;
    const int sub = bw % 32 == 0 ? 32 : 16;
    for (int r = 0; r < i1 - i0; r += 2)
        for (int j = 0; j < bw; j += sub)
            bad |= snn_w1_pair(W, M, V, ((size_t)k * nconv + i0 + r) * bw + j, bw, sub,
                               d + (size_t)k * B * bw + j, B, nzb + (size_t)r * B,
                               nzc + (size_t)r * B, nn + r, o);
    return bad;
}

/* snn_w1_rows as a work item of the step without back product; returns the count of
   non-finite gradient lanes. */
static int64_t snn_w1_block(float *W, float *M, float *V, int bw, int k, int i0, int i1,
                            const float *d, int B, const int32_t *nzb, const float *nzc,
                            const int *nn, const snn_w1_opt *o, int nconv) {
    return snn_w1_count_bad(snn_w1_rows(W, M, V, bw, k, i0, i1, d, B, nzb, nzc, nn, o,
                                        nconv));
}

/* Rows i0 .. i0+SNN_W1_ROWS-1 of W1 across all blocks, for the step with the back
   product (without it: snn_w1_block): back product, then gradient and step block by
   block (the tile's rows, 2 KiB per block and stream, are still in L2 from the back
   product). Returns a count that is nonzero if a gradient element was NaN or infinite. */
static int64_t snn_w1_tile(float *W, float *M, float *V, int nblk, int bw, int i0,
                           const float *c, const float *d, const float *dc, int B,
                           const uint8_t *act, float *back, float *total,
                           snn_w1_scratch *s, const snn_w1_opt *o, const snn_w1_geom *g) {
    int nn[SNN_W1_ROWS];
    snn_w1_nonzeros(c, B, i0, SNN_W1_ROWS, s->nzb, s->nzc, nn, g->nconv);
    snn_w1_gather(W + (size_t)i0 * bw, nblk, bw, s->rows, g);
    /* Adam's phase below streams the tile's m and v from memory while the back product
       is bound by arithmetic: prefetching them during the back product overlaps the two
       (~5 % of this kernel on 2 threads). The list: per block, the tile's run of m and of
       v (SNN_W1_ROWS * bw floats each) in chunks of SNN_W1_PFQ lines, handed to the
       back product one pair of chunks per 4-sample group. */
    const char **pfl = s->pfl;          /* s->npf entries: 2 x nblk x chunks of the run */
    int npl = 0;
    const size_t tb = (size_t)SNN_W1_ROWS * bw * sizeof(float);
    for (int k = 0; k < nblk; k++) {
        const size_t base = ((size_t)k * g->nconv + i0) * bw;
        for (size_t o = 0; o < tb; o += 64 * SNN_W1_PFQ) {
            pfl[npl++] = (const char *)(M + base) + o;
            pfl[npl++] = (const char *)(V + base) + o;
        }
    }
    int used = 0;                       /* chunk pairs handed out, evenly per row pair */
    const int nslot = npl / 2;
    for (int r = 0; r < SNN_W1_ROWS; r += 2) {
        const int take = (nslot - used) / ((SNN_W1_ROWS - r) / 2);
        snn_w1_back_rows(s->rows + (size_t)r * g->ld,
                         s->rows + (size_t)(r + 1) * g->ld, dc, B, act, i0 + r, back,
                         total, s, pfl + 2 * used, take, g);
        used += take;
    }
    const snn_w8 zero = {0};
    snn_w8i bad = (snn_w8i)zero;
    for (int k = 0; k < nblk; k++)
        bad |= snn_w1_rows(W, M, V, bw, k, i0, i0 + SNN_W1_ROWS, d, B, s->nzb, s->nzc, nn,
                           o, g->nconv);
    return snn_w1_count_bad(bad);
}

#endif /* SNN_CONVSNN_W1_H */
