"""The one training loop (snnfast.train.loop.Trainer) against a stand-in model that records
what the loop asks of it: the batches of every epoch are the (seed, epoch) permutation and
shifts, a run stopped between batches and continued makes the same calls as an uninterrupted
one, divergence stops it with TrainingError, and the best-validation weights are selected
and restored. The real models (ConvSNN, SNN) are covered by test_convsnn/test_trainer."""
import contextlib
import math
from types import SimpleNamespace

import numpy as np
import pytest

from snnfast.convsnn import ConvSNN
from snnfast.train.loop import Trainer, TrainingError, update_average
from snnfast.train.options import LoopOptions
from snnfast.train.trainer import SNN


class Recorder:
    """A model that records every training step; its "weights" are the step count."""
    n_classes = 3

    def __init__(self, losses=None, val_accs=(), **options):
        self.config = LoopOptions(**{**dict(seed=5, epochs=3, batch_size=4, lr=0.1,
                                            lr_schedule="constant", warmup_frac=0.0,
                                            final_lr_frac=0.0, augment_shift=2), **options})
        self.trainer = Trainer(self)
        self.calls, self.restored = [], None
        self.losses = losses or (lambda step: 1.0)
        self.val_accs = list(val_accs)

    def _fit_inputs(self, X, name):
        if not isinstance(X, np.ndarray):
            raise TypeError(f"{name} must be an array")
        return X

    def _fit_context(self):
        return contextlib.nullcontext()

    def _augment(self, X, dy, dx, flip):
        return X + (0 if dy is None else 100 * dy + 10 * dx) + (0 if flip is None else flip)

    def _train_step(self, X, y, ids, epoch, lr):
        self.calls.append((epoch, ids.tolist(), X.tolist(), y.tolist(), lr))
        self.trainer.step += 1
        loss = self.losses(self.trainer.step)
        if isinstance(loss, Exception):
            raise loss
        return loss, int(len(y) // 2), {"spikes": len(y)}

    @staticmethod
    def _rate_sums():
        return {"spikes": 0}

    @staticmethod
    def _add_rates(sums, rec):
        sums["spikes"] += rec["spikes"]

    @staticmethod
    def _train_rates(sums, n):
        return {"rate_x": sums["spikes"] / n}

    def evaluate(self, X, y, ids):
        return {"accuracy": self.val_accs.pop(0), "loss": 0.5, "rate_x": 0.25}

    def _snapshot(self):
        return {"w": self.trainer.step}

    def _restore_snapshot(self, weights):
        self.restored = weights


def _data(n=10):
    return np.arange(n, dtype=np.int64) * 1000, np.arange(n) % 3


def _expected_calls(cfg, N, epochs):
    """The loop's batches by their definition: permutation of (seed, epoch), shifts of
    (seed, epoch, 1), consecutive batches of batch_size."""
    X, y = _data(N)
    calls = []
    for e in range(epochs):
        perm = np.random.default_rng((cfg.seed, e)).permutation(N)
        s = cfg.augment_shift
        sh = np.random.default_rng((cfg.seed, e, 1)).integers(-s, s + 1, size=(2, N))
        for b in range(0, N, cfg.batch_size):
            pos = slice(b, b + cfg.batch_size)
            idx = perm[pos]
            xb = X[idx] + 100 * sh[0, pos] + 10 * sh[1, pos]
            calls.append((e, (idx + 7).tolist(), xb.tolist(), y[idx].tolist(), cfg.lr))
    return calls


def test_batches_are_the_epoch_permutation_and_shifts():
    m = Recorder()
    X, y = _data()
    m.trainer.fit(X, y, sample_ids=np.arange(10) + 7)
    assert m.calls == _expected_calls(m.config, 10, 3)
    assert m.trainer.epoch == 3 and m.trainer.step == 9
    h = m.trainer.history
    assert [e["epoch"] for e in h] == [1, 2, 3]
    assert all(e["train_loss"] == 1.0 and e["train_acc"] == 5 / 10 and e["train_rate_x"] == 1.0
               for e in h)


def test_flips_are_drawn_only_when_asked():
    X, y = _data()
    m = Recorder(augment_flip=True, augment_shift=0)
    m.trainer.fit(X, y, epochs=1)
    flips = np.random.default_rng((5, 0, 2)).random(10) < 0.5
    perm = np.random.default_rng((5, 0)).permutation(10)
    got = np.concatenate([c[2] for c in m.calls])
    np.testing.assert_array_equal(got, X[perm] + flips[:10])


@pytest.mark.parametrize("stop_at", [1, 3, 4, 7])
def test_stopped_and_continued_equals_uninterrupted(stop_at):
    X, y = _data()
    ref = Recorder(val_accs=[0.5, 0.6, 0.7])
    ref.trainer.fit(X, y, X[:2], y[:2], restore_best=False)
    m = Recorder(val_accs=[0.5, 0.6, 0.7])
    orig = m._train_step

    def step(*a):
        out = orig(*a)
        if m.trainer.step == stop_at:
            m.trainer._stop = True      # what the SIGINT handler does
        return out
    m._train_step = step
    with pytest.raises(KeyboardInterrupt):
        m.trainer.fit(X, y, X[:2], y[:2], restore_best=False)
    assert m.trainer.clean_stop_
    assert (m.trainer._partial["epoch"], m.trainer._partial["batch"]) == divmod(stop_at, 3)
    del m._train_step
    m.trainer.fit(X, y, X[:2], y[:2], restore_best=False)
    assert m.calls == ref.calls and m.trainer.step == ref.trainer.step == 9

    def timeless(h):
        return [{k: v for k, v in e.items() if "time" not in k and "img_s" not in k}
                for e in h]
    assert timeless(m.trainer.history) == timeless(ref.trainer.history)
    assert m.trainer.best_epoch == ref.trainer.best_epoch == (3, 0.7)


def test_divergence_and_failures_raise_training_error():
    X, y = _data()
    m = Recorder(losses=lambda step: math.nan if step == 2 else 1.0)
    with pytest.raises(TrainingError, match=r"diverged at epoch 1, batch 2 of 3: the loss is"):
        m.trainer.fit(X, y)
    assert m.trainer.epoch == 0
    m = Recorder(losses=lambda step: ValueError("W1 is not finite"))
    with pytest.raises(TrainingError, match=r"failed at epoch 1, batch 1 of 3: W1 is not"):
        m.trainer.fit(X, y)
    # finite but over ten times chance (10 ln 3 = 10.99): the epoch is not counted
    m = Recorder(losses=lambda step: 11.0)
    with pytest.raises(TrainingError, match=r"epoch 1: the mean training loss 11\.0 is over "
                                            r"ten times that of chance \(ln 3 = 1\.10\)"):
        m.trainer.fit(X, y)
    assert m.trainer.epoch == 0 and m.trainer.history == []
    Recorder(losses=lambda step: 10.9).trainer.fit(X, y, epochs=1)


def test_best_validation_epoch_is_kept_and_restored():
    X, y = _data()
    m = Recorder(val_accs=[0.5, 0.7, 0.7])
    seen = []
    m.trainer.fit(X, y, X[:2], y[:2], callback=lambda model, metrics: seen.append(
        model is m) or {"extra": metrics["epoch"]})
    assert m.trainer.best_epoch == (2, 0.7)          # a tie does not replace it
    assert m.restored == {"w": 6}                     # the weights after epoch 2's 6 steps
    assert seen == [True] * 3
    h = m.trainer.history
    assert [e["extra"] for e in h] == [1, 2, 3] and h[0]["val_rate_x"] == 0.25
    m2 = Recorder(val_accs=[0.5, 0.7])
    m2.trainer.fit(X, y, X[:2], y[:2], epochs=2, restore_best=False)
    assert m2.restored is None
    with pytest.raises(TypeError, match="callback must return a dict or None"):
        Recorder().trainer.fit(X, y, epochs=1, callback=lambda model, metrics: 1)


def test_bad_arguments_are_refused_before_any_step():
    X, y = _data()
    m = Recorder()
    for kw, msg in ((dict(epochs=-1), "epochs must be an integer"),
                    (dict(X_val=X), "X_val and y_val together"),
                    (dict(sample_ids=np.arange(9)), "sample_ids must be integers of shape"),
                    (dict(sample_ids=-np.arange(10)), "sample_ids must be >= 0")):
        with pytest.raises(ValueError, match=msg):
            m.trainer.fit(X, y, **kw)
    with pytest.raises(ValueError, match="X is empty"):
        m.trainer.fit(X[:0], y[:0])
    with pytest.raises(ValueError, match="y"):
        m.trainer.fit(X, y + 3)
    assert m.calls == []


@pytest.mark.parametrize("kernels", [False, True])
def test_update_average_follows_its_formula(kernels):
    K = None
    if kernels:
        K = pytest.importorskip("snnfast._convsnn_kernels")
    cfg = SimpleNamespace(ema_decay=0.9, ema_every=2, ema_ramp=10.0)
    rng = np.random.default_rng(0)
    w = {"a": rng.standard_normal((3, 4)).astype(np.float32),
         "b": rng.standard_normal(5).astype(np.float32)}
    assert update_average(None, w, cfg, 1, K) is None                 # not a step of it
    avg = update_average(None, w, cfg, 2, K)                          # the first: a copy
    assert all(np.array_equal(avg[k], w[k]) and avg[k] is not w[k] for k in w)
    w2 = {k: v + 1 for k, v in w.items()}
    out = update_average(avg, w2, cfg, 4, K)
    d = min(0.9, 5 / 14) ** 2
    for k in w:
        expect = w[k].astype(np.float64) * d + (1 - d) * w2[k].astype(np.float64)
        np.testing.assert_allclose(out[k], expect, rtol=1e-6, atol=1e-6)
    cfg.ema_decay = 0.0
    assert update_average(None, w, cfg, 2, K) is None


def test_both_models_train_through_the_one_loop():
    assert type(ConvSNN("default").trainer) is Trainer
    from snnfast.network import LIF, Flatten, Hybrid, Linear, Network, RateReadout
    net = Network((1, 4, 4), [Flatten(), Linear(out_features=4, name="fc"), LIF(name="l"),
                              RateReadout(), Linear(out_features=3, name="out")],
                  encoder=Hybrid(T=2, n_det=1))
    m = SNN(net, epochs=1, batch_size=4)
    m.fit(np.zeros((4, 1, 4, 4), np.uint8), np.arange(4) % 3)
    assert type(m.trainer) is Trainer


@pytest.mark.parametrize("epoch, step, history, partial, match", [
    (-1, 0, [], None, "epoch must be >= 0"), (0, 1.5, [], None, "step must be >= 0"),
    (1, 3, {"epoch": 1}, None, "history must be a JSON list"),
    (1, 3, [], "hello", "damaged mid-epoch position"),
    (1, 3, [], {"epoch": 1, "batch": -1, "sums": {}}, "damaged mid-epoch position"),
    (1, 3, [], {"epoch": 1, "batch": 2, "sums": {"loss": 0.0}}, "damaged mid-epoch position")])
def test_restore_refuses_a_damaged_position(epoch, step, history, partial, match):
    t = Recorder().trainer
    with pytest.raises(ValueError, match=match):
        t.restore(epoch, step, history, partial, None)
    sums = {"loss": 1.0, "correct": 2, "n": 4, "spikes": 4, "time": 0.1}
    t.restore(1, 4, [], {"epoch": 1, "batch": 1, "sums": sums}, None)     # intact
    assert (t.epoch, t.step, t._partial["batch"]) == (1, 4, 1)


def test_snn_checkpoint_with_a_damaged_position_is_refused_at_load(tmp_path, monkeypatch):
    import json

    import h5py
    from snnfast.network import LIF, Flatten, Hybrid, Linear, Network, RateReadout
    net = Network((1, 4, 4), [Flatten(), Linear(out_features=4, name="fc"), LIF(name="l"),
                              RateReadout(), Linear(out_features=3, name="out")],
                  encoder=Hybrid(T=2, n_det=1))
    m = SNN(net, epochs=2, batch_size=2)
    X, y = np.zeros((8, 1, 4, 4), np.uint8), np.arange(8) % 3
    calls = []
    orig = Trainer.train_step

    def step(self, *a):
        calls.append(1)
        if len(calls) == 2:
            self._stop = True
        return orig(self, *a)
    with monkeypatch.context() as mp:
        mp.setattr(Trainer, "train_step", step)
        with pytest.raises(KeyboardInterrupt):
            m.fit(X, y)
    path = tmp_path / "ck.h5"
    m.save(path, checkpoint=True)
    assert SNN.load(path).trainer._partial["batch"] == 2            # intact: loads
    with h5py.File(path, "r+") as f:
        state = json.loads(f.attrs["training"])
        state["partial"]["sums"].pop("spikes")
        f.attrs["training"] = json.dumps(state)
    with pytest.raises(ValueError, match=r"ck\.h5: .*damaged mid-epoch position"):
        SNN.load(path)


@pytest.mark.parametrize("kw, msg", [
    (dict(augment_shift=9), "augment_shift must be <= 8, got 9"),
    (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
    (dict(epochs=2.0), "epochs must be an integer >= 0"),
    (dict(lr=float("nan")), "lr must be a finite number"),
    (dict(lr_schedule="cyclic"), "lr_schedule must be one of onecycle, constant, step"),
    (dict(augment_flip=1), "augment_flip must be true or false, got 1"),
    (dict(ema_decay=1.0), r"ema_decay must be in \[0, 1\)")])
def test_the_presets_and_any_network_check_loop_options_alike(kw, msg):
    from snnfast.convsnn import ConvSNNConfig
    from snnfast.train import TrainingConfig
    for cls, where in ((LoopOptions, ""), (ConvSNNConfig, ""), (TrainingConfig, "training: ")):
        with pytest.raises(ValueError, match="^" + where + msg):
            cls(**kw)


def test_a_preset_model_flips_when_asked():
    m = ConvSNN("default", backend="numpy", augment_flip=True, augment_shift=0)
    X = np.random.default_rng(0).integers(0, 256, (8, 784), dtype=np.uint8)
    tr = Trainer(m)
    perm, shifts, flips = tr._epoch_plan(0, len(X))
    assert shifts is None and flips.any() and not flips.all()
    idx, got = tr._batch(X, slice(0, 8), perm, shifts, flips)
    img = X[idx].reshape(8, 28, 28)
    want = np.where(flips[:8, None, None], img[:, :, ::-1], img)      # flips by position
    np.testing.assert_array_equal(got.reshape(8, 28, 28), want)
    # nothing drawn (the seed preset): the batch is the images themselves
    tr = Trainer(ConvSNN("seed", backend="numpy"))
    perm, shifts, flips = tr._epoch_plan(0, len(X))
    assert shifts is None and flips is None
    idx, got = tr._batch(X, slice(0, 8), perm, shifts, flips)
    np.testing.assert_array_equal(got, X[perm])
