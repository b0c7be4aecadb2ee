"""ONNX / .npz import of ReLU networks (issue 22): models built with onnx.helper, checked
against ONNX's own NumPy reference evaluator and a hand-written NumPy forward."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from snnfast import ttfs_cnn  # noqa: E402
from snnfast.model_import import load_model, load_npz, save_npz  # noqa: E402

EXACT = 1e-9


def _init(name, a):
    return numpy_helper.from_array(np.asarray(a, np.float32), name)


def build(nodes, inits, in_shape, out_name, path, n_out):
    graph = helper.make_graph(
        nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, *in_shape])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [None, n_out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return model


def cnn_model(seed, path):
    """Conv(stride 2, asymmetric pads)+BN+Relu+MaxPool, Conv+Relu+AveragePool(pads),
    Flatten, Gemm(transB=1)+Relu, MatMul+Add, Softmax."""
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.normal(size=s) * 0.5  # noqa: E731
    inits = [_init("w1", f(4, 2, 3, 3)), _init("b1", f(4)),
             _init("g", rng.uniform(0.5, 1.5, 4)), _init("be", f(4)), _init("mu", f(4)),
             _init("var", rng.uniform(0.5, 2, 4)),
             _init("w2", f(5, 4, 2, 2)), _init("b2", f(5))]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1",
                              strides=[2, 1], pads=[1, 0, 2, 1]),
             helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["n1"],
                              name="bn1", epsilon=1e-3),
             helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2],
                              strides=[1, 1]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2",
                              pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("AveragePool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2],
                              strides=[2, 2], pads=[0, 0, 1, 1],
                              count_include_pad=int(seed % 2)),
             helper.make_node("Flatten", ["p2"], ["fl"], name="flat")]
    # the flattened size is taken from ONNX's own evaluator, not from the code under test
    graph_so_far = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, 2, 10, 9])], [helper.make_tensor_value_info(
            "fl", TensorProto.FLOAT, None)], inits)
    n_flat = ReferenceEvaluator(helper.make_model(
        graph_so_far, opset_imports=[helper.make_opsetid("", 17)])).run(
        None, {"x": np.zeros((1, 2, 10, 9), np.float32)})[0].shape[1]
    inits += [_init("w3", f(7, n_flat) * 0.3), _init("b3", f(7)), _init("w4", f(7, 3)),
              _init("b4", f(3))]
    nodes += [helper.make_node("Gemm", ["fl", "w3", "b3"], ["d1"], name="fc1", transB=1),
              helper.make_node("Relu", ["d1"], ["r3"], name="relu3"),
              helper.make_node("MatMul", ["r3", "w4"], ["m4"], name="fc2"),
              helper.make_node("Add", ["m4", "b4"], ["z"], name="fc2_bias"),
              helper.make_node("Softmax", ["z"], ["y"], name="softmax")]
    build(nodes, inits, (2, 10, 9), "y", path, 3)
    ref = helper.make_model(helper.make_graph(
        nodes[:-1], "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                          [None, 2, 10, 9])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [None, 3])], inits),
        opset_imports=[helper.make_opsetid("", 17)])
    return ref


def onnx_logits(model, X):
    """ONNX's NumPy reference evaluator in float64 (initializers cast up)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for v in list(m.graph.input) + list(m.graph.output):
        v.type.tensor_type.elem_type = TensorProto.DOUBLE
    return ReferenceEvaluator(m).run(None, {"x": X})[0]


@pytest.mark.parametrize("seed", range(4))
def test_onnx_cnn_converts_exactly(seed, tmp_path):
    p = tmp_path / "net.onnx"
    ref_model = cnn_model(seed, p)
    cnn = load_model(p)
    assert [s.kind for s in cnn.stages] == ["conv", "conv", "dense", "dense"]
    rng = np.random.default_rng(seed)
    X = rng.uniform(size=(30, 2, 10, 9))
    X[X < 0.25] = 0
    z_onnx = onnx_logits(ref_model, X)
    net = ttfs_cnn.convert(cnn, X)
    z_relu, _ = net.relu_forward(X)
    # the weights went through float32 in the file; both sides use the same float32 values
    assert np.abs(z_relu - z_onnx).max() <= 1e-9 * max(1.0, np.abs(z_onnx).max())
    r = net.simulate(X)
    assert np.abs(r.logits - z_onnx).max() <= 1e-9 * max(1.0, np.abs(z_onnx).max())
    assert np.array_equal(r.predictions, np.argmax(z_onnx, axis=1))


def test_onnx_mlp_with_reshape(tmp_path):
    rng = np.random.default_rng(0)
    w1, b1, w2, b2 = rng.normal(size=(16, 12)), rng.normal(size=12), rng.normal(size=(12, 4)), \
        rng.normal(size=4)
    inits = [_init("w1", w1), _init("b1", b1), _init("w2", w2), _init("b2", b2),
             numpy_helper.from_array(np.array([-1, 16], np.int64), "shape")]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "w1"], ["m1"]),
             helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r1"]),
             helper.make_node("Dropout", ["r1"], ["d1"]),
             helper.make_node("Gemm", ["d1", "w2", "b2"], ["z"], name="out")]
    p = tmp_path / "mlp.onnx"
    build(nodes, inits, (1, 4, 4), "z", p, 4)
    cnn = load_model(p)
    X = rng.uniform(size=(25, 16))
    # hand-written forward with the file's float32 weights
    f32 = lambda a: a.astype(np.float32).astype(np.float64)  # noqa: E731
    z = np.maximum(X @ f32(w1) + f32(b1), 0) @ f32(w2) + f32(b2)
    net = ttfs_cnn.convert(cnn, X)
    assert np.abs(net.simulate(X).logits - z).max() <= EXACT * max(1.0, np.abs(z).max())


def _tiny(tmp_path, nodes, inits, name="bad.onnx", out="z", n_out=2, in_shape=(1, 4, 4)):
    p = tmp_path / name
    build(nodes, inits, in_shape, out, p, n_out)
    return p


def test_unsupported_op_named(tmp_path):
    inits = [_init("w", np.ones((2, 1, 3, 3)))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="c1"),
             helper.make_node("Sigmoid", ["c"], ["s"], name="squash"),
             helper.make_node("Flatten", ["s"], ["z"])]
    p = _tiny(tmp_path, nodes, inits, n_out=8)
    with pytest.raises(ValueError, match=r"unsupported ONNX op 'Sigmoid' \(Sigmoid node 'squash'\)"):
        load_model(p)


@pytest.mark.parametrize("case,match", [
    ("no_relu", "without a Relu"),
    ("avg_before_relu", "average pooling before the Relu"),
    ("grouped", "grouped convolution"),
    ("relu_out", "output layer ends with a Relu"),
])
def test_refused_structures(tmp_path, case, match):
    w = _init("w", np.ones((2, 1, 3, 3)))
    g = _init("g", np.ones((2, 8)))
    if case == "no_relu":
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
                 helper.make_node("Flatten", ["c"], ["f"]),
                 helper.make_node("Gemm", ["f", "g"], ["z"], transB=1)]
    elif case == "avg_before_relu":
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
                 helper.make_node("AveragePool", ["c"], ["p"], kernel_shape=[1, 1]),
                 helper.make_node("Relu", ["p"], ["r"]),
                 helper.make_node("Flatten", ["r"], ["f"]),
                 helper.make_node("Gemm", ["f", "g"], ["z"], transB=1)]
    elif case == "grouped":
        w = _init("w", np.ones((2, 1, 3, 3)))
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], group=2, name="gc"),
                 helper.make_node("Relu", ["c"], ["r"]),
                 helper.make_node("Flatten", ["r"], ["f"]),
                 helper.make_node("Gemm", ["f", "g"], ["z"], transB=1)]
        p = tmp_path / "g.onnx"
        graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, [None, 2, 4, 4])], [helper.make_tensor_value_info(
                "z", TensorProto.FLOAT, [None, 2])], [w, g])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(p))
        with pytest.raises(ValueError, match=match):
            load_model(p)
        return
    else:
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
                 helper.make_node("Relu", ["c"], ["r"]),
                 helper.make_node("Flatten", ["r"], ["f"]),
                 helper.make_node("Gemm", ["f", "g"], ["a"], transB=1),
                 helper.make_node("Relu", ["a"], ["z"])]
    p = _tiny(tmp_path, nodes, [w, g])
    with pytest.raises(ValueError, match=match):
        load_model(p)


def test_malformed_files_give_one_line(tmp_path):
    p = tmp_path / "junk.onnx"
    p.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(ValueError) as e:
        load_model(p)
    assert "junk.onnx" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no such file"):
        load_model(tmp_path / "missing.onnx")
    q = tmp_path / "m.txt"
    q.write_text("x")
    with pytest.raises(ValueError, match="unknown model format"):
        load_model(q)
    r = tmp_path / "bad.npz"
    r.write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.npz"):
        load_npz(r)


def test_npz_roundtrip(tmp_path):
    p = tmp_path / "net.onnx"
    cnn_model(1, p)
    cnn = load_model(p)
    q = save_npz(cnn, tmp_path / "net.npz")
    back = load_model(q)
    X = np.random.default_rng(0).uniform(size=(5, 180))
    assert np.array_equal(back.forward(X, dtype=np.float64), cnn.forward(X, dtype=np.float64))
