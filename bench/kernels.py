"""Micro-benchmark of the Conv-SNN forward kernels (conv_forward + hidden_forward + FC2).

Usage::

    python bench/kernels.py [--threads 2] [--batch 64 256] [--repeats 15] [--preset default]
                            [--block-widths 16 32 64] [--conv-method scatter|gather]
                            [--cpu-time] [--synthetic] [--json out.json]

Prints the machine (CPU, SIMD, BLAS, load average), the measured spike rates and, per batch
size, the median (and best) time per image of each stage, the forward throughput in
images/s, and for scale the dense alternative the reference computes (counts @ W1 through
BLAS with as many threads, once per hidden update). ``--cpu-time`` measures the calling
thread's CPU time with one thread: the per-core cost, robust when other processes load the
machine (wall-clock figures with 2 threads are then meaningless). Images: MNIST train digits from the snnfast cache if present (never
downloaded here), else synthetic blobs with ~19 % non-zero pixels. Weights are initialised
as the reference does (conv N(0, sqrt(2/25)), W1 N(0, sqrt(2/3328))).
"""
import argparse
import os
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from snnfast._cli import openmp_wait_defaults

openmp_wait_defaults()     # as the command-line tools do, before the imports below load OpenMP

from snnfast import _convsnn_kernels as K  # noqa: E402
from snnfast._config import config_dict  # noqa: E402
from snnfast.convsnn import hidden_forward_args, make_config  # noqa: E402

# hidden_forward's arguments as the model runs them
PRESETS = {p: hidden_forward_args(make_config(p)) for p in ("seed", "default", "nir")}
# the sizes of the presets' network (their description files)
G = make_config("default").geometry


def load_images(n, synthetic, rng):
    """``n`` uint8 images (n, H*W) and a description of their origin."""
    if not synthetic:
        try:
            from snnfast import datasets
            if datasets.cache_path("mnist").exists():
                images, _ = datasets.load("mnist", "train", download=False)
                return images.reshape(-1, G.n_pix)[:n].copy(), "MNIST train (snnfast cache)"
        except Exception as exc:  # noqa: BLE001 - any failure means: fall back to synthetic
            print(f"# MNIST unavailable ({type(exc).__name__}: {exc}); using synthetic blobs",
                  file=sys.stderr)
    return synthetic_blobs(n, rng), "synthetic blobs (~19 % non-zero pixels)"


def synthetic_blobs(n, rng):
    """Smooth random strokes: a few Gaussian blobs per image, thresholded like a digit."""
    H, W = G.image_shape
    yy, xx = np.mgrid[0:H, 0:W]
    out = np.zeros((n, G.n_pix), np.uint8)
    for i in range(n):
        img = np.zeros((H, W))
        for _ in range(rng.integers(3, 6)):
            cy, cx = rng.uniform(H / 4, 3 * H / 4), rng.uniform(W / 4, 3 * W / 4)
            s = rng.uniform(1.5, 3.0)
            img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
        img = np.clip((img - 0.35) * 400, 0, 255)
        out[i] = img.astype(np.uint8).reshape(G.n_pix)
    return out


CLOCK = time.perf_counter


def timings(fn, repeats):
    """(median, min) time in seconds of ``repeats`` calls after one warm-up call."""
    fn()  # warm-up (page faults, thread pool start)
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return float(np.median(times)), float(np.min(times))


def bench_batch(B, images, params, preset, bw, threads, repeats, conv_method="scatter"):
    conv_w, conv_b, W1, b1, W2, b2 = params
    W1b = K.to_blocked(W1, bw)
    x = images[:B]
    sid = np.arange(B, dtype=np.int64)
    mode = PRESETS[preset]
    res = {}

    def conv():
        return K.conv_forward(x, sid, 42, 0, conv_w, conv_b, T=10, n_det=5, n_threads=threads,
                              conv_method=conv_method)

    cr = conv()

    def hidden():
        return K.hidden_forward(cr, W1b, b1, n_threads=threads, **mode)

    hr = hidden()

    def fc2():
        return (hr.n_h / np.float32(hr.n_updates)).astype(np.float32) @ W2 + b2

    def whole():
        c = conv()
        h = K.hidden_forward(c, W1b, b1, n_threads=threads, **mode)
        return (h.n_h / np.float32(h.n_updates)).astype(np.float32) @ W2 + b2

    counts = cr.n_c.astype(np.float32)

    def dense_ref():  # what the reference does for FC1: counts @ W1 at every hidden update
        for _ in range(hr.n_updates):
            counts @ W1

    for name, fn in (("conv", conv), ("hidden", hidden), ("fc2", fc2), ("forward", whole),
                     ("dense_fc1_sgemm", dense_ref)):
        # FC2, (B x hidden) @ (hidden x classes), is too small for threaded BLAS: one thread;
        # the dense FC1 baseline gets as many BLAS threads as the kernels get OpenMP threads
        with threadpool_limits(threads if fn is dense_ref else 1, user_api="blas"):
            med, best = timings(fn, repeats)
        res[name + "_us_per_img"] = 1e6 * med / B
        res[name + "_us_per_img_min"] = 1e6 * best / B
    res["forward_img_per_s"] = 1e6 / res["forward_us_per_img"]
    res["forward_img_per_s_best"] = 1e6 / res["forward_us_per_img_min"]
    res["hidden_vs_dense_sgemm"] = res["dense_fc1_sgemm_us_per_img"] / res["hidden_us_per_img"]
    rows = cr.spk_cnt[:, : max(hr.update_steps) + 1].sum()
    res["fc1_G_adds_per_s"] = rows * G.hidden / (res["hidden_us_per_img"] * 1e-6 * B) / 1e9
    rates = {"input": float(cr.in_count.mean() / G.n_pix),
             "conv": float(cr.spk_cnt.mean() / G.n_conv),
             "hidden": float(hr.n_h.mean() / hr.n_updates)}
    return res, rates


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="default")
    ap.add_argument("--block-widths", type=int, nargs="+", default=[K.BLOCK_WIDTH])
    ap.add_argument("--synthetic", action="store_true", help="never use MNIST")
    ap.add_argument("--conv-method", choices=["scatter", "gather"], default="scatter")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with the calling thread's CPU clock (forces --threads 1): the "
                         "per-core cost, robust against other processes stealing the cores")
    args = ap.parse_args(argv)
    from snnfast._cli import check_output_arg
    check_output_arg(ap, "--json", args.json)   # before the measurements
    global CLOCK
    if args.cpu_time:
        CLOCK, args.threads = time.thread_time, 1

    rng = np.random.default_rng(0)
    cfg = config_dict()
    print(f"# cpu: {cfg['cpu']} [{cfg['simd']}], {cfg['cpus_available']} cpus, "
          f"threads={args.threads}, default block width {K.BLOCK_WIDTH}, clock: "
          f"{'thread CPU time' if args.cpu_time else 'wall'}")
    for blas in cfg["blas"]:
        print(f"# BLAS: {blas.get('internal_api')} {blas.get('version')} "
              f"({blas.get('num_threads')} threads)")
    images, origin = load_images(max(args.batch), args.synthetic, rng)
    print(f"# images: {origin}; preset {args.preset}: {PRESETS[args.preset]}; conv "
          f"{args.conv_method}")
    C, K2, N, H, O = G.channels, G.n_taps, G.n_conv, G.hidden, G.classes
    params = (rng.normal(0, np.sqrt(2 / K2), (C, K2)).astype(np.float32),
              np.zeros(C, np.float32),
              rng.normal(0, np.sqrt(2 / (N + H)), (N, H)).astype(np.float32),
              np.zeros(H, np.float32),
              rng.normal(0, np.sqrt(2 / (H + O)), (H, O)).astype(np.float32),
              np.zeros(O, np.float32))
    out = {"config": {k: cfg[k] for k in ("cpu", "simd", "cpus_available")},
           "clock": "thread CPU time" if args.cpu_time else "wall", "threads": args.threads, "preset": args.preset, "images": origin, "runs": []}
    print(f"# load average before: {os.getloadavg()[0]:.2f} (other processes share the cores)")
    for bw in args.block_widths:
        for B in args.batch:
            res, rates = bench_batch(B, images, params, args.preset, bw, args.threads,
                                     args.repeats, args.conv_method)
            out["runs"].append({"B": B, "block_width": bw, "rates": rates, **res})
            print(f"B={B:4d} bw={bw:3d} rates in/conv/hid {rates['input']:.3f}/"
                  f"{rates['conv']:.3f}/{rates['hidden']:.3f} | us/img: conv "
                  f"{res['conv_us_per_img']:.2f} hidden {res['hidden_us_per_img']:.2f} fc2 "
                  f"{res['fc2_us_per_img']:.2f} forward {res['forward_us_per_img']:.2f} "
                  f"-> {res['forward_img_per_s']:.0f} img/s (best run "
                  f"{res['forward_img_per_s_best']:.0f}) | FC1 {res['fc1_G_adds_per_s']:.1f} "
                  f"G adds/s, {res['hidden_vs_dense_sgemm']:.2f}x vs dense sgemm "
                  f"({res['dense_fc1_sgemm_us_per_img']:.1f} us/img)")
    out["loadavg_after"] = os.getloadavg()[0]
    print(f"# load average after: {out['loadavg_after']:.2f}; timings are medians of "
          f"{args.repeats} runs (best run in brackets)")
    if args.json:
        from snnfast._utils import write_json
        write_json(args.json, out, indent=1)


if __name__ == "__main__":
    main()
