"""Inference throughput of the compiled engine (snnfast.engine) on any Network description.

    python bench/engine.py [--threads N] [--repeats 3] [--images 2048] [--ref-images 32]
                           [--batch 256] [--json out.json]

Three comparisons, each timed in one process on the same images, the runs alternating
(``_timing.alternate_times``) so that a drifting shared machine favours none of them:

1. the ``default`` preset: the engine vs the tuned preset kernels (``ConvSNN`` with
   ``backend="kernels"``, its inference ``forward_logits``), same weights (a fresh model's);
   the outputs of the two are checked to be identical first;
2. the ``default`` preset: the engine vs the NumPy reference (``snnfast.reference``);
3. a deeper CNN (1x28x28 -> conv 32@3x3 pad 1 -> LIF -> sum-pool 2 -> conv 64@3x3 pad 1 ->
   LIF -> sum-pool 2 -> FC 3136x256 -> LIF -> read-out -> FC 256x10, random weights scaled
   by 1/sqrt(fan-in)): the engine vs the NumPy reference.

img/s are medians of ``--repeats`` timed runs after a warm-up; each ratio is the median of
the per-round ratios (range in brackets). The reference is slow, so it runs ``--ref-images``
images (rates are per image). MNIST test images if cached, else synthetic digits. Spike
rates are printed: the event-driven cost follows them.
"""
import argparse
import statistics
import sys

import numpy as np
from _timing import alternate_times, bench_data  # bench/_timing.py (the script directory is on sys.path)


def deep_cnn():
    """The deeper CNN of the module doc."""
    from snnfast.network import (LIF, Conv2d, Flatten, Hybrid, Linear, Network, RateReadout,
                                 SumPool2d)
    return Network((1, 28, 28), [
        Conv2d(out_channels=32, kernel_size=3, padding=1, name="conv1"), LIF(name="lif1"),
        SumPool2d(2),
        Conv2d(out_channels=64, kernel_size=3, padding=1, name="conv2"), LIF(name="lif2"),
        SumPool2d(2), Flatten(),
        Linear(out_features=256, name="fc1"), LIF(reset="subtract", name="hidden"),
        RateReadout(), Linear(out_features=10, name="fc2"),
    ], encoder=Hybrid(T=10, n_det=5), name="deep_cnn")


def random_weights(net, seed=0, gain=2.0):
    """Weights ~ N(0, gain / sqrt(fan-in)), biases 0: the layers spike at moderate rates."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, s in net.param_shapes().items():
        fan_in = int(np.prod(s[1:])) if len(s) == 4 else s[0]
        out[k] = (rng.standard_normal(s) * gain / np.sqrt(fan_in) if k.endswith("weight")
                  else np.zeros(s)).astype(np.float32)
    return out


def batched(fn, X, batch):
    """A callable running ``fn(images, ids)`` over ``X`` in batches."""
    def run():
        for i in range(0, len(X), batch):
            fn(X[i:i + batch], np.arange(i, min(i + batch, len(X))))
    return run


def compare(fns, sizes, repeats):
    """img/s (median) of each callable and the per-round ratios of the first to the others."""
    times = alternate_times(fns, repeats)
    names = list(fns)
    out = {n: {"img_s": sizes[n] / statistics.median(times[n]), "times_s": times[n],
               "n_images": sizes[n]} for n in names}
    first = names[0]
    for n in names[1:]:
        runs = [(sizes[first] / a) / (sizes[n] / b) for a, b in zip(times[first], times[n])]
        out[f"{first}/{n}"] = {"ratio": statistics.median(runs), "runs": runs}
    return out


def _line(tag, r, names):
    a, b = names
    ratio = r[f"{a}/{b}"]
    print(f"[{tag}] {a} {r[a]['img_s']:8.1f} img/s   {b} {r[b]['img_s']:8.1f} img/s   "
          f"{a}/{b} x{ratio['ratio']:.2f} ({min(ratio['runs']):.2f}-{max(ratio['runs']):.2f})")


def rates(net, out):
    """Spikes per neuron per update of every spiking layer, and input spikes per pixel/step."""
    B, T = out["counts"]["input"].shape
    r = {"input": out["counts"]["input"].sum() / (B * T * np.prod(net.input_shape))}
    for n, _ in net.stages():
        name = net[n].name
        r[name] = out["counts"][name].sum() / (B * out["n_updates"][name] *
                                               np.prod(net.shapes[n]))
    return {k: float(v) for k, v in r.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="threads (default: the rule)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--images", type=int, default=2048, help="images per engine/tuned run")
    p.add_argument("--ref-images", type=int, default=32, help="images per reference run")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--json", default=None, help="write the results to this file")
    args = p.parse_args(argv)
    from snnfast._cli import check_output_arg
    check_output_arg(p, "--json", args.json)
    for name in ("repeats", "images", "ref_images", "batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")

    from snnfast import effective_n_threads, engine
    from snnfast import reference as R
    from snnfast._config import config_dict
    from snnfast.convsnn import _PARAM_KEYS, ConvSNN
    from snnfast.network import load_preset
    cfg = config_dict()
    threads = effective_n_threads(args.threads)
    source, _, _, X, _ = bench_data(1, max(args.images, args.ref_images))
    X = X[:args.images]
    X = np.ascontiguousarray(X.reshape(len(X), -1))          # (N, H*W) of the input images
    Xr = X[:args.ref_images]
    print(f"cpu: {cfg['cpu']} [{cfg['simd']}], {cfg['cpus_available']} cpus; threads {threads}; "
          f"data {source}; {len(X)} images (reference {len(Xr)}), batch {args.batch}; "
          f"timings on a shared machine are noisy")
    results = {"config": cfg, "threads": threads, "data": source}

    # 1-2. the default preset: engine vs tuned kernels vs reference, the same weights
    net, _ = load_preset("default")
    m = ConvSNN("default", seed=0, n_threads=threads, backend="kernels")
    weights = {v: m.params[k] for k, v in _PARAM_KEYS.items()}
    model = engine.CompiledNetwork(net, weights)
    check = model.forward(X[:args.batch], sample_ids=np.arange(min(args.batch, len(X))),
                          n_threads=threads)
    same = bool(np.array_equal(check["output"], m.forward_logits(
        X[:args.batch], np.arange(min(args.batch, len(X))))))
    print(f"[default] engine and tuned kernels give identical logits: {same}")
    print(f"[default] spike rates (fresh model): {rates(net, check)}")

    def eng(cm):
        return lambda x, ids: cm.forward(x, sample_ids=ids, n_threads=threads)

    tuned = compare({"engine": batched(eng(model), X, args.batch),
                     "tuned": batched(m.forward_logits, X, args.batch)},
                    {"engine": len(X), "tuned": len(X)}, args.repeats)
    _line("default", tuned, ("engine", "tuned"))
    ratio = tuned["engine/tuned"]["ratio"]
    print(f"[default] engine reaches {'>=' if ratio >= 0.95 else 'LESS than'} 0.95x the tuned "
          f"kernels' inference img/s (x{ratio:.2f}); "
          f"{'' if ratio >= 0.95 else 'the tuned kernels stay the preset fast path'}")
    ref = compare({"engine": batched(eng(model), X, args.batch),
                   "reference": batched(lambda x, ids: R.forward(net, weights, x,
                                                                 sample_ids=ids), Xr, args.batch)},
                  {"engine": len(X), "reference": len(Xr)}, args.repeats)
    _line("default", ref, ("engine", "reference"))
    results["default"] = {"same_logits": same, "vs_tuned": tuned, "vs_reference": ref,
                          "rates": rates(net, check)}

    # 3. the deeper CNN: engine vs reference
    deep = deep_cnn()
    w = random_weights(deep)
    cm = engine.CompiledNetwork(deep, w)
    out = cm.forward(X[:args.batch], sample_ids=np.arange(min(args.batch, len(X))),
                     n_threads=threads)
    print(f"[deep_cnn] spike rates: {rates(deep, out)}")
    r = compare({"engine": batched(eng(cm), X, args.batch),
                 "reference": batched(lambda x, ids: R.forward(deep, w, x, sample_ids=ids),
                                      Xr, args.batch)},
                {"engine": len(X), "reference": len(Xr)}, args.repeats)
    _line("deep_cnn", r, ("engine", "reference"))
    results["deep_cnn"] = {"vs_reference": r, "rates": rates(deep, out),
                           "network": deep.to_dict()}
    if args.json:
        from snnfast._utils import write_json
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
