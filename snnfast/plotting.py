"""Pictures of a training run: learning curves, spike rasters and firing-rate histograms.

All figures are written as PNG with the non-interactive Agg backend, atomically.
"""
from pathlib import Path

import numpy as np

from ._utils import atomic_path

__all__ = ["learning_curves", "spike_rasters", "rate_histograms", "training_report",
           "node_rasters"]



def _layers(record, network):
    """(title, spikes (N, T, units), steps a neuron can spike on) of the input and of every
    spiking layer of ``network``, from a record in the engine's format (``input``,
    ``spikes`` per spiking layer): the layers and their sizes are the description's."""
    T = network.T
    x = record["input"]
    out = [(f"input ({'x'.join(map(str, network.input_shape))})",
            x.reshape(x.shape[0], x.shape[1], -1), T)]
    for name in network.spiking_layers():
        ly, shape = network[name], network.shapes[network.index(name)]
        s = record["spikes"][name]
        out.append((f"{name} {type(ly).__name__} ({'x'.join(map(str, shape))})",
                    s.reshape(s.shape[0], s.shape[1], -1), len(ly.update_steps(T))))
    return out


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _pyplot().close(fig)
    return path


def _history(metrics):
    """Per-epoch records from a metrics dict (``history`` or ``epochs`` list of dicts)."""
    hist = metrics.get("history") or metrics.get("epochs") or []
    return [h for h in hist if isinstance(h, dict)]


def learning_curves(metrics, path):
    """Loss and accuracy per epoch (train and validation) as a two-panel PNG."""
    plt = _pyplot()
    hist = _history(metrics)
    if not hist:
        raise ValueError("metrics has no per-epoch history to plot")
    ep = [h.get("epoch", i + 1) for i, h in enumerate(hist)]
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        ys = [h.get(key) for h in hist]
        if any(y is not None for y in ys):
            ax_l.plot(ep, [np.nan if y is None else y for y in ys], marker="o", label=label)
    ax_l.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    for key, label in (("train_acc", "train"), ("val_acc", "validation"), ("test_acc", "test")):
        ys = [h.get(key) for h in hist]
        if any(y is not None for y in ys):
            ax_a.plot(ep, [np.nan if y is None else 100 * y for y in ys], marker="o", label=label)
    ax_a.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_l, ax_a):
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def spike_rasters(record, network, images, labels, path, n_digits=4):
    """For a few digits: the image beside a spike raster (neuron x step) of the input and of
    each spiking layer of ``network`` (a record in the engine's format with ``logits``, e.g.
    ``ConvSNN.trace_network``)."""
    plt = _pyplot()
    layers = _layers(record, network)
    n = min(n_digits, len(images))
    T = network.T
    fig, axes = plt.subplots(n, 1 + len(layers), figsize=(1 + 4 * len(layers), 2.6 * n),
                             squeeze=False, gridspec_kw={"width_ratios": [1] + [2] * len(layers)})
    pred = np.argmax(record["logits"], axis=1)
    C, H, W = network.input_shape
    for i in range(n):
        axes[i, 0].imshow(np.asarray(images[i]).reshape(C, H, W)[0], cmap="gray_r")
        axes[i, 0].set_title(f"label {labels[i]}, predicted {pred[i]}", fontsize=9)
        axes[i, 0].axis("off")
        for k, (title, spikes, _) in enumerate(layers, start=1):
            s = spikes[i]
            t_idx, n_idx = np.nonzero(s)
            ax = axes[i, k]
            ax.scatter(t_idx, n_idx, s=1.0, marker="|", color="k")
            ax.set_xlim(-0.5, T - 0.5)
            ax.set_ylim(-0.5, s.shape[1] - 0.5)
            ax.set_title(f"{title}: {int(s.sum())} spikes", fontsize=9)
            ax.set_xlabel("time step")
            if k == 1:
                ax.set_ylabel("neuron")
    fig.tight_layout()
    return _save(fig, path)


def node_rasters(series, path, sample=0, max_units=2048):
    """One raster panel (unit x step) per named series: ``{name: (N, T, ...) array}``.

    Nonzero entries of sample ``sample`` are drawn (spikes; for a non-spiking node, its
    nonzero outputs); units beyond ``max_units`` (flat index) are left out and the title
    says so.
    """
    plt = _pyplot()
    n = len(series)
    if n == 0:
        raise ValueError("nothing to plot: no traced node")
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.4 * n), squeeze=False)
    for ax, (name, a) in zip(axes[:, 0], series.items()):
        s = np.asarray(a[sample]).reshape(a.shape[1], -1)
        T, units = s.shape
        shown = s[:, :max_units]
        t_idx, n_idx = np.nonzero(shown)
        ax.scatter(t_idx, n_idx, s=1.0, marker="|", color="k")
        ax.set_xlim(-0.5, T - 0.5)
        ax.set_ylim(-0.5, shown.shape[1] - 0.5)
        cut = f", first {max_units} of {units} units" if units > max_units else ""
        ax.set_title(f"{name}: {int(np.count_nonzero(s))} nonzero in {T} steps x {units} "
                     f"units{cut}", fontsize=9)
        ax.set_ylabel("unit")
    axes[-1, 0].set_xlabel("time step")
    fig.tight_layout()
    return _save(fig, path)


def rate_histograms(record, network, path):
    """Histogram of per-neuron firing rates (spikes per step, or per update of a layer
    updated less often) of the input and of each spiking layer of ``network``."""
    plt = _pyplot()
    layers = _layers(record, network)
    fig, axes = plt.subplots(1, len(layers), figsize=(4 * len(layers), 3.5), squeeze=False)
    for ax, (title, s, steps) in zip(axes[0], layers):
        rates = s.sum(axis=1).astype(np.float64).ravel() / max(steps, 1)
        ax.hist(rates, bins=np.linspace(0, 1, 21), color="C0")
        ax.set_yscale("log")
        per = "step" if steps == network.T else "update"
        ax.set(title=f"{title}\nmean {rates.mean():.3f} spikes/{per}",
               xlabel=f"firing rate (spikes per {per})", ylabel="neurons x digits")
    fig.tight_layout()
    return _save(fig, path)


def training_report(run_dir, model, metrics, X_test, y_test, n_digits=4):
    """Write learning_curves.png, spike_rasters.png and rate_histograms.png into ``run_dir``.

    Returns the list of written paths.
    """
    run_dir = Path(run_dir)
    out = []
    if _history(metrics):
        out.append(learning_curves(metrics, run_dir / "learning_curves.png"))
    n = min(n_digits, len(X_test))
    if n:
        # The raster digits are the first test images; the histogram uses a larger sample.
        m = min(256, len(X_test))
        record, net = model.trace_network(X_test[:m], sample_ids=np.arange(m)), model.network
        out.append(spike_rasters(record, net, X_test[:n], y_test[:n],
                                 run_dir / "spike_rasters.png", n))
        out.append(rate_histograms(record, net, run_dir / "rate_histograms.png"))
    return out
