# cython: language_level=3
"""What the compiled code knows about OpenMP (private; see snnfast._config)."""

cdef extern from "snn_omp.h":      # #ifdef _OPENMP in C, not a Cython compile-time IF
    int snn_openmp_enabled()
    int snn_omp_max_threads()
    int snn_omp_thread_limit()


def openmp_enabled():
    """True if the extensions were compiled with OpenMP."""
    return bool(snn_openmp_enabled())


def omp_max_threads():
    """``omp_get_max_threads()`` (1 without OpenMP)."""
    return snn_omp_max_threads()


def omp_thread_limit():
    """``omp_get_thread_limit()``: ``OMP_THREAD_LIMIT``, or INT_MAX if unset (and without
    OpenMP)."""
    return snn_omp_thread_limit()
