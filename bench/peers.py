"""Throughput of the Conv-SNN in snnfast and in its peers (snnTorch, SpikingJelly, Norse).

    python bench/peers.py [--peers snntorch spikingjelly norse] [--threads N] [--repeats 3]
                          [--train-images 2048] [--test-images 4096] [--json out.json]

The peers are not snnfast's dependencies: install them (and PyTorch) yourself, e.g.
``pip install torch snntorch spikingjelly norse``; a peer that does not import is reported as
skipped. Each peer runs the same network as snnfast's default preset (the sizes are read from
its description file), written the way its documentation writes such a network: 1xHxW ->
conv C@kxk stride s -> LIF (beta 0.9, threshold 0.8, reset to 0) -> FC on the conv spikes of
each two-step window -> LIF (subtract reset) updated on every other step -> FC to the classes
on the mean hidden spike count; hybrid input coding (deterministic for t < 5, Bernoulli after); T = 10. It trains
the peer's way, by backpropagation through time with the peer's default surrogate
gradient, cross-entropy and Adam, batch 64, and infers in batches of 256 without gradients.
snnfast trains its default preset (the rate-based surrogate gradient of the README) and its
seed preset. The figure compared is what a user gets from each tool for this network:
images per second on the same machine, the same data and the same thread count, the timed
runs of all tools alternating (see ``bench/_timing.py``).

Per tool and measurement the median of ``--repeats`` timed runs after one warm-up run is
printed, then each peer's ratio to snnfast's default preset (median of the per-round
ratios, with their range). As a check that each peer network learns, the mean training
loss of its last timed run is printed beside ln 10 = 2.30 (chance).
"""
import argparse
import math
import statistics
import sys

import numpy as np

from _timing import alternate_times, bench_data  # bench/_timing.py (the script directory is on sys.path)

from snnfast._cli import openmp_wait_defaults  # noqa: E402

openmp_wait_defaults()     # as the command-line tools do, before any kernel loads OpenMP
from snnfast.convsnn import make_config  # noqa: E402

T, N_DET, BETA, THR, BATCH, EVAL_BATCH = 10, 5, 0.9, 0.8, 64, 256
# the sizes of the default preset's network (its description file)
G = make_config("default").geometry
PEERS = ("snntorch", "spikingjelly", "norse")


def _encode(torch, x, t, gen):
    """Hybrid coding of images x in [0, 1] at step t (snnfast's rule, in torch)."""
    if t < N_DET:
        return (x > 1.0 - t / N_DET).to(x.dtype)
    return (torch.rand(x.shape, generator=gen) < x).to(x.dtype)


def _run_steps(torch, net, x, gen, s1, s2):
    """Logits of a step-by-step peer network (snnTorch, Norse): its ``lif1(current, state)``
    and ``lif2`` return (spikes, state); s1, s2 are their initial states."""
    window = count = 0
    for t in range(T):
        z1, s1 = net.lif1(net.conv(_encode(torch, x, t, gen)), s1)
        window = window + z1
        if t % 2 == 1:                                # hidden layer on every other step
            z2, s2 = net.lif2(net.fc1(window.flatten(1)), s2)
            count, window = count + z2, 0
    return net.fc2(count / (T // 2))


def _snntorch_net(torch, snn):
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, G.channels, G.kernel, stride=G.stride)
            # reset_delay=False: the reset in the step of the spike, as in snnfast (snnTorch's
            # default subtracts the threshold one step later)
            self.lif1 = snn.Leaky(beta=BETA, threshold=THR, reset_mechanism="zero",
                                  reset_delay=False)
            self.fc1 = nn.Linear(G.n_conv, G.hidden)
            self.lif2 = snn.Leaky(beta=BETA, threshold=THR, reset_mechanism="subtract",
                                  reset_delay=False)
            self.fc2 = nn.Linear(G.hidden, G.classes)

        def forward(self, x, gen):
            return _run_steps(torch, self, x, gen, self.lif1.init_leaky(),
                              self.lif2.init_leaky())
    return Net()


def _spikingjelly_net(torch, sj):
    nn = torch.nn
    neuron, layer, functional = sj.neuron, sj.layer, sj.functional
    tau = 1.0 / (1.0 - BETA)           # decay_input=False: v <- v - v/tau + x = 0.9 v + x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = layer.Conv2d(1, G.channels, G.kernel, stride=G.stride)
            self.lif1 = neuron.LIFNode(tau=tau, decay_input=False, v_threshold=THR, v_reset=0.0)
            self.fc1 = layer.Linear(G.n_conv, G.hidden)
            self.lif2 = neuron.LIFNode(tau=tau, decay_input=False, v_threshold=THR, v_reset=None)
            self.fc2 = nn.Linear(G.hidden, G.classes)
            functional.set_step_mode(self, "m")     # the multi-step mode, SpikingJelly's fast path

        def forward(self, x, gen):
            functional.reset_net(self)
            s = torch.stack([_encode(torch, x, t, gen) for t in range(T)])   # (T, B, 1, H, W)
            z1 = self.lif1(self.conv(s)).flatten(2)                         # (T, B, n_conv)
            window = z1.reshape(T // 2, 2, *z1.shape[1:]).sum(1)           # two-step windows
            z2 = self.lif2(self.fc1(window))                                # (T/2, B, hidden)
            return self.fc2(z2.mean(0))
    return Net()


def _norse_net(torch, norse):
    nn = torch.nn
    reset = norse.torch.functional.reset
    # LIFBoxCell: v <- v + dt*tau_mem_inv*(-v + x) = 0.9 v + 0.1 x with its defaults (dt 1e-3,
    # tau_mem_inv 100): v is a tenth of snnfast's v, so the thresholds are a tenth of 0.8
    p = dict(tau_mem_inv=torch.tensor((1.0 - BETA) / 1e-3), v_th=torch.tensor(THR * (1.0 - BETA)))
    conv_p = norse.torch.LIFBoxParameters(**p, reset_method=reset.reset_value)
    hid_p = norse.torch.LIFBoxParameters(**p, reset_method=reset.reset_subtract)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, G.channels, G.kernel, stride=G.stride)
            self.lif1 = norse.torch.LIFBoxCell(conv_p, dt=1e-3)
            self.fc1 = nn.Linear(G.n_conv, G.hidden)
            self.lif2 = norse.torch.LIFBoxCell(hid_p, dt=1e-3)
            self.fc2 = nn.Linear(G.hidden, G.classes)

        def forward(self, x, gen):
            return _run_steps(torch, self, x, gen, None, None)
    return Net()


def _peer(name, threads):
    """(torch, model factory, version) of a peer; ImportError if it is not installed."""
    import torch
    torch.set_num_threads(threads)
    if name == "snntorch":
        import snntorch
        return torch, lambda: _snntorch_net(torch, snntorch), _version("snntorch")
    if name == "norse":
        import norse.torch  # noqa: F401  (norse.torch.functional.reset is read from it)
        import norse
        return torch, lambda: _norse_net(torch, norse), _version("norse")
    from spikingjelly.activation_based import functional, layer, neuron
    sj = argparse.Namespace(neuron=neuron, layer=layer, functional=functional)
    return torch, lambda: _spikingjelly_net(torch, sj), _version("spikingjelly")


def _version(dist):
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


class _PeerModel:
    """A peer's network (seeded), its Adam optimiser and noise generator, and the three
    things the benchmark does with them."""

    def __init__(self, name, threads, seed=0):
        self.torch, make, _ = _peer(name, threads)
        self.torch.manual_seed(seed)
        self.gen = self.torch.Generator().manual_seed(seed)
        self.net = make()
        self.opt = self.torch.optim.Adam(self.net.parameters(), lr=1e-3)

    def images(self, X):
        """uint8 images (n, H*W) as the float tensor (n, 1, H, W) in [0, 1]."""
        return self.torch.from_numpy(X).float().div(255).reshape((-1, 1) + G.image_shape)

    def step(self, x, y):
        """One BPTT training step on a batch; returns its loss."""
        self.net.train()
        loss = self.torch.nn.functional.cross_entropy(self.net(x, self.gen), y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.item()

    def predict(self, X):
        """Predicted classes of the image tensor X, in batches of EVAL_BATCH, no gradients."""
        self.net.eval()
        with self.torch.no_grad():
            return self.torch.cat([self.net(X[i:i + EVAL_BATCH], self.gen).argmax(1)
                                   for i in range(0, len(X), EVAL_BATCH)])


def peer_runs(name, threads, data):
    """(train, infer, losses) of a peer on ``data`` = (Xtr, ytr, Xte, yte): two callables
    and the list to which each training run appends its mean loss."""
    pm = _PeerModel(name, threads)
    Xtr, Xte = pm.images(data[0]), pm.images(data[2])
    ytr = pm.torch.from_numpy(data[1]).long()
    losses = []

    def train():
        total = sum(pm.step(Xtr[i:i + BATCH], ytr[i:i + BATCH])
                    for i in range(0, len(Xtr) - BATCH + 1, BATCH))
        losses.append(total / (len(Xtr) // BATCH))

    def infer():
        pm.predict(Xte)
    return train, infer, losses


def peer_accuracy(name, threads, Xtr, ytr, Xte, yte, seed=0):
    """Test accuracy (%) of a peer's network after one epoch over (Xtr, ytr), shuffled."""
    pm = _PeerModel(name, threads, seed)
    X, y = pm.images(Xtr), pm.torch.from_numpy(ytr).long()
    order = pm.torch.randperm(len(X), generator=pm.gen)
    for i in range(0, len(X), BATCH):
        idx = order[i:i + BATCH]
        pm.step(X[idx], y[idx])
    pred = pm.predict(pm.images(Xte))
    return 100.0 * float((pred.numpy() == yte).mean())


def snnfast_runs(preset, threads, data):
    from snnfast.convsnn import ConvSNN
    m = ConvSNN(preset, seed=0, n_threads=threads)
    Xtr, ytr, Xte, yte = data
    return (lambda: m.fit(Xtr, ytr, epochs=m.epoch_ + 1)), (lambda: m.evaluate(Xte, yte)), None


def _summary(times, ref_times, n):
    """img/s of ``n`` images per run, and per round snnfast default's speed over this one's."""
    ratios = [t / rt for t, rt in zip(times, ref_times)]
    return {"img_s": n / statistics.median(times), "times_s": times,
            "snnfast_over_this": statistics.median(ratios), "ratio_runs": ratios}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    p.add_argument("--threads", type=int, default=None, help="threads (default: the rule)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-images", type=int, default=2048)
    p.add_argument("--test-images", type=int, default=4096)
    p.add_argument("--json", default=None, help="write the results to this file")
    p.add_argument("--accuracy", action="store_true",
                   help="also train each peer for one epoch on all 60 000 training images and "
                   "print its test accuracy (a check that the peer networks are sound; a few "
                   "minutes)")
    args = p.parse_args(argv)
    from snnfast._cli import check_output_arg
    check_output_arg(p, "--json", args.json)   # before the measurements
    if args.repeats < 1 or args.train_images < BATCH or args.test_images < 1:
        p.error(f"--repeats and --test-images must be >= 1, --train-images >= {BATCH}")
    from snnfast import effective_n_threads
    from snnfast._config import config_dict
    threads = effective_n_threads(args.threads)
    source, Xtr, ytr, Xte, yte = bench_data(args.train_images, args.test_images)
    data = tuple(np.ascontiguousarray(a.reshape(len(a), -1) if a.ndim > 1 else a)
                 for a in (Xtr, ytr, Xte, yte))
    full = None
    if args.accuracy:
        if source != "mnist":
            p.error("--accuracy needs MNIST in the local cache (python -m snnfast.datasets "
                    "fetch mnist)")
        from snnfast import datasets
        full = (*datasets.load("mnist", "train", download=False),
                *datasets.load("mnist", "test", download=False))
        full = tuple(a.reshape(len(a), -1) if a.ndim > 1 else a for a in full)
    cfg = config_dict()
    print(f"cpu: {cfg['cpu']} [{cfg['simd']}], {cfg['cpus_available']} cpus; threads "
          f"{threads}; data {source}, {len(Xtr)} training / {len(Xte)} test images per run; "
          f"T = {T}, training batch {BATCH}")
    tools = {"snnfast default": snnfast_runs("default", threads, data),
             "snnfast seed": snnfast_runs("seed", threads, data)}
    versions = {}
    for name in args.peers:
        try:
            versions[name] = _peer(name, threads)[2]
            tools[name] = peer_runs(name, threads, data)
        except ImportError as exc:
            print(f"{name}: skipped ({exc}; pip install torch {name})")
    if versions:
        import torch
        print("peers: " + ", ".join(f"{k} {v}" for k, v in versions.items())
              + f"; torch {torch.__version__} ({torch.get_num_threads()} threads)")
    results = {"config": cfg, "threads": threads, "data": source, "versions": versions,
               "tools": {}}
    for kind, idx, n in (("training", 0, len(Xtr)), ("inference", 1, len(Xte))):
        times = alternate_times({k: v[idx] for k, v in tools.items()}, args.repeats)
        ref = times["snnfast default"]
        for name, t in times.items():
            s = _summary(t, ref, n)
            results["tools"].setdefault(name, {})[kind] = s
            line = f"{kind:9s} {name:16s} {s['img_s']:8.0f} img/s"
            if not name.startswith("snnfast"):
                lo, hi = min(s["ratio_runs"]), max(s["ratio_runs"])
                line += (f"   snnfast default is x{s['snnfast_over_this']:.1f} "
                         f"({lo:.1f}-{hi:.1f})")
            print(line)
    for name, (_, _, losses) in tools.items():
        if losses:
            loss = losses[-1]
            results["tools"][name]["last_train_loss"] = loss
            print(f"{name}: mean training loss of its last run {loss:.3f} "
                  f"(chance: ln 10 = {math.log(10):.2f})")
    if args.accuracy:
        for name in versions:
            acc = peer_accuracy(name, threads, *full)
            results["tools"][name]["one_epoch_test_acc"] = acc
            print(f"{name}: test accuracy after one epoch over the {len(full[0])} training "
                  f"images: {acc:.2f}%")
    if args.json:
        from snnfast._utils import write_json
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
