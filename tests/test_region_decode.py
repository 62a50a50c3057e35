"""[region] (YOLOv2) heads: the detections pydarknet decodes from the head's
output, which holds darknet's cell-major layout [B, H, W, num, 5 + classes]
(raw x, y, w, h; logistic objectness; softmax classes), equal darknet's
decoding of that layout done independently here in NumPy: get_region_box
(bx = (col + sigma(x)) / W, by = (row + sigma(y)) / H, bw = exp(w) * anchor_w / W,
bh likewise) and a class kept where objectness * p(class) > thresh."""
import numpy as np
import pytest

import pydarknet
from conftest import randomize

CFG = """[net]
width=64
height=48
channels=3

[convolutional]
filters=8
size=3
stride=2
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters={filters}
size=1
stride=1
activation=linear

[region]
anchors=1.1,0.9, 2.5,3.0, 0.6,1.7
classes=4
num=3
coords=4
softmax={softmax}
"""


def sigma(x):
    return 1 / (1 + np.exp(-x))


def numpy_region_decode(out, anchors, thresh, img_w, img_h):
    """(class, confidence, cx, cy, w, h) in image pixels, darknet's way, from one image's [H, W, num, 5+C]."""
    H, W, num, _ = out.shape
    found = []
    for n in range(num):
        for row in range(H):
            for col in range(W):
                p = out[row, col, n].astype(np.float64)
                box = ((col + sigma(p[0])) / W * img_w, (row + sigma(p[1])) / H * img_h,
                       np.exp(p[2]) * anchors[2 * n] / W * img_w, np.exp(p[3]) * anchors[2 * n + 1] / H * img_h)
                for k, prob in enumerate(p[4] * p[5:]):
                    if prob > thresh:
                        found.append((k, prob) + box)
    return sorted(found)


@pytest.mark.parametrize("softmax", [1, 0])
def test_region_detections_follow_darknets_decoding(write_cfg, softmax):
    net = pydarknet.load(write_cfg(CFG.format(filters=3 * 9, softmax=softmax)))
    randomize(net, seed=5)
    image = (np.random.default_rng(7).random((48, 64, 3)) * 255).astype(np.uint8)
    thresh = 0.05 if softmax else 0.2
    got = sorted((d.class_id, d.confidence, d.x, d.y, d.w, d.h)
                 for d in net.detect(image, thresh=thresh, nms=0, letterbox=False))
    head = net.layers[-1]
    out = head.output[0]
    assert out.shape == (12, 16, 3, 9)
    # the layout itself: objectness in 0..1, each cell's classes summing to one with softmax
    assert ((out[..., 4] > 0) & (out[..., 4] < 1)).all()
    if softmax:
        np.testing.assert_allclose(out[..., 5:].sum(axis=-1), 1, rtol=1e-5)
    want = numpy_region_decode(out, head.spec.attrs["anchors"], thresh, 64, 48)
    assert len(got) == len(want) > 20
    for g, w in zip(got, want):
        assert g[0] == w[0]
        # float32 decoding against float64: a few units in the last place of values up to ~100 pixels
        np.testing.assert_allclose(g[1:], w[1:], rtol=1e-5, atol=1e-4)
