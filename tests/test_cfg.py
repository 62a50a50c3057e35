import re
import warnings

import pytest

from pydarknet.cfg import (ACTIVATIONS, SECTION_ALIASES, SUPPORTED_LAYERS, CfgError, CfgWarning, LayerSpec,
                           NetSpec, parse_cfg, parse_cfg_text)

from conftest import CFG_DIR, PUBLIC_MODELS

PROJECT_CFGS = sorted(CFG_DIR.glob("*.cfg"))   # the public models and the project's own (shapes*.cfg)

NET = "[net]\nwidth=32\nheight=32\nchannels=3\n"


def parse(body, net=NET, path="t.cfg"):
    with warnings.catch_warnings():
        warnings.simplefilter("error", CfgWarning)   # unexpected warnings fail the test
        return parse_cfg_text(net + body, path)


def layer(body, i=-1, **kw):
    return parse(body, **kw).layers[i].attrs


def fails(text, line, *words, path="bad.cfg"):
    with pytest.raises(CfgError) as e:
        parse_cfg_text(text, path)
    assert (e.value.path, e.value.line) == (path, line), str(e.value)
    assert str(e.value).startswith(f"{path}:{line}: ")
    for w in words:
        assert w in e.value.message, e.value.message
    return e.value


def warns(text, line, *words, path="w.cfg"):
    with pytest.warns(CfgWarning) as rec:
        spec = parse_cfg_text(text, path)
    msgs = [str(r.message) for r in rec]
    assert any(m.startswith(f"{path}:{line}: ") and all(w in m for w in words) for m in msgs), msgs
    return spec


# ---------------------------------------------------------------- the project's cfgs

def test_every_public_model_is_in_cfg():
    present = {p.stem for p in PROJECT_CFGS}
    assert not set(PUBLIC_MODELS) - present, f"missing from {CFG_DIR}: {sorted(set(PUBLIC_MODELS) - present)}"


@pytest.mark.parametrize("path", PROJECT_CFGS, ids=lambda p: p.name)
def test_project_cfg_parses_without_warnings(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", CfgWarning)
        spec = parse_cfg(path)
    headers = [m.group(1) for m in re.finditer(r"^\s*\[([^\]]+)\]", path.read_text(), re.M)]
    assert headers[0] in ("net", "network")
    assert len(spec.layers) == len(headers) - 1
    assert [l.index for l in spec.layers] == list(range(len(spec.layers)))
    assert all(l.type in SUPPORTED_LAYERS for l in spec.layers)
    assert spec.width > 0 and spec.height > 0 and spec.channels > 0


def project(name):
    return parse_cfg(CFG_DIR / name)   # a missing file is a CfgError: the test fails


def test_yolov4_tiny_values():
    spec = project("yolov4-tiny.cfg")
    assert (spec.width, spec.height, spec.channels, spec.batch, spec.subdivisions) == (416, 416, 3, 64, 1)
    assert spec.options["steps"] == [1600000, 1800000] and spec.options["scales"] == [0.1, 0.1]
    assert spec.options["policy"] == "steps" and spec.options["sgdr_cycle"] == spec.options["max_batches"]
    c0 = spec.layers[0]
    assert (c0.type, c0.line) == ("convolutional", 34)
    assert {k: c0.attrs[k] for k in ("filters", "size", "stride", "stride_x", "padding", "activation",
                                     "batch_normalize")} == dict(filters=32, size=3, stride=2, stride_x=2,
                                                                  padding=1, activation="leaky", batch_normalize=1)
    r3, r6 = spec.layers[3].attrs, spec.layers[6].attrs   # layers=-1 groups=2 group_id=1 / layers=-1,-2
    assert (r3["layers"], r3["groups"], r3["group_id"]) == ([2], 2, 1)
    assert r6["layers"] == [5, 4]
    yolos = [l for l in spec.layers if l.type == "yolo"]
    assert [y.attrs["mask"] for y in yolos] == [[3, 4, 5], [1, 2, 3]]
    y = yolos[0].attrs
    assert y["anchors"] == [10, 14, 23, 27, 37, 58, 81, 82, 135, 169, 344, 319]
    assert (y["num"], y["n"], y["classes"], y["scale_x_y"], y["iou_loss"]) == (6, 3, 80, 1.05, "ciou")


def test_darknet19_values():
    spec = project("darknet19.cfg")
    types = [l.type for l in spec.layers]
    assert types[-3:] == ["avgpool", "softmax", "cost"]
    mp = next(l.attrs for l in spec.layers if l.type == "maxpool")
    assert (mp["size"], mp["stride_x"], mp["padding"]) == (2, 2, 1)
    assert spec.layers[-1].attrs["type"] == "sse" and spec.options["max_crop"] == 448


def test_yolov2_values():
    spec = project("yolov2.cfg")
    assert (spec.width, spec.height, len(spec.layers)) == (416, 416, 32)
    assert [l.type for l in spec.layers[25:]] == ["route", "convolutional", "reorg", "route", "convolutional",
                                                  "convolutional", "region"]
    assert spec.layers[25].attrs["layers"] == [16] and spec.layers[28].attrs["layers"] == [27, 24]
    assert spec.layers[27].attrs["stride"] == 2 and spec.layers[27].attrs["reverse"] == 0
    r = spec.layers[31].attrs
    assert (r["classes"], r["coords"], r["num"], r["softmax"], r["thresh"]) == (80, 4, 5, 1, 0.6)
    assert r["anchors"] == [0.57273, 0.677385, 1.87446, 2.06253, 3.33843, 5.47434, 7.88282, 3.52778, 9.77052, 9.16828]


# ---------------------------------------------------------------- syntax

def test_comments_crlf_spaces():
    text = ("# header\r\n[net]\r\n; note\r\n width = 8 \r\nheight=8\r\nchan nels=2\r\n\r\n"
            "[ conv ]\r\nfilters = 4 # four\r\nsize=3\r\npad=1\r\nactivation = leaky\r\n")
    spec = parse_cfg_text(text, "x.cfg")
    assert (spec.width, spec.height, spec.channels) == (8, 8, 2)
    (l,) = spec.layers
    assert (l.index, l.type, l.line, l.path) == (0, "convolutional", 8, "x.cfg")
    assert (l.attrs["filters"], l.attrs["padding"], l.attrs["activation"]) == (4, 1, "leaky")


def test_types_and_defaults():
    a = layer("[convolutional]\nfilters=2.0\nsize=5\n")
    assert a["filters"] == 2 and isinstance(a["filters"], int)
    assert (a["activation"], a["padding"], a["stride_y"], a["angle"]) == ("logistic", 0, 1, 15.0)
    assert a["learning_rate"] == 1.0 and a["share_index"] == -1000000000
    assert isinstance(parse("").options["momentum"], float)
    assert parse("", net=NET + "decay=5e-4\n").options["decay"] == 0.0005


def test_duplicate_key_first_wins():
    spec = warns(NET + "[maxpool]\nsize=2\nsize=3\n", 7, "duplicate", "size")
    assert spec.layers[0].attrs["size"] == 2


def test_unknown_key_warns():
    spec = warns(NET + "[convolutional]\nfilters=4\nfliters=8\n", 7, "fliters", "[convolutional]")
    assert spec.layers[0].attrs["filters"] == 4


def test_aliases():
    assert SECTION_ALIASES["conv"] == "convolutional" and SECTION_ALIASES["network"] == "net"
    spec = parse("[conv]\n[max]\n[avg]\n[local_avg]\n[soft]\n[silence]\n[conn]\n",
                 net="[network]\nwidth=4\nheight=4\nchannels=1\n")
    assert [l.type for l in spec.layers] == ["convolutional", "maxpool", "avgpool", "local_avgpool",
                                             "softmax", "empty", "connected"]
    assert "mish" in ACTIVATIONS and "leaky" in ACTIVATIONS


def test_specs_are_dataclasses():
    spec = parse("[empty]\n")
    assert isinstance(spec, NetSpec) and isinstance(spec.layers[0], LayerSpec) and spec.path == "t.cfg"


# ---------------------------------------------------------------- resolution

def test_conv_padding_and_strides():
    a = layer("[convolutional]\nsize=5\npad=1\npadding=7\nstride_x=2\nstride=3\n")
    assert (a["padding"], a["pad"], a["stride_x"], a["stride_y"]) == (2, 1, 2, 3)
    assert layer("[convolutional]\nsize=5\npadding=7\n")["padding"] == 7
    assert layer("[convolutional]\nsize=1\ndilation=2\n")["dilation"] == 1   # darknet ignores it for 1x1


def test_pool_defaults():
    a = layer("[maxpool]\nstride=2\n")
    assert (a["size"], a["stride_x"], a["stride_y"], a["padding"]) == (2, 2, 2, 1)
    assert layer("[local_avgpool]\nsize=3\nstride=1\n")["padding"] == 2


def test_route_and_from_resolution():
    spec = parse("[conv]\n[conv]\n[conv]\n[route]\nlayers=-1, 0,-3\n[shortcut]\nfrom=-3,1\n"
                 "[scale_channels]\nfrom=-2\n[sam]\nfrom=0\n")
    assert spec.layers[3].attrs["layers"] == [2, 0, 0]
    assert spec.layers[4].attrs["from"] == [1, 1]
    assert spec.layers[5].attrs["from"] == [3] and spec.layers[6].attrs["from"] == [0]


def test_yolo_and_region():
    a = layer("[yolo]\nnum=3\nanchors=1,2,3,4,5,6\nclasses=2\n")
    assert (a["mask"], a["n"], a["anchors"], a["ignore_thresh"]) == ([0, 1, 2], 3, [1, 2, 3, 4, 5, 6], 0.5)
    r = layer("[region]\nnum=2\nclasses=3\n")
    assert (r["anchors"], r["coords"], r["softmax"]) == ([0.5] * 4, 4, 0)


def test_net_options():
    o = parse("", net=NET + "batch=64\nsubdivisions=16\npolicy=sgdr\nmax_batches=100\nsteps=10,20\n").options
    assert (o["inputs"], o["max_crop"], o["min_crop"], o["sgdr_cycle"]) == (3072, 64, 32, 100)
    assert (o["sequential_subdivisions"], o["scales"], o["seq_scales"]) == (16, [1.0, 1.0], [1.0, 1.0])
    o = parse("[connected]\noutput=2\n", net="[net]\ninputs=10\n").options
    assert (o["width"], o["height"], o["channels"], o["inputs"]) == (1, 1, 10, 10)


def test_misc_layers():
    assert layer("[upsample]\nstride=-2\n")["stride"] == -2
    assert layer("[reorg]\nstride=2\n")["reverse"] == 0
    assert layer("[dropout]\n")["probability"] == 0.2
    assert layer("[cost]\ntype=masked\n")["type"] == "masked"
    assert layer("[connected]\noutput=10\nactivation=relu\n")["output"] == 10


# ---------------------------------------------------------------- errors name file and line

def test_error_unknown_section():
    fails(NET + "[convolutional]\n[bogus]\n", 6, "unknown section", "bogus")


def test_error_unsupported_section():
    fails(NET + "[lstm]\n", 5, "layer type 'lstm' is not supported")
    fails(NET + "[normalization]\n", 5, "'lrn' is not supported")


def test_error_bad_int():
    fails(NET + "[convolutional]\nfilters=abc\n", 6, "filters", "int")
    fails(NET + "[convolutional]\nfilters=1.5\n", 6, "filters")
    fails(NET + "[yolo]\nanchors=1,x\n", 6, "anchors")


def test_error_route_out_of_range():
    fails(NET + "[conv]\n[conv]\n[conv]\n[route]\nlayers=-5\n", 9, "route index -5", "at layer 3")
    fails(NET + "[conv]\n[route]\nlayers=1\n", 7, "out of range at layer 1")
    fails(NET + "[conv]\n[route]\n", 6, "layers")   # required
    fails(NET + "[conv]\n[shortcut]\nfrom=-2\n", 7, "shortcut index -2")


def test_error_bad_activation():
    fails(NET + "[convolutional]\nactivation=Leaky\n", 6, "activation", "Leaky")


def test_error_yolo():
    fails(NET + "[yolo]\nnum=3\nanchors=1,2,3,4\n", 7, "anchors has 4 values", "needs 6")
    fails(NET + "[yolo]\nnum=3\nmask=0,3\n", 7, "mask entry 3")


def test_error_conv_values():
    fails(NET + "[convolutional]\nfilters=0\n", 6, "filters must be > 0")
    fails(NET + "[net]\n", 5, "first section")


def test_error_net():
    fails("[net]\nwidth=8\nheight=8\n", 1, "channels")
    fails("[convolutional]\n", 1, "first section must be [net]")
    fails(NET + "policy=fancy\n", 5, "policy", "fancy")


def test_error_text_before_section():
    fails("width=3\n[net]\n", 1, "before the first section")


def test_error_malformed_line():
    fails(NET + "[conv]\nfilters\n", 6, "key=value")


def test_error_missing_file(tmp_path):
    p = tmp_path / "nope.cfg"
    with pytest.raises(CfgError) as e:
        parse_cfg(p)
    assert (e.value.path, e.value.line) == (str(p), None) and "cannot read" in str(e.value)
    assert str(e.value).startswith(f"{p}: ")


@pytest.mark.parametrize("data,words", [
    ((NET + "[maxpool]\n").encode("utf-16"), ["UTF-16", "save it as UTF-8"]),    # Windows Notepad's "Unicode"
    (b"\x1f\x8b\x08\x00" + bytes(range(256)), ["not a text file", "byte offset 3 is a NUL"]),   # a gzip file
])
def test_error_file_that_is_not_text(tmp_path, data, words):
    p = tmp_path / "odd.cfg"
    p.write_bytes(data)
    with pytest.raises(CfgError) as e:
        parse_cfg(p)
    assert (e.value.path, e.value.line) == (str(p), None)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_error_empty_file(tmp_path):
    (tmp_path / "e.cfg").write_text("# nothing\n")
    with pytest.raises(CfgError):
        parse_cfg(tmp_path / "e.cfg")


# ---------------------------------------------------------------- options pydarknet does not compute
@pytest.mark.parametrize("section,option", [
    ("convolutional", "antialiasing=1"), ("convolutional", "xnor=1"), ("convolutional", "binary=1"),
    ("convolutional", "sway=1"), ("convolutional", "rotate=1"), ("convolutional", "stretch=1"),
    ("convolutional", "stretch_sway=1"), ("convolutional", "coordconv=1"), ("convolutional", "flipped=1"),
    ("convolutional", "assisted_excitation=0.5"), ("convolutional", "share_index=0"),
    ("maxpool", "antialiasing=1"), ("maxpool", "maxpool_zero_nonmax=1"),
])
def test_options_that_would_change_the_result_are_refused(section, option):
    key = option.split("=")[0]
    body = "[convolutional]\nfilters=4\nsize=3\n\n" + f"[{section}]\nsize=3\n{option}\n"
    fails(NET + body, NET.count("\n") + 7, f"[{section}]", key, "not supported")


def test_supported_sections_are_the_c_registry():
    """The parser accepts exactly the sections the C builder has a layer for."""
    from pydarknet._native import ffi, lib
    from pydarknet.cfg import SCHEMA, SUPPORTED_LAYERS

    registry = {ffi.string(lib.dn_layer_type_name(i)).decode() for i in range(lib.dn_num_layer_types())}
    assert lib.dn_layer_type_name(lib.dn_num_layer_types()) == ffi.NULL
    assert set(SUPPORTED_LAYERS) == registry
    assert set(SCHEMA) - {"net"} == registry
