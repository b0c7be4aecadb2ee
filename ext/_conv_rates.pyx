# The 16x5x5 stride-2 convolution on real-valued input rates, and its weight gradient: the
# two conv pieces of the surrogate-gradient backward pass.
#
# Called only through snnfast._convsnn_kernels (which validates every argument). OpenMP over
# samples; each sample is computed by one thread in a fixed order and the per-sample weight
# gradients are summed in sample order afterwards, so nothing depends on the thread count.
# Why not BLAS: as a matrix product both need the (B, 144, 25) patch matrix gathered first,
# which costs more than the 57 600 multiply-adds per sample; here the 16 channels are two
# vectors, multiplied by one broadcast input value per (position, tap).
# Float order (-ffp-contract=off: every product and sum rounded on its own):
#   currents[b, c*144 + p] = (sum over taps k ascending of w[c, k] * x[b, pix(p, k)]) + bias[c]
#   gw[c, k] = sum over b ascending of (sum over p ascending of delta[b, c*144+p] * x[b, pix(p, k)])
from cython.parallel cimport prange
from libc.stdlib cimport free, malloc

cdef extern from *:
    """
    #include <string.h>
    typedef float snn_r8 __attribute__((vector_size(32)));
    static inline snn_r8 snn_r_ld(const float *p) { snn_r8 x; memcpy(&x, p, 32); return x; }
    static inline void snn_r_st(float *p, snn_r8 x) { memcpy(p, &x, 32); }

    /* One sample. wt: taps x channels (25 x 16), so the 16 channels of a tap are 2 vectors. */
    static void snn_rate_currents(const float *x, const float *wt, const float *bias,
                                  float *out) {
        const snn_r8 zero = {0};
        const snn_r8 b0 = snn_r_ld(bias), b1 = snn_r_ld(bias + 8);
        for (int y = 0; y < 12; y++)
            for (int xo = 0; xo < 12; xo++) {
                snn_r8 a0 = zero, a1 = zero;
                for (int ky = 0; ky < 5; ky++)
                    for (int kx = 0; kx < 5; kx++) {
                        const snn_r8 v = zero + x[(2 * y + ky) * 28 + 2 * xo + kx];
                        const float *w = wt + (ky * 5 + kx) * 16;
                        a0 += snn_r_ld(w) * v;
                        a1 += snn_r_ld(w + 8) * v;
                    }
                a0 += b0;
                a1 += b1;
                const int p = y * 12 + xo;
                for (int c = 0; c < 8; c++) {
                    out[c * 144 + p] = a0[c];
                    out[(c + 8) * 144 + p] = a1[c];
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
        for (int ky = 0; ky < 5; ky++)
            for (int kx = 0; kx < 5; kx++) {
                snn_r8 a0 = zero, a1 = zero;
                for (int y = 0; y < 12; y++)
                    for (int xo = 0; xo < 12; xo++) {
                        const snn_r8 v = zero + x[(2 * y + ky) * 28 + 2 * xo + kx];
                        const float *d = dt + (y * 12 + xo) * 16;
                        a0 += snn_r_ld(d) * v;
                        a1 += snn_r_ld(d + 8) * v;
                    }
                snn_r_st(g + (ky * 5 + kx) * 16, a0);
                snn_r_st(g + (ky * 5 + kx) * 16 + 8, a1);
            }
    }
    """
    void snn_rate_currents(const float *x, const float *wt, const float *bias,
                           float *out) nogil
    void snn_rate_wgrad(const float *x, const float *delta, float *g) nogil


def rate_currents_into(const float[:, ::1] x, const float[:, ::1] wt, const float[::1] bias,
                       float[:, ::1] out, int n_threads):
    """Conv currents of input rates x (B, 784) into out (B, 2304); wt is (25, 16)."""
    cdef Py_ssize_t b, B = x.shape[0]
    for b in prange(B, nogil=True, schedule='static', num_threads=n_threads):
        snn_rate_currents(&x[b, 0], &wt[0, 0], &bias[0], &out[b, 0])


def rate_wgrad_into(const float[:, ::1] x, const float[:, ::1] delta, float[:, ::1] gw,
                    int n_threads):
    """Weight gradient (25, 16) of the conv given dL/d currents delta (B, 2304), into gw."""
    cdef Py_ssize_t b, k, B = x.shape[0]
    cdef float *part = <float *>malloc(B * 400 * sizeof(float)) if B else NULL
    if B and part == NULL:
        raise MemoryError("conv weight gradient: cannot allocate per-sample partials")
    try:
        for b in prange(B, nogil=True, schedule='static', num_threads=n_threads):
            snn_rate_wgrad(&x[b, 0], &delta[b, 0], part + b * 400)
        gw[:, :] = 0
        for b in range(B):       # sample order: the sum does not depend on the thread count
            for k in range(400):
                gw[k // 16, k % 16] += part[b * 400 + k]
    finally:
        free(part)
