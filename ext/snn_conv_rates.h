/* C kernels of snnfast._conv_rates (the Cython module ext/_conv_rates.pyx is only their binding). */
#ifndef SNN_CONV_RATES_H
#define SNN_CONV_RATES_H
#include "snn_alloc.h"   /* snn_aligned_alloc: per-thread scratch */
#include <stddef.h>
#include <string.h>
typedef float snn_r8 __attribute__((vector_size(32)));
static inline snn_r8 snn_r_ld(const float *p) { snn_r8 x; memcpy(&x, p, 32); return x; }
static inline void snn_r_st(float *p, snn_r8 x) { memcpy(p, &x, 32); }
#define SNN_R_INLINE static inline __attribute__((always_inline))

/* The conv layer's sizes, from the network description (snnfast._convsnn_kernels.Geometry):
   one input plane of width W, nc output channels (a multiple of 8), a k x k kernel with
   stride s, OH x OW output positions, npos = OH*OW of them (a multiple of 8). */
typedef struct { int W, nc, k, s, OH, OW, npos; } snn_r_geom;

/* One sample. wt: taps x channels (k*k x nc), so the channels of a tap are nc/8 vectors,
   taken 16 channels (two vectors) at a time. Two neighbouring positions at a time: each
   output's k*k additions form one dependency chain, and four independent chains keep the
   adder busy. nc, k and s are arguments of an always-inlined function so that the caller
   can make them compile-time constants (see snn_rate_backward). */
SNN_R_INLINE void snn_rate_currents_n(const float *x, const float *wt, const float *bias,
                                      float *out, int W, int OH, int OW, int nc, int k,
                                      int s) {
    const snn_r8 zero = {0};
    const int npos = OH * OW;
    for (int h = 0; h < nc; h += 16) {
        const int two = h + 8 < nc;                 /* a second vector of channels */
        const snn_r8 b0 = snn_r_ld(bias + h), b1 = two ? snn_r_ld(bias + h + 8) : zero;
        for (int y = 0; y < OH; y++)
            for (int xo = 0; xo < OW; xo += 2) {
                /* with an odd OW the last position has no partner: its pair's sums are
                   computed from a repeated input and discarded */
                const int pair = xo + 1 < OW, du = pair ? s : 0;
                snn_r8 a0 = zero, a1 = zero, c0 = zero, c1 = zero;
                for (int ky = 0; ky < k; ky++) {
                    const float *row = x + (s * y + ky) * W + s * xo;
                    for (int kx = 0; kx < k; kx++) {
                        const snn_r8 v = zero + row[kx], u = zero + row[kx + du];
                        const float *w = wt + (ky * k + kx) * nc + h;
                        const snn_r8 w0 = snn_r_ld(w), w1 = two ? snn_r_ld(w + 8) : zero;
                        a0 += w0 * v;
                        a1 += w1 * v;
                        c0 += w0 * u;
                        c1 += w1 * u;
                    }
                }
                a0 += b0;
                a1 += b1;
                c0 += b0;
                c1 += b1;
                const int p = y * OW + xo;
                for (int c = 0; c < 8; c++) {
                    out[(h + c) * npos + p] = a0[c];
                    if (two) out[(h + c + 8) * npos + p] = a1[c];
                    if (pair) {
                        out[(h + c) * npos + p + 1] = c0[c];
                        if (two) out[(h + c + 8) * npos + p + 1] = c1[c];
                    }
                }
            }
    }
}

/* One sample's weight gradient, taps x channels (k*k x nc), overwritten. delta is first
   transposed to positions x channels (dt: npos*nc floats of scratch), so that each tap's
   16 sums stay in two registers while the positions stream past. */
SNN_R_INLINE void snn_rate_wgrad_n(const float *x, const float *delta, float *g, float *dt,
                                   int W, int OH, int OW, int nc, int k, int s) {
    const snn_r8 zero = {0};
    const int npos = OH * OW;
    for (int c = 0; c < nc; c++)
        for (int p = 0; p < npos; p++) dt[p * nc + c] = delta[c * npos + p];
    for (int h = 0; h < nc; h += 16) {
        const int two = h + 8 < nc;
        /* taps kx and kx + 1 (or kx alone at kx = k - 1) at a time: four independent chains */
        for (int ky = 0; ky < k; ky++)
            for (int kx = 0; kx < k; kx += 2) {
                const int tw = kx + 1 < k;
                snn_r8 a0 = zero, a1 = zero, c0 = zero, c1 = zero;
                for (int y = 0; y < OH; y++) {
                    const float *row = x + (s * y + ky) * W + kx;
                    for (int xo = 0; xo < OW; xo++) {
                        const snn_r8 v = zero + row[s * xo], u = zero + row[s * xo + tw];
                        const float *d = dt + (y * OW + xo) * nc + h;
                        const snn_r8 d0 = snn_r_ld(d), d1 = two ? snn_r_ld(d + 8) : zero;
                        a0 += d0 * v;
                        a1 += d1 * v;
                        c0 += d0 * u;
                        c1 += d1 * u;
                    }
                }
                snn_r_st(g + (ky * k + kx) * nc + h, a0);
                if (two) snn_r_st(g + (ky * k + kx) * nc + h + 8, a1);
                if (tw) {
                    snn_r_st(g + (ky * k + kx + 1) * nc + h, c0);
                    if (two) snn_r_st(g + (ky * k + kx + 1) * nc + h + 8, c1);
                }
            }
    }
}

/* Per sample, the partials are its weight gradient (k*k*nc) and its bias lane sums (nc). */
static inline int snn_rate_part(const snn_r_geom *g) { return g->k * g->k * g->nc + g->nc; }

/* sum[q] = sum over b ascending of part[b*npart + q] (from 0): the per-sample partials in
   sample order, so the sum does not depend on the thread count. */
static void snn_rate_part_sum(const float *part, int B, int npart, float *sum) {
    for (int q = 0; q < npart; q++) sum[q] = 0.0f;
    for (int b = 0; b < B; b++)
        for (int q = 0; q < npart; q++) sum[q] += part[(size_t)b * npart + q];
}

/* out[p] = 1 if any of the k*k inputs of position p is nonzero, else 0: where the current
   is the bias alone. Columns of k rows first (col: W bytes of scratch), then runs of k
   columns. H is not needed: the rows read are those of the valid positions. */
SNN_R_INLINE void snn_patch_active_n(const float *x, unsigned char *out, unsigned char *col,
                                     int W, int OH, int OW, int k, int s) {
    for (int y = 0; y < OH; y++) {
        for (int c = 0; c < W; c++) {
            int any = 0;
            for (int ky = 0; ky < k; ky++) any |= x[(s * y + ky) * W + c] != 0.0f;
            col[c] = (unsigned char)any;
        }
        for (int xo = 0; xo < OW; xo++) {
            unsigned char any = 0;
            for (int kx = 0; kx < k; kx++) any |= col[s * xo + kx];
            out[y * OW + xo] = any;
        }
    }
}

/* The default preset's conv (one 28 x 28 plane, 5 x 5 kernel, stride 2, 12 x 12 outputs)
   as compile-time constants: the loops unroll and the indices fold (~20 % of these
   kernels' time). Selected at run time by the sizes, which still come from the network
   description; every other size takes the general loops (same float order). */
#define SNN_R_TUNED(g) ((g)->W == 28 && (g)->OH == 12 && (g)->OW == 12 && (g)->k == 5 \
                        && (g)->s == 2)

static void snn_patch_active(const float *x, unsigned char *out, const snn_r_geom *g,
                             unsigned char *col) {
    if (SNN_R_TUNED(g)) snn_patch_active_n(x, out, col, 28, 12, 12, 5, 2);
    else snn_patch_active_n(x, out, col, g->W, g->OH, g->OW, g->k, g->s);
}

typedef int snn_r8i __attribute__((vector_size(32)));

/* phi'(a) of 8 currents, in convsnn_numpy.surrogate's order of operations */
static inline snn_r8 snn_r_dphi(snn_r8 a, float center, float slope, float half) {
    const snn_r8 zero = {0};
    snn_r8 t = a - center;
    t = (snn_r8)((snn_r8i)t & 0x7fffffff);          /* |t| */
    t = t * slope;
    t = t + 1.0f;
    t = t * t;
    return (zero + half) / t;
}

static inline float snn_r_dphi1(float a, float center, float slope, float half) {
    const snn_r8 zero = {0};
    return snn_r_dphi(zero + a, center, slope, half)[0];
}

static inline float snn_r_lanesum(snn_r8 s) {
    float t = s[0];
    for (int l = 1; l < 8; l++) t += s[l];
    return t;
}

/* The lane sum of one channel's npos positions of v (npos a multiple of 8; see the float
   order in ext/_conv_rates.pyx) */
static float snn_r_sum_pos(const float *v, int npos) {
    snn_r8 acc = snn_r_ld(v);
    for (int p = 8; p < npos; p += 8) acc += snn_r_ld(v + p);
    return snn_r_lanesum(acc);
}

/* One sample of the surrogate conv layer's backward pass: its weight gradient g (k*k x
   nc, overwritten) and the lane sums u[nc] of the bias gradient's first part (see
   above). phib[c] = phi'(bias[c]). scr: 3 * nc * npos floats of scratch. */
SNN_R_INLINE void snn_rate_backward_n(const float *x, const float *wt, const float *bias,
                                      const float *back, float scale, float center,
                                      float slope, float half, const float *phib, float *g,
                                      float *u, float *scr, int W, int OH, int OW, int nc,
                                      int k, int s) {
    const int npos = OH * OW;
    float *a = scr, *delta = scr + (size_t)nc * npos, *dt = scr + 2 * (size_t)nc * npos;
    const snn_r8 zero = {0};
    snn_rate_currents_n(x, wt, bias, a, W, OH, OW, nc, k, s);
    for (int c = 0; c < nc; c++) {
        snn_r8 acc = zero;
        for (int p = 0; p < npos; p += 8) {
            const int i = c * npos + p;
            const snn_r8 ph = snn_r_dphi(snn_r_ld(a + i), center, slope, half);
            const snn_r8 br = snn_r_ld(back + i) * scale;
            snn_r_st(delta + i, br * ph);
            acc += br * (ph - phib[c]);
        }
        u[c] = snn_r_lanesum(acc);
    }
    snn_rate_wgrad_n(x, delta, g, dt, W, OH, OW, nc, k, s);
}

static void snn_rate_backward(const float *x, const float *wt, const float *bias,
                              const float *back, float scale, float center, float slope,
                              float half, const float *phib, float *g, float *u,
                              const snn_r_geom *geo, float *scr) {
    /* the default preset's conv (16 channels, SNN_R_TUNED) as constants, then 16-channel
       convs of any size, then the rest */
    if (geo->nc == 16 && SNN_R_TUNED(geo))
        snn_rate_backward_n(x, wt, bias, back, scale, center, slope, half, phib, g, u, scr,
                            28, 12, 12, 16, 5, 2);
    else if (geo->nc == 16)
        snn_rate_backward_n(x, wt, bias, back, scale, center, slope, half, phib, g, u, scr,
                            geo->W, geo->OH, geo->OW, 16, geo->k, geo->s);
    else
        snn_rate_backward_n(x, wt, bias, back, scale, center, slope, half, phib, g, u, scr,
                            geo->W, geo->OH, geo->OW, geo->nc, geo->k, geo->s);
}

#endif /* SNN_CONV_RATES_H */
