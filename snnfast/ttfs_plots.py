"""Figures of the TTFS conversion run (matplotlib, Agg backend, PNG files).

:func:`make_all` is called by ``python -m snnfast.convert``; each ``plot_*`` function
takes the result rows / sweeps / networks produced there and writes one PNG.
"""
from pathlib import Path

import numpy as np

__all__ = ["make_all", "plot_depth", "plot_spike_histograms", "plot_windows", "plot_sweeps",
           "make_cnn_figures", "plot_cnn_spike_times", "plot_cnn_sparsity"]


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    from ._utils import atomic_path
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    _plt().close(fig)
    return Path(path).name


def _hist_windows(ax, net, times, bins, label):
    """Histogram of each hidden layer's finite spike times inside its shaded window,
    and the read-out time t_min(N) as a dotted line; ``label(l)`` names layer l."""
    cmap = _plt().get_cmap("viridis", max(net.depth - 1, 1))
    for l, t in enumerate(times or []):
        t = np.asarray(t, np.float64)
        t = t[np.isfinite(t)]
        lo, hi = net.t_min[l], net.t_min[l + 1]
        ax.axvspan(lo, hi, color=cmap(l), alpha=0.08)
        if t.size:
            ax.hist(t, bins=np.linspace(lo, hi, bins + 1), color=cmap(l), label=label(l))
    ax.axvline(net.latency, color="k", lw=1, ls=":")


def plot_depth(rows, path):
    """ReLU/SNN accuracy and spikes per hidden neuron versus depth."""
    plt = _plt()
    d = [r["depth"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
    ax[0].plot(d, [r["relu_acc"] for r in rows], "o-", label="ReLU")
    ax[0].plot(d, [r["snn_acc"] for r in rows], "x--", label="TTFS SNN (event-driven)")
    ax[0].set(xlabel="weight layers L", ylabel="test accuracy (%)", xticks=d,
              title="accuracy vs depth")
    ax[0].legend()
    ax[1].plot(d, [r["spikes_per_hidden_neuron"] for r in rows], "o-")
    ax[1].set(xlabel="weight layers L", ylabel="spikes per hidden neuron", xticks=d,
              title="sparsity (test mean)", ylim=(0, None))
    fig.tight_layout()
    return _save(fig, path)


def plot_spike_histograms(nets, sims, path, bins=60):
    """Spike-time histograms of every hidden layer (one panel per depth, absolute time)."""
    plt = _plt()
    depths = sorted(nets)
    fig, axes = plt.subplots(len(depths), 1, figsize=(9, 2.2 * len(depths) + 0.5), squeeze=False)
    for ax, d in zip(axes[:, 0], depths):
        net, r = nets[d], sims[d]
        _hist_windows(ax, net, r.times, bins, lambda l: f"layer {l + 1}")
        ax.set_yscale("log")
        ax.set(ylabel="spikes", title=f"L={d}: hidden spike times (window shaded, "
                                     f"output read at t_min(N)={net.latency:.1f})")
        if net.depth <= 5:
            ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("time (tau_c)")
    fig.tight_layout()
    return _save(fig, path)


def plot_windows(nets, path):
    """Time-axis schematic of the chained windows [t_min(n), t_max(n)] per depth."""
    plt = _plt()
    depths = sorted(nets)
    fig, ax = plt.subplots(figsize=(9, 0.7 * len(depths) + 1.4))
    for y, d in enumerate(depths):
        net = nets[d]
        ax.barh(y, 1.0, left=0.0, color="0.75", edgecolor="k")
        for l in range(net.depth - 1):
            lo, hi = net.t_min[l], net.t_min[l + 1]
            ax.barh(y, hi - lo, left=lo, color=plt.get_cmap("tab10")(l % 10), edgecolor="k")
            if hi - lo > 0.04 * net.latency:
                ax.text((lo + hi) / 2, y, str(l + 1), ha="center", va="center", fontsize=7)
        ax.plot([net.latency], [y], "kv")
    ax.set_yticks(range(len(depths)), [f"L={d}" for d in depths])
    ax.set(xlabel="time (tau_c); grey = input window [0,1], numbers = hidden layer, "
                  "triangle = output read-out t_min(N)",
           title="chained windows: t_min(n+1) = t_max(n), Delta_n = (1+zeta) X_n")
    fig.tight_layout()
    return _save(fig, path)


def plot_sweeps(sweeps, path):
    """Argmax agreement with the ReLU net vs time bits and vs dt, one line per depth."""
    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
    for d in sorted(sweeps):
        tb = sweeps[d].get("time_bits", [])
        if tb:
            ax[0].plot([e["time_bits"] for e in tb], [e["agreement"] for e in tb], "o-",
                       label=f"L={d}")
        dt = sweeps[d].get("dt", [])
        if dt:
            ax[1].plot([e["dt"] for e in dt], [e["agreement"] for e in dt], "o-", label=f"L={d}")
    ax[0].set(xlabel="spike-time bits per window", ylabel="agreement with ReLU (%)",
              title="time quantisation")
    ax[1].set(xlabel="dt (tau_c)", xscale="log", ylabel="agreement with ReLU (%)",
              title="clock-driven simulation")
    ax[1].invert_xaxis()
    for a in ax:
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def make_all(out, rows, sweeps, nets, sims):
    """Write all figures into ``out``; returns the list of file names."""
    out = Path(out)
    return [plot_depth(rows, out / "ttfs_depth.png"),
            plot_spike_histograms(nets, sims, out / "ttfs_spike_times.png"),
            plot_windows(nets, out / "ttfs_windows.png"),
            plot_sweeps(sweeps, out / "ttfs_sweeps.png")]


def plot_cnn_spike_times(net, sim, path, bins=60):
    """Spike-time histogram of every hidden stage of a TTFS CNN (absolute time)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 3.4))
    _hist_windows(ax, net, sim.times, bins, lambda l: f"stage {l + 1} ({net.stages[l].kind})")
    ax.set_yscale("log")
    ax.set(xlabel="time (tau_c)", ylabel="spikes",
           title=f"hidden spike times, {len(sim.logits)} test images (window shaded, output "
                 f"read at t_min(N)={net.latency:.1f})")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return _save(fig, path)


def plot_cnn_sparsity(net, row, path):
    """Per stage: spikes per hidden neuron, and synaptic events vs dense MACs."""
    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
    hidden = row["spikes_per_neuron_per_stage"]
    labels = [f"{l + 1}:{s.kind}" for l, s in enumerate(net.stages)]
    ax[0].bar(labels[:-1], hidden, color="tab:blue")
    ax[0].set(ylabel="spikes per neuron", ylim=(0, 1),
              title=f"sparsity (mean {row['spikes_per_hidden_neuron']:.3f})")
    layers = row["operation_counts"]["layers"]
    x = np.arange(len(layers))
    ax[1].bar(x - 0.2, [e["synaptic_events_per_image"] for e in layers], 0.4,
              label="synaptic events (SNN)")
    ax[1].bar(x + 0.2, [e["dense_macs"] for e in layers], 0.4, label="dense MACs (ReLU)")
    ax[1].set_xticks(x, labels)
    ax[1].set(yscale="log", ylabel="per image", title="operations per stage")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def make_cnn_figures(out, net, sim, row):
    """Figures of ``python -m snnfast.convert --arch cnn|--model``; returns file names."""
    out = Path(out)
    return [plot_cnn_spike_times(net, sim, out / "ttfs_cnn_spike_times.png"),
            plot_cnn_sparsity(net, row, out / "ttfs_cnn_sparsity.png")]
