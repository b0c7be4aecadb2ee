/* Per-thread scratch of the Conv-SNN kernels (snn_convsnn_conv.h, snn_conv_rates.h,
   snn_convsnn_w1.h): 64-byte aligned and a whole number of cache lines, so that no two
   threads' buffers ever share a line (no false sharing). */
#ifndef SNN_ALLOC_H
#define SNN_ALLOC_H
#include <stddef.h>
#include <stdlib.h>

/* n bytes (at least one line), rounded up to whole 64-byte lines; NULL on failure; free()
   releases it. */
static inline void *snn_aligned_alloc(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? (n + 63) / 64 * 64 : 64) != 0) return NULL;
    return p;
}

#endif /* SNN_ALLOC_H */
