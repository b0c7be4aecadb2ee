# The backward pass of the surrogate conv layer (16x5x5, stride 2, on real-valued input
# rates): its currents, phi' of them, and the weight and bias gradients, per sample in one
# pass; and the map of positions whose 5x5 input patch has a nonzero.
#
# Called only through snnfast._convsnn_kernels (which validates every argument). OpenMP over
# samples; each sample is computed by one thread in a fixed order and the per-sample
# gradients are summed in sample order afterwards, so nothing depends on the thread count.
# Why not BLAS: as a matrix product both convolutions need the (B, 144, 25) patch matrix
# gathered first, which costs more than the 57 600 multiply-adds per sample; here the 16
# channels are two vectors, multiplied by one broadcast input value per (position, tap).
# Float order (-ffp-contract=off: every product and sum rounded on its own):
#   a[b, c*144 + p] = (sum over taps k ascending of w[c, k] * x[b, pix(p, k)]) + bias[c]
#   phi'(a)     = (0.5*slope) / (t * t), t = (|a - center| * slope) + 1 (convsnn_numpy.surrogate)
#   delta[b, i] = (back[b, i] * scale) * phi'(a[b, i])
#   gw[c, k] = sum over b ascending of
#              (sum over p ascending of delta[b, c*144+p] * x[b, pix(p, k)])
#   gb[c]    = (sum over b ascending of u[b, c]) + (scale * phi'(bias[c])) * t[c], where
#              u[b, c] and t[c] are lane sums (over p = l mod 8 ascending, then
#              ((s_0 + s_1) + ...) + s_7) over the 144 positions of
#              (back[b, i] * scale) * (phi'(a[b, i]) - phi'(bias[c])) and of total[i]
# (back may be 0 where the input patch is empty and total holds its full column sums: see
# convsnn_numpy.conv_backward).
from cython.parallel cimport prange
from libc.stdlib cimport free, malloc

cdef extern from "snn_conv_rates.h":
    void snn_patch_active(const float *x, unsigned char *out) nogil
    void snn_rate_backward(const float *x, const float *wt, const float *bias,
                           const float *back, float scale, float center, float slope,
                           float half, const float *phib, float *g, float *u) nogil
    void snn_rate_part_sum(const float *part, int B, float *sum) nogil
    float snn_r_sum144(const float *v) nogil
    int SNN_R_PART
    float snn_r_dphi1(float a, float center, float slope, float half) nogil
    void snn_rate_currents(const float *x, const float *wt, const float *bias,
                           float *out) nogil
    void snn_rate_wgrad(const float *x, const float *delta, float *g) nogil


def patch_active_into(const float[:, ::1] x, unsigned char[:, ::1] out, int n_threads):
    """out[b, p] (B, 144) = 1 where the 5x5 input patch of position p of x[b] has a nonzero."""
    cdef Py_ssize_t b, B = x.shape[0]
    for b in prange(B, nogil=True, schedule='static', num_threads=n_threads):
        snn_patch_active(&x[b, 0], &out[b, 0])


def rate_backward_into(const float[:, ::1] x, const float[:, ::1] wt, const float[::1] bias,
                       const float[:, ::1] back, const float[::1] total, float scale,
                       float center, float slope, float[:, ::1] gw, float[::1] gb,
                       int n_threads):
    """Weight (25, 16) and bias (16,) gradients of the surrogate conv layer into gw, gb,
    given back (B, 2304) = dL/dr_c / scale where the input patch is nonzero (else 0) and
    its column sums total (2304,)."""
    cdef Py_ssize_t b, c, k, B = x.shape[0]
    cdef float half = <float>(0.5 * <double>slope)
    cdef float phib[16]
    cdef float sums[416]          # SNN_R_PART
    cdef float *part = <float *>malloc(B * SNN_R_PART * sizeof(float)) if B else NULL
    if B and part == NULL:
        raise MemoryError("conv backward: cannot allocate per-sample partials")
    try:
        for c in range(16):
            phib[c] = snn_r_dphi1(bias[c], center, slope, half)
        for b in prange(B, nogil=True, schedule='static', num_threads=n_threads):
            snn_rate_backward(&x[b, 0], &wt[0, 0], &bias[0], &back[b, 0], scale, center,
                              slope, half, phib, part + b * SNN_R_PART,
                              part + b * SNN_R_PART + 400)
        snn_rate_part_sum(part, <int>B, sums)
        for k in range(400):
            gw[k // 16, k % 16] = sums[k]
        for c in range(16):
            gb[c] = sums[400 + c] + (scale * phib[c]) * snn_r_sum144(&total[c * 144])
    finally:
        free(part)
