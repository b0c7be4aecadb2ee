/* C kernels of snnfast._conv_rates (the Cython module ext/_conv_rates.pyx is only their binding). */
#ifndef SNN_CONV_RATES_H
#define SNN_CONV_RATES_H
#include <string.h>
typedef float snn_r8 __attribute__((vector_size(32)));
static inline snn_r8 snn_r_ld(const float *p) { snn_r8 x; memcpy(&x, p, 32); return x; }
static inline void snn_r_st(float *p, snn_r8 x) { memcpy(p, &x, 32); }

/* One sample. wt: taps x channels (25 x 16), so the 16 channels of a tap are 2 vectors.
   Two neighbouring positions at a time: each output's 25 additions form one dependency
   chain, and four independent chains keep the adder busy. */
static void snn_rate_currents(const float *x, const float *wt, const float *bias,
                              float *out) {
    const snn_r8 zero = {0};
    const snn_r8 b0 = snn_r_ld(bias), b1 = snn_r_ld(bias + 8);
    for (int y = 0; y < 12; y++)
        for (int xo = 0; xo < 12; xo += 2) {
            snn_r8 a0 = zero, a1 = zero, c0 = zero, c1 = zero;
            for (int ky = 0; ky < 5; ky++) {
                const float *row = x + (2 * y + ky) * 28 + 2 * xo;
                for (int kx = 0; kx < 5; kx++) {
                    const snn_r8 v = zero + row[kx], u = zero + row[kx + 2];
                    const float *w = wt + (ky * 5 + kx) * 16;
                    const snn_r8 w0 = snn_r_ld(w), w1 = snn_r_ld(w + 8);
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
            const int p = y * 12 + xo;
            for (int c = 0; c < 8; c++) {
                out[c * 144 + p] = a0[c];
                out[(c + 8) * 144 + p] = a1[c];
                out[c * 144 + p + 1] = c0[c];
                out[(c + 8) * 144 + p + 1] = c1[c];
            }
        }
}

/* One sample's weight gradient, taps x channels (25 x 16), overwritten. delta is first
   transposed to positions x channels, so that each tap's 16 sums stay in two registers
   while the 144 positions stream past. */
static void snn_rate_wgrad(const float *x, const float *delta, float *g) {
    const snn_r8 zero = {0};
    float dt[144 * 16];
    for (int c = 0; c < 16; c++)
        for (int p = 0; p < 144; p++) dt[p * 16 + c] = delta[c * 144 + p];
    /* taps kx and kx + 1 (or kx alone at kx = 4) at a time: four independent chains */
    for (int ky = 0; ky < 5; ky++)
        for (int kx = 0; kx < 5; kx += 2) {
            const int two = kx + 1 < 5;
            snn_r8 a0 = zero, a1 = zero, c0 = zero, c1 = zero;
            for (int y = 0; y < 12; y++) {
                const float *row = x + (2 * y + ky) * 28 + kx;
                for (int xo = 0; xo < 12; xo++) {
                    const snn_r8 v = zero + row[2 * xo], u = zero + row[2 * xo + two];
                    const float *d = dt + (y * 12 + xo) * 16;
                    const snn_r8 d0 = snn_r_ld(d), d1 = snn_r_ld(d + 8);
                    a0 += d0 * v;
                    a1 += d1 * v;
                    c0 += d0 * u;
                    c1 += d1 * u;
                }
            }
            snn_r_st(g + (ky * 5 + kx) * 16, a0);
            snn_r_st(g + (ky * 5 + kx) * 16 + 8, a1);
            if (two) {
                snn_r_st(g + (ky * 5 + kx + 1) * 16, c0);
                snn_r_st(g + (ky * 5 + kx + 1) * 16 + 8, c1);
            }
        }
}

/* Per sample, the partials are its weight gradient (400) and its bias lane sums (16). */
enum { SNN_R_PART = 416 };

/* sum[k] = sum over b ascending of part[b*SNN_R_PART + k] (from 0): the per-sample
   partials in sample order, so the sum does not depend on the thread count. */
static void snn_rate_part_sum(const float *part, int B, float *sum) {
    for (int k = 0; k < SNN_R_PART; k++) sum[k] = 0.0f;
    for (int b = 0; b < B; b++)
        for (int k = 0; k < SNN_R_PART; k++) sum[k] += part[(size_t)b * SNN_R_PART + k];
}

/* out[p] = 1 if any of the 25 inputs of position p is nonzero, else 0: where the
   current is the bias alone. Columns of 5 rows first, then runs of 5 columns. */
static void snn_patch_active(const float *x, unsigned char *out) {
    for (int y = 0; y < 12; y++) {
        unsigned char col[28];
        for (int c = 0; c < 28; c++) {
            int any = 0;
            for (int ky = 0; ky < 5; ky++) any |= x[(2 * y + ky) * 28 + c] != 0.0f;
            col[c] = (unsigned char)any;
        }
        for (int xo = 0; xo < 12; xo++)
            out[y * 12 + xo] = col[2 * xo] | col[2 * xo + 1] | col[2 * xo + 2]
                               | col[2 * xo + 3] | col[2 * xo + 4];
    }
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

/* The lane sum of one channel's 144 positions of v (see the float order above) */
static float snn_r_sum144(const float *v) {
    snn_r8 acc = snn_r_ld(v);
    for (int p = 8; p < 144; p += 8) acc += snn_r_ld(v + p);
    return snn_r_lanesum(acc);
}

/* One sample of the surrogate conv layer's backward pass: its weight gradient g (25 x
   16, overwritten) and the lane sums u[16] of the bias gradient's first part (see
   above). phib[c] = phi'(bias[c]). */
static void snn_rate_backward(const float *x, const float *wt, const float *bias,
                              const float *back, float scale, float center, float slope,
                              float half, const float *phib, float *g, float *u) {
    float a[2304], delta[2304];
    const snn_r8 zero = {0};
    snn_rate_currents(x, wt, bias, a);
    for (int c = 0; c < 16; c++) {
        snn_r8 acc = zero;
        for (int p = 0; p < 144; p += 8) {
            const int i = c * 144 + p;
            const snn_r8 ph = snn_r_dphi(snn_r_ld(a + i), center, slope, half);
            const snn_r8 br = snn_r_ld(back + i) * scale;
            snn_r_st(delta + i, br * ph);
            acc += br * (ph - phib[c]);
        }
        u[c] = snn_r_lanesum(acc);
    }
    snn_rate_wgrad(x, delta, g);
}

#endif /* SNN_CONV_RATES_H */
