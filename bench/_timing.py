"""Timing helper shared by the benchmark scripts."""
import statistics
import time


def median_time(fn, repeats, warmup=None):
    """Run ``warmup`` (default: ``fn``) once, then ``fn`` ``repeats`` times.

    Returns the median wall time in seconds and the list of all times.
    """
    (warmup or fn)()                        # warm-up: caches, page faults, thread pools
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times
