# The backward pass of the surrogate conv layer (one input plane, nc channels, k x k kernel,
# stride s: the sizes are arguments, from the network description; on real-valued input
# rates): its currents, phi' of them, and the weight and bias gradients, per sample in one
# pass; and the map of positions whose k x k input patch has a nonzero.
#
# Called only through snnfast._convsnn_kernels (which validates every argument). OpenMP over
# samples; each sample is computed by one thread in a fixed order and the per-sample
# gradients are summed in sample order afterwards, so nothing depends on the thread count.
# Why not BLAS: as a matrix product both convolutions need the (B, npos, k*k) patch matrix
# gathered first, which costs more than the multiply-adds (57 600 per sample for the
# default preset); here each 16 channels are two vectors, multiplied by one broadcast input
# value per (position, tap).
# Float order (-ffp-contract=off: every product and sum rounded on its own):
#   a[b, c*npos + p] = (sum over taps k ascending of w[c, k] * x[b, pix(p, k)]) + bias[c]
#   phi'(a)     = (0.5*slope) / (t * t), t = (|a - center| * slope) + 1 (convsnn_numpy.surrogate)
#   delta[b, i] = (back[b, i] * scale) * phi'(a[b, i])
#   gw[c, k] = sum over b ascending of
#              (sum over p ascending of delta[b, c*npos+p] * x[b, pix(p, k)])
#   gb[c]    = (sum over b ascending of u[b, c]) + (scale * phi'(bias[c])) * t[c], where
#              u[b, c] and t[c] are lane sums (over p = l mod 8 ascending, then
#              ((s_0 + s_1) + ...) + s_7) over the npos positions of
#              (back[b, i] * scale) * (phi'(a[b, i]) - phi'(bias[c])) and of total[i]
# (back may be 0 where the input patch is empty and total holds its full column sums: see
# convsnn_numpy.conv_backward).
from cython.parallel cimport parallel, prange, threadid
import numpy as np
from libc.stdlib cimport free, malloc

cdef extern from "snn_conv_rates.h":
    ctypedef struct snn_r_geom:
        int W, nc, k, s, OH, OW, npos
    void snn_patch_active(const float *x, unsigned char *out, const snn_r_geom *g,
                          unsigned char *col) nogil
    void snn_rate_backward(const float *x, const float *wt, const float *bias,
                           const float *back, float scale, float center, float slope,
                           float half, const float *phib, float *g, float *u,
                           const snn_r_geom *geo, float *scr) nogil
    void snn_rate_part_sum(const float *part, int B, int npart, float *sum) nogil
    float snn_r_sum_pos(const float *v, int npos) nogil
    int snn_rate_part(const snn_r_geom *g) nogil
    float snn_r_dphi1(float a, float center, float slope, float half) nogil
    void *snn_aligned_alloc(size_t n) nogil       # snn_alloc.h: whole cache lines


cdef snn_r_geom make_geom(int height, int width, int nc, int k, int s):
    """The C description of a conv layer's sizes (validated by the caller)."""
    cdef snn_r_geom g
    g.W, g.nc, g.k, g.s = width, nc, k, s
    g.OH = (height - k) // s + 1
    g.OW = (width - k) // s + 1
    g.npos = g.OH * g.OW
    return g


def patch_active_into(const float[:, ::1] x, unsigned char[:, ::1] out, int height,
                      int width, int kernel, int stride, int n_threads):
    """out[b, p] (B, npos) = 1 where the kernel x kernel input patch of position p of x[b]
    (a height x width plane) has a nonzero."""
    cdef Py_ssize_t b, B = x.shape[0]
    cdef snn_r_geom g = make_geom(height, width, 8, kernel, stride)
    # per-thread column scratch: a row of whole cache lines each (no false sharing)
    cdef Py_ssize_t row = (width + 63) // 64 * 64
    cdef unsigned char[:, ::1] col = np.empty((max(n_threads, 1), row), np.uint8)
    for b in prange(B, nogil=True, schedule='static', num_threads=n_threads):
        snn_patch_active(&x[b, 0], &out[b, 0], &g, &col[threadid(), 0])


def rate_backward_into(const float[:, ::1] x, const float[:, ::1] wt, const float[::1] bias,
                       const float[:, ::1] back, const float[::1] total, float scale,
                       float center, float slope, float[:, ::1] gw, float[::1] gb,
                       int height, int width, int kernel, int stride, int n_threads):
    """Weight (k*k, nc) and bias (nc,) gradients of the surrogate conv layer into gw, gb,
    given back (B, nc*npos) = dL/dr_c / scale where the input patch is nonzero (else 0) and
    its column sums total (nc*npos,). nc = wt.shape[1]; sizes validated by the caller."""
    cdef Py_ssize_t b, c, q, B = x.shape[0]
    cdef snn_r_geom g = make_geom(height, width, <int>wt.shape[1], kernel, stride)
    cdef int npart = snn_rate_part(&g), ntw = g.k * g.k * g.nc
    cdef float half = <float>(0.5 * <double>slope)
    cdef float *phib = <float *>malloc(g.nc * sizeof(float))
    cdef float *sums = <float *>malloc(npart * sizeof(float))
    cdef float *part = <float *>malloc(B * npart * sizeof(float)) if B else NULL
    cdef float *scr
    cdef int failed = 0
    try:
        if phib == NULL or sums == NULL or (B and part == NULL):
            raise MemoryError("conv backward: cannot allocate per-sample partials")
        for c in range(g.nc):
            phib[c] = snn_r_dphi1(bias[c], center, slope, half)
        scr = NULL  # firstprivate in the parallel block: give it a defined value
        with nogil, parallel(num_threads=n_threads):
            # currents, deltas and transposed deltas of one sample: thread-private, whole
            # cache lines (no false sharing)
            scr = <float *>snn_aligned_alloc(3 * <size_t>g.nc * g.npos * sizeof(float))
            for b in prange(B, schedule='static'):
                if scr == NULL:
                    failed += 1
                    continue
                snn_rate_backward(&x[b, 0], &wt[0, 0], &bias[0], &back[b, 0], scale, center,
                                  slope, half, phib, part + b * npart, part + b * npart + ntw,
                                  &g, scr)
            free(scr)
        if failed:
            raise MemoryError("conv backward: cannot allocate thread buffers")
        snn_rate_part_sum(part, <int>B, npart, sums)
        for q in range(ntw):
            gw[q // g.nc, q % g.nc] = sums[q]
        for c in range(g.nc):
            gb[c] = sums[ntw + c] + (scale * phib[c]) * snn_r_sum_pos(&total[c * g.npos], g.npos)
    finally:
        free(part)
        free(phib)
        free(sums)
