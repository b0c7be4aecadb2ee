"""The NIR runtime's compiled backend against its NumPy backend (sums="ordered"): the same
outputs, traces and NeuroBench counts bit for bit, on random graphs, for 1 and 2 threads;
and the choice of backend."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

nir = pytest.importorskip("nir")

from snnfast import nir as snir  # noqa: E402
from snnfast.nir import compiled  # noqa: E402
from snnfast.nir import energy as nir_energy  # noqa: E402

CNN = Path(__file__).resolve().parent / "data" / "nir-paper" / "02_cnn" / "cnn_sinabs.nir"
needs_extension = pytest.mark.skipif(compiled._extension() is None,
                                     reason="snnfast._nir_run is not built")
NEURONS = ("I", "IF", "LI", "LIF", "CubaLI", "CubaLIF")


# ----------------------------------------------------------------------------- random graphs
def _neuron(kind, shape, dt, rng, per_unit):
    """A neuron node of ``kind`` over ``shape`` (parameters per unit, or scalars)."""
    s = shape if per_unit else ()

    def u(lo, hi):
        return rng.uniform(lo, hi, size=s)

    p = {"r": u(0.5, 3.0)}
    if kind in ("LI", "LIF"):
        p.update(tau=u(dt, 5 * dt), v_leak=u(-0.1, 0.1))
    if kind.startswith("Cuba"):
        p.update(tau_syn=u(dt, 5 * dt), tau_mem=u(dt, 5 * dt), v_leak=u(-0.1, 0.1),
                 w_in=u(0.5, 2.0))
    if kind in ("IF", "LIF", "CubaLIF"):
        # v_reset: random, 0 or -0.0 (the reset must keep its sign bit in both backends)
        p.update(v_threshold=u(0.05, 1.0),
                 v_reset=[u(-0.2, 0.2), np.zeros(s), np.full(s, -0.0)][int(rng.integers(3))])
    return getattr(nir, kind)(**p)


def _weights(rng, *shape):
    w = rng.normal(0, 0.7, size=shape)
    return w * (rng.random(shape) > 0.2)            # some exact zero weights


@st.composite
def chains(draw):
    """(nir.NIRGraph, input shape, dt): Input -> up to 6 random nodes -> Output."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    dt = draw(st.sampled_from([1.0, 1e-3, 0.37]))
    shape = draw(st.sampled_from(["image", "sequence", "vector"]))
    shape = {"image": (int(rng.integers(1, 4)), int(rng.integers(3, 8)), int(rng.integers(3, 8))),
             "sequence": (int(rng.integers(1, 4)), int(rng.integers(3, 9))),
             "vector": (int(rng.integers(1, 9)),)}[shape]
    in_shape, nodes = shape, []
    for _ in range(draw(st.integers(1, 6))):
        choice = draw(st.sampled_from(["connect", "neuron", "neuron", "pool", "flatten",
                                       "scale", "threshold"]))
        node, shape = _node(choice, shape, dt, rng)
        nodes.append(node)
    return _chain(in_shape, nodes), in_shape, dt


def _node(choice, shape, dt, rng):
    """A node of kind ``choice`` fitting ``shape`` (a neuron if none fits) and its output
    shape."""
    if choice == "connect":
        made = _conv(shape, rng) if len(shape) > 1 else _affine(shape, rng)
        if made:
            return made
    if choice == "pool" and len(shape) == 3:
        k = [int(rng.integers(1, 3)) for _ in range(2)]
        s = [int(rng.integers(1, 3)) for _ in range(2)]
        pad = [int(rng.integers(0, kk // 2 + 1)) for kk in k]
        out = [(n + 2 * p - kk) // ss + 1 for n, p, kk, ss in zip(shape[1:], pad, k, s)]
        if min(out) >= 1:
            kind = nir.SumPool2d if rng.random() < 0.5 else nir.AvgPool2d
            return kind(kernel_size=np.array(k), stride=np.array(s), padding=np.array(pad)), \
                (shape[0], *out)
    if choice == "flatten" and len(shape) > 1:
        start = int(rng.integers(0, len(shape) - 1))
        out = shape[:start] + (int(np.prod(shape[start:])),)
        return nir.Flatten(input_type={"input": np.array(shape)}, start_dim=start,
                           end_dim=-1), out
    if choice == "scale":
        return nir.Scale(scale=rng.normal(0, 1.5, size=shape)), shape
    if choice == "threshold":
        return nir.Threshold(threshold=rng.normal(0, 0.5, size=shape)), shape
    kind = NEURONS[int(rng.integers(len(NEURONS)))]
    return _neuron(kind, shape, dt, rng, per_unit=rng.random() < 0.7), shape


def _conv(shape, rng):
    n = len(shape) - 1
    ci = shape[0]
    groups = int(rng.choice([g for g in (1, 2, 3) if ci % g == 0]))
    co = groups * int(rng.integers(1, 4))
    k = tuple(int(rng.integers(1, 4)) for _ in range(n))
    stride = int(rng.integers(1, 3))
    dil = int(rng.integers(1, 3))
    pad = rng.choice(["int", "same", "valid"])
    padding = int(rng.integers(0, 3)) if pad == "int" or stride > 1 else str(pad)
    tot = [0] * n if padding == "valid" else [dil * (kk - 1) for kk in k] if padding == "same" \
        else [2 * padding] * n
    out = [(sz + t - dil * (kk - 1) - 1) // stride + 1 for sz, t, kk in zip(shape[1:], tot, k)]
    if min(out) < 1:
        return None
    kind = nir.Conv2d if n == 2 else nir.Conv1d
    node = kind(input_shape=shape[1:] if n == 2 else shape[1], weight=_weights(rng, co, ci // groups, *k),
                stride=stride, padding=padding, dilation=dil, groups=groups,
                bias=rng.normal(0, 0.2, size=co))
    return node, (co, *out)


def _affine(shape, rng):
    m = int(rng.integers(1, 9))
    w = _weights(rng, m, shape[0])
    if rng.random() < 0.5:
        return nir.Linear(weight=w), (m,)
    return nir.Affine(weight=w, bias=rng.normal(0, 0.2, size=m)), (m,)


def _chain(in_shape, nodes, out_shape=None):
    names = [f"n{i}" for i in range(len(nodes))]
    d = {"input": nir.Input(input_type={"input": np.array(in_shape)})}
    d.update(zip(names, nodes))
    d["output"] = nir.Output(output_type={"output": None if out_shape is None
                                          else np.array(out_shape)})
    chain = ["input", *names, "output"]
    return nir.NIRGraph(nodes=d, edges=list(zip(chain, chain[1:])), type_check=False)


def _inputs(kind, shape, rng):
    """(N, T, *shape) input: float32 spikes, signed spikes or sparse currents (with -0.0),
    or uint8 counts / bool spikes (the compiled backend converts those itself)."""
    if kind == "spikes":
        return (rng.random(shape) < 0.3).astype(np.float32)
    if kind == "uint8":
        return (rng.random(shape) < 0.3) * rng.integers(1, 4, size=shape, dtype=np.uint8)
    if kind == "bool":
        return rng.random(shape) < 0.3
    if kind == "signed":
        return rng.integers(-1, 2, size=shape).astype(np.float32)
    x = rng.normal(0, 1.0, size=shape) * (rng.random(shape) < 0.5)
    x[rng.random(shape) < 0.1] = -0.0
    return x.astype(np.float32)


# ----------------------------------------------------------------------------- comparisons
def _same_bits(a, b):
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(
        np.ascontiguousarray(a).view(np.uint32), np.ascontiguousarray(b).view(np.uint32))


def _assert_same_run(a, b):
    (oa, ta), (ob, tb) = a, b
    assert list(oa) == list(ob) and list(ta) == list(tb)
    for k in oa:
        assert _same_bits(oa[k], ob[k]), k
    for k in ta:
        assert list(ta[k]) == list(tb[k]), k
        for q in ta[k]:
            assert _same_bits(ta[k][q], tb[k][q]), (k, q)


def _run_or_error(g, x, **kw):
    try:
        return snir.run(g, x, trace="all", **kw)
    except ValueError as exc:
        return str(exc)


@needs_extension
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chains(), st.integers(1, 4), st.integers(1, 12), st.sampled_from(["euler", "exact"]),
       st.sampled_from(["zero", "subtract"]), st.sampled_from(["spikes", "signed", "currents", "uint8", "bool"]),
       st.integers(0, 2 ** 32 - 1))
def test_compiled_equals_numpy_bit_for_bit(case, N, T, integrator, reset, inputs, seed):
    g, in_shape, dt = case
    graph = snir.load(g)
    x = _inputs(inputs, (N, T) + in_shape, np.random.default_rng(seed))
    kw = dict(dt=dt, integrator=integrator, reset=reset)
    want = _run_or_error(graph, x, backend="numpy", **kw)
    for threads in (1, 2):
        got = _run_or_error(graph, x, backend="compiled", n_threads=threads, **kw)
        if isinstance(want, str):
            assert got == want
        else:
            _assert_same_run(want, got)


@needs_extension
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chains(), st.integers(1, 5), st.integers(1, 8), st.sampled_from(["sample", "batch"]),
       st.sampled_from(["spikes", "signed", "currents", "uint8", "bool"]), st.integers(0, 2 ** 32 - 1))
def test_compiled_energy_counts_equal_numpy(case, N, T, scope, inputs, seed):
    """NeuroBench counts (synaptic ops with the AC/MAC test, activation sparsity, membrane
    updates) of both backends, over batches of 2."""
    g, in_shape, dt = case
    graph = snir.load(g)
    x = _inputs(inputs, (N, T) + in_shape, np.random.default_rng(seed))
    res = {}
    for backend in ("numpy", "compiled"):
        try:
            res[backend] = nir_energy.account(graph, x, dt, integrator="exact", batch_size=2,
                                              binary_scope=scope, backend=backend)
        except ValueError as exc:       # energy counts refuse grouped/dilated convolutions
            res[backend] = str(exc)
    a, b = res["numpy"], res["compiled"]
    if isinstance(a, dict):
        assert (a.pop("backend"), b.pop("backend")) == ("numpy", "compiled")
    assert a == b


def _diamond():
    """Two inputs, edges into one node, a node feeding two: the sums of several edges."""
    rng = np.random.default_rng(3)
    nodes = {"a": nir.Input(input_type={"input": np.array([4])}),
             "b": nir.Input(input_type={"input": np.array([4])}),
             "fa": nir.Affine(weight=rng.normal(size=(5, 4)), bias=rng.normal(size=5)),
             "fb": nir.Linear(weight=rng.normal(size=(5, 4))),
             "s": nir.Scale(scale=rng.normal(size=5)),
             "lif": nir.LIF(tau=np.full(5, 2.0), r=np.ones(5), v_leak=np.zeros(5),
                            v_threshold=np.full(5, 0.5), v_reset=np.zeros(5)),
             "out": nir.Output(output_type={"output": np.array([5])}),
             "out2": nir.Output(output_type={"output": np.array([5])})}
    edges = [("a", "fa"), ("b", "fb"), ("fa", "lif"), ("fb", "lif"), ("a", "fb"), ("fa", "s"),
             ("s", "lif"), ("lif", "out"), ("fb", "out2")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


@needs_extension
def test_several_edges_into_a_node_and_several_outputs():
    rng = np.random.default_rng(4)
    x = {"a": rng.normal(size=(3, 9, 4)), "b": (rng.random((3, 9, 4)) < 0.4) * 1.0}
    want = snir.run(_diamond(), x, dt=1.0, backend="numpy", trace="all")
    _assert_same_run(want, snir.run(_diamond(), x, dt=1.0, backend="compiled", trace="all"))
    assert want[0]["out"].any()


@needs_extension
@pytest.mark.skipif(not CNN.is_file(), reason="NIR paper fixtures not present")
def test_paper_cnn_both_backends_and_thread_counts():
    """cnn_sinabs.nir on N-MNIST-like events: outputs, every node's trace and the energy
    counts identical; batches split over 1 or 2 threads."""
    rng = np.random.default_rng(7)
    x = (rng.random((5, 40, 2, 34, 34)) < 0.05).astype(np.uint8)
    graph = snir.load(CNN)
    want = snir.run(graph, x, dt=1.0, backend="numpy", trace="all")
    assert want[0]["output"].any()
    for threads in (1, 2):
        _assert_same_run(want, snir.run(graph, x, dt=1.0, backend="compiled", trace="all",
                                        n_threads=threads))
    a = nir_energy.account(graph, x, 1.0, backend="numpy", batch_size=3)
    b = nir_energy.account(graph, x, 1.0, backend="compiled", batch_size=3)
    assert (a.pop("backend"), b.pop("backend")) == ("numpy", "compiled")
    assert a == b


# ----------------------------------------------------------------------------- the choice
def _delay_graph():
    return _chain((3,), [nir.Delay(delay=np.array([0.0, 1.0, 2.0])),
                         nir.I(r=np.ones(3))], out_shape=(3,))


def _cycle_graph():
    nodes = {"input": nir.Input(input_type={"input": np.array([2])}),
             "lin": nir.Linear(weight=np.eye(2)),
             "li": nir.LI(tau=np.full(2, 2.0), r=np.ones(2), v_leak=np.zeros(2)),
             "output": nir.Output(output_type={"output": np.array([2])})}
    edges = [("input", "li"), ("li", "lin"), ("lin", "li"), ("li", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


@needs_extension
@pytest.mark.parametrize("make, x, kw, match", [
    (_delay_graph, np.ones((1, 4, 3)), {}, r"node 'n0' is a Delay"),
    (_cycle_graph, np.ones((1, 4, 2)), {}, r"the graph has a cycle \(edge 'lin' -> 'li' reads the previous"),
    (lambda: _chain((2, 3), [nir.Linear(weight=np.ones((2, 2, 3)))]), np.ones((1, 2, 2, 3)),
     {},
     r"node 'n0' \(Linear\) has a batched weight of shape \(2, 2, 3\)"),
    (lambda: _chain((3,), [nir.I(r=np.ones(3))]), np.ones((1, 2, 3)), {"sums": "blas"},
     r"sums='blas' is the NumPy backend's matrix-product order"),
    (lambda: _chain((3,), [nir.I(r=np.ones(3))]), np.ones((1, 2, 3)),
     {"monitor": lambda t, info: None}, r"a monitor is called per step in Python"),
])
def test_compiled_refuses_what_it_cannot_run_and_auto_falls_back(make, x, kw, match):
    g = snir.load(make())
    with pytest.raises(ValueError, match=r"^backend='compiled' cannot run this: " + match):
        snir.run(g, x, dt=1.0, backend="compiled", **kw)
    assert snir.choose_backend(g, "auto", sums=kw.get("sums", "ordered"),
                               monitor=kw.get("monitor")) == "numpy"
    auto = snir.run(g, x, dt=1.0, **kw)
    assert _same_bits(auto["output"], snir.run(g, x, dt=1.0, backend="numpy", **kw)["output"])


@needs_extension
def test_auto_takes_compiled_and_bad_backend_is_refused():
    g = snir.load(_chain((3,), [nir.I(r=np.ones(3))]))
    assert snir.choose_backend(g) == "compiled"
    assert snir.choose_backend(g, "numpy") == "numpy"
    with pytest.raises(ValueError, match=r"^backend must be one of 'auto', 'compiled', "
                                         r"'numpy', got 'c'$"):
        snir.run(g, np.ones((1, 2, 3)), dt=1.0, backend="c")
    # the NumPy steppers' checks come first: the same message from both backends
    lif = _chain((2,), [nir.LI(tau=np.full(2, 0.5), r=np.ones(2), v_leak=np.zeros(2))])
    msgs = []
    for backend in ("numpy", "compiled"):
        with pytest.raises(ValueError, match="forward Euler would flip") as e:
            snir.run(lif, np.ones((1, 2, 2)), dt=1.0, backend=backend)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1]


@needs_extension
def test_empty_batch_and_zero_steps():
    g = snir.load(_chain((3,), [nir.IF(r=np.ones(3), v_threshold=np.ones(3),
                                       v_reset=np.zeros(3))]))
    for shape in ((0, 4, 3), (2, 0, 3)):
        a = snir.run(g, np.zeros(shape), dt=1.0, backend="compiled")["output"]
        b = snir.run(g, np.zeros(shape), dt=1.0, backend="numpy")["output"]
        assert a.shape == b.shape == shape


# ----------------------------------------------------------------------------- CLIs
def _h5_tree(path):
    import h5py
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda k, v: out.__setitem__(k, v[()]) if hasattr(v, "shape") else None)
        return out, dict(f.attrs)


@needs_extension
@pytest.mark.skipif(not CNN.is_file(), reason="NIR paper fixtures not present")
def test_run_and_energy_clis_use_the_compiled_backend_with_the_same_results(tmp_path, capsys):
    import json

    from snnfast import energy
    from snnfast import run as cli
    rng = np.random.default_rng(8)
    np.savez(tmp_path / "x.npz", x=(rng.random((3, 30, 2, 34, 34)) < 0.05).astype(np.uint8))
    base = [str(CNN), "--input", str(tmp_path / "x.npz"), "--dt", "1"]
    trees, texts = {}, {}
    for backend in ("auto", "numpy"):
        out = tmp_path / f"{backend}.h5"
        assert cli.main(base + ["--trace", "3", "12", "--out", str(out), "--backend", backend,
                                "--threads", "2"]) == 0
        texts[backend] = capsys.readouterr().out
        trees[backend] = _h5_tree(out)
    assert "sums ordered, compiled backend" in texts["auto"]
    assert "sums ordered, numpy backend" in texts["numpy"]
    assert texts["auto"].splitlines()[1:-2] == texts["numpy"].splitlines()[1:-2]   # rates
    (a, attrs_a), (b, attrs_b) = trees["auto"], trees["numpy"]
    assert sorted(a) == sorted(b) and "spike_counts/3" in a and "traces/12/v" in a
    assert all(_same_bits(np.asarray(a[k], b[k].dtype), b[k]) for k in a)
    assert (attrs_a["backend"], attrs_b["backend"]) == ("compiled", "numpy")
    reports = {}
    for backend in ("auto", "numpy"):
        js = tmp_path / f"{backend}.json"
        assert energy.main(base + ["--backend", backend, "--json", str(js)]) == 0
        assert f"reset zero, {'compiled' if backend == 'auto' else 'numpy'} backend" in \
            capsys.readouterr().out
        reports[backend] = json.loads(js.read_text())
    assert reports["auto"].pop("backend") == "compiled"
    assert reports["numpy"].pop("backend") == "numpy"
    for r in reports.values():
        r.pop("input"), r["result"].pop("backend")
    assert reports["auto"] == reports["numpy"]


@needs_extension
def test_run_cli_compiled_on_an_unsupported_graph_is_one_line(tmp_path, capsys):
    from snnfast import run as cli
    path = tmp_path / "d.nir"
    nir.write(path, _delay_graph())
    np.savez(tmp_path / "x.npz", x=np.ones((1, 4, 3)))
    out = tmp_path / "o.h5"
    argv = [str(path), "--input", str(tmp_path / "x.npz"), "--dt", "1", "--out", str(out)]
    assert cli.main(argv + ["--backend", "compiled"]) == 1
    err = capsys.readouterr().err
    assert err == "error: backend='compiled' cannot run this: node 'n0' is a Delay\n"
    assert not out.exists()
    assert cli.main(argv) == 0 and "numpy backend" in capsys.readouterr().out
