/* C kernels of snnfast._convsnn_conv (the Cython module ext/_convsnn_conv.pyx is only their binding). */
#ifndef SNN_CONVSNN_CONV_H
#define SNN_CONVSNN_CONV_H
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

static inline void *snn_aligned_alloc(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 64) != 0) return NULL;
    return p;
}

/* Per pixel: the output positions its spike reaches and the tap it meets there, as
   float offsets into I[pos][16] and wT[tap][16]; filled once at import. */
static int16_t snn_tap_dst[784][9], snn_tap_src[784][9];
static uint8_t snn_tap_n[784];

static void snn_conv_init_tables(void) {
    for (int p = 0; p < 784; p++) {
        int r = p / 28, c = p % 28, n = 0;
        for (int y = 0; y < 12; y++)
            for (int x = 0; x < 12; x++) {
                int ky = r - 2 * y, kx = c - 2 * x;
                if (ky < 0 || ky > 4 || kx < 0 || kx > 4) continue;
                snn_tap_dst[p][n] = (int16_t)((y * 12 + x) * 16);
                snn_tap_src[p][n] = (int16_t)((ky * 5 + kx) * 16);
                n++;
            }
        snn_tap_n[p] = (uint8_t)n;
    }
}

/* Add the taps of every input spike (raster order) to I[pos*16 + c]. */
static inline void snn_conv_scatter(float *I, const float *wT, const uint16_t *pix, int n) {
    for (int k = 0; k < n; k++) {
        const int p = pix[k], m = snn_tap_n[p];
        const int16_t *dst = snn_tap_dst[p], *src = snn_tap_src[p];
        for (int e = 0; e < m; e++) {
            float *d = I + dst[e];
            const float *w = wT + src[e];
            snn_st8(d, snn_ld8(d) + snn_ld8(w));
            snn_st8(d + 8, snn_ld8(d + 8) + snn_ld8(w + 8));
        }
    }
}

/* Dense-gather alternative to the scatter (kept for the benchmark that chose between
   them): per output position, OR the 5x5 window of the input bitmap into a 25-bit tap
   mask and add the taps of its set bits (ascending = (ky, kx) order) in registers. */
static inline void snn_conv_gather(float *I, const float *wT, const uint16_t *pix, int n) {
    uint32_t rows[28] = {0};
    for (int k = 0; k < n; k++) rows[pix[k] / 28] |= 1u << (pix[k] % 28);
    const snn_v8f zero = {0};
    for (int y = 0; y < 12; y++) {
        for (int x = 0; x < 12; x++) {
            uint32_t m = 0;
            for (int ky = 0; ky < 5; ky++)
                m |= ((rows[2 * y + ky] >> (2 * x)) & 31u) << (5 * ky);
            snn_v8f a0 = zero, a1 = zero;
            while (m) {
                const float *w = wT + __builtin_ctz(m) * 16;
                a0 += snn_ld8(w);
                a1 += snn_ld8(w + 8);
                m &= m - 1;
            }
            snn_st8(I + (y * 12 + x) * 16, a0);
            snn_st8(I + (y * 12 + x) * 16 + 8, a1);
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

/* Conv LIF on the [pos][16] layout; clears I for the next step. Emits the spikes as
   ascending j = c*144 + pos: the [pos][c] spike bits become per-channel bitsets through
   bit transposes, and each 64-bit word is unpacked with a fixed 8-step loop (no
   data-dependent branch unless a word holds > 8 spikes). */
static inline int snn_conv_lif(float *v, float *I, const float *bias, float beta, float thr,
                               uint16_t *out) {
    uint64_t chan[16][3];          /* 144 bits per channel: bit pos % 64 of word pos / 64 */
    memset(chan, 0, sizeof chan);
    const snn_v8f one = {1, 1, 1, 1, 1, 1, 1, 1};
    const snn_v8f vb = one * beta, vt = one * thr, zero = one - one;
    const snn_v8f b0 = snn_ld8(bias), b1 = snn_ld8(bias + 8);
    uint64_t any = 0;
    for (int g = 0; g < 18; g++) {
        uint64_t lo = 0, hi = 0;
        for (int q = 0; q < 8; q++) {
            const int pos = g * 8 + q;
            unsigned bits = 0;
            for (int h = 0; h < 2; h++) {
                float *pv = v + pos * 16 + h * 8, *pi = I + pos * 16 + h * 8;
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
            chan[c][w] |= ((lo >> (8 * c)) & 0xFFu) << sh;
            chan[c + 8][w] |= ((hi >> (8 * c)) & 0xFFu) << sh;
        }
    }
    int n = 0;
    if (!any) return 0;
    for (int c = 0; c < 16; c++) {
        for (int w = 0; w < 3; w++) {
            uint64_t word = chan[c][w];
            const int base = c * 144 + w * 64, pc = __builtin_popcountll(word);
            if (pc <= 8 && n + 8 <= 2304) {
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

#endif /* SNN_CONVSNN_CONV_H */
