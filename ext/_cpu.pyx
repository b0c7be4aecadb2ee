# cython: language_level=3
"""What the running CPU supports (private; see snnfast._config.check_cpu, snnfast._dispatch).

Built for the architecture's baseline CPU and without OpenMP, so that importing it is safe on
any x86-64 CPU: ``import snnfast`` asks it before any kernel is loaded.
"""

cdef extern from "snn_cpu.h":
    int snn_cpu_supports(const char *name)
    long long snn_cpu_xcr0()


def cpu_supports(str name):
    """1 if the CPU supports the feature ``name`` (GCC's spelling, e.g. ``"avx2"``), 0 if not,
    -1 if this build cannot tell (an unknown name, or not an x86 CPU)."""
    b = name.encode("ascii")
    return snn_cpu_supports(b)


def os_xsave_state():
    """XCR0: the register states the operating system saves (bits 1-2 SSE/AVX, 5-7 AVX-512);
    0 if it does not enable XSAVE, -1 if this build cannot tell (not x86-64)."""
    return snn_cpu_xcr0()
