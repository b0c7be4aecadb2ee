"""Timing and data helpers shared by the benchmark scripts."""
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


def alternate_times(fns, repeats):
    """Run each of ``fns`` (name -> callable) once to warm up, then time them in turn,
    ``repeats`` rounds. Alternating keeps a drifting machine from favouring one of them.
    Only for runs long against the ~3 ms that idle OpenMP (or OpenBLAS) workers spin after
    their last task: alternating runs of a few ms, each followed by the other's spinning
    threads, slow each other down (``bench/w1_step.py``'s kernels took 15 ms instead of 5).

    Returns name -> list of wall times in seconds, one per round.
    """
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def bench_data(n_train, n_test, name="mnist"):
    """(source, Xtr, ytr, Xte, yte): the first images of data set ``name`` (MNIST or
    Fashion-MNIST) from the local cache, or synthetic digits (source "synthetic", said on
    stdout) where it is not cached."""
    try:
        from snnfast import datasets
        Xtr, ytr = datasets.load(name, "train", download=False)
        Xte, yte = datasets.load(name, "test", download=False)
        return name, Xtr[:n_train], ytr[:n_train], Xte[:n_test], yte[:n_test]
    except Exception as exc:                      # not cached: synthetic digits
        print(f"({name} not available: {type(exc).__name__}; using synthetic digits)")
        from snnfast.train import synthetic_digits
        Xtr, ytr, Xte, yte = synthetic_digits(n_train, n_test, seed=1)
        return "synthetic", Xtr, ytr, Xte, yte
