"""snnfast.datasets.load_arrays: a user's own .npz / .h5 arrays, converted and checked once."""
import os

import h5py
import numpy as np
import pytest

from snnfast.datasets import ARRAY_KEYS, DatasetError, load_arrays, synthetic_frames
from snnfast.datasets import main as ds_main


def arrays(x_shape=(6, 5, 4), n_test=3, dtype=np.uint8, seed=0):
    """Four valid arrays: X of shape (n, ...) for train and test, labels 0..2."""
    rng = np.random.default_rng(seed)
    n = x_shape[0]
    hi = 256 if dtype == np.uint8 else 4
    return {"X_train": rng.integers(0, hi, size=x_shape).astype(dtype),
            "y_train": rng.integers(0, 3, size=n).astype(np.int32),
            "X_test": rng.integers(0, hi, size=(n_test,) + x_shape[1:]).astype(dtype),
            "y_test": rng.integers(0, 3, size=n_test).astype(np.uint8)}


def write(path, data):
    """Write ``data`` as .npz (savez) or as root datasets of an HDF5 file."""
    if str(path).endswith(".npz"):
        np.savez(path, **data)
    else:
        with h5py.File(path, "w") as f:
            for k, v in data.items():
                f[k] = v
    return path


@pytest.fixture(params=["npz", "h5"])
def fmt(request):
    return request.param


# ---------------------------------------------------------------- valid files

def test_grey_images_get_a_channel_axis(tmp_path, fmt):
    data = arrays((6, 5, 4))
    got = load_arrays(write(tmp_path / f"d.{fmt}", data))
    assert len(got) == 4
    for k, a in zip(ARRAY_KEYS, got):
        assert a.flags.c_contiguous
        if k.startswith("X"):
            assert a.dtype == np.uint8 and a.shape == (len(data[k]), 1, 5, 4)
            np.testing.assert_array_equal(a[:, 0], data[k])
        else:
            assert a.dtype == np.int64
            np.testing.assert_array_equal(a, data[k])


def test_channel_images_and_wide_integer_pixels(tmp_path, fmt):
    data = arrays((4, 3, 5, 5))
    data["X_test"] = data["X_test"].astype(np.int64)      # values still in 0..255
    Xtr, _, Xte, _ = load_arrays(write(tmp_path / f"d.{fmt}", data))
    assert Xtr.shape == (4, 3, 5, 5) and Xte.dtype == np.uint8
    np.testing.assert_array_equal(Xte, data["X_test"])


def test_float_images_in_unit_interval_become_pixels(tmp_path, fmt):
    data = arrays((4, 6, 6))
    want = {k: data[k] for k in ("X_train", "X_test")}
    for k in want:      # k / 255 exactly representable up to rounding: back to k
        data[k] = (want[k].astype(np.float32) / np.float32(255.0))
    Xtr, _, Xte, _ = load_arrays(write(tmp_path / f"d.{fmt}", data))
    np.testing.assert_array_equal(Xtr[:, 0], want["X_train"])
    np.testing.assert_array_equal(Xte[:, 0], want["X_test"])


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float64, np.bool_])
def test_event_frames_become_float32(tmp_path, fmt, dtype):
    data = arrays((5, 3, 2, 4, 4), dtype=np.uint8)
    for k in ("X_train", "X_test"):
        data[k] = (data[k] % 4).astype(dtype)
    Xtr, ytr, Xte, _ = load_arrays(write(tmp_path / f"d.{fmt}", data))
    assert Xtr.dtype == np.float32 and Xtr.shape == (5, 3, 2, 4, 4) and Xtr.flags.c_contiguous
    np.testing.assert_array_equal(Xtr, data["X_train"].astype(np.float64))
    np.testing.assert_array_equal(Xte, data["X_test"].astype(np.float64))


def test_other_arrays_are_ignored(tmp_path, fmt):
    data = dict(arrays(), classes=np.arange(3))
    load_arrays(write(tmp_path / f"d.{fmt}", data))


def test_hdf5_suffix(tmp_path):
    load_arrays(write(tmp_path / "d.HDF5", arrays()))


# ---------------------------------------------------------------- invalid arrays

def _set(key, value):
    def edit(d):
        d[key] = value(d) if callable(value) else value
    return edit


BAD = [
    ("missing", lambda d: d.pop("y_test"), r"missing array y_test"),
    ("x ndim 2", _set("X_train", np.zeros((6, 20), np.uint8)), r"X_train: must be images"),
    ("x ndim 6", _set("X_test", np.zeros((3, 1, 1, 1, 5, 4), np.uint8)), r"X_test: must be"),
    ("empty", _set("X_train", np.zeros((0, 5, 4), np.uint8)), r"X_train: has no samples"),
    ("n mismatch", _set("y_train", np.zeros(5, np.int64)), r"y_train: must hold one label "
                                                            r"per sample of X_train, shape \(6,\)"),
    ("y 2-D", _set("y_test", np.zeros((3, 1), np.int64)), r"y_test: .*got shape \(3, 1\)"),
    ("float labels", _set("y_train", lambda d: d["y_train"].astype(np.float32)),
     r"y_train: labels must be integers, got dtype float32"),
    ("negative label", _set("y_test", np.array([0, -1, 2])), r"y_test: labels must be >= 0"),
    ("nan image", _set("X_train", lambda d: np.full((6, 5, 4), np.nan, np.float32)),
     r"X_train: contains NaN"),
    ("float above 1", _set("X_test", lambda d: d["X_test"].astype(np.float32)),
     r"X_test: float images must lie in \[0, 1\]"),
    ("pixel 256", _set("X_train", lambda d: d["X_train"].astype(np.int16) + 1),
     r"X_train: integer pixels must lie in 0..255"),
    ("bool images", _set("X_train", np.zeros((6, 5, 4), bool)), r"X_train: images must be uint8"),
    ("string images", _set("X_train", np.full((6, 5, 4), b"a")), r"X_train: images must be"),
    ("shape differs", _set("X_test", np.zeros((3, 5, 5), np.uint8)),
     r"X_test: samples of shape \(1, 5, 5\) differ from X_train's \(1, 5, 4\)"),
    ("frames vs images", _set("X_test", np.zeros((3, 2, 1, 5, 4), np.uint8)),
     r"X_test: samples of shape \(2, 1, 5, 4\) differ"),
    ("negative frames", _set("X_train", -np.ones((6, 2, 1, 5, 4), np.float32)),
     r"X_train: event frames must be non-negative"),
    ("inf frames", _set("X_train", np.full((6, 2, 1, 5, 4), np.inf)), r"X_train: contains NaN"),
    ("frames beyond float32", _set("X_train", np.full((6, 2, 1, 5, 4), 1e300)),
     r"X_train: values beyond float32"),
]


@pytest.mark.parametrize("edit, match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_arrays_are_one_line_errors(tmp_path, fmt, edit, match):
    data = arrays()
    edit(data)
    path = write(tmp_path / f"d.{fmt}", data)
    with pytest.raises(DatasetError, match=match) as info:
        load_arrays(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(path))


def test_hdf5_group_instead_of_array(tmp_path):
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        for k, v in arrays().items():
            if k == "y_train":
                f.create_group(k)
            else:
                f[k] = v
    with pytest.raises(DatasetError, match=r"y_train is an HDF5 group"):
        load_arrays(path)


# ---------------------------------------------------------------- damaged or odd files

def _refused(path, match):
    with pytest.raises(DatasetError, match=match) as info:
        load_arrays(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_npz(tmp_path, compressed, keep):
    path = tmp_path / "d.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays((50, 8, 8)))
    blob = path.read_bytes()
    path.write_bytes(blob[:int(len(blob) * keep)])
    _refused(path, r"truncated or corrupt \.npz file")


@pytest.mark.parametrize("compressed", [False, True])
def test_flipped_byte_in_npz_data(tmp_path, compressed):
    path = tmp_path / "d.npz"
    data = arrays((50, 8, 8))
    (np.savez_compressed if compressed else np.savez)(path, **data)
    blob = bytearray(path.read_bytes())
    # a byte in the middle of X_train's stored data (the zip's CRC-32 catches it)
    start = blob.index(b"X_train.npy") + 200
    blob[start + 500] ^= 0xFF
    path.write_bytes(bytes(blob))
    _refused(path, r"truncated or corrupt \.npz file")


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.9])
def test_truncated_h5(tmp_path, keep):
    path = write(tmp_path / "d.h5", arrays((50, 8, 8)))
    blob = path.read_bytes()
    path.write_bytes(blob[:int(len(blob) * keep)])
    _refused(path, r"truncated or corrupt HDF5 file")


def test_not_a_data_file(tmp_path):
    for name in ("d.npz", "d.h5"):
        (tmp_path / name).write_bytes(b"hello, this is text\n" * 10)
        _refused(tmp_path / name, r"truncated or corrupt")


def test_npy_under_an_npz_name(tmp_path):
    path = tmp_path / "d.npz"
    with open(path, "wb") as fh:
        np.save(fh, np.zeros(3))
    _refused(path, r"holds a single array")


def test_pickled_object_arrays_are_refused(tmp_path):
    path = tmp_path / "d.npz"
    data = arrays()
    data["X_train"] = np.array([object()] * 6, dtype=object)
    np.savez(path, **data)
    _refused(path, r"truncated or corrupt \.npz file .*pickle")


def test_not_a_regular_file(tmp_path):
    _refused(tmp_path / "absent.npz", r"absent\.npz: cannot open \(No such file")
    (tmp_path / "dir.npz").mkdir()
    _refused(tmp_path / "dir.npz", r"is a directory")
    os.mkfifo(tmp_path / "fifo.h5")
    _refused(tmp_path / "fifo.h5", r"is a FIFO")   # and does not block on it


def test_symlink_to_a_file_is_read(tmp_path):
    target = write(tmp_path / "d.npz", arrays())
    (tmp_path / "link.npz").symlink_to(target)
    np.testing.assert_array_equal(load_arrays(tmp_path / "link.npz")[1],
                                  load_arrays(target)[1])


def test_unknown_suffix(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("1,2\n")
    _refused(path, r"unknown data file type '\.csv'; expected \.npz, \.h5 or \.hdf5")


# ---------------------------------------------------------------- synthetic event frames

def test_synthetic_frames_format_and_determinism():
    X, y, Xt, yt = synthetic_frames(40, 10, T=5, seed=3)
    assert X.shape == (40, 5, 2, 34, 34) and Xt.shape == (10, 5, 2, 34, 34)
    assert X.dtype == np.float32 and X.flags.c_contiguous and y.dtype == np.int64
    assert set(np.unique(X)) <= {0.0, 1.0} and 0 <= y.min() and y.max() < 10
    again = synthetic_frames(40, 10, T=5, seed=3)
    for a, b in zip((X, y, Xt, yt), again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(X, synthetic_frames(40, 10, T=5, seed=4)[0])


def test_synthetic_frames_are_moving_class_shapes():
    X, y, Xt, yt = synthetic_frames(300, 100, T=8, seed=0)
    # every frame has events in both channels (the shape moves every frame) ...
    per_frame = X.sum(axis=(3, 4))
    assert (per_frame > 0).all()
    # ... and the class shows: nearest class mean of the summed frames is far above chance
    F, Ft = X.sum(1).reshape(len(X), -1), Xt.sum(1).reshape(len(Xt), -1)
    means = np.stack([F[y == k].mean(0) for k in range(10)])
    pred = np.argmin(((Ft[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == yt).mean() > 0.5


def test_synthetic_frames_cli_round_trip(tmp_path, capsys):
    out = tmp_path / "frames.npz"
    assert ds_main(["synthetic-frames", str(out), "--n-train", "12", "--n-test", "4",
                    "--T", "3", "--seed", "1"]) == 0
    assert "12 training and 4 test samples" in capsys.readouterr().out
    for a, b in zip(load_arrays(out), synthetic_frames(12, 4, T=3, seed=1)):
        np.testing.assert_array_equal(a, b)
    assert not [p for p in tmp_path.iterdir() if p.name != "frames.npz"]   # no temp left
    with pytest.raises(SystemExit):
        ds_main(["synthetic-frames", str(tmp_path / "f.txt")])
    with pytest.raises(SystemExit):
        ds_main(["synthetic-frames", str(out), "--n-train", "0"])
    assert "n_train must be a positive integer" in capsys.readouterr().err
