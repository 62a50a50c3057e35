"""The Python API and the C builder's checks: shapes of the public models in cfg/,
predict/detect behaviour, errors mapped to cfg file and line, misuse of the
C API answered with a status instead of a crash."""
import os
import subprocess
import sys

import numpy as np
import pytest

import pydarknet
from pydarknet._native import DarknetError, ffi, lib
from conftest import randomize, random_input, model_cfg, data_image

# darknet's printed output shapes (c, h, w) for the public models in cfg/ at their cfg size:
# number of layers, then the output of each [yolo]/[region] head (or of the last layer), as
# AlexeyAB's darknet prints them (`darknet detector test cfg/coco.data cfg/<name>.cfg`; a
# head's shape is its input's). AlexeyAB's darknet refuses resnet50 (pjreddie's model: a
# [shortcut] across sizes fails an assertion in its parser).
SHAPES = {
    "yolov3-tiny": (24, [(255, 13, 13), (255, 26, 26)]),
    "yolov4-tiny": (38, [(255, 13, 13), (255, 26, 26)]),
    "yolov7-tiny": (99, [(255, 52, 52), (255, 26, 26), (255, 13, 13)]),
    "yolov3": (107, [(255, 13, 13), (255, 26, 26), (255, 52, 52)]),
    "yolov4": (162, [(255, 76, 76), (255, 38, 38), (255, 19, 19)]),
    "darknet19": (27, [(1000, 1, 1)]),
    "resnet50": (70, [(1000, 1, 1)]),
    "csdarknet53-omega": (108, [(1000, 1, 1)]),
    "yolov2": (32, [(425, 13, 13)]),
    "yolov2-tiny": (16, [(425, 13, 13)]),
    "yolov4-csp": (175, [(255, 64, 64), (255, 32, 32), (255, 16, 16)]),
    "yolov3-spp": (114, [(255, 19, 19), (255, 38, 38), (255, 76, 76)]),
    "yolov4-tiny-3l": (45, [(255, 19, 19), (255, 38, 38), (255, 76, 76)]),
    "yolov3-tiny-prn": (28, [(255, 13, 13), (255, 26, 26)]),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_public_models_build_with_darknets_shapes(name):
    net = pydarknet.load(model_cfg(name))
    n, outs = SHAPES[name]
    assert len(net.layers) == n
    assert [l.shape for l in net.output_layers] == outs


def test_yolov4_tiny_layer_shapes():
    net = pydarknet.load(model_cfg("yolov4-tiny"))
    # a few layers as darknet prints them: conv 0 is 208x208x32, route 3 takes half of layer 2
    assert net.layers[0].shape == (32, 208, 208)
    assert net.layers[3].type == "route" and net.layers[3].shape == (32, 104, 104)
    assert net.layers[9].type == "maxpool" and net.layers[9].shape == (128, 52, 52)


def test_yolov2_layer_shapes():
    net = pydarknet.load(model_cfg("yolov2"))
    # as darknet prints them: route 25 takes layer 16, the old reorg folds 26x26x64 into
    # 13x13x256, route 28 joins it with layer 24
    assert [(l.type, l.shape) for l in net.layers[24:]] == [
        ("convolutional", (1024, 13, 13)), ("route", (512, 26, 26)), ("convolutional", (64, 26, 26)),
        ("reorg", (256, 13, 13)), ("route", (1280, 13, 13)), ("convolutional", (1024, 13, 13)),
        ("convolutional", (425, 13, 13)), ("region", (425, 13, 13))]


SMALL = "[net]\nwidth=16\nheight=16\nchannels=3\n[convolutional]\nfilters=4\nsize=3\nstride=2\npad=1\nactivation=leaky\n"


def test_predict_accepts_chw_and_batches(write_cfg):
    net = pydarknet.load(write_cfg(SMALL))
    randomize(net, 1)
    x = random_input((3, 3, 16, 16))
    (batch,) = net.predict(x)
    assert batch.shape == (3, 4, 8, 8) and net.batch == 3
    (single,) = net.predict(x[1])
    assert single.shape == (1, 4, 8, 8)
    np.testing.assert_allclose(single[0], batch[1], rtol=1e-6, atol=1e-6)


def test_predict_rejects_wrong_shape(write_cfg):
    net = pydarknet.load(write_cfg(SMALL))
    with pytest.raises(ValueError, match=r"does not fit the network's \[B, 3, 16, 16\]"):
        net.predict(np.zeros((1, 3, 15, 16), np.float32))


def test_outputs_are_copies(write_cfg):
    net = pydarknet.load(write_cfg(SMALL))
    randomize(net, 2)
    (a,) = net.predict(random_input((1, 3, 16, 16), 1))
    keep = a.copy()
    net.predict(random_input((1, 3, 16, 16), 2))
    assert np.array_equal(a, keep)


def test_resize_changes_every_shape(write_cfg):
    net = pydarknet.load(write_cfg(SMALL + "[maxpool]\nsize=2\nstride=2\n"))
    net.resize(height=32, width=64)
    assert net.layers[1].shape == (4, 8, 16)


def test_portable_gemm_matches_blas(write_cfg, monkeypatch):
    cfg = write_cfg(SMALL.replace("filters=4", "filters=64") + "[convolutional]\nfilters=32\nsize=3\npad=1\n"
                    "stride=1\nactivation=linear\n")
    fast = pydarknet.load(cfg)
    monkeypatch.setenv("PYDARKNET_GEMM", "portable")
    slow = pydarknet.load(cfg)
    assert not slow.uses_blas
    assert fast.uses_blas == pydarknet.blas_available()
    randomize(fast, 3)
    randomize(slow, 3)
    x = random_input((2, 3, 16, 16))
    a, b = fast.predict(x)[0], slow.predict(x)[0]
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()


def test_blas_is_linked_and_found_without_library_path(tmp_path):
    # the build links OpenBLAS from scipy-openblas32; a fresh interpreter finds it by itself
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    out = subprocess.run([sys.executable, "-c", "import pydarknet; print(pydarknet.blas_available())"],
                         capture_output=True, text=True, env=env, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "True"


# ---------------------------------------------------------------- errors from the builder, with file and line
@pytest.mark.parametrize("body,line,message", [
    ("[convolutional]\nfilters=4\nsize=1\nactivation=linear\n[maxpool]\nsize=2\nstride=2\n"
     "[route]\nlayers=-1,-2\n", 12, r"routed layers must have the same size"),
    ("[convolutional]\nfilters=4\nsize=1\nactivation=linear\n[maxpool]\nsize=3\nstride=3\n[shortcut]\nfrom=-2\n",
     12, r"layer 0 is 4 x 16 x 16 but the input is 4 x 6 x 6"),
    ("[convolutional]\nfilters=20\nsize=1\nactivation=linear\n[yolo]\nmask=0,1\nanchors=1,1,2,2\nclasses=3\nnum=2\n",
     9, r"input has 20 channels; 2 anchors x \(5 \+ 3 classes\) = 16 needed"),
    ("[convolutional]\nfilters=4\nsize=17\nstride=1\nactivation=linear\n", 5, r"kernel 17 is larger"),
    ("[convolutional]\nfilters=5\nsize=1\ngroups=2\nactivation=linear\n", 5, r"groups=2 must divide"),
])
def test_shape_errors_name_file_and_line(write_cfg, body, line, message):
    path = write_cfg("[net]\nwidth=16\nheight=16\nchannels=3\n" + body.replace("[net]", ""))
    with pytest.raises(pydarknet.CfgError, match=message) as e:
        pydarknet.load(path)
    assert e.value.line == line and str(e.value).startswith(f"{path}:{line}: ")


def test_shortcut_of_other_size_builds_with_a_warning(write_cfg, caplog):
    # pjreddie's resnet cfgs add layers of different sizes (AlexeyAB's darknet refuses them)
    body = ("[convolutional]\nfilters=4\nsize=1\nactivation=linear\n[convolutional]\nfilters=8\nsize=1\nstride=2\n"
            "activation=linear\n[shortcut]\nfrom=-2\n")
    with caplog.at_level("WARNING", logger="pydarknet"):
        net = pydarknet.load(write_cfg("[net]\nwidth=16\nheight=16\nchannels=3\n" + body))
    assert net.layers[2].shape == (8, 8, 8)
    assert any("layer 0 of 4 x 16 x 16 is sampled onto the input of 8 x 8 x 8" in r.message for r in caplog.records)


def test_unreadable_image_is_reported_with_its_path(write_cfg, tmp_path):
    net = pydarknet.load(write_cfg(SMALL + "[convolutional]\nfilters=14\nsize=1\nactivation=linear\n"
                                   "[yolo]\nmask=0,1\nanchors=1,1,2,2\nclasses=2\nnum=2\n"))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DarknetError, match="broken.jpg: cannot read image"):
        net.detect(bad)
    with pytest.raises(ValueError, match="expected a uint8 image"):
        net.detect(np.zeros((4, 4, 3), np.float32))


def test_detect_needs_a_detection_head(write_cfg):
    net = pydarknet.load(write_cfg(SMALL))
    with pytest.raises(DarknetError, match=r"no \[yolo\] or \[region\] layer"):
        net.detect(np.zeros((10, 12, 3), np.uint8))


# ---------------------------------------------------------------- the C API refuses misuse with a status
def new_net(b=1, c=3, h=8, w=8):
    out = ffi.new("dn_net **")
    assert lib.dn_net_create(b, c, h, w, out) == lib.DN_OK
    return ffi.gc(out[0], lib.dn_net_free)


def err():
    return ffi.string(lib.dn_last_error()).decode()


def test_c_api_null_handles_and_bad_calls():
    null = ffi.NULL
    assert lib.dn_net_forward(null, null, 0) == lib.DN_ERR_ARG and "NULL" in err()
    assert lib.dn_net_add_layer(null, b"convolutional") == lib.DN_ERR_ARG
    assert lib.dn_net_set_ints(null, b"filters", null, 0) == lib.DN_ERR_ARG
    assert lib.dn_net_num_layers(null) == 0
    lib.dn_net_free(null)  # a no-op
    out = ffi.new("dn_net **")
    assert lib.dn_net_create(0, 3, 8, 8, out) == lib.DN_ERR_ARG and out[0] == null
    net = new_net()
    assert lib.dn_net_set_ints(net, b"filters", ffi.new("int[1]", [1]), 1) == lib.DN_ERR_STATE
    assert lib.dn_net_add_layer(net, b"lstm") == lib.DN_ERR_UNSUPPORTED and "unknown layer type 'lstm'" in err()
    assert lib.dn_net_finalize(net) == lib.DN_ERR_STATE and "no layers" in err()
    assert lib.dn_net_add_layer(net, b"convolutional") == lib.DN_OK
    assert lib.dn_net_end_layer(net) == lib.DN_ERR_ARG and "option 'filters' is missing" in err()
    assert lib.dn_net_add_layer(net, b"maxpool") == lib.DN_OK
    for k, v in dict(size=2, stride_x=2, stride_y=2, padding=1, maxpool_depth=0, out_channels=1).items():
        assert lib.dn_net_set_ints(net, k.encode(), ffi.new("int[1]", [v]), 1) == lib.DN_OK
    assert lib.dn_net_forward(net, ffi.new("float[]", 192), 192) == lib.DN_ERR_STATE
    assert lib.dn_net_end_layer(net) == lib.DN_OK
    assert lib.dn_net_finalize(net) == lib.DN_OK
    assert lib.dn_net_forward(net, ffi.new("float[]", 10), 10) == lib.DN_ERR_SHAPE and "192" in err()
    assert lib.dn_net_forward(net, ffi.new("float[]", 192), 192) == lib.DN_OK
    assert lib.dn_layer_shape(net, 5, null, null, null) == lib.DN_ERR_ARG and "out of range" in err()
    pix = ffi.new("uint8_t[]", 300)
    assert lib.dn_net_set_input_image(net, 0, pix, 10, 10, 3, 30, 1, 0) == lib.DN_OK
    assert lib.dn_net_set_input_image(net, 0, pix, 10, 10, 4, 40, 1, 0) == lib.DN_ERR_ARG
    assert lib.dn_net_set_input_image(net, 1, pix, 10, 10, 3, 30, 1, 0) == lib.DN_ERR_ARG
    assert lib.dn_net_set_input_image(net, 0, pix, 10, 10, 3, 20, 1, 0) == lib.DN_ERR_ARG
    found = ffi.new("int *")
    assert lib.dn_net_detections(net, 0, 10, 10, .5, .45, 0, null, 0, found) == lib.DN_ERR_STATE


def test_c_api_option_kinds_are_checked():
    net = new_net()
    assert lib.dn_net_add_layer(net, b"upsample") == lib.DN_OK
    assert lib.dn_net_set_string(net, b"stride", b"two") == lib.DN_OK
    lib.dn_net_set_floats(net, b"scale", ffi.new("float[1]", [1.0]), 1)
    assert lib.dn_net_end_layer(net) == lib.DN_ERR_ARG and "'stride' must be one integer" in err()
    assert lib.dn_net_num_layers(net) == 0
    assert lib.dn_net_add_layer(net, b"upsample") == lib.DN_OK  # the failed layer was discarded


def test_letterbox_image_input_matches_darknet_geometry(write_cfg):
    net = pydarknet.load(write_cfg("[net]\nwidth=32\nheight=32\nchannels=3\n[avgpool]\n"))
    img = np.full((8, 16, 3), 255, np.uint8)  # wide white image: 32x16 inside a grey 32x32 canvas
    pix = ffi.from_buffer("uint8_t[]", img)
    assert lib.dn_net_set_input_image(net._ptr, 0, pix, 16, 8, 3, 48, 1, 1) == lib.DN_OK
    assert lib.dn_net_forward_input(net._ptr) == lib.DN_OK
    # mean over the canvas: half white (1.0), half grey (0.5)
    np.testing.assert_allclose(net.layers[0].output.reshape(-1), 0.75, atol=1e-6)


def test_detect_on_a_photo_returns_typed_records():
    net = pydarknet.load(model_cfg("yolov3-tiny"), names=[f"c{i}" for i in range(80)])
    randomize(net, 0)
    dets = net.detect(str(data_image("dog.jpg")), thresh=0.3)
    assert dets and all(isinstance(d, pydarknet.Detection) for d in dets)
    confs = [d.confidence for d in dets]
    assert confs == sorted(confs, reverse=True) and min(confs) > 0.3
    d = dets[0]
    assert d.name == f"c{d.class_id}" and d.left < d.right and d.top < d.bottom
