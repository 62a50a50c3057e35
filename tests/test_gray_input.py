"""Networks of one channel take images grey, as darknet does for them
(load_image(path, 0, 0, net.c = 1), which OpenCV reads with
IMREAD_GRAYSCALE): paths are read grey, colour arrays become grey exactly as
OpenCV's cvtColor(BGR2GRAY) makes them, then darknet's resize, letterbox or
classifier crop runs on the one plane. References: OpenCV's own conversion
and decoder, and the NumPy version of darknet's resize in test_classifier."""
import cv2
import numpy as np
import pytest

import pydarknet
from pydarknet._native import ffi, lib
from pydarknet.cli import main
from conftest import randomize
from test_classifier import darknet_classifier_input, darknet_resize

DETECTOR = """[net]
width=48
height=32
channels=1
letter_box={letter_box}

[empty]

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
filters=21
size=1
activation=linear

[yolo]
mask=0,1,2
anchors=6,6, 12,12, 24,24
classes=2
num=3
"""


def colour_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def smooth_jpeg(path, h=60, w=90):
    """A colour JPEG whose grey decoding (IMREAD_GRAYSCALE takes the decoder's
    luma) differs from cvtColor of its colour decoding in some pixels."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1).astype(np.uint8)
    img = cv2.GaussianBlur(img, (5, 5), 0) ^ colour_image(h, w, 9) // 8
    cv2.imwrite(str(path), img)
    grey, colour = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert (grey != cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)).any()
    return str(path), grey


def input_of(net, img, bgr=1, letterbox=0):
    """The network input the C image functions make of img (layer 0 is [empty])."""
    h, w = img.shape[:2]
    ch = 1 if img.ndim == 2 else 3
    assert lib.dn_net_set_input_image(net._ptr, 0, ffi.from_buffer("uint8_t[]", img), w, h, ch, img.strides[0],
                                      bgr, letterbox) == lib.DN_OK
    assert lib.dn_net_forward_input(net._ptr) == lib.DN_OK
    return net.layers[0].output[0]


def test_colour_pixels_become_grey_as_opencv_makes_them(write_cfg):
    """No resizing (image and network 1024 x 1024): every value is OpenCV's grey / 255,
    for BGR and RGB order; a million random colours cover the rounding cases."""
    net = pydarknet.load(write_cfg("[net]\nwidth=1024\nheight=1024\nchannels=1\n[empty]\n"))
    img = colour_image(1024, 1024)
    want = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(input_of(net, img)[0], want)
    want = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(input_of(net, img, bgr=0)[0], want)


def letterboxed(plane, w, h):
    """darknet's letterbox_image of one plane: scaled to fit, centred on 0.5 grey."""
    ih, iw = plane.shape[1:]
    if w / iw < h / ih:
        nw, nh = w, ih * w // iw
    else:
        nw, nh = iw * h // ih, h
    out = np.full((1, h, w), 0.5, np.float32)
    out[:, (h - nh) // 2:(h - nh) // 2 + nh, (w - nw) // 2:(w - nw) // 2 + nw] = darknet_resize(plane, nw, nh)
    return out


@pytest.mark.parametrize("letterbox", [0, 1])
@pytest.mark.parametrize("grey_given", [False, True])
def test_grey_network_input_matches_darknet_resize(write_cfg, letterbox, grey_given):
    net = pydarknet.load(write_cfg(DETECTOR.format(letter_box=letterbox)))
    img = colour_image(60, 90, seed=2)
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    plane = (grey.astype(np.float32) / np.float32(255))[None]
    want = letterboxed(plane, 48, 32) if letterbox else darknet_resize(plane, 48, 32)
    # float32 sums of two or three products: a few ulps of values in 0..1
    np.testing.assert_allclose(input_of(net, grey if grey_given else img, letterbox=letterbox), want, atol=2e-6,
                               rtol=0)


def test_classifier_crop_of_a_grey_network(write_cfg):
    net = pydarknet.load(write_cfg("[net]\nwidth=16\nheight=16\nchannels=1\n[empty]\n"))
    img = colour_image(30, 50, seed=4)
    assert lib.dn_net_set_input_image_crop(net._ptr, 0, ffi.from_buffer("uint8_t[]", img), 50, 30, 3,
                                           img.strides[0], 1) == lib.DN_OK
    assert lib.dn_net_forward_input(net._ptr) == lib.DN_OK
    grey3 = np.repeat(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:, :, None], 3, axis=2)
    np.testing.assert_allclose(net.layers[0].output[0], darknet_classifier_input(grey3, 16, 16)[:1], atol=2e-6,
                               rtol=0)


def _rows(detections):
    return sorted((d.class_id, d.confidence, d.x, d.y, d.w, d.h) for d in detections)


@pytest.fixture
def grey_detector(write_cfg):
    net = pydarknet.load(write_cfg(DETECTOR.format(letter_box=0)), names=["cat", "dog"])
    randomize(net, seed=3)
    return net


def test_detect_reads_a_path_grey_as_darknet(grey_detector, tmp_path):
    """A path goes through IMREAD_GRAYSCALE (the decoder's grey, not cvtColor of its colour)."""
    net = grey_detector
    path, grey = smooth_jpeg(tmp_path / "a.jpg")
    from_path = net.detect(path, thresh=0.2)
    assert from_path and _rows(from_path) == _rows(net.detect(grey, thresh=0.2))
    np.testing.assert_array_equal(net.layers[0].output, input_of(net, grey)[None])
    colour = cv2.imread(path)
    assert _rows(net.detect_batch([colour], thresh=0.2)[0]) == _rows(
        net.detect(cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY), thresh=0.2))


def test_classify_a_grey_network(write_cfg, tmp_path):
    net = pydarknet.load(write_cfg("[net]\nwidth=16\nheight=16\nchannels=1\n[convolutional]\nfilters=3\nsize=3\n"
                                   "pad=1\nactivation=leaky\n[avgpool]\n[softmax]\n"), names=["a", "b", "c"])
    randomize(net, seed=5)
    path, grey = smooth_jpeg(tmp_path / "a.jpg")
    got = net.classify(path, top=3)
    assert [(c.class_id, c.probability) for c in got] == [(c.class_id, c.probability)
                                                          for c in net.classify(grey, top=3)]
    colour = cv2.imread(path)
    assert [(c.class_id, c.probability) for c in net.classify(colour, top=3)] == [
        (c.class_id, c.probability) for c in net.classify(cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY), top=3)]


def test_detector_test_command_on_a_grey_network(grey_detector, tmp_path, monkeypatch, capsys):
    """`detector test` reads the image grey for the network, prints what
    net.detect finds on it, and draws the boxes on a colour copy."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISPLAY", raising=False)
    net = grey_detector
    cfg = tmp_path / "grey.cfg"
    cfg.write_text(DETECTOR.format(letter_box=0))
    weights = tmp_path / "grey.weights"
    net.save_weights(weights)
    (tmp_path / "grey.names").write_text("cat\ndog\n")
    (tmp_path / "grey.data").write_text(f"classes=2\nnames={tmp_path / 'grey.names'}\n")
    path, grey = smooth_jpeg(tmp_path / "photo.jpg")
    want = [d for d in net.detect(grey, thresh=0.25) if d.confidence >= 0.25]
    assert want
    code = main(["detector", "test", str(tmp_path / "grey.data"), str(cfg), str(weights), path, "-dont_show"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert sorted(out[1:]) == sorted(f"{d.name}: {round(d.confidence * 100):.0f}%" for d in want)
    drawn = cv2.imread("predictions.jpg", cv2.IMREAD_UNCHANGED)
    assert drawn.shape == grey.shape + (3,)
