"""Running a loaded NIR :class:`~snnfast.nir.graph.Graph` step by step in NumPy.

Every node is one vectorised NumPy step over the batch; a time step visits the nodes in
``graph.order``. The equations, the integrators, the reset rules and the float32 order of
every operation are documented in ``docs/nir-runtime.rst``.
"""
import numpy as np

from ..reference import linear, pool2d
from .compiled import run_compiled, unsupported
from .graph import Graph, load

__all__ = ["run", "read_inputs", "choose_backend", "INTEGRATORS", "RESETS", "SUMS", "BACKENDS"]

INTEGRATORS = ("euler", "exact")
RESETS = ("zero", "subtract")
SUMS = ("ordered", "blas")
BACKENDS = ("auto", "compiled", "numpy")
f32 = np.float32


def run(net, x, dt=None, trace=None, integrator="euler", reset="zero", sums="ordered",
        monitor=None, backend="auto", n_threads=None):
    """Run a NIR graph on a batch of input sequences.

    Parameters
    ----------
    net : Graph, nir.NIRGraph or path
        A graph from :func:`snnfast.nir.load` (anything else is loaded first).
    x : ndarray or dict
        Input per step, ``(N, T, *input_shape)`` (spikes or currents, any real values), or
        ``{input node name: array}`` for graphs with several Input nodes.
    dt : float
        The time step (required: NIR graphs carry no time step). Each input value is held
        constant for one step of length ``dt``.
    trace : None, "all" or list of str
        Nodes whose per-step state to return as well.
    integrator : {"euler", "exact"}
        Forward Euler, or exact exponential integration of the linear dynamics over each
        step.
    reset : {"zero", "subtract"}
        After a spike, ``v = v_reset`` ("zero", NIR's equations), or
        ``v = v - (v_threshold - v_reset)`` ("subtract").
    sums : {"ordered", "blas"}
        "ordered" adds the terms of every Affine/Linear/Conv output one input (or tap) at a
        time in ascending order (the same float32 result on every CPU, and snnfast's own
        kernels' order); "blas" uses matrix products (faster; last-bit rounding depends on
        the BLAS build).
    monitor : callable, optional
        Called after every step ``t`` as ``monitor(t, info)`` (statistics without storing
        whole traces); ``info`` holds ``"inputs"`` and ``"outputs"`` (``{node: (N, *shape)}``
        of that step, every node) and ``"states"`` (``{node: {"v": ..., "i": ...}}``, neuron
        nodes, after the step). The arrays are not modified later: references may be kept.
        NumPy backend only.
    backend : {"auto", "compiled", "numpy"}
        "compiled" runs the graph in C (``snnfast.nir.compiled``: every sample's whole run in
        one call, OpenMP over samples, event-driven Conv/Affine) with the float32 results of
        ``sums="ordered"`` bit for bit; "numpy" steps it in NumPy; "auto" (default) takes
        "compiled" when it can run the graph and the options (see :func:`choose_backend`),
        else "numpy".
    n_threads : int, optional
        Threads of the compiled backend (:func:`snnfast.effective_n_threads`); the results
        do not depend on it.

    Returns
    -------
    outputs : dict
        ``{Output node name: float32 (N, T, *shape)}``.
    traces : dict
        Only when ``trace`` is given: ``{node: {"v": ..., "i": ..., "z": ..., "y": ...}}``,
        float32 ``(N, T, *shape)`` each: the membrane after the reset (``v``), the synaptic
        current (``i``, Cuba nodes), the spikes (``z``, spiking nodes) and the node's output
        (``y``, all other nodes).

    Raises
    ------
    ValueError
        One line naming what is wrong: a missing or bad ``dt``, inputs of the wrong shape or
        with non-finite values, a parameter the chosen integrator cannot use, a graph or an
        option ``backend="compiled"`` cannot run.
    """
    graph = net if isinstance(net, Graph) else load(net)
    dt = _check_dt(dt, graph)
    for opt, val, allowed in (("integrator", integrator, INTEGRATORS), ("reset", reset, RESETS),
                              ("sums", sums, SUMS), ("backend", backend, BACKENDS)):
        if val not in allowed:
            raise ValueError(f"{opt} must be one of {', '.join(map(repr, allowed))}, got {val!r}")
    compiled = choose_backend(graph, backend, sums=sums, monitor=monitor) == "compiled"
    xs = _check_inputs(graph, x, bytes_ok=compiled)
    names = _trace_names(graph, trace)
    if compiled:
        outs, rec, _ = _compiled(graph, xs, dt, integrator, reset, names, None, n_threads)
        return (outs, rec) if trace is not None else outs
    N, T = next(iter(xs.values())).shape[:2]
    steps = {k: _stepper(graph.nodes[k], dt, integrator, reset, sums, N)
             for k in graph.order}
    outs = {k: np.zeros((N, T) + graph.nodes[k].out_shape, f32) for k in graph.outputs}
    rec = {k: {} for k in names}
    prev = {}
    for t in range(T):
        cur, ins = {}, {}
        for k in graph.order:
            node = graph.nodes[k]
            if node.kind == "Input":
                inp = xs[k][:, t]
            else:
                inp = _gather(graph, k, cur, prev, N)
            ins[k] = inp
            cur[k] = steps[k](inp)
            if node.kind == "Output":
                outs[k][:, t] = cur[k]
            if k in rec:
                _record(rec[k], steps[k], cur[k], node, t, N, T)
        if monitor is not None:
            monitor(t, {"inputs": ins, "outputs": cur,
                        "states": {k: dict(s.state()) for k, s in steps.items()
                                   if isinstance(s, _Neuron)}})
        prev = cur
    return (outs, rec) if trace is not None else outs


def choose_backend(graph, backend="auto", sums="ordered", monitor=None):
    """The backend :func:`run` uses: "compiled" or "numpy".

    "auto" takes "compiled" unless the graph has a node or edge it cannot run (cycles,
    Delay, batched Affine weights, the extension not built), ``sums="blas"`` (the NumPy
    backend's matrix products) or a ``monitor`` (a Python call per step) is asked for.
    ``backend="compiled"`` then raises ValueError naming the reason.
    """
    if backend == "numpy":
        return "numpy"
    why = unsupported(graph)
    if why is None and sums != "ordered":
        why = (f"sums={sums!r} is the NumPy backend's matrix-product order (the compiled "
               "backend adds in the 'ordered' order)")
    if why is None and monitor is not None:
        why = "a monitor is called per step in Python (NumPy backend only)"
    if why is None:
        return "compiled"
    if backend == "compiled":
        raise ValueError(f"backend='compiled' cannot run this: {why}")
    return "numpy"


def run_counted(graph, x, dt, integrator, reset, counts, trace=None, n_threads=None):
    """(outputs, traces, counters): :func:`run` on the compiled backend, also counting what
    ``counts`` asks for (see :func:`snnfast.nir.compiled.run_compiled`); the arguments are
    checked as :func:`run` checks them."""
    dt = _check_dt(dt, graph)
    return _compiled(graph, _check_inputs(graph, x, bytes_ok=True), dt, integrator, reset,
                     _trace_names(graph, trace), counts, n_threads)


def _compiled(graph, xs, dt, integrator, reset, names, counts, n_threads):
    # the steppers first: the same ValueError as NumPy's (e.g. Euler with tau < dt)
    for k in graph.order:
        _stepper(graph.nodes[k], dt, integrator, reset, "ordered", 0)
    return run_compiled(graph, xs, dt, integrator, reset, names, counts, n_threads)


def read_inputs(path, graph):
    """The input of ``graph`` from an ``.npz`` file (its only array, or one array per Input
    node named after it) or an ``.npy`` file (ValueError in one line otherwise)."""
    try:
        obj = np.load(path, allow_pickle=False)
        if isinstance(obj, np.ndarray):
            data = {"x": obj}
        else:
            with obj as f:
                data = {k: f[k] for k in f.files}
    except Exception as exc:    # zipfile, pickle refusal, bad headers: many types
        msg = (str(exc).splitlines() or [""])[0]
        raise ValueError(f"cannot read {str(path)!r} as .npz or .npy: {type(exc).__name__}: "
                         f"{msg}") from None
    if len(graph.inputs) == 1 and len(data) == 1:
        return next(iter(data.values()))
    missing = [k for k in graph.inputs if k not in data]
    if missing:
        raise ValueError(f"{path}: arrays {sorted(data)}; the graph's Input nodes are "
                         f"{graph.inputs} (name the arrays after them)")
    return {k: data[k] for k in graph.inputs}


def _check_dt(dt, graph):
    if dt is None:
        hint = graph.metadata.get("dt")
        raise ValueError("dt is required: NIR graphs carry no time step" +
                         (f" (this graph's metadata says dt = {hint!r})" if hint is not None
                          else ""))
    try:
        dt = float(dt)
    except (TypeError, ValueError):
        raise ValueError(f"dt must be a number, got {dt!r}") from None
    if not np.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt must be a finite number > 0, got {dt!r}")
    return dt


def _check_inputs(graph, x, bytes_ok=False):
    """``{Input node: float32 (N, T, ...)}`` (``bytes_ok``: uint8 and bool arrays as uint8,
    which the compiled backend converts frame by frame), or a one-line ValueError."""
    if not isinstance(x, dict):
        if len(graph.inputs) != 1:
            raise ValueError(f"the graph has {len(graph.inputs)} Input nodes "
                             f"({', '.join(graph.inputs)}): pass a dict of arrays")
        x = {graph.inputs[0]: x}
    missing = [k for k in graph.inputs if k not in x]
    extra = [k for k in x if k not in graph.inputs]
    if missing or extra:
        raise ValueError(f"inputs: missing {missing}, unknown {extra} (Input nodes: "
                         f"{graph.inputs})")
    out, nt = {}, None
    for k in graph.inputs:
        a = np.asarray(x[k])
        want = graph.nodes[k].out_shape
        if a.dtype.kind not in "biuf":
            raise ValueError(f"input {k!r} must hold real numbers, got dtype {a.dtype}")
        if a.ndim != 2 + len(want) or a.shape[2:] != want:
            raise ValueError(f"input {k!r} must have shape (N, T, {', '.join(map(str, want))}),"
                             f" got {a.shape}")
        if nt is not None and a.shape[:2] != nt:
            raise ValueError(f"inputs disagree on (N, T): {nt} and {a.shape[:2]} ({k!r})")
        nt = a.shape[:2]
        if bytes_ok and a.dtype in (np.uint8, np.bool_):
            out[k] = np.ascontiguousarray(a).view(np.uint8)
            continue
        kind, a = a.dtype.kind, a.astype(f32, copy=False)   # read only: no copy needed
        # integers are finite in float32 (|x| < 2**64 < float32's maximum)
        if kind == "f" and not np.isfinite(a).all():
            raise ValueError(f"input {k!r} contains NaN or infinite values (in float32)")
        out[k] = a
    return out


def _trace_names(graph, trace):
    if trace is None:
        return []
    names = list(graph.order) if isinstance(trace, str) and trace == "all" else \
        [trace] if isinstance(trace, str) else list(trace)
    unknown = [k for k in names if k not in graph.nodes]
    if unknown:
        raise ValueError(f"trace: no node named {unknown[0]!r} (nodes: {', '.join(graph.order)})")
    return names


def _gather(graph, k, cur, prev, N):
    """The sum of a node's incoming edges (back edges: the previous step's outputs)."""
    total = None
    for a in graph.preds[k]:
        if (a, k) in graph.back_edges:
            y = prev.get(a)
            if y is None:               # first step: nothing has been emitted yet
                continue
        else:
            y = cur[a]
        total = y if total is None else total + y
    if total is None:
        total = np.zeros((N,) + graph.nodes[k].in_shape, f32)
    return total


def _record(rec, step, y, node, t, N, T):
    state = dict(getattr(step, "state", lambda: {})())
    state["z" if node.spiking else "y"] = y
    for key, v in state.items():
        if key not in rec:
            rec[key] = np.zeros((N, T) + v.shape[1:], f32)
        rec[key][:, t] = v


# ----------------------------------------------------------------------------- steppers
def _stepper(node, dt, integrator, reset, sums, N):
    k, p = node.kind, node.params
    if k in ("Input", "Output", "Identity"):
        return lambda x: x
    if k in ("Affine", "Linear"):
        return _Affine(p["weight"], p["bias"], sums)
    if k in ("Conv1d", "Conv2d"):
        return _Conv(p, sums)
    if k in ("AvgPool2d", "SumPool2d"):
        return _pool(k, p)
    if k == "Flatten":
        shape = node.out_shape
        return lambda x: x.reshape((len(x),) + shape)
    if k == "Scale":
        s = p["scale"].astype(f32)
        return lambda x: x * s
    if k == "Threshold":
        thr = p["threshold"].astype(f32)
        return lambda x: (x > thr).astype(f32)
    if k == "Delay":
        return _Delay(node, dt, N)
    return _Neuron(node, dt, integrator, reset, N)


class _Affine:
    """``y = W x + b`` over the last axis; leading weight axes are batched like the input's."""

    def __init__(self, weight, bias, sums):
        self.w = weight.astype(f32)
        self.wt = np.ascontiguousarray(np.swapaxes(self.w, -1, -2))   # (..., in, out)
        self.b = bias.astype(f32)
        self.ordered = sums == "ordered"

    def __call__(self, x):
        if not self.ordered:
            if self.w.ndim == 2:
                return linear(x, self.wt, self.b)
            return np.matmul(x[..., None, :], self.wt)[..., 0, :] + self.b
        acc = np.zeros(x.shape[:-1] + self.w.shape[-2:-1], f32)
        # inputs that are zero for every sample add exact zeros: skipped (event-driven)
        active = np.flatnonzero(np.any(x.reshape(-1, x.shape[-1]) != 0, axis=0))
        for i in active:
            acc += x[..., i, None] * self.wt[..., i, :]
        return acc + self.b


class _Conv:
    """A grouped, strided, dilated, padded convolution (1-D as 2-D with height 1)."""

    def __init__(self, p, sums):
        w = p["weight"].astype(f32)
        self.one_d = w.ndim == 3
        if self.one_d:
            w = w[:, :, None, :]
        g = p["groups"]
        co, cig, kh, kw = w.shape
        self.w = w.reshape(g, co // g, cig, kh, kw)
        self.b = p["bias"].astype(f32).reshape(g, co // g, 1, 1)
        lead = 1 if self.one_d else 0        # a Conv1d's height axis: stride 1, no padding
        self.stride = (1,) * lead + tuple(p["stride"])
        self.dil = (1,) * lead + tuple(p["dilation"])
        self.pad = ((0, 0),) * lead + tuple(p["padding"])
        self.ordered = sums == "ordered"

    def __call__(self, x):
        N = len(x)
        if self.one_d:
            x = x[:, :, None, :]
        g, cog, cig, kh, kw = self.w.shape
        xp = np.pad(x, ((0, 0), (0, 0)) + self.pad)
        x = xp.reshape((N, g, cig) + xp.shape[2:])       # channel = group * cig + ci
        (sy, sx), (dy, dx) = self.stride, self.dil
        oh = (x.shape[3] - dy * (kh - 1) - 1) // sy + 1
        ow = (x.shape[4] - dx * (kw - 1) - 1) // sx + 1

        def tap(ci, ky, kx):        # (N, g, oh, ow): input under tap (ky, kx) of channel ci
            return x[:, :, ci, ky * dy:ky * dy + sy * (oh - 1) + 1:sy,
                     kx * dx:kx * dx + sx * (ow - 1) + 1:sx]

        if self.ordered:
            acc = np.zeros((N, g, cog, oh, ow), f32)
            for ci in range(cig):
                if not x[:, :, ci].any():       # an all-zero input channel adds exact zeros
                    continue
                for ky in range(kh):
                    for kx in range(kw):
                        acc += self.w[None, :, :, ci, ky, kx, None, None] * tap(ci, ky, kx)[:, :, None]
        else:
            cols = np.stack([tap(ci, ky, kx) for ci in range(cig) for ky in range(kh)
                             for kx in range(kw)], axis=2)           # (N, g, cig*kh*kw, oh, ow)
            cols = cols.reshape(N, g, cig * kh * kw, oh * ow)
            acc = np.matmul(self.w.reshape(1, g, cog, -1), cols).reshape(N, g, cog, oh, ow)
        y = (acc + self.b).reshape(N, g * cog, oh, ow)
        return y[:, :, 0, :] if self.one_d else y


def _pool(kind, p):
    (ph, pw), k, s = p["padding"], p["kernel_size"], p["stride"]

    def step(x):
        if ph or pw:            # zero padding, counted in an average (count_include_pad)
            x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        return pool2d(kind, x, k, s)
    return step


class _Delay:
    """``y[t] = x[t - d]`` with ``d = delay / dt`` whole steps per element (0 before)."""

    def __init__(self, node, dt, N):
        steps = node.params["delay"] / dt
        d = np.round(steps)
        if np.any(np.abs(steps - d) > 1e-6 * np.maximum(d, 1.0)):
            bad = float(steps.flat[np.argmax(np.abs(steps - d))])
            raise ValueError(f"node {node.name!r} (Delay): delay/dt = {bad!r} is not a whole "
                             "number of steps")
        self.d = np.broadcast_to(d.astype(np.int64), node.in_shape)
        self.size = int(self.d.max(initial=0)) + 1
        self.buf = np.zeros((self.size, N) + node.in_shape, f32)
        self.t = 0

    def __call__(self, x):
        pos = self.t % self.size
        self.buf[pos] = x
        self.t += 1
        idx = np.broadcast_to((pos - self.d) % self.size, x.shape)[None]
        return np.take_along_axis(self.buf, idx, axis=0)[0]


class _Neuron:
    """I, IF, LI, LIF, CubaLI, CubaLIF as one update

        i' = a_s i + g_s x                     (Cuba nodes; the others have no i)
        v' = beta v + leak + c_i i + c_x x     then spike and reset (IF, LIF, CubaLIF)

    with float32 coefficients computed in float64 from the parameters, ``dt`` and the
    integrator (``docs/nir-runtime.rst``)."""

    def __init__(self, node, dt, integrator, reset, N):
        p, kind = node.params, node.kind
        shape = node.in_shape
        c = _coefficients(node, dt, integrator)
        self.c = {k: np.broadcast_to(np.asarray(v, f32), shape) for k, v in c.items()}
        self.cuba = kind.startswith("Cuba")
        self.spiking = node.spiking
        self.v = np.zeros((N,) + shape, f32)
        self.i = np.zeros((N,) + shape, f32) if self.cuba else None
        if self.spiking:
            self.thr = np.broadcast_to(p["v_threshold"].astype(f32), shape)
            self.vr = np.broadcast_to(p["v_reset"].astype(f32), shape)
            self.jump = self.thr - self.vr          # float32, as subtracted after a spike
            self.zero = reset == "zero"

    def state(self):
        return {"v": self.v, "i": self.i} if self.cuba else {"v": self.v}

    def __call__(self, x):
        c = self.c
        v = self.v * c["beta"] + c["leak"]
        if self.cuba:
            v = v + c["c_i"] * self.i
            self.i = self.i * c["a_s"] + c["g_s"] * x
        v = v + c["c_x"] * x
        if not self.spiking:
            self.v = v
            return v
        z = v > self.thr
        self.v = np.where(z, self.vr if self.zero else v - self.jump, v).astype(f32)
        return z.astype(f32)


def _coefficients(node, dt, integrator):
    """float64 coefficients of :class:`_Neuron`'s update."""
    p, kind = node.params, node.kind
    if kind in ("I", "IF"):
        # dv/dt = r x: Euler and exact integration agree
        return {"beta": 1.0, "leak": 0.0, "c_x": p["r"] * dt}
    tau = p["tau_mem"] if kind.startswith("Cuba") else p["tau"]
    for name, t in (("tau", tau), ("tau_syn", p.get("tau_syn"))):
        if integrator == "euler" and t is not None and np.any(t < dt):
            raise ValueError(f"node {node.name!r} ({kind}): {name} = {float(t.min())!r} < dt = {dt!r}: "
                             "forward Euler would flip the sign of the state every step; use "
                             "integrator='exact' or a smaller dt")
    h = dt / tau
    one_minus = h if integrator == "euler" else -np.expm1(-h)      # 1 - beta
    beta = 1.0 - one_minus
    c = {"beta": beta, "leak": p["v_leak"] * one_minus}
    if not kind.startswith("Cuba"):
        c["c_x"] = p["r"] * one_minus
        return c
    hs = dt / p["tau_syn"]
    s_minus = hs if integrator == "euler" else -np.expm1(-hs)      # 1 - a_s
    c["a_s"], c["g_s"] = 1.0 - s_minus, p["w_in"] * s_minus
    if integrator == "euler":
        # the membrane integrates the updated current: r h (a_s i + g_s x)
        c["c_i"], c["c_x"] = p["r"] * h * c["a_s"], p["r"] * h * c["g_s"]
    else:
        kappa = _kappa(h, hs)
        c["c_i"] = p["r"] * kappa
        c["c_x"] = p["r"] * p["w_in"] * (one_minus - kappa)
    return c


def _kappa(h, hs):
    """``tau_s/(tau_s - tau_m) (exp(-dt/tau_s) - exp(-dt/tau_m))``: the membrane's response
    at ``dt`` to a unit synaptic current decaying from 0, in the stable form
    ``h exp(-h) expm1(d)/d`` with ``h = dt/tau_m``, ``d = h - hs`` (limit ``h exp(-h)``)."""
    d = np.asarray(h - hs, dtype=np.float64)
    safe = np.where(d == 0, 1.0, d)
    phi = np.where(d == 0, 1.0, np.expm1(safe) / safe)
    return h * np.exp(-h) * phi
