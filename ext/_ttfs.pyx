# cython: language_level=3
"""Event-driven simulation of converted TTFS networks (private; use :mod:`snnfast.ttfs`).

One kernel, :func:`simulate`, OpenMP-parallel over images. Each image is processed layer
by layer, which equals a global time-ordered event queue because the windows are
disjoint and ordered (see snnfast.ttfs). Per hidden layer n:

1. every real input spike (j, t_j) with t_j < t_min(n) adds ``W_ij * (t_min(n) - t_j)`` to
   the integrated potential A_i of each target (one multiply-add per synapse);
2. at t_min(n): ``g_i = theta_i - A_i``; g_i <= 0 fires at t_min(n) (saturation),
   otherwise the spike time is ``t_min(n) + g_i``, a spike only if strictly before t_max(n).

The output layer returns ``A_i + b_i`` at t_min(N). Silent neurons emit nothing. All
arguments are validated by the Python wrapper; this module trusts them.
"""
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport ceil, cos, log, rint, sqrt, INFINITY
from libc.stdint cimport int64_t, uint64_t

ctypedef fused floating:
    float
    double


cdef inline uint64_t _splitmix(uint64_t z) noexcept nogil:
    z = z + <uint64_t>0x9E3779B97F4A7C15ULL
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline double _normal(uint64_t seed, int64_t img, int64_t layer, int64_t unit) noexcept nogil:
    # Counter-based: the draw depends on (seed, image, layer, unit) only, never on the
    # thread that happens to process the image, so results are thread-count independent.
    cdef uint64_t k = _splitmix(seed ^ _splitmix(<uint64_t>img * 1000003ULL
                                                 + <uint64_t>layer * 65537ULL))
    k = _splitmix(k ^ <uint64_t>unit)
    cdef double u1 = ((_splitmix(k) >> 11) + 1.0) * (1.0 / 9007199254740993.0)
    cdef double u2 = (_splitmix(k + 1) >> 11) * (1.0 / 9007199254740992.0)
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2)


cdef inline int _emit(double t, double tmin, double tmax, double dt, double qstep,
                      double sigma, uint64_t seed, int64_t img, int64_t layer, int64_t unit,
                      double *t_out) noexcept nogil:
    """Apply clock / quantisation / jitter to a real spike; 1 if it is still delivered."""
    cdef double x
    if dt > 0:
        t = ceil(t / dt) * dt
        if t >= tmax:
            return 0
    if qstep > 0:
        # round-to-nearest on the window grid, anchored at t_max so that x = 0 stays exact
        x = rint((tmax - t) / qstep) * qstep
        if x <= 0:
            return 0
        t = tmax - x
        if t < tmin:
            t = tmin
    if sigma > 0:
        t = t + sigma * _normal(seed, img, layer, unit)
        if t < tmin:
            t = tmin
        if t >= tmax:
            return 0
    t_out[0] = t
    return 1


cdef void _one_image(const floating *x, const floating *wt, const floating *theta,
                     const floating *bias, const int64_t *sizes, const int64_t *w_off,
                     const int64_t *u_off, const double *tmin, int n_layers,
                     double dt, const double *qstep, double sigma, uint64_t seed,
                     int64_t img, floating *times, int record, floating *out,
                     int64_t *spikes, int64_t *events, int64_t *saturated,
                     floating *acc, int *spk_idx, floating *spk_w) noexcept nogil:
    cdef int64_t j, k, s, nsp = 0, n_in = sizes[0], n_out, sat
    cdef int l
    cdef floating w, g
    cdef double t, t_lo, t_hi
    cdef const floating *row
    # source layer 0: pixel x fires at 1 - x inside the input window [0, 1]
    for j in range(n_in):
        t = 1.0 - <double>x[j]
        if t < tmin[0] and _emit(t, 0.0, tmin[0], dt, qstep[0], sigma, seed, img, 0, j, &t):
            spk_idx[nsp] = <int>j
            spk_w[nsp] = <floating>(tmin[0] - t)
            nsp += 1
    for l in range(n_layers):
        n_in = sizes[l]
        n_out = sizes[l + 1]
        spikes[l] = nsp
        events[l] = nsp * n_out
        for k in range(n_out):
            acc[k] = 0
        for s in range(nsp):
            w = spk_w[s]
            row = wt + w_off[l] + spk_idx[s] * n_out
            for k in range(n_out):
                acc[k] += row[k] * w
        if l == n_layers - 1:
            for k in range(n_out):
                out[k] = acc[k] + bias[u_off[l] + k]
            break
        t_lo = tmin[l]
        t_hi = tmin[l + 1]
        nsp = 0
        sat = 0
        for k in range(n_out):
            g = theta[u_off[l] + k] - acc[k]
            if g <= 0:
                t = t_lo
                sat += 1
            else:
                t = <floating>(<floating>t_lo + g)
            if t < t_hi and _emit(t, t_lo, t_hi, dt, qstep[l + 1], sigma, seed, img,
                                  l + 1, k, &t):
                spk_idx[nsp] = <int>k
                spk_w[nsp] = <floating>(<floating>t_hi - <floating>t)
                nsp += 1
                if record:
                    times[u_off[l] + k] = <floating>t
            elif record:
                times[u_off[l] + k] = INFINITY
        saturated[l] = sat


def simulate(const floating[:, ::1] x, const floating[::1] wt, const floating[::1] theta,
             const floating[::1] bias, const int64_t[::1] sizes, const int64_t[::1] w_off,
             const int64_t[::1] u_off, const double[::1] tmin, double dt,
             const double[::1] qstep, double sigma, uint64_t seed,
             floating[:, ::1] times, bint record, floating[:, ::1] out,
             int64_t[:, ::1] spikes, int64_t[:, ::1] events, int64_t[:, ::1] saturated,
             floating[:, ::1] scratch_acc, floating[:, ::1] scratch_w, int[:, ::1] scratch_idx,
             int n_threads):
    """Simulate ``x.shape[0]`` images; fills times/out/spikes/events/saturated in place.

    Layout (built by snnfast.ttfs): ``wt`` holds each layer's weights transposed
    (n_in, n_out) back to back at offsets ``w_off``; ``theta``/``bias``/hidden times use
    unit offsets ``u_off``; ``tmin[n]`` = t_min of weight layer n+1 (the previous
    layer's t_max); ``qstep[n]`` = quantisation step of source layer n (0 = off).
    ``scratch_*`` have one row of length >= max width per thread.
    """
    cdef int64_t n_img = x.shape[0], i
    cdef int n_layers = <int>(sizes.shape[0] - 1), tid
    if n_img == 0:
        return
    tid = 0
    with nogil, parallel(num_threads=n_threads):
        tid = threadid()
        for i in prange(n_img, schedule="dynamic", chunksize=8):
            _one_image(&x[i, 0], &wt[0], &theta[0], &bias[0], &sizes[0], &w_off[0],
                       &u_off[0], &tmin[0], n_layers, dt, &qstep[0], sigma, seed, i,
                       &times[i, 0] if record else NULL, record, &out[i, 0],
                       &spikes[i, 0], &events[i, 0], &saturated[i, 0],
                       &scratch_acc[tid, 0], &scratch_idx[tid, 0], &scratch_w[tid, 0])
