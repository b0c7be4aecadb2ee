"""Training augmentation (snnfast.train.augment.shift_flip) against an element-by-element
reference, and its use by SNN's trainer and ConvSNN (the presets' shifts)."""
import numpy as np
import pytest

from snnfast.train.augment import shift_flip


def _reference(X, dy, dx, flip=None):
    """Element by element: shifted ``s[y, x] = X[y - dy, x - dx]`` (0 outside), then a
    flipped sample reads ``s[y, W - 1 - x]``."""
    out = np.zeros_like(X)
    H, W = X.shape[-2:]
    for i in range(len(X)):
        for y in range(H):
            for x in range(W):
                xs = W - 1 - x if flip is not None and flip[i] else x
                sy, sx = y - dy[i], xs - dx[i]
                if 0 <= sy < H and 0 <= sx < W:
                    out[i, ..., y, x] = X[i, ..., sy, sx]
    return out


@pytest.mark.parametrize("kernels", [True, False], ids=["kernel", "numpy"])
@pytest.mark.parametrize("shape, dtype", [((9, 1, 7, 5), np.uint8), ((6, 3, 4, 6), np.uint8),
                                          ((5, 4, 2, 6, 3), np.float32), ((4, 28, 28), np.uint8),
                                          ((3, 2, 5, 4), np.int16)])
def test_shift_flip_equals_the_element_reference(shape, dtype, kernels, monkeypatch):
    from snnfast.train import augment
    if kernels and augment._kernel(np.dtype(dtype)) is None:
        pytest.skip("no compiled loop for this dtype (or the kernels are not built)")
    if not kernels:         # the NumPy path (kernels not built, or another dtype)
        monkeypatch.setattr(augment, "_kernel", lambda dtype: None)
    rng = np.random.default_rng(len(shape) + shape[1])
    X = (rng.normal(size=shape) if dtype == np.float32 else
         rng.integers(1, 256, shape)).astype(dtype)
    N, (H, W) = shape[0], shape[-2:]
    for s in (0, 1, 2, max(H, W) + 1):        # up to shifts that empty a sample
        dy, dx = rng.integers(-s, s + 1, (2, N))
        flip = rng.random(N) < 0.5
        for f in (None, flip):
            got = shift_flip(X, dy, dx, f)
            assert got.dtype == X.dtype and got.flags.c_contiguous
            np.testing.assert_array_equal(got, _reference(X, dy, dx, f))
    dy[:] = 0
    np.testing.assert_array_equal(shift_flip(X, dy, dy), X)
    np.testing.assert_array_equal(shift_flip(X, dy, dy, np.ones(N, bool)), X[..., ::-1])
    assert shift_flip(X[:0], dy[:0], dy[:0]).shape == (0,) + shape[1:]


def test_shift_flip_rejects_mismatched_shapes():
    X = np.zeros((3, 1, 4, 4), np.uint8)
    for bad in ((X, np.zeros(2, int), np.zeros(3, int)), (X[0, 0], np.zeros(4), np.zeros(4)),
                (X, np.zeros(3, int), np.zeros(3, int), np.zeros(2, bool))):
        with pytest.raises(ValueError, match="shift_flip needs"):
            shift_flip(*bad)


@pytest.mark.parametrize("direct", [False, True], ids=["images", "event-frames"])
def test_trainer_batches_are_the_reference_augmentation(direct):
    """SNN's trainer: each batch is its images, drawn by (seed, epoch), shifted then flipped
    as the element reference does (images (N, C, H, W) and Direct frames (N, T, C, H, W))."""
    from snnfast import SNN
    from snnfast.network import LIF, Conv2d, Direct, Flatten, Linear, Network, RateReadout
    shape = (2, 6, 5)
    net = Network(shape, [Conv2d(out_channels=2, kernel_size=3), LIF(), Flatten(),
                          Linear(out_features=3), LIF(), RateReadout()],
                  encoder=Direct(T=3) if direct else None)
    rng = np.random.default_rng(3)
    X = (rng.random((20, 3) + shape) < 0.3).astype(np.float32) if direct else \
        rng.integers(0, 256, (20,) + shape).astype(np.uint8)
    model = SNN(net, seed=4, augment_shift=2, augment_flip=True, batch_size=8)
    from snnfast.train import Trainer
    tr = Trainer(model)
    perm, shifts, flips = tr._epoch_plan(1, len(X))
    assert shifts is not None and flips is not None and flips.any() and not flips.all()
    for b in range(3):
        pos = slice(8 * b, 8 * (b + 1))
        idx, xb = tr._batch(X, pos, perm, shifts, flips)
        np.testing.assert_array_equal(idx, perm[pos])
        np.testing.assert_array_equal(
            xb, _reference(X[idx], shifts[0, pos], shifts[1, pos], flips[pos]))


def test_convsnn_shift_images_is_the_reference():
    """The presets' (N, H*W) images go through the same function (kernels or not)."""
    from snnfast.convsnn import shift_images
    rng = np.random.default_rng(5)
    X = rng.integers(1, 256, (30, 784)).astype(np.uint8)
    dy, dx = rng.integers(-2, 3, (2, 30))
    want = _reference(X.reshape(30, 28, 28), dy, dx).reshape(30, 784)
    np.testing.assert_array_equal(shift_images(X, dy, dx), want)
