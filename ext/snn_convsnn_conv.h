/* C kernels of snnfast._convsnn_conv (the Cython module ext/_convsnn_conv.pyx is only their binding). */
#ifndef SNN_CONVSNN_CONV_H
#define SNN_CONVSNN_CONV_H
#include "snn_alloc.h"   /* snn_aligned_alloc: per-thread scratch */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX__)
#include <immintrin.h>
#endif
/* 8-lane generic vectors: GCC/clang map them onto AVX (or pairs of SSE registers). */
typedef float snn_v8f __attribute__((vector_size(32)));
typedef int32_t snn_v8i __attribute__((vector_size(32)));

static inline snn_v8f snn_ld8(const float *p) { snn_v8f x; memcpy(&x, p, 32); return x; }
static inline void snn_st8(float *p, snn_v8f x) { memcpy(p, &x, 32); }

static inline unsigned snn_mask8(snn_v8i m) {
#if defined(__AVX__)
    return (unsigned)_mm256_movemask_ps((__m256)m);
#else
    unsigned bits = 0;
    for (int i = 0; i < 8; i++) bits |= (unsigned)(m[i] & 1) << i;
    return bits;
#endif
}


/* The conv layer's sizes, from the network description (snnfast._convsnn_kernels.Geometry):
   one input plane H x W, nc output channels (a multiple of 8: the channels of a position
   are nc/8 vectors), a k x k kernel with stride s, no padding; OH x OW output positions,
   npos = OH*OW of them (a multiple of 8: the LIF works on groups of 8 positions), and mt
   the most output positions one input pixel reaches (ceil(k/s)^2). */
typedef struct { int H, W, nc, k, s, OH, OW, npos, mt; } snn_conv_geom;

/* The first output index whose window (stride s, size k) holds input index r. */
static inline int snn_first_out(int r, int k, int s) {
    return r - k + 1 <= 0 ? 0 : (r - k + s) / s;
}

/* Per pixel p: the output positions its spike reaches and the tap it meets there, as
   float offsets into I[pos][nc] and wT[tap][nc]: dst/src[p*mt .. p*mt + n[p]). 16-bit, so
   that the tables of a 28 x 28 input stay in L1 with the layer's state (int32 offsets cost
   the conv ~10 %), and pre-multiplied by nc, so that the scatter adds them as they are
   (indices scaled in the loop cost ~8 %): the caller checks nc*npos and nc*k*k <= 65536.
   Built once per size (H*W*mt entries). */
static void snn_conv_tables(const snn_conv_geom *g, uint16_t *dst, uint16_t *src, uint8_t *n) {
    for (int p = 0; p < g->H * g->W; p++) {
        const int r = p / g->W, c = p % g->W;
        int m = 0;
        /* only the outputs whose window holds the pixel: y in [first, r / s], likewise x */
        for (int y = snn_first_out(r, g->k, g->s); y < g->OH && g->s * y <= r; y++)
            for (int x = snn_first_out(c, g->k, g->s); x < g->OW && g->s * x <= c; x++) {
                const int ky = r - g->s * y, kx = c - g->s * x;
                dst[(size_t)p * g->mt + m] = (uint16_t)((y * g->OW + x) * g->nc);
                src[(size_t)p * g->mt + m] = (uint16_t)((ky * g->k + kx) * g->nc);
                m++;
            }
        n[p] = (uint8_t)m;
    }
}

/* Add the taps of every input spike (raster order) to I[pos*nc + c]. Always inlined into
   snn_conv_scatter, whose nc == 16 case makes nc a compile-time constant (two vectors per
   tap, as fast as the code written for 16 channels); other channel counts take the
   loop. */
static inline __attribute__((always_inline)) void snn_conv_scatter_n(
        float *I, const float *wT, const uint16_t *pix, int n, const uint16_t *dst_t,
        const uint16_t *src_t, const uint8_t *cnt, int mt, int nc) {
    for (int k = 0; k < n; k++) {
        const int p = pix[k], m = cnt[p];
        const uint16_t *dst = dst_t + (size_t)p * mt, *src = src_t + (size_t)p * mt;
        for (int e = 0; e < m; e++) {
            float *d = I + dst[e];
            const float *w = wT + src[e];
            for (int h = 0; h < nc; h += 8) snn_st8(d + h, snn_ld8(d + h) + snn_ld8(w + h));
        }
    }
}

static void snn_conv_scatter(float *I, const float *wT, const uint16_t *pix, int n,
                             const uint16_t *dst, const uint16_t *src, const uint8_t *cnt,
                             int mt, int nc) {
    /* compile-time cases of the default preset's conv: 16 channels (two vectors per tap)
       and, for its 5x5 stride-2 kernel, at most 9 positions per pixel; mt and nc still
       come from the description */
    if (nc == 16 && mt == 9) snn_conv_scatter_n(I, wT, pix, n, dst, src, cnt, 9, 16);
    else if (nc == 16) snn_conv_scatter_n(I, wT, pix, n, dst, src, cnt, mt, 16);
    else snn_conv_scatter_n(I, wT, pix, n, dst, src, cnt, mt, nc);
}

/* Dense-gather alternative to the scatter (kept for the benchmark that chose between
   them): per output position, OR the k x k window of the input bitmap into a tap mask
   and add the taps of its set bits (ascending = (ky, kx) order) in registers. Needs
   W <= 32 and k*k <= 32 (one 32-bit word per input row and per tap mask; checked by the
   caller); rows: H words of scratch. */
static void snn_conv_gather(float *I, const float *wT, const uint16_t *pix, int n,
                            const snn_conv_geom *g, uint32_t *rows) {
    const int nc = g->nc, k = g->k;
    const uint32_t kmask = k >= 32 ? 0xFFFFFFFFu : (1u << k) - 1u;
    memset(rows, 0, (size_t)g->H * sizeof *rows);
    for (int q = 0; q < n; q++) rows[pix[q] / g->W] |= 1u << (pix[q] % g->W);
    const snn_v8f zero = {0};
    for (int y = 0; y < g->OH; y++) {
        for (int x = 0; x < g->OW; x++) {
            uint32_t m0 = 0;
            for (int ky = 0; ky < k; ky++)
                m0 |= ((rows[g->s * y + ky] >> (g->s * x)) & kmask) << (k * ky);
            for (int h = 0; h < nc; h += 8) {
                snn_v8f a = zero;
                for (uint32_t m = m0; m; m &= m - 1)
                    a += snn_ld8(wT + __builtin_ctz(m) * nc + h);
                snn_st8(I + (y * g->OW + x) * nc + h, a);
            }
        }
    }
}

/* 8x8 bit-matrix transpose: bit c of byte p -> bit p of byte c (Hacker's Delight 7-3). */
static inline uint64_t snn_transpose8(uint64_t x) {
    uint64_t t;
    t = (x ^ (x >> 7)) & 0x00AA00AA00AA00AAull;  x = x ^ t ^ (t << 7);
    t = (x ^ (x >> 14)) & 0x0000CCCC0000CCCCull; x = x ^ t ^ (t << 14);
    t = (x ^ (x >> 28)) & 0x00000000F0F0F0F0ull; x = x ^ t ^ (t << 28);
    return x;
}

/* Conv LIF on the [pos][nc] layout; clears I for the next step. Emits the spikes as
   ascending j = c*npos + pos: per group of 8 positions and vector of 8 channels, the
   [pos][c] spike bits become per-channel bitsets (chan: nc x nw words, nw = npos/64
   rounded up; scratch) through bit transposes, and each 64-bit word is unpacked with a
   fixed 8-step loop (no data-dependent branch unless a word holds > 8 spikes). Always
   inlined into snn_conv_lif, whose nc == 16 case makes the channel loop constant. */
static inline __attribute__((always_inline)) int snn_conv_lif_n(
        float *v, float *I, const float *bias, float beta, float thr, uint16_t *out,
        int nc, int npos, uint64_t *chan) {
    const int nw = (npos + 63) / 64, nconv = nc * npos;
    memset(chan, 0, (size_t)nc * nw * sizeof *chan);
    const snn_v8f one = {1, 1, 1, 1, 1, 1, 1, 1};
    const snn_v8f vb = one * beta, vt = one * thr, zero = one - one;
    uint64_t any = 0;
    /* 16 channels (two vectors) at a time, the 8 positions of a group in turn: two
       independent vectors per position */
    for (int h0 = 0; h0 < nc; h0 += 16) {
        const int nh = h0 + 8 < nc ? 2 : 1;
        const snn_v8f b0 = snn_ld8(bias + h0), b1 = nh > 1 ? snn_ld8(bias + h0 + 8) : zero;
        for (int g = 0; g < npos / 8; g++) {
            uint64_t lo = 0, hi = 0;
            for (int q = 0; q < 8; q++) {
                const int pos = g * 8 + q;
                unsigned bits = 0;
                for (int h = 0; h < nh; h++) {
                    float *pv = v + pos * nc + h0 + h * 8, *pi = I + pos * nc + h0 + h * 8;
                    snn_v8f cur = snn_ld8(pi) + (h ? b1 : b0);
                    snn_v8f vv = vb * snn_ld8(pv);
                    vv = vv + cur;
                    snn_v8i m = vv > vt;
                    vv = (snn_v8f)((snn_v8i)vv & ~m);
                    snn_st8(pv, vv);
                    snn_st8(pi, zero);
                    bits |= snn_mask8(m) << (8 * h);
                }
                lo |= (uint64_t)(bits & 0xFFu) << (8 * q);
                hi |= (uint64_t)(bits >> 8) << (8 * q);
            }
            any |= lo | hi;
            lo = snn_transpose8(lo);
            hi = snn_transpose8(hi);
            const int w = g >> 3, sh = 8 * (g & 7);
            for (int c = 0; c < 8; c++) {
                chan[(size_t)(h0 + c) * nw + w] |= ((lo >> (8 * c)) & 0xFFu) << sh;
                if (nh > 1) chan[(size_t)(h0 + c + 8) * nw + w] |= ((hi >> (8 * c)) & 0xFFu) << sh;
            }
        }
    }
    int n = 0;
    if (!any) return 0;
    for (int c = 0; c < nc; c++) {
        for (int w = 0; w < nw; w++) {
            uint64_t word = chan[(size_t)c * nw + w];
            const int base = c * npos + w * 64, pc = __builtin_popcountll(word);
            if (pc <= 8 && n + 8 <= nconv) {
                /* may write up to 8 - pc junk entries past n: inside the row, and either
                   overwritten by the next spikes or beyond spk_cnt (documented) */
                for (int i = 0; i < 8; i++) {
                    out[n + i] = (uint16_t)(base + (word ? __builtin_ctzll(word) : 0));
                    word &= word - 1;
                }
            } else {
                for (int i = 0; word; i++) {
                    out[n + i] = (uint16_t)(base + __builtin_ctzll(word));
                    word &= word - 1;
                }
            }
            n += pc;
        }
    }
    return n;
}

/* not inlined into the step loop (as gcc chose for the code before sizes were arguments):
   inlined, its registers crowd the scatter loop */
static __attribute__((noinline)) int snn_conv_lif(float *v, float *I, const float *bias, float beta, float thr,
                        uint16_t *out, int nc, int npos, uint64_t *chan) {
    /* compile-time cases: the default preset's conv (16 channels at 12 x 12 positions:
       constant loops and a constant-size chan, ~5 % of the conv step), then any 16-channel
       conv; nc and npos still come from the description */
    if (nc == 16 && npos == 144)
        return snn_conv_lif_n(v, I, bias, beta, thr, out, 16, 144, chan);
    if (nc == 16) return snn_conv_lif_n(v, I, bias, beta, thr, out, 16, npos, chan);
    return snn_conv_lif_n(v, I, bias, beta, thr, out, nc, npos, chan);
}

#endif /* SNN_CONVSNN_CONV_H */
