# Conv-SNN front end: input spike encoding + conv (one input plane, nc channels, k x k kernel,
# stride s; the sizes are arguments, from the network description) + conv LIF, all T steps.
#
# Called only through snnfast._convsnn_kernels (which validates every argument and size).
# OpenMP over samples; every sample is computed by one thread in a fixed order, so the output
# does not depend on the thread count. The conv is event driven: each input spike scatters an
# nc-channel tap vector onto the <= ceil(k/s)^2 output positions it reaches. Per output this
# adds the taps in (ky, kx) order because input spikes are visited in raster order (= the
# contract's order).
from cython.parallel cimport prange, parallel
from libc.stdint cimport uint8_t, uint16_t, int32_t, int64_t, uint64_t, uint32_t
from libc.stdlib cimport free
import numpy as np
from _random cimport sample_key, uniform24

cdef extern from "snn_convsnn_conv.h":
    ctypedef struct snn_conv_geom:
        int H, W, nc, k, s, OH, OW, npos, mt
    void *snn_aligned_alloc(size_t n) nogil
    void snn_conv_tables(const snn_conv_geom *g, uint16_t *dst, uint16_t *src, uint8_t *n) nogil
    void snn_conv_scatter(float *I, const float *wT, const uint16_t *pix, int n,
                          const uint16_t *dst, const uint16_t *src, const uint8_t *cnt, int mt,
                          int nc) nogil
    void snn_conv_gather(float *I, const float *wT, const uint16_t *pix, int n,
                         const snn_conv_geom *g, uint32_t *rows) nogil
    int snn_conv_lif(float *v, float *I, const float *bias, float beta, float thr,
                     uint16_t *out, int nc, int npos, uint64_t *chan) nogil


cdef snn_conv_geom make_geom(int H, int W, int nc, int k, int s):
    """The C description of a conv layer's sizes (validated by the caller)."""
    cdef snn_conv_geom g
    g.H, g.W, g.nc, g.k, g.s = H, W, nc, k, s
    g.OH = (H - k) // s + 1
    g.OW = (W - k) // s + 1
    g.npos = g.OH * g.OW
    g.mt = ((k + s - 1) // s) ** 2
    return g


cdef size_t lines(size_t nbytes) noexcept nogil:
    """nbytes rounded up to whole 64-byte cache lines."""
    return (nbytes + 63) // 64 * 64


def uniform24_into(uint64_t seed, uint64_t epoch, const int64_t[::1] sample_ids, int step,
                   const int64_t[::1] pixels, uint32_t[:, ::1] out):
    """out[b, p] = u24 of (seed, epoch, sample_ids[b], step, pixels[p]) (test hook)."""
    cdef Py_ssize_t b, p
    cdef uint64_t key
    for b in range(sample_ids.shape[0]):
        key = sample_key(seed, epoch, <uint64_t>sample_ids[b])
        for p in range(pixels.shape[0]):
            out[b, p] = uniform24(key, <uint64_t>step, <uint64_t>pixels[p])


cdef inline int encode_step(const uint8_t *img, const uint16_t *nz, int n_nz, int t, int n_det,
                            const int32_t *det, uint64_t key, uint16_t *pix) noexcept nogil:
    # Only non-zero pixels can spike (u24 * 255 < 0 never holds), so zeros are skipped.
    cdef int k, n = 0
    cdef uint16_t p
    cdef int32_t lim
    # branch-free compaction: the spike test is data-dependent, a branch would mispredict
    if t < n_det:
        lim = det[t]
        for k in range(n_nz):
            p = nz[k]
            pix[n] = p
            n += img[p] >= lim
    else:
        for k in range(n_nz):
            p = nz[k]
            pix[n] = p
            n += <uint64_t>uniform24(key, <uint64_t>t, p) * 255 < (<uint64_t>img[p] << 24)
    return n


cdef void conv_sample(const uint8_t *img, uint64_t key, const float *wT, const float *bias,
                      const int32_t *det, int n_det, int T, float beta, float thr,
                      const int64_t *evt, uint16_t *spk_idx, int32_t *spk_cnt, int32_t *n_in,
                      int32_t *n_c, int64_t *in_count, int64_t *conv_events, uint8_t *rec,
                      const snn_conv_geom *g, const uint16_t *tdst, const uint16_t *tsrc,
                      const uint8_t *tn, float *v, float *I, uint16_t *nz, uint16_t *pix,
                      uint64_t *chan, uint32_t *rows, bint gather) noexcept nogil:
    cdef int t, k, n, n_nz = 0
    cdef int npix = g.H * g.W, nconv = g.nc * g.npos
    cdef int64_t ev
    for k in range(npix):
        if img[k] != 0:
            nz[n_nz] = <uint16_t>k
            n_nz += 1
    for k in range(nconv):
        v[k] = 0.0
        I[k] = 0.0
        n_c[k] = 0
    for k in range(npix):
        n_in[k] = 0
    for t in range(T):
        n = encode_step(img, nz, n_nz, t, n_det, det, key, pix)
        ev = 0
        for k in range(n):
            n_in[pix[k]] += 1
            ev += evt[pix[k]]
            if rec != NULL:
                rec[<size_t>t * npix + pix[k]] = 1
        in_count[t] = n
        conv_events[t] = ev
        if gather:
            snn_conv_gather(I, wT, pix, n, g, rows)
        else:
            snn_conv_scatter(I, wT, pix, n, tdst, tsrc, tn, g.mt, g.nc)
        n = snn_conv_lif(v, I, bias, beta, thr, spk_idx + <size_t>t * nconv, g.nc, g.npos, chan)
        spk_cnt[t] = n
        # counted from the spike list (3-10 % of the neurons per step) instead of a vector
        # read-modify-write of every neuron's count in the LIF
        for k in range(n):
            n_c[spk_idx[<size_t>t * nconv + k]] += 1


def conv_tables(int height, int width, int nc, int kernel, int stride):
    """The tap tables of a conv's sizes: ``(dst, src, n)``, per pixel p the output positions
    its spike reaches ``dst[p*mt : p*mt + n[p]]`` (uint16) and the taps it meets there
    ``src`` (mt = ceil(kernel/stride)^2). Built once per size by the caller (cached)."""
    cdef snn_conv_geom g = make_geom(height, width, nc, kernel, stride)
    cdef int npix = height * width
    cdef uint16_t[::1] dst = np.empty(max(npix * g.mt, 1), np.uint16)
    cdef uint16_t[::1] src = np.empty(max(npix * g.mt, 1), np.uint16)
    cdef uint8_t[::1] n = np.empty(max(npix, 1), np.uint8)
    snn_conv_tables(&g, &dst[0], &src[0], &n[0])
    return np.asarray(dst), np.asarray(src), np.asarray(n)


def conv_forward_into(const uint8_t[:, ::1] images, const int64_t[::1] sample_ids,
                      uint64_t seed, uint64_t epoch, const float[:, ::1] wT,
                      const float[::1] bias, const int32_t[::1] det, int n_det, float beta,
                      float thr, const int64_t[::1] evt, uint16_t[:, :, ::1] spk_idx,
                      int32_t[:, ::1] spk_cnt, int32_t[:, ::1] n_in, int32_t[:, ::1] n_c,
                      int64_t[:, ::1] in_count, int64_t[:, ::1] conv_events,
                      uint8_t[:, :, ::1] rec, bint record, int n_threads, int height, int width,
                      int kernel, int stride, const uint16_t[::1] tdst,
                      const uint16_t[::1] tsrc, const uint8_t[::1] tn, bint gather=False):
    """Fill the preallocated outputs (see snnfast._convsnn_kernels.conv_forward).

    Every element of the outputs is written (they may be uninitialised), except ``spk_idx``
    past ``spk_cnt`` and ``rec``, which must be zeroed when ``record`` is set.
    The input plane is ``height x width``, the kernel ``kernel x kernel`` with ``stride``;
    the channel count is ``wT.shape[1]`` (sizes validated by the caller); ``tdst, tsrc, tn``
    are :func:`conv_tables` of these sizes.
    ``gather`` selects the dense-gather conv instead of the event-driven scatter (same bits).
    """
    cdef Py_ssize_t B = images.shape[0]
    cdef int T = spk_cnt.shape[1]
    cdef Py_ssize_t b
    cdef snn_conv_geom g = make_geom(height, width, <int>wT.shape[1], kernel, stride)
    cdef int npix = height * width, nconv = g.nc * g.npos
    # per-thread scratch, one allocation carved into cache-line-aligned pieces (whole lines
    # each, so no two threads ever share a line): v, I, nz, pix, chan, rows
    cdef size_t o_i = lines(nconv * sizeof(float))
    cdef size_t o_nz = o_i + lines(nconv * sizeof(float))
    cdef size_t o_pix = o_nz + lines(npix * sizeof(uint16_t))
    cdef size_t o_chan = o_pix + lines(npix * sizeof(uint16_t))
    cdef size_t o_rows = o_chan + lines(g.nc * ((g.npos + 63) // 64) * sizeof(uint64_t))
    cdef size_t nbytes = o_rows + lines(height * sizeof(uint32_t))
    cdef char *buf
    cdef uint8_t *rec_b
    cdef int failed = 0
    buf = NULL  # firstprivate in the parallel block: give it a defined value
    with nogil, parallel(num_threads=n_threads):
        buf = <char *>snn_aligned_alloc(nbytes)
        # every thread must reach the worksharing loop, so a failed allocation is only flagged
        # small dynamic chunks: samples differ in cost and neighbours steal cores
        for b in prange(B, schedule='dynamic', chunksize=4):
            if buf == NULL:
                failed += 1
                continue
            rec_b = &rec[b, 0, 0] if record else NULL
            conv_sample(&images[b, 0], sample_key(seed, epoch, <uint64_t>sample_ids[b]),
                        &wT[0, 0], &bias[0], &det[0], n_det, T, beta, thr, &evt[0],
                        &spk_idx[b, 0, 0], &spk_cnt[b, 0], &n_in[b, 0], &n_c[b, 0],
                        &in_count[b, 0], &conv_events[b, 0], rec_b, &g, &tdst[0], &tsrc[0],
                        &tn[0], <float *>buf, <float *>(buf + o_i), <uint16_t *>(buf + o_nz),
                        <uint16_t *>(buf + o_pix), <uint64_t *>(buf + o_chan),
                        <uint32_t *>(buf + o_rows), gather)
        free(buf)
    if failed:
        raise MemoryError("conv_forward: cannot allocate thread buffers")



def weighted_counts_into(const uint16_t[:, :, ::1] spk_idx, const int32_t[:, ::1] spk_cnt,
                         const int32_t[::1] weights, int32_t[:, ::1] out, int n_threads):
    """out[b, j] += sum over steps t of weights[t] * (conv neuron j spiked at t) (integer).

    Indices >= out.shape[1] (the number of conv neurons) are skipped and counted; returns
    their number.
    """
    cdef Py_ssize_t B = spk_cnt.shape[0], T = spk_cnt.shape[1], nconv = out.shape[1]
    cdef Py_ssize_t b, t, k
    cdef int32_t w
    cdef uint16_t j
    cdef int64_t bad = 0
    for b in prange(B, nogil=True, schedule='static', num_threads=n_threads):
        for t in range(T):
            w = weights[t]
            for k in range(spk_cnt[b, t]):
                j = spk_idx[b, t, k]
                if j < nconv:
                    out[b, j] += w
                else:
                    bad += 1
    return bad


def dense_spikes_into(const uint16_t[:, :, ::1] spk_idx, const int32_t[:, ::1] spk_cnt,
                      uint8_t[:, :, ::1] out, int n_threads):
    """out[b, t, j] = 1 for every listed spike (out must be zeroed).

    Indices >= out.shape[2] (the number of conv neurons) are skipped and counted; returns
    their number.
    """
    cdef Py_ssize_t B = spk_cnt.shape[0], T = spk_cnt.shape[1], nconv = out.shape[2]
    cdef Py_ssize_t b, t, k
    cdef uint16_t j
    cdef int64_t bad = 0
    for b in prange(B, nogil=True, schedule='static', num_threads=n_threads):
        for t in range(T):
            for k in range(spk_cnt[b, t]):
                j = spk_idx[b, t, k]
                if j < nconv:
                    out[b, t, j] = 1
                else:
                    bad += 1
    return bad


ctypedef fused pixel_t:
    uint8_t
    float


def shift_flip_into(const pixel_t[:, :, ::1] images, const int64_t[::1] dy,
                    const int64_t[::1] dx, const uint8_t[::1] flip, pixel_t[:, :, ::1] out,
                    Py_ssize_t height, Py_ssize_t width):
    """Training augmentation (snnfast.train.augment.shift_flip): every plane of sample b
    (images[b, m], height x width, row-major) moved by (dy[b], dx[b]) with zero fill, then
    mirrored left-right if flip[b]; out must be zeroed, of the same shape.

    ``out[b, m, y, x] = images[b, m, y - dy, x' - dx]`` with ``x' = width - 1 - x`` when
    flipped (else ``x``), where that pixel exists; any shift (a shift of the whole size or
    more leaves the sample zero). Values are copied, never computed. Sizes are checked by the
    caller.
    """
    cdef Py_ssize_t b, m, y, x, x0, x1, sy, d, M = images.shape[1]
    cdef const pixel_t *src
    cdef pixel_t *dst
    if images.shape[0] == 0 or M == 0:
        return
    with nogil:
        for b in range(images.shape[0]):
            d = dx[b]
            # the output columns that have a source: x - d (or width - 1 - x - d) in range
            x0 = (-d if flip[b] else d) if (-d if flip[b] else d) > 0 else 0
            x1 = width - (d if flip[b] else -d)
            if x1 > width:
                x1 = width
            for m in range(M):
                for y in range(height):
                    sy = y - dy[b]
                    if sy < 0 or sy >= height:
                        continue
                    src = &images[b, m, sy * width]
                    dst = &out[b, m, y * width]
                    if flip[b]:
                        for x in range(x0, x1):
                            dst[x] = src[width - 1 - x - d]
                    else:
                        for x in range(x0, x1):
                            dst[x] = src[x - d]
