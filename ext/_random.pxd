# Counter-based random numbers for the Conv-SNN input encoding (shared, header-only).
#
# One uniform per (seed, epoch, sample_id, step, pixel), independent of the batch layout and
# of the thread that computes it: this is what makes the kernels' spikes thread-count
# independent and keyed by the sample, not by its position in a batch.
from libc.stdint cimport uint64_t, uint32_t

cdef inline uint64_t mix64(uint64_t z) noexcept nogil:
    # splitmix64 finaliser (Steele, Lea & Flood 2014): a bijection with full avalanche
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EBULL
    return z ^ (z >> 31)


cdef inline uint64_t sample_key(uint64_t seed, uint64_t epoch, uint64_t sample_id) noexcept nogil:
    # hoisted out of the per-pixel loop: three of the four mixes depend on the sample only
    cdef uint64_t h = mix64(seed ^ <uint64_t>0x9E3779B97F4A7C15ULL)
    h = mix64(h ^ epoch)
    return mix64(h ^ sample_id)


cdef inline uint32_t uniform24(uint64_t key, uint64_t step, uint64_t pixel) noexcept nogil:
    # top 24 bits: u = u24 / 2^24 is exact in float32 and the spike test stays integer
    return <uint32_t>(mix64(key ^ ((step << 32) | pixel)) >> 40)
