"""The network description: layer specs, shape inference, validation, I/O and the preset files."""
import copy
import dataclasses
import json
import os
import sys

import pytest

from snnfast.convsnn import PARAM_SHAPES, PRESETS, ConvSNNConfig, make_config
from snnfast.network import (IF, LIF, PRESET_NAMES, AvgPool2d, ConfigError, Conv2d, Direct,
                             Flatten, Hybrid, Linear, MaxPool2d, Network, RateReadout, SumPool2d,
                             load_preset, preset_path, read_description)

sys.path.insert(0, os.path.dirname(__file__))  # the shared cases sit beside this file
from _cases import small_network  # noqa: E402




# ------------------------------------------------------------------------ shapes
def test_shape_inference_and_parameter_shapes():
    net = small_network()
    # conv: floor((9 + 2 - 3) / 2) + 1 = 5, floor((7 + 2 - 3) / 2) + 1 = 4; pool 2: 2 x 2
    assert net.shapes == [(4, 5, 4), (4, 5, 4), (4, 2, 2), (16,), (5,), (5,), (5,), (3,)]
    assert net.param_shapes() == {"conv2d0.weight": (4, 2, 3, 3), "conv2d0.bias": (4,),
                                  "linear4.weight": (16, 5), "linear7.weight": (5, 3),
                                  "linear7.bias": (3,)}
    assert net.n_params() == 4 * 2 * 9 + 4 + 16 * 5 + 15 + 3
    assert net.output_shape == (3,) and net.T == 4
    assert net.spiking_layers() == ["l1", "if5"]
    assert net.stages() == [(1, [0]), (5, [2, 3, 4])]
    assert net["l1"] is net[1] and net.index("if5") == 5
    assert "linear7" in net.summary()


@pytest.mark.parametrize("layer, shape, out", [
    (Conv2d(out_channels=2, kernel_size=(3, 1)), (1, 3, 1), (2, 1, 1)),    # kernel == input
    (Conv2d(out_channels=1, kernel_size=5, padding=2), (3, 4, 4), (1, 4, 4)),
    (Conv2d(out_channels=1, kernel_size=2, stride=(1, 3)), (1, 5, 8), (1, 4, 3)),
    (MaxPool2d(3, stride=1), (2, 4, 5), (2, 2, 3)),
    (AvgPool2d((2, 3)), (1, 5, 7), (1, 2, 2)),
    (Flatten(), (3, 2, 5), (30,)),
    (Linear(7, 2), (7,), (2,)),
])
def test_layer_output_shapes(layer, shape, out):
    assert layer.output_shape(shape) == out


def test_round_trip_dict_json_toml(tmp_path):
    net = small_network()
    assert Network.from_dict(json.loads(json.dumps(net.to_dict()))) == net
    path = tmp_path / "net.json"
    net.to_json(path)
    assert Network.from_file(path) == net
    toml = tmp_path / "net.toml"
    toml.write_text('[network]\ninput = [1, 6, 6]\n[network.encoder]\ntype = "Direct"\nT = 3\n'
                    '[[network.layers]]\ntype = "Conv2d"\nout_channels = 2\nkernel_size = [3, 2]\n'
                    '[[network.layers]]\ntype = "IF"\nname = "spk"\nreset = "subtract"\n'
                    '[[network.layers]]\ntype = "RateReadout"\n')
    got = Network.from_file(toml)
    assert got == Network((1, 6, 6), [Conv2d(out_channels=2, kernel_size=(3, 2)),
                                      IF(reset="subtract", name="spk"), RateReadout()],
                          encoder=Direct(T=3))
    assert got.shapes[-1] == (2, 4, 5)
    # a file without a [network] table is the description itself
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps(net.to_dict()))
    assert Network.from_file(flat) == net


@pytest.mark.parametrize("text, suffix, match", [
    ("[network\n", ".toml", r"net\.toml: not valid TOML"),
    ("{", ".json", r"net\.json: not valid JSON"),
    ("[1, 2]", ".json", "top level must be a table"),
    ("", ".yaml", "expected a .toml or .json"),
])
def test_read_description_refuses_bad_files(tmp_path, text, suffix, match):
    path = tmp_path / f"net{suffix}"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_description(path)
    with pytest.raises(ValueError, match="cannot read"):
        read_description(tmp_path / "missing.toml")


# ------------------------------------------------------------------------ validation
def _preset_dict():
    return copy.deepcopy(load_preset("default")[0].to_dict())


def _set(i, **kw):
    def edit(d):
        d["layers"][i].update(kw)
    return edit


def _pop(i, key):
    def edit(d):
        del d["layers"][i][key]
    return edit


def _insert(i, layer):
    def edit(d):
        d["layers"].insert(i, layer)
    return edit


# each: an edit of the default preset's description and the message it must give (the layer's
# index, name and the field at fault, all on one line)
BAD = [
    (_set(3, in_features=2000), r"^layer 3 \('fc1', Linear\): in_features is 2000 but the "
                                r"input has 2304 features$"),
    (_set(0, kernel_size=29), r"^layer 0 \('conv', Conv2d\): kernel_size 29 is larger than "
                              r"the input's height 28$"),
    (_set(0, kernel_size=[5, 40], padding=[0, 2]), r"^layer 0 \('conv', Conv2d\): kernel_size "
                                                   r"40 is larger than the input's width 28 "
                                                   r"\+ 2 x padding 2$"),
    (_set(0, in_channels=3), r"^layer 0 \('conv', Conv2d\): in_channels is 3 but the input "
                             r"has 1 channels$"),
    (_set(2, type="Flattn"), r"^layer 2 \('flatten', Flattn\): type 'Flattn' is unknown"),
    (_pop(2, "type"), r"^layer 2 \('flatten', None\): type is required"),
    (_set(4, decay_rate=0.5), r"^layer 4 \('hidden', LIF\): decay_rate is not a field of LIF"),
    (_set(0, out_channels=-16), r"^layer 0 \('conv', Conv2d\): out_channels must be an "
                                r"integer >= 1, got -16$"),
    (_set(0, stride=0), r"^layer 0 \('conv', Conv2d\): stride must be an integer >= 1"),
    (_set(0, padding=-1), r"^layer 0 \('conv', Conv2d\): padding must be an integer >= 0"),
    (_set(3, out_features="1024"), r"^layer 3 \('fc1', Linear\): out_features must be an "
                                   r"integer, got '1024'$"),
    (_set(3, out_features=1024.0), r"^layer 3 \('fc1', Linear\): out_features must be an "
                                   r"integer, got 1024\.0$"),
    (_set(3, bias=1), r"^layer 3 \('fc1', Linear\): bias must be true or false, got 1$"),
    (_set(4, threshold="high"), r"^layer 4 \('hidden', LIF\): threshold must be a number"),
    (_set(4, threshold=float("nan")), r"^layer 4 \('hidden', LIF\): threshold must be finite"),
    (_set(4, threshold=0.0), r"^layer 4 \('hidden', LIF\): threshold must be > 0"),
    (_set(3, out_features=None), r"^layer 3 \('fc1', Linear\): out_features is required$"),
    (_set(4, decay=1.5), r"^layer 4 \('hidden', LIF\): decay must be in \[0, 1\]"),
    (_set(4, reset="soft"), r"^layer 4 \('hidden', LIF\): reset must be one of 'zero', "
                            r"'subtract', 'halve', got 'soft'$"),
    (_set(4, drive="sum"), r"^layer 4 \('hidden', LIF\): drive must be one of"),
    (_set(4, phase=2), r"^layer 4 \('hidden', LIF\): phase must be < period=2, got 2$"),
    (_set(4, period=20, phase=12), r"^layer 4 \('hidden', LIF\): phase 12 is >= the "
                                   r"encoder's T=10"),
    (_set(5, norm="T"), r"^layer 5 \('readout', RateReadout\): norm must be one of"),
    (_set(3, name="conv"), r"^layer 3 \('conv', Linear\): name 'conv' is already used by "
                           r"layer 0$"),
    (_set(3, name="fc-1"), r"^layer 3 \(Linear\): name must be an identifier"),
    (_insert(3, {"type": "Conv2d", "name": "c2", "out_channels": 2, "kernel_size": 3}),
     r"^layer 3 \('c2', Conv2d\): type needs a \(C, H, W\) input, got shape \(2304,\)"),
    (_insert(1, {"type": "Linear", "name": "x", "out_features": 3}),
     r"^layer 1 \('x', Linear\): type needs a flat input, got shape \(16, 12, 12\)"),
    (_insert(1, "Flatten"), r"^layer 1: must be a table/object, got 'Flatten'$"),
    (_insert(1, {"type": "MaxPool2d", "name": "p", "kernel_size": 13}),
     r"^layer 1 \('p', MaxPool2d\): kernel_size 13 is larger than the input's height 12$"),
    (_insert(6, {"type": "LIF", "name": "late"}),
     r"^layer 6 \('late', LIF\): type cannot follow the RateReadout \(layer 5\)"),
    (_insert(4, {"type": "Linear", "name": "fc1b", "out_features": 1024}),
     r"^layer 4 \('fc1b', Linear\): type is a second synaptic layer after layer 3"),
    (_insert(5, {"type": "LIF", "name": "again"}),
     r"^layer 5 \('again', LIF\): type needs a Conv2d or Linear between it and the previous"),
    (_insert(5, {"type": "Flatten", "name": "f9"}),
     r"^layer 6 \('readout', RateReadout\): type must directly follow a LIF or IF layer$"),
]

@pytest.mark.parametrize("edit, match", BAD)
def test_wrong_descriptions_name_the_layer_and_field(edit, match):
    d = _preset_dict()
    edit(d)
    with pytest.raises(ConfigError, match=match) as info:
        Network.from_dict(d)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(input=[1, 28]), r"^network: input must be \[C, H, W\]"),
    (lambda d: d.update(input=[1, -28, 28]), r"^network: input must be an integer >= 1, got -28"),
    (lambda d: d.update(inputs=[1, 28, 28]), r"^network: unknown field\(s\) 'inputs'"),
    (lambda d: d.pop("layers"), r"^network: layers is required$"),
    (lambda d: d.update(layers=[]), r"^network: layers must be a non-empty list"),
    (lambda d: d["encoder"].update(type="Poisson"), r"^encoder: type 'Poisson' is unknown"),
    (lambda d: d["encoder"].update(T=0), r"^encoder \(Hybrid\): T must be an integer >= 1"),
    (lambda d: d["encoder"].update(n_det=20000), r"^encoder \(Hybrid\): n_det must be <= 10000"),
    (lambda d: d["encoder"].update(steps=3), r"^encoder \(Hybrid\): steps is not a field"),
    (lambda d: d.update(layers=d["layers"][:5]), r"^network: layers: needs a RateReadout"),
])
def test_wrong_network_fields(edit, match):
    d = _preset_dict()
    edit(d)
    with pytest.raises(ConfigError, match=match):
        Network.from_dict(d)


def test_layer_constructors_validate():
    with pytest.raises(ConfigError, match=r"^Conv2d 'c': kernel_size is required$"):
        Conv2d(out_channels=3, name="c")
    with pytest.raises(ConfigError, match=r"^LIF: reset must be one of"):
        LIF(reset="none")
    with pytest.raises(ConfigError, match=r"^Linear: takes 3 positional fields"):
        Linear(1, 2, True, 4)
    with pytest.raises(ConfigError, match=r"^Linear: name must be an identifier"):
        Linear(out_features=2, name="a b")
    with pytest.raises(ConfigError, match=r"^layer 0: must be a layer"):
        Network((1, 4, 4), [Hybrid()])
    with pytest.raises(ConfigError, match=r"^network: encoder must be"):
        Network((1, 4, 4), [Flatten()], encoder=LIF())
    assert IF().beta == 1.0 and "decay" not in IF().fields()
    assert SumPool2d(3).stride == (3, 3) and LIF(period=3, phase=2).update_steps(8) == [2, 5]


# ------------------------------------------------------------------------ presets
# the presets as they were written in Python before they became files: overrides of the
# ConvSNNConfig defaults
_OLD_PRESETS = {
    "seed": dict(preset="seed", reset_h="halve", hidden_period=2, hidden_phase=0,
                 drive="cumulative", drive_scale=0.1, rate_norm="T", trainer="reference",
                 epochs=30, batch_size=64, lr=1e-2, lr_schedule="step", init="reference",
                 augment_shift=0),
    "default": dict(preset="default"),
    "nir": dict(preset="nir", reset_h="zero", hidden_period=1, hidden_phase=0),
}


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_files_give_the_previous_configs(name):
    expected = ConvSNNConfig(**_OLD_PRESETS[name])
    got = make_config(name)
    for f in dataclasses.fields(ConvSNNConfig):
        a, b = getattr(got, f.name), getattr(expected, f.name)
        assert a == b and type(a) is type(b), f.name
    # every field is in the file (none falls back to a dataclass default)
    assert set(PRESETS[name]) == {f.name for f in dataclasses.fields(ConvSNNConfig)}
    assert make_config(name, epochs=3).epochs == 3


def test_preset_files_describe_convsnn_architecture():
    for name in PRESET_NAMES:
        net, training = load_preset(name)
        assert net.name == name and preset_path(name).name == f"{name}.toml"
        assert {k: net.param_shapes()[v] for k, v in
                {"conv_w": "conv.weight", "conv_b": "conv.bias", "W1": "fc1.weight",
                 "b1": "fc1.bias", "W2": "fc2.weight", "b2": "fc2.bias"}.items()} == PARAM_SHAPES
    assert PARAM_SHAPES == {"conv_w": (16, 1, 5, 5), "conv_b": (16,), "W1": (2304, 1024),
                            "b1": (1024,), "W2": (1024, 10), "b2": (10,)}
    with pytest.raises(ValueError, match="unknown preset 'big'"):
        load_preset("big")
    with pytest.raises(ValueError, match="unknown preset"):
        make_config("big")
    with pytest.raises(TypeError, match="unknown ConvSNN option"):
        make_config("default", hidden_size=3)


def test_a_preset_file_convsnn_cannot_run_is_refused(monkeypatch):
    import snnfast.convsnn as cs
    import snnfast.network as nw
    d = copy.deepcopy(nw._preset_dict("nir"))
    d["network"]["layers"][3]["out_features"] = 512
    d["network"]["layers"][6]["in_features"] = 512
    monkeypatch.setitem(nw._CACHE, "nir", d)
    with pytest.raises(ValueError, match="nir.toml: ConvSNN runs only the architecture"):
        cs._preset_fields("nir")
    d = copy.deepcopy(nw._preset_dict("default"))
    d["training"]["learning_rate"] = 1.0
    monkeypatch.setitem(nw._CACHE, "nir", d)
    with pytest.raises(ValueError, match=r"\[training\] has unknown option\(s\) learning_rate"):
        cs._preset_fields("nir")
    del d["training"]["learning_rate"], d["training"]["lr"]
    with pytest.raises(ValueError, match=r"\[training\] misses option\(s\) lr"):
        cs._preset_fields("nir")
