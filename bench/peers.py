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

Any network: ``--config NET.toml``
----------------------------------

    python bench/peers.py --config examples/fmnist-cnn.toml [--dataset fashion-mnist]
                          [--data FILE.npz] [--threads N] [--repeats 3] [--train-images N]
                          [--test-images N] [--json out.json]

compares snnfast with snnTorch on the network of any description (``docs/network.rst``).
The data: ``--data`` (``snnfast.datasets.load_arrays``), else MNIST or ``--dataset
fashion-mnist`` from the local cache for a 1 x 28 x 28 Hybrid input, else synthetic event
frames (``snnfast.datasets.synthetic_frames``) for a 2 x 34 x 34 Direct input. snnTorch's
network (:func:`snntorch_net`) is written the way its tutorials write one -- ``torch.nn``
``Conv2d``/``Linear`` (with or without bias), ``avg_pool2d`` (times the window size for a
``SumPool2d``)/``max_pool2d``, ``flatten``, and ``snn.Leaky`` neurons (``beta`` = the decay,
1 for ``IF``; the threshold; ``reset_delay=False``, the reset in the step of the spike as in
snnfast) stepped in a Python loop over the T steps -- and follows the description's
semantics: a layer with an update period runs on its update steps only, on the events of
its window (``drive = "window"``) or of all steps so far (``"cumulative"``), its input
current times ``scale``; the read-out is the last layer's spike count over its updates or
over T; the Hybrid encoder is snnfast's (its deterministic steps exactly, its Bernoulli
steps from torch's generator) and Direct frames go in as they are. With the same weights its
outputs equal the engine's exactly where snnTorch can express the description
(``tests/test_bench.py``). Deviations, as far as snnTorch's ``Leaky`` allows:

* ``reset = "halve"`` has no counterpart; it runs as ``"subtract"`` (printed);
* ``reset = "subtract"``: while a neuron's potential stays above the threshold after a
  reset, ``Leaky`` tests ``v - threshold`` against the threshold (and keeps ``v`` when that
  fails), so the neuron spikes again only above twice the threshold where snnfast's spikes
  above it (input 2.0 then 0, 0: snnfast spikes at steps 0 and 1, ``Leaky`` at step 0);
  neurons driven that hard are rare;
* the Bernoulli steps of the Hybrid encoder draw other random numbers (same distribution).

snnTorch trains its way: backpropagation through time with ``Leaky``'s default surrogate
gradient (arctan), cross-entropy on the outputs, Adam (lr 1e-3), batch 64; it infers in
batches of 256 without gradients. snnfast trains with its rate surrogate gradient
(:class:`snnfast.SNN` with the description's ``[training]`` options, one epoch per
timed run) and infers with :mod:`snnfast.engine` on the trained weights, also in batches of
256. Printed: img/s of each, snnfast's speed over snnTorch's per round (median, range), the
thread count (torch's too), and each one's mean training loss of its last run beside
ln(n_classes), the loss of chance.
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
    return _model_runs(_PeerModel(name, threads), data)


def _model_runs(pm, data):
    """(train, infer, losses) of a peer model ``pm`` (a :class:`_PeerModel`) on ``data``."""
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


# ------------------------------------------------------------------ any description (--config)

# snnTorch's Leaky has reset_mechanism "subtract", "zero" and "none"; snnfast's "halve" has no
# counterpart and is run as "subtract" (a deviation listed in the module docstring).
_SNNTORCH_RESETS = {"zero": "zero", "subtract": "subtract", "halve": "subtract"}


def _torch_op(torch, layer):
    """A pool or Flatten of the description as a torch function on (B, ...) tensors."""
    F = torch.nn.functional
    kind = type(layer).__name__
    if kind == "Flatten":
        return lambda x: x.flatten(1)
    k, s = layer.kernel_size, layer.stride
    if kind == "SumPool2d":       # torch has no sum pool: the mean times the window size
        return lambda x: F.avg_pool2d(x, k, s) * (k[0] * k[1])
    if kind == "AvgPool2d":
        return lambda x: F.avg_pool2d(x, k, s)
    return lambda x: F.max_pool2d(x, k, s)


def _torch_synapse(torch, layer, in_shape):
    nn = torch.nn
    if type(layer).__name__ == "Conv2d":
        return nn.Conv2d(in_shape[0], layer.out_channels, layer.kernel_size, layer.stride,
                         layer.padding, bias=layer.bias)
    return nn.Linear(in_shape[0], layer.out_features, bias=layer.bias)


def snntorch_net(torch, snn, net):
    """The network of description ``net`` in snnTorch, written the way snnTorch's tutorials
    write a network: torch.nn layers and ``snn.Leaky`` neurons stepped in a loop over time.

    ``forward(x, gen)`` takes images ``(B, C, H, W)`` of pixel values / 255 (Hybrid encoder:
    snnfast's deterministic steps exactly, Bernoulli steps from ``gen``) or frames
    ``(B, T, C, H, W)`` (Direct) and returns the logits ``(B, n_classes)``.
    """
    nn = torch.nn
    enc = net.encoder
    hybrid = type(enc).__name__ == "Hybrid"
    if hybrid:     # the smallest pixel value that spikes at each deterministic step (or 256)
        from snnfast.engine.forward import _det_table
        table = _det_table(net.T, enc.n_det)[:min(net.T, enc.n_det)].astype(bool)
        u_min = [int(np.argmax(row)) if row.any() else 256 for row in table]

    class Stage(nn.Module):
        def __init__(self, neuron_index, chain):
            super().__init__()
            syn = next(i for i in chain if net[i].kind == "synapse")
            lif = net[neuron_index]
            self.pre = [_torch_op(torch, net[i]) for i in chain if i < syn]
            self.post = [_torch_op(torch, net[i]) for i in chain if i > syn]
            self.event_shape = net.input_shape_of(syn)
            self.syn = _torch_synapse(torch, net[syn], self.event_shape)
            # beta: the decay, 1 for IF; reset_delay=False: the reset in the step of the
            # spike, as in snnfast
            self.lif = snn.Leaky(beta=lif.beta, threshold=lif.threshold,
                                 reset_mechanism=_SNNTORCH_RESETS[lif.reset], reset_delay=False)
            self.updates = set(lif.update_steps(net.T))
            self.cumulative = lif.drive == "cumulative"
            self.scale = lif.scale

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stages = nn.ModuleList(Stage(n, chain) for n, chain in net.stages())
            ro = net.readout_index
            last = self.stages[-1]
            self.norm = len(last.updates) if net[ro].norm == "updates" else net.T
            self.head = nn.ModuleList()
            self.head_ops = []
            for i in range(ro + 1, len(net)):
                if net[i].kind == "synapse":
                    self.head.append(_torch_synapse(torch, net[i], net.input_shape_of(i)))
                    self.head_ops.append(self.head[-1])
                else:
                    self.head_ops.append(_torch_op(torch, net[i]))

        def forward(self, x, gen):
            B = len(x)
            drive = [None] * len(self.stages)
            mem = [st.lif.init_leaky() for st in self.stages]
            count = 0
            u = (x * 255).round() if hybrid else None      # the uint8 pixel values
            for t in range(net.T):
                if not hybrid:
                    src = x[:, t]
                elif t < len(u_min):       # snnfast's deterministic rule, exactly
                    src = (u >= u_min[t]).to(x.dtype)
                else:
                    src = (torch.rand(x.shape, generator=gen) < x).to(x.dtype)
                for k, st in enumerate(self.stages):
                    if src is not None:          # None: the previous layer did not update
                        for op in st.pre:
                            src = op(src)
                        drive[k] = src if drive[k] is None else drive[k] + src
                    if t not in st.updates:
                        src = None
                        continue
                    if drive[k] is None:
                        drive[k] = x.new_zeros((B,) + st.event_shape)
                    cur = st.syn(drive[k])
                    for op in st.post:
                        cur = op(cur)
                    if st.scale != 1.0:
                        cur = cur * st.scale
                    src, mem[k] = st.lif(cur, mem[k])
                    if not st.cumulative:
                        drive[k] = None
                if src is not None:
                    count = count + src
            y = count / self.norm
            for op in self.head_ops:
                y = op(y)
            return y
    return Net()


def set_snntorch_weights(model, net, weights):
    """Copy snnfast weights (``{"<layer>.weight": ..., "<layer>.bias": ...}``) into a model
    of :func:`snntorch_net`; a ``Linear`` weight is snnfast's (in, out) transposed."""
    import torch
    syns = [st.syn for st in model.stages] + list(model.head)
    names = [net[i].name for i in range(len(net)) if net[i].kind == "synapse"]
    with torch.no_grad():
        for mod, name in zip(syns, names):
            w = np.asarray(weights[f"{name}.weight"], np.float32)
            mod.weight.copy_(torch.from_numpy(w.T.copy() if w.ndim == 2 else w))
            if mod.bias is not None:
                mod.bias.copy_(torch.from_numpy(np.asarray(weights[f"{name}.bias"], np.float32)))


def snnfast_config_runs(config, threads, data, runs):
    """(train, infer, losses) of snnfast on the description file ``config``: :class:`snnfast.SNN`
    with the file's training options (batch 64 as snnTorch's, a schedule over ``runs``
    epochs), one epoch per training run; inference through the engine on the weights it
    trained (the weight average), in batches of 256."""
    from snnfast import SNN
    m = SNN(config, n_threads=threads, batch_size=BATCH, eval_batch_size=EVAL_BATCH,
            epochs=runs)
    Xtr, ytr, Xte, _ = data
    losses = []

    def train():
        m.fit(Xtr, ytr, epochs=m.epoch_ + 1)
        losses.append(m.history_[-1]["train_loss"])

    def infer():
        m.predict(Xte)
    return train, infer, losses


def _deviations(net):
    """What of description ``net`` the snnTorch network cannot express (printed)."""
    out = []
    if any(getattr(ly, "reset", None) == "halve" for ly in net):
        out.append("'halve' resets run as snnTorch's 'subtract'")
    return out


class _ConfigPeer(_PeerModel):
    """snnTorch's network of a description, its Adam optimiser and noise generator."""

    def __init__(self, net, threads, seed=0):
        import snntorch
        self.torch = _peer("snntorch", threads)[0]
        self.torch.manual_seed(seed)
        self.gen = self.torch.Generator().manual_seed(seed)
        self.net = snntorch_net(self.torch, snntorch, net)
        self.opt = self.torch.optim.Adam(self.net.parameters(), lr=1e-3)
        self.hybrid = type(net.encoder).__name__ == "Hybrid"

    def images(self, X):
        """Inputs as snnfast takes them (uint8 images or float32 frames) as a float tensor:
        images scaled to [0, 1]."""
        x = self.torch.from_numpy(np.ascontiguousarray(X)).float()
        return x.div(255) if self.hybrid else x


def snntorch_config_runs(net, threads, data):
    """(train, infer, losses) of snnTorch on description ``net`` (as :func:`peer_runs`)."""
    return _model_runs(_ConfigPeer(net, threads), data)


def _summary(times, ref_times, n):
    """img/s of ``n`` images per run, and per round snnfast default's speed over this one's."""
    ratios = [t / rt for t, rt in zip(times, ref_times)]
    return {"img_s": n / statistics.median(times), "times_s": times,
            "snnfast_over_this": statistics.median(ratios), "ratio_runs": ratios}


def _time_and_report(tools, ref, n_train, n_test, repeats, results, n_classes=10):
    """Time the tools' training and inference runs alternating, print img/s and each other
    tool's ratio to ``ref`` (per round), then the mean loss of each tool's last training run
    beside chance; fill ``results["tools"]``."""
    for kind, idx, n in (("training", 0, n_train), ("inference", 1, n_test)):
        times = alternate_times({k: v[idx] for k, v in tools.items()}, repeats)
        for name, t in times.items():
            s = _summary(t, times[ref], n)
            results["tools"].setdefault(name, {})[kind] = s
            line = f"{kind:9s} {name:16s} {s['img_s']:8.0f} img/s"
            if not name.startswith("snnfast"):
                lo, hi = min(s["ratio_runs"]), max(s["ratio_runs"])
                line += f"   {ref} is x{s['snnfast_over_this']:.1f} ({lo:.1f}-{hi:.1f})"
            print(line)
    for name, (_, _, losses) in tools.items():
        if losses:
            loss = losses[-1]
            results["tools"][name]["last_train_loss"] = loss
            print(f"{name}: mean training loss of its last run {loss:.3f} "
                  f"(chance: ln {n_classes} = {math.log(n_classes):.2f})")


def _print_machine(threads, source, n_train, n_test, what):
    from snnfast._config import config_dict
    cfg = config_dict()
    print(f"cpu: {cfg['cpu']} [{cfg['simd']}], {cfg['cpus_available']} cpus; threads "
          f"{threads}; data {source}, {n_train} training / {n_test} test samples per run; "
          f"{what}, training batch {BATCH}")
    return cfg


def _print_versions(versions):
    if versions:
        import torch
        print("peers: " + ", ".join(f"{k} {v}" for k, v in versions.items())
              + f"; torch {torch.__version__} ({torch.get_num_threads()} threads)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", nargs="*", default=None, choices=PEERS,
                   help=f"default: {' '.join(PEERS)} (with --config: snntorch, the only one)")
    p.add_argument("--threads", type=int, default=None, help="threads (default: the rule)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-images", type=int, default=2048)
    p.add_argument("--test-images", type=int, default=4096)
    p.add_argument("--json", default=None, help="write the results to this file")
    p.add_argument("--accuracy", action="store_true",
                   help="also train each peer for one epoch on all 60 000 training images and "
                   "print its test accuracy (a check that the peer networks are sound; a few "
                   "minutes)")
    p.add_argument("--config", default=None,
                   help="compare snnfast and snnTorch on this network description (.toml or "
                   ".json) instead of the presets")
    p.add_argument("--dataset", choices=("mnist", "fashion-mnist"), default="mnist",
                   help="--config with a 1 x 28 x 28 Hybrid input: the data set (from the "
                   "local cache; synthetic digits if it is not there)")
    p.add_argument("--data", default=None,
                   help="--config: a .npz/.h5 file with X_train, y_train, X_test, y_test "
                   "(snnfast.datasets.load_arrays) instead of --dataset")
    args = p.parse_args(argv)
    from snnfast._cli import check_output_arg
    check_output_arg(p, "--json", args.json)   # before the measurements
    if args.repeats < 1 or args.train_images < BATCH or args.test_images < 1:
        p.error(f"--repeats and --test-images must be >= 1, --train-images >= {BATCH}")
    from snnfast import effective_n_threads
    threads = effective_n_threads(args.threads)
    if args.config is not None:
        return config_main(p, args, threads)
    if args.data is not None:
        p.error("--data needs --config (the presets run on MNIST)")
    peers = PEERS if args.peers is None else args.peers
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
    cfg = _print_machine(threads, source, len(Xtr), len(Xte), f"T = {T}")
    tools = {"snnfast default": snnfast_runs("default", threads, data),
             "snnfast seed": snnfast_runs("seed", threads, data)}
    versions = {}
    for name in peers:
        try:
            versions[name] = _peer(name, threads)[2]
            tools[name] = peer_runs(name, threads, data)
        except ImportError as exc:
            print(f"{name}: skipped ({exc}; pip install torch {name})")
    _print_versions(versions)
    results = {"config": cfg, "threads": threads, "data": source, "versions": versions,
               "tools": {}}
    _time_and_report(tools, "snnfast default", len(Xtr), len(Xte), args.repeats, results)
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


def _config_data(p, args, net):
    """(source, Xtr, ytr, Xte, yte) for description ``net``, as snnfast takes them (uint8
    images (N, C, H, W) or float32 frames (N, T, C, H, W)): --data, else MNIST/Fashion-MNIST
    for a 1 x 28 x 28 Hybrid input, else synthetic event frames for a 2 x 34 x 34 Direct
    input."""
    from snnfast import datasets
    hybrid = type(net.encoder).__name__ == "Hybrid"
    if args.data is not None:
        try:
            Xtr, ytr, Xte, yte = datasets.load_arrays(args.data)
        except ValueError as exc:
            p.error(f"--data: {exc}")
        source = str(args.data)
    elif hybrid and net.input_shape == (1, 28, 28):
        source, Xtr, ytr, Xte, yte = bench_data(args.train_images, args.test_images,
                                                args.dataset)
        Xtr, Xte = Xtr.reshape(len(Xtr), 1, 28, 28), Xte.reshape(len(Xte), 1, 28, 28)
    elif not hybrid and net.input_shape == (2, 34, 34):
        source = "synthetic event frames"
        Xtr, ytr, Xte, yte = datasets.synthetic_frames(args.train_images, args.test_images,
                                                       T=net.T, seed=1)
    else:
        p.error(f"--config: no built-in data for a {type(net.encoder).__name__} input of "
                f"shape {list(net.input_shape)}: give --data FILE.npz")
    want = (net.T,) + net.input_shape if not hybrid else net.input_shape
    if Xtr.shape[1:] != want:
        p.error(f"--data: samples of shape {Xtr.shape[1:]}, the network takes {want}")
    n_classes = int(np.prod(net.output_shape))
    if max(ytr.max(), yte.max()) >= n_classes:
        p.error(f"--data: labels up to {max(ytr.max(), yte.max())}, the network has "
                f"{n_classes} outputs")
    Xtr, ytr = Xtr[:args.train_images], ytr[:args.train_images]
    if len(Xtr) < BATCH:
        p.error(f"--data: {len(Xtr)} training samples, fewer than a batch of {BATCH}")
    return (source, np.ascontiguousarray(Xtr), ytr.astype(np.int64),
            np.ascontiguousarray(Xte[:args.test_images]), yte[:args.test_images].astype(np.int64))


def config_main(p, args, threads):
    """``--config``: snnfast and snnTorch on the network of a description file."""
    from snnfast.network import Network
    if args.accuracy:
        p.error("--accuracy is for the presets; with --config the learning check is the "
                "training loss")
    if args.peers not in (None, ["snntorch"]):
        p.error("--config compares with snnTorch only (--peers snntorch)")
    try:
        net = Network.from_file(args.config)
    except ValueError as exc:
        p.error(f"--config: {exc}")
    source, *data = _config_data(p, args, net)
    n_classes = int(np.prod(net.output_shape))
    cfg = _print_machine(threads, source, len(data[0]), len(data[2]),
                         f"network {net.name or args.config} ({net.n_params()} parameters), "
                         f"T = {net.T}")
    for d in _deviations(net):
        print(f"snnTorch deviation: {d}")
    # every tool trains repeats + 1 epochs (a warm-up run, then the timed ones)
    try:
        tools = {"snnfast": snnfast_config_runs(args.config, threads, data, args.repeats + 1)}
    except ValueError as exc:       # a [training] table or a network snnfast cannot train
        p.error(f"--config: {exc}")
    versions = {}
    try:
        versions["snntorch"] = _peer("snntorch", threads)[2]
        tools["snntorch"] = snntorch_config_runs(net, threads, data)
    except ImportError as exc:
        print(f"snntorch: skipped ({exc}; pip install torch snntorch)")
    _print_versions(versions)
    results = {"config": cfg, "threads": threads, "data": source, "versions": versions,
               "network": net.to_dict(), "tools": {}}
    _time_and_report(tools, "snnfast", len(data[0]), len(data[2]), args.repeats, results,
                     n_classes)
    if args.json:
        from snnfast._utils import write_json
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
