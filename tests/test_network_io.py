"""HDF5 files of any Network (format "network-1"): round trip, digests, refusals."""
import json
import os
import sys

import h5py
import numpy as np
import pytest

from snnfast.network import Network, is_network_file, load, load_preset, save

sys.path.insert(0, os.path.dirname(__file__))  # the shared cases sit beside this file
from _cases import small_network  # noqa: E402




def _weights(net, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in net.param_shapes().items()}


def test_round_trip_is_exact(tmp_path):
    net, w = small_network(), _weights(small_network())
    path = tmp_path / "net.h5"
    save(path, net, w, metadata={"acc": np.float32(0.5), "note": "x"})
    assert is_network_file(path)
    net2, w2, meta = load(path)
    assert net2 == net and net2.to_dict() == net.to_dict()
    assert sorted(w2) == sorted(w)
    for k in w:
        assert w2[k].dtype == np.float32 and np.array_equal(w2[k], w[k])
    assert meta == {"acc": 0.5, "note": "x"}
    with h5py.File(path, "r") as f:
        assert f.attrs["snnfast_format"] == "network-1"
        assert Network.from_dict(json.loads(f.attrs["network"])) == net


def test_preset_description_round_trips(tmp_path):
    net, _ = load_preset("default")
    w = _weights(net)
    save(tmp_path / "d.h5", net, w)
    assert load(tmp_path / "d.h5")[0] == net


def _flip_one_byte(path, array_bytes):
    """Flip a byte inside the stored bytes of an array (found by searching the file)."""
    raw = bytearray(path.read_bytes())
    at = raw.find(array_bytes)
    assert at >= 0
    raw[at + 5] ^= 0x01
    path.write_bytes(bytes(raw))


def test_flipped_byte_is_refused(tmp_path):
    net, w = small_network(), _weights(small_network())
    path = tmp_path / "net.h5"
    save(path, net, w)
    _flip_one_byte(path, w["linear4.weight"].tobytes())
    with pytest.raises(ValueError, match=r"'linear4.weight' does not match its SHA-256 digest"):
        load(path)


def test_missing_digest_and_missing_array_refused(tmp_path):
    net, w = small_network(), _weights(small_network())
    path = tmp_path / "net.h5"
    save(path, net, w)
    with h5py.File(path, "a") as f:
        del f["weights"]["conv2d0.bias"].attrs["sha256"]
    with pytest.raises(ValueError, match="has no SHA-256 digest"):
        load(path)
    save(path, net, w)
    with h5py.File(path, "a") as f:
        del f["weights"]["conv2d0.bias"]
    with pytest.raises(ValueError, match="invalid network file content.*missing weight "
                                         "'conv2d0.bias'"):
        load(path)


def test_truncated_foreign_and_missing_files_refused(tmp_path):
    net, w = small_network(), _weights(small_network())
    path = tmp_path / "net.h5"
    save(path, net, w)
    raw = path.read_bytes()
    (tmp_path / "cut.h5").write_bytes(raw[:len(raw) // 2])
    for name, pattern in (("cut.h5", "cannot read a network file"),
                          ("text.h5", "cannot read a network file"),
                          ("absent.h5", "no such network file"),
                          ("other.h5", "snnfast_format='convsnn-1'.*ConvSNN.load")):
        p = tmp_path / name
        if name == "text.h5":
            p.write_text("hello\n")
        elif name == "other.h5":
            with h5py.File(p, "w") as f:
                f.attrs["snnfast_format"] = "convsnn-1"
        with pytest.raises(ValueError, match=pattern) as exc:
            load(p)
        assert str(exc.value).startswith(str(p)) and "\n" not in str(exc.value)
        assert not is_network_file(p)


def test_bad_description_in_file_refused(tmp_path):
    net, w = small_network(), _weights(small_network())
    path = tmp_path / "net.h5"
    save(path, net, w)
    with h5py.File(path, "a") as f:
        d = json.loads(f.attrs["network"])
        d["layers"][0]["kernel_size"] = 50
        f.attrs["network"] = json.dumps(d)
    with pytest.raises(ValueError, match="invalid network file content.*kernel_size"):
        load(path)


def test_save_refuses_bad_weights_and_writes_nothing(tmp_path):
    net, w = small_network(), _weights(small_network())
    path = tmp_path / "net.h5"
    bad = dict(w, **{"linear4.weight": np.zeros((3, 3), np.float32)})
    with pytest.raises(ValueError, match="linear4.weight must have shape"):
        save(path, net, bad)
    with pytest.raises(ValueError, match="the network does not: extra"):
        save(path, net, dict(w, extra=np.zeros(1)))
    nan = dict(w, **{"conv2d0.bias": np.full(4, np.nan, np.float32)})
    with pytest.raises(ValueError, match="NaN"):
        save(path, net, nan)
    with pytest.raises(ValueError, match="metadata cannot be written as JSON"):
        save(path, net, w, metadata={"f": object()})
    with pytest.raises(TypeError, match="Network"):
        save(path, net.to_dict(), w)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_save_is_atomic_over_an_old_file(tmp_path):
    net, w = small_network(), _weights(small_network())
    path = tmp_path / "net.h5"
    save(path, net, w, metadata={"v": 1})
    with pytest.raises(ValueError):
        save(path, net, dict(w, extra=np.zeros(1)))
    assert load(path)[2] == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["net.h5"]
