# cython: language_level=3
"""What the compiled code knows about OpenMP (private; see snnfast._config)."""

IF SNNFAST_OPENMP:
    cimport openmp


def openmp_enabled():
    """True if the extensions were compiled with OpenMP."""
    IF SNNFAST_OPENMP:
        return True
    ELSE:
        return False


def omp_max_threads():
    """``omp_get_max_threads()`` (1 without OpenMP)."""
    IF SNNFAST_OPENMP:
        return openmp.omp_get_max_threads()
    ELSE:
        return 1


def omp_thread_limit():
    """``omp_get_thread_limit()``: ``OMP_THREAD_LIMIT``, or INT_MAX if unset (and without
    OpenMP)."""
    IF SNNFAST_OPENMP:
        return openmp.omp_get_thread_limit()
    ELSE:
        return 2**31 - 1
