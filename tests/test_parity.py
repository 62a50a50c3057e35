"""Parity with an independent implementation: OpenCV's darknet importer.

For each public model in the project's cfg/ (AlexeyAB/darknet's, unchanged):
seeded random weights are written in darknet's format by the project's script,
OpenCV (cv2.dnn.readNetFromDarknet, 4.x) and pydarknet run the same input, and
every layer output OpenCV exposes must agree to 1e-3 of that tensor's largest
magnitude (float32 sums over up to ~10^4 terms, a different summation order
and OpenCV's own kernels: about 1e-5 relative is what we see; 1e-3 leaves room
for deep nets). Decoded detections of every [yolo] and [region] head must
match OpenCV's decoding box for box.

[region] (yolov2, yolov2-tiny; they also have darknet's old [reorg], whose
output OpenCV reproduces and is compared like any layer): OpenCV's Region layer
outputs decoded boxes, not darknet's layer output, so the head is compared
through them. darknet's [region] output is cell-major, [B][H*W][num][5+classes]
(pydarknet's layer output has shape [B, H, W, num, 5+classes]): x, y, w, h raw,
the logistic on objectness, a softmax over the classes. Decoding it (x = (col +
sig(tx)) / W, w = exp(tw) * anchor_w / W, ...) must give OpenCV's boxes and
objectness for every cell and anchor, and objectness * class probability its
class scores. OpenCV always runs a per-class NMS at 0.4 on [region] output (the
cfg cannot turn it off), so the decoded detections are compared with
pydarknet's own NMS at 0.4.

resnet50 (pjreddie's) adds shortcuts across layers of different sizes, which
OpenCV refuses ('eltwise_layer ... inputs[vecIdx][j] == inputs[i][j]' at its
layer 17): its first 17 layers are compared with OpenCV, and every layer of
the whole network with a NumPy reference of that layer.
"""
import numpy as np
import pytest

import pydarknet
from conftest import randomize, random_input, model_cfg, data_image
import opencv_ref
from test_layers import conv_ref, bn_ref, pool_ref, ACT

ok, why = opencv_ref.opencv_available()
needs_cv = pytest.mark.skipif(not ok, reason=why)

# model -> input size used here (large nets smaller to keep CI quick)
MODELS = {
    "yolov3-tiny": 416,
    "yolov4-tiny": 416,
    "yolov7-tiny": 416,
    "yolov3": 160,
    "yolov4": 160,
    "darknet19": 224,
    "csdarknet53-omega": 128,
    "yolov2": 160,
    "yolov2-tiny": 224,
    "yolov4-csp": 128,
    "yolov3-spp": 160,
    "yolov4-tiny-3l": 160,
    "yolov3-tiny-prn": 224,
}
TOL = 1e-3
REGION_MODELS = ["yolov2", "yolov2-tiny"]
# detection models -> (class-score threshold, NMS threshold) of the decoded-detection test:
# [yolo] heads give independent logistic class scores, compared at 0.5 without NMS; a
# [region] head's softmax over 80 classes keeps scores near 1/80, and OpenCV always runs
# its NMS at 0.4 there
DETECTORS = {name: (0.5, 0.0) for name in ["yolov3-tiny", "yolov4-tiny", "yolov7-tiny", "yolov3", "yolov4",
                                          "yolov4-csp", "yolov3-spp", "yolov4-tiny-3l", "yolov3-tiny-prn"]}
DETECTORS.update({name: (0.02, 0.4) for name in REGION_MODELS})


def head_logits(net, conv):
    """The values a head's last convolution computes before its activation:
    its output when linear, else recomputed (float64) from its input."""
    a = conv.spec.attrs
    if a["activation"] == "linear":
        return conv.output
    assert not a["batch_normalize"]
    inp = net.layers[conv.index - 1].output.astype(np.float64)
    w = conv.params["weights"].reshape(a["filters"], inp.shape[1] // a["groups"], a["size"], a["size"])
    return conv_ref(inp, w.astype(np.float64), np.asarray(conv.params["biases"], np.float64),
                    a["stride_y"], a["stride_x"], a["padding"], 1, a["groups"])


def tame_heads(net, x):
    """Random weights make deep nets' activations large; scale each detection
    head's last convolution (whose output only feeds the head) so the head
    sees logits of a few units, as trained nets do, keeping exp() finite and
    a logistic head (new_coords=1: yolov4-csp, yolov7-tiny) out of saturation,
    where float32 rounding of logits ~1e5 would move its output."""
    heads = [l.index for l in net.layers if l.type in ("yolo", "region")]
    if not heads:
        return
    net.forward(x)
    for i in heads:
        conv = net.layers[i - 1]
        assert conv.type == "convolutional"
        spread = float(np.abs(head_logits(net, conv)).max())
        if spread > 3:
            conv.params["weights"][:] /= spread / 3
            conv.params["biases"][:] /= spread / 3


def image_input(size):
    import cv2

    img = cv2.imread(str(data_image("dog.jpg")))
    img = cv2.resize(img, (size, size))[:, :, ::-1].transpose(2, 0, 1) / 255.0
    return np.ascontiguousarray(img[None], dtype=np.float32)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """model -> (cfg path at the test size, weights path, pydarknet net, input)."""
    cache = {}

    def get(name):
        if name not in cache:
            size = MODELS[name]
            d = tmp_path_factory.mktemp(name)
            cfg = opencv_ref.cfg_with_size(model_cfg(name), size, size, d)
            net = pydarknet.load(cfg)
            x = image_input(size)
            randomize(net, seed=11)
            tame_heads(net, x)
            weights = d / f"{name}.weights"
            net.save_weights(weights)
            cache[name] = (cfg, weights, net, x)
        return cache[name]

    return get


def rel_err(got, want):
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


@needs_cv
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_layer_matches_opencv(prepared, name):
    cfg, weights, net, x = prepared(name)
    ref = opencv_ref.opencv_layer_outputs(cfg, weights, x)
    assert len(ref) >= 0.9 * len(net.layers) - len([l for l in net.layers if l.type in ("yolo", "cost")])
    net.forward(x)
    worst = {}
    for i, want in ref.items():
        got = net.layers[i].output.reshape(want.shape)
        worst[i] = rel_err(got, want)
    bad = {i: e for i, e in worst.items() if not e < TOL}
    assert not bad, f"layers beyond {TOL} relative error: {bad}"


@needs_cv
@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_decoded_detections_match_opencv(prepared, name):
    cfg, weights, net, x = prepared(name)
    thresh, nms = DETECTORS[name]
    ref = opencv_ref.opencv_detections(cfg, weights, x, thresh=thresh)
    want = []
    for rows in ref.values():
        for r in rows[0]:
            if r[4] > thresh:
                for k in np.nonzero(r[5:] > thresh)[0]:
                    want.append((int(k), float(r[5 + k]), *(float(v) for v in r[:4])))
    net.forward(x)
    size = net.width
    found = net._detections(0, size, size, thresh, nms, False)
    got = [(d.class_id, d.confidence, d.x / size, d.y / size, d.w / size, d.h / size) for d in found]
    assert len(want) > 5, "too few boxes above the threshold to compare"
    # boxes whose confidence sits within float rounding of the threshold may fall either side
    edge = lambda c: abs(c - thresh) < 1e-4
    want = sorted(w for w in want if not edge(w[1]))
    got = sorted(g for g in got if not edge(g[1]))
    assert len(got) == len(want)
    g, w = np.array(got), np.array(want)
    pairs = match_boxes(g, w)
    assert len(set(pairs.tolist())) == len(g), "boxes do not pair one to one"
    np.testing.assert_allclose(g[:, 1:], w[pairs, 1:], rtol=1e-4, atol=1e-5)


@needs_cv
@pytest.mark.parametrize("name", REGION_MODELS)
def test_region_output_matches_opencv(prepared, name):
    """darknet's [region] output, decoded here, against OpenCV's decoded rows."""
    cfg, weights, net, x = prepared(name)
    (i,) = [l.index for l in net.layers if l.type == "region"]
    head = net.layers[i]
    a = head.spec.attrs
    num, classes = a["num"], a["classes"]
    _, h, w = net.layers[i - 1].shape
    ref = opencv_ref.opencv_detections(cfg, weights, x, thresh=0.0)[i]  # [B, h*w*num, 5+classes]
    net.forward(x)
    out = head.output
    assert out.shape == (x.shape[0], h, w, num, 5 + classes)
    t = out.reshape(x.shape[0], h * w * num, 5 + classes).astype(np.float64)
    # row = (cy * w + cx) * num + n, in darknet's memory as in OpenCV's output
    cy, cx, n = (v.ravel() for v in np.meshgrid(np.arange(h), np.arange(w), np.arange(num), indexing="ij"))
    anchors = np.asarray(a["anchors"], np.float64).reshape(num, 2)
    sig = lambda v: 1 / (1 + np.exp(-v))
    box = np.stack([(cx + sig(t[..., 0])) / w, (cy + sig(t[..., 1])) / h,
                    np.exp(t[..., 2]) * anchors[n, 0] / w, np.exp(t[..., 3]) * anchors[n, 1] / h], axis=-1)
    np.testing.assert_allclose(box, ref[..., :4], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(t[..., 4], ref[..., 4], rtol=1e-4, atol=1e-6)   # logistic objectness
    probs = t[..., 5:]
    np.testing.assert_allclose(probs.sum(axis=-1), 1, atol=1e-5)              # softmax over the classes
    # OpenCV's class scores are objectness * probability, zeroed where its NMS (0.4, always on) drops them
    kept = ref[..., 5:] > 0
    assert kept.sum() > 0.05 * kept.size, "OpenCV kept too few class scores to compare"
    np.testing.assert_allclose((probs * t[..., 4:5])[kept], ref[..., 5:][kept], rtol=1e-4, atol=1e-7)


def match_boxes(g, w, window=1e-4):
    """For each row (class, conf, x, y, w, h) of g, the index of the row of w
    with the same class whose values are closest, among rows whose x is
    within `window` (rows sorted by class then x, searched by bisection)."""
    key = w[:, 0] * 10 + w[:, 2]  # x lies in (-1, 2): classes stay apart
    order = np.argsort(key)
    skey = key[order]
    out = np.empty(len(g), int)
    for i, row in enumerate(g):
        k = row[0] * 10 + row[2]
        lo, hi = np.searchsorted(skey, [k - window, k + window])
        cand = order[lo:hi]
        assert len(cand), f"no reference box near {row}"
        out[i] = cand[np.abs(w[cand] - row).max(axis=1).argmin()]
    return out


# ---------------------------------------------------------------- resnet50
@needs_cv
def test_resnet50_prefix_matches_opencv(tmp_path):
    cfg = opencv_ref.cfg_prefix(opencv_ref.cfg_with_size(model_cfg("resnet50"), 64, 64, tmp_path), 17, tmp_path)
    net = pydarknet.load(cfg)
    randomize(net, seed=5)
    weights = tmp_path / "r.weights"
    net.save_weights(weights)
    x = image_input(64)
    ref = opencv_ref.opencv_layer_outputs(cfg, weights, x)
    assert len(ref) >= 15
    net.forward(x)
    for i, want in ref.items():
        assert rel_err(net.layers[i].output, want) < TOL, i


def numpy_layer(net, layer, x):
    """NumPy reference of one resnet50 layer from its inputs' pydarknet outputs."""
    a, p = layer.spec.attrs, layer.params
    inp = x if layer.index == 0 else net.layers[layer.index - 1].output.astype(np.float64)
    if layer.type == "convolutional":
        c = inp.shape[1]
        w = p["weights"].reshape(a["filters"], c // a["groups"], a["size"], a["size"]).astype(np.float64)
        y = conv_ref(inp, w, np.zeros(a["filters"]), a["stride_y"], a["stride_x"], a["padding"], 1, a["groups"])
        if a["batch_normalize"]:
            y = bn_ref(y, p)
        return ACT[a["activation"]](y + np.asarray(p["biases"], np.float64)[None, :, None, None])
    if layer.type == "maxpool":
        return pool_ref(inp, a["size"], a["stride_y"], a["stride_x"], a["padding"], "max")
    if layer.type == "avgpool":
        return inp.mean(axis=(2, 3), keepdims=True)
    if layer.type == "shortcut":
        (j,) = a["from"]
        src = net.layers[j].output.astype(np.float64)
        out = inp.copy()
        s = max(src.shape[2] // out.shape[2], 1)
        c = min(src.shape[1], out.shape[1])
        out[:, :c] += src[:, :c, ::s, ::s]
        return ACT[a["activation"]](out)
    if layer.type == "softmax":
        e = np.exp(inp - inp.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if layer.type == "cost":
        return inp
    raise AssertionError(f"no reference for {layer.type}")


def test_resnet50_every_layer_matches_numpy(tmp_path):
    cfg = opencv_ref.cfg_with_size(model_cfg("resnet50"), 64, 64, tmp_path)
    net = pydarknet.load(cfg)
    randomize(net, seed=5)
    x = image_input(64).astype(np.float64)
    net.forward(x.astype(np.float32))
    sampled = 0
    for layer in net.layers:
        want = numpy_layer(net, layer, x)
        assert rel_err(layer.output, want) < TOL, (layer.index, layer.type)
        if layer.type == "shortcut":
            sampled += net.layers[layer.spec.attrs["from"][0]].shape != layer.shape
    assert sampled == 4
