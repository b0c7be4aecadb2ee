# cython: language_level=3
"""Event-driven simulation of converted TTFS CNNs (private; use :mod:`snnfast.ttfs_cnn`).

One kernel, :func:`simulate`, OpenMP-parallel over images (GIL released). Each image is
processed stage by stage, which equals a global time-ordered event queue because the
windows are disjoint and ordered (spec ttfs.md §5.1). Maps are channel-last
``(H, W, C)``. Per stage l with window ``[lo, hi) = [tmin[l], tmin[l+1])``:

1. every source unit j that spiked delivers ``v_j = lo - t_j`` (its activation) to each of
   its targets: conv targets are the output positions whose receptive field holds j, for
   all output channels (``acc[o] += W[c, ky, kx, o] * v_j``); dense targets are all
   outputs. One multiply-add per synaptic event; silent units send nothing.
2. hidden stage: ``g = theta[o] - acc``; ``g <= 0`` fires at ``lo`` (saturation), otherwise
   at ``lo + g``, a spike only if strictly before ``hi``.
3. pooling of the stage's spikes: max pool = the earliest member spike (the largest
   activation; silent members never win), average pool = the mean of the members'
   activations ``hi - t`` (a linear dendritic sum feeding the next stage).

The output stage returns ``acc + bias`` at its ``lo`` = t_min(N). Layout and sizes come
from ``meta`` (one row per stage, columns ``M_*``); the Python wrapper validates
everything, this module trusts its arguments.
"""
from cython.parallel cimport parallel, prange, threadid
from libc.math cimport INFINITY
from libc.stdint cimport int64_t

ctypedef fused floating:
    float
    double

# columns of meta (kept in sync with snnfast.ttfs_cnn._META)
cdef enum:
    M_KIND = 0      # 0 conv, 1 dense
    M_C = 1         # input channels (dense: n_in)
    M_H = 2
    M_W = 3
    M_CO = 4        # output channels (dense: n_out)
    M_OH = 5
    M_OW = 6
    M_KH = 7
    M_KW = 8
    M_SH = 9
    M_SW = 10
    M_PT = 11
    M_PL = 12
    M_POOL = 13     # 0 none, 1 max, 2 avg
    M_PKH = 14
    M_PKW = 15
    M_PSH = 16
    M_PSW = 17
    M_PPT = 18
    M_PPL = 19
    M_PH = 20
    M_PW = 21
    M_WOFF = 22     # offset of the stage's packed weights
    M_UOFF = 23     # offset of its thresholds / biases (one per output channel)
    M_TOFF = 24     # offset of its recorded times (one per pre-pool unit)
    M_DOFF = 25     # offset of its average-pool divisors (one per pooled cell)
    M_NCOL = 26


cdef int64_t _scatter(const int64_t *m, const floating *wt, const floating *src,
                      floating *acc) noexcept nogil:
    """Step 1 for one stage: deliver every non-zero source value; returns the events."""
    cdef int64_t c, y, x, ky, kx, oy, ox, o, j, ny, nx, ev = 0
    cdef int64_t C = m[M_C], H = m[M_H], W = m[M_W], CO = m[M_CO]
    cdef int64_t n_acc = m[M_OH] * m[M_OW] * CO
    cdef floating v
    cdef const floating *w
    cdef floating *a
    for j in range(n_acc):
        acc[j] = 0
    if m[M_KIND] == 1:
        for j in range(C):
            v = src[j]
            if v == 0:
                continue
            w = wt + j * CO
            for o in range(CO):
                acc[o] += w[o] * v
            ev += CO
        return ev
    for y in range(H):
        for x in range(W):
            for c in range(C):
                v = src[(y * W + x) * C + c]
                if v == 0:
                    continue
                for ky in range(m[M_KH]):
                    ny = y + m[M_PT] - ky
                    if ny < 0 or ny % m[M_SH] != 0:
                        continue
                    oy = ny // m[M_SH]
                    if oy >= m[M_OH]:
                        continue
                    for kx in range(m[M_KW]):
                        nx = x + m[M_PL] - kx
                        if nx < 0 or nx % m[M_SW] != 0:
                            continue
                        ox = nx // m[M_SW]
                        if ox >= m[M_OW]:
                            continue
                        w = wt + ((c * m[M_KH] + ky) * m[M_KW] + kx) * CO
                        a = acc + (oy * m[M_OW] + ox) * CO
                        for o in range(CO):
                            a[o] += w[o] * v
                        ev += CO
    return ev


cdef int64_t _fire(const int64_t *m, const floating *theta, floating *acc, double lo,
                   double hi, int64_t *n_spikes) noexcept nogil:
    """Step 2: acc <- spike times (INFINITY = silent); returns the saturated count."""
    cdef int64_t p, o, u, CO = m[M_CO], sat = 0, nsp = 0
    cdef floating g, t
    for p in range(m[M_OH] * m[M_OW]):
        for o in range(CO):
            u = p * CO + o
            g = theta[o] - acc[u]
            if g <= 0:
                t = <floating>lo
                sat += 1
            else:
                t = <floating>(<floating>lo + g)
            if t < hi:
                acc[u] = t
                nsp += 1
            else:
                acc[u] = INFINITY
    n_spikes[0] = nsp
    return sat


cdef void _pool(const int64_t *m, const floating *t, double hi, const floating *div,
                floating *dst) noexcept nogil:
    """Step 3: the next stage's source values from this stage's spike times ``t``."""
    cdef int64_t oy, ox, c, ky, kx, y, x, CO = m[M_CO], OH = m[M_OH], OW = m[M_OW]
    cdef int64_t u, n = OH * OW * CO
    cdef floating best, s, tt
    if m[M_POOL] == 0:
        for u in range(n):
            dst[u] = <floating>(<floating>hi - t[u]) if t[u] < hi else 0
        return
    for oy in range(m[M_PH]):
        for ox in range(m[M_PW]):
            for c in range(CO):
                best = INFINITY
                s = 0
                for ky in range(m[M_PKH]):
                    y = oy * m[M_PSH] + ky - m[M_PPT]
                    if y < 0 or y >= OH:
                        continue
                    for kx in range(m[M_PKW]):
                        x = ox * m[M_PSW] + kx - m[M_PPL]
                        if x < 0 or x >= OW:
                            continue
                        tt = t[(y * OW + x) * CO + c]
                        if tt < best:
                            best = tt
                        if tt < hi:
                            s = s + (<floating>hi - tt)
                u = (oy * m[M_PW] + ox) * CO + c
                if m[M_POOL] == 1:
                    dst[u] = <floating>(<floating>hi - best) if best < hi else 0
                else:
                    dst[u] = s / div[oy * m[M_PW] + ox]


cdef void _one_image(const floating *x, int64_t n_in, const floating *wt,
                     const floating *theta, const floating *bias, const floating *div,
                     const int64_t *meta, int n_stages, const double *tmin,
                     floating *times, int record, floating *out, int64_t *spikes,
                     int64_t *events, int64_t *saturated, floating *src,
                     floating *acc) noexcept nogil:
    cdef int64_t j, u, nsp = 0, n_acc
    cdef int l
    cdef const int64_t *m
    cdef double t
    # stage 0's sources: pixel x fires at 1 - x in the input window [0, 1] and delivers
    # t_min(1) - t; the input map is channel-last like every other map
    for j in range(n_in):
        t = 1.0 - <double>x[j]
        if t < tmin[0]:
            src[j] = <floating>(tmin[0] - t)
            nsp += 1
        else:
            src[j] = 0
    spikes[0] = nsp
    for l in range(n_stages):
        m = meta + l * M_NCOL
        events[l] = _scatter(m, wt + m[M_WOFF], src, acc)
        if l == n_stages - 1:
            for j in range(m[M_CO]):
                out[j] = acc[j] + bias[m[M_UOFF] + j]
            break
        saturated[l] = _fire(m, theta + m[M_UOFF], acc, tmin[l], tmin[l + 1], &spikes[l + 1])
        if record:
            n_acc = m[M_OH] * m[M_OW] * m[M_CO]
            for u in range(n_acc):
                times[m[M_TOFF] + u] = acc[u]
        _pool(m, acc, tmin[l + 1], div + m[M_DOFF], src)


def simulate(const floating[:, ::1] x, const floating[::1] wt, const floating[::1] theta,
             const floating[::1] bias, const floating[::1] div, const int64_t[:, ::1] meta,
             const double[::1] tmin, floating[:, ::1] times, bint record,
             floating[:, ::1] out, int64_t[:, ::1] spikes, int64_t[:, ::1] events,
             int64_t[:, ::1] saturated, floating[:, ::1] scratch_src,
             floating[:, ::1] scratch_acc, int n_threads):
    """Simulate ``x.shape[0]`` channel-last images; fills times/out/spikes/events/saturated.

    ``scratch_src`` / ``scratch_acc`` have one row per thread, at least as long as the
    largest source map / pre-pool map. ``times`` has one row per image when ``record``.
    """
    cdef int64_t n_img = x.shape[0], i, n_in = x.shape[1]
    cdef int n_stages = <int>meta.shape[0], tid
    if n_img == 0:
        return
    tid = 0
    with nogil, parallel(num_threads=n_threads):
        tid = threadid()
        for i in prange(n_img, schedule="dynamic", chunksize=4):
            _one_image(&x[i, 0], n_in, &wt[0], &theta[0], &bias[0], &div[0], &meta[0, 0],
                       n_stages, &tmin[0], &times[i, 0] if record else NULL, record,
                       &out[i, 0], &spikes[i, 0], &events[i, 0], &saturated[i, 0],
                       &scratch_src[tid, 0], &scratch_acc[tid, 0])
