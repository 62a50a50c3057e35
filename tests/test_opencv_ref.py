"""Tests of the OpenCV reference harness (tests/opencv_ref.py) itself.

They check the harness against NumPy re-implementations of darknet's formulas on tiny
hand-made cfgs, and its layer-name mapping against the public cfgs in the project's cfg/.  They do not import
pydarknet.  Skipped when cv2 is missing or is OpenCV >= 5 (no darknet importer).
"""

import os
import re
import sys

import numpy as np
import pytest

try:
    from tests import opencv_ref as ref
except ImportError:  # tests/ is not a package: import from this directory
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import opencv_ref as ref

_OK, _WHY = ref.opencv_available()
pytestmark = pytest.mark.skipif(not _OK, reason=_WHY)

if _OK:
    import cv2

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _project_cfg(name):
    """cfg/<name> of the checkout; a missing file fails the test."""
    path = os.path.join(_REPO, "cfg", name)
    if not os.path.isfile(path):
        pytest.fail("model file %s is missing from the checkout" % path)
    return path


def _write_cfg(path, net, layers):
    """net: dict of [net] options; layers: list of (type, dict)."""
    lines = ["[net]"] + ["%s=%s" % kv for kv in net.items()] + [""]
    for stype, opts in layers:
        lines += ["[%s]" % stype] + ["%s=%s" % kv for kv in opts.items()] + [""]
    with open(path, "w") as fh:
        fh.write("\n".join(lines))
    return str(path)


def _write_weights(path, arrays, major=0, minor=2):
    with open(path, "wb") as fh:
        np.array([major, minor, 5], np.int32).tofile(fh)
        if major * 10 + minor >= 2:
            np.array([0], np.uint64).tofile(fh)
        else:
            np.array([0], np.uint32).tofile(fh)
        for a in arrays:
            np.asarray(a, np.float32).ravel().tofile(fh)
    return str(path)


def _random_weights(cfg_path, path, rng):
    """Random but well-scaled weights for any cfg, laid out as OpenCV reads them."""
    arrays = []
    for e in ref.opencv_weights_layout(cfg_path):
        f = e["filters"]
        fan_in = e["weights"] // f
        arrays.append(rng.normal(0, 0.1, f))
        if e["batch_normalize"]:
            arrays += [rng.uniform(0.5, 1.5, f), rng.normal(0, 0.1, f), rng.uniform(0.5, 1.5, f)]
        arrays.append(rng.normal(0, np.sqrt(2.0 / fan_in), e["weights"]))
    return _write_weights(path, arrays)


# ----------------------------------------------------------------- NumPy references


def _np_conv(x, w, b, stride, pad, groups=1):
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    batch, _, h, wd = x.shape
    filters, cg, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho = (h + 2 * pad - k) // stride + 1
    wo = (wd + 2 * pad - k) // stride + 1
    out = np.zeros((batch, filters, ho, wo))
    fg = filters // groups
    for g in range(groups):
        for dy in range(k):
            for dx in range(k):
                patch = xp[:, g * cg : (g + 1) * cg, dy : dy + stride * ho : stride, dx : dx + stride * wo : stride]
                out[:, g * fg : (g + 1) * fg] += np.einsum("bchw,fc->bfhw", patch, w[g * fg : (g + 1) * fg, :, dy, dx])
    return out + b.astype(np.float64)[None, :, None, None]


def _np_maxpool(x, size, stride, padding):
    """Darknet maxpool: out = (h + padding - size) / stride + 1, window starts at -padding/2."""
    batch, c, h, w = x.shape
    ho = (h + padding - size) // stride + 1
    wo = (w + padding - size) // stride + 1
    off = -(padding // 2)
    out = np.full((batch, c, ho, wo), -np.inf, np.float32)
    for y in range(ho):
        for xx in range(wo):
            for n in range(size):
                for m in range(size):
                    iy, ix = off + y * stride + n, off + xx * stride + m
                    if 0 <= iy < h and 0 <= ix < w:
                        out[:, :, y, xx] = np.maximum(out[:, :, y, xx], x[:, :, iy, ix])
    return out


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v.astype(np.float64)))


# ----------------------------------------------------------------- mapping


def test_mapping_yolov4_tiny_covers_every_conv_layer():
    cfg = _project_cfg("yolov4-tiny.cfg")
    sections = ref.read_cfg_sections(cfg)[1:]
    mapping = ref.opencv_mapping(cfg)
    for i, (stype, opts) in enumerate(sections):
        if stype == "convolutional":
            act = opts.get("activation", "linear")
            want = "conv_%d" % i if act == "linear" else "%s_%d" % (act, i + 1)
            assert mapping[i] == want, (i, mapping.get(i), want)
    assert {3: "slice_3", 6: "concat_6", 9: "pool_9", 31: "identity_31", 33: "upsample_33"}.items() <= mapping.items()
    yolo = [i for i, (t, _) in enumerate(sections) if t == "yolo"]
    assert yolo == [30, 37]
    assert not set(yolo) & set(mapping)
    assert ref.opencv_yolo_layers(cfg) == {
        30: {"region": "yolo_30", "input": "conv_29", "input_index": 29},
        37: {"region": "yolo_37", "input": "conv_36", "input_index": 36},
    }
    with_input = ref.opencv_mapping(cfg, yolo="input")
    assert with_input[30] == "conv_29" and with_input[37] == "conv_36"


@pytest.mark.parametrize(
    "name",
    [
        "yolov3-tiny.cfg",
        "yolov4-tiny.cfg",
        "yolov3.cfg",
        "yolov4.cfg",
        "yolov7-tiny.cfg",
        "darknet19.cfg",
        "resnet50.cfg",
        "csdarknet53-omega.cfg",
        "yolov2.cfg",
        "yolov2-tiny.cfg",
        "yolov4-csp.cfg",
        "yolov3-spp.cfg",
        "yolov4-tiny-3l.cfg",
        "yolov3-tiny-prn.cfg",
    ],
)
def test_mapping_covers_public_cfgs(name):
    cfg = _project_cfg(name)
    sections = ref.read_cfg_sections(cfg)[1:]
    mapping = ref.opencv_mapping(cfg)
    expected = {i for i, (t, _) in enumerate(sections) if t not in ("yolo", "region", "cost")}
    assert set(mapping) == expected
    assert len(set(mapping.values())) == len(mapping)


def test_mapping_matches_opencv_graph_edges(tmp_path):
    """Each darknet layer's first OpenCV layer reads exactly the mapped outputs darknet says
    it reads (previous layer, route `layers`, shortcut `from`)."""
    cfg = ref.cfg_with_size(_project_cfg("yolov4-tiny.cfg"), 64, 64, str(tmp_path))
    weights = _random_weights(cfg, tmp_path / "w.weights", np.random.default_rng(0))
    net = ref.opencv_net(cfg, weights)
    net.setInput(np.zeros((1, 3, 64, 64), np.float32))
    edges = {}
    for a, b in re.findall(r'"([^"]+)" -> "([^"]+)"', net.dump()):
        edges.setdefault(b, set()).add(a)
    groups = ref._opencv_groups(cfg)

    def out(j):
        return "_input" if j < 0 else groups[j][-1]

    for i, (stype, opts) in enumerate(ref.read_cfg_sections(cfg)[1:]):
        if stype == "route":
            srcs = [int(v) for v in opts["layers"].split(",")]
            want = {out(s if s >= 0 else i + s) for s in srcs}
        elif stype == "shortcut":
            s = int(opts["from"])
            want = {out(i - 1), out(s if s >= 0 else i + s)}
        else:
            want = {out(i - 1)}
        assert edges.get(groups[i][0]) == want, (i, stype, groups[i])
        for a, b in zip(groups[i], groups[i][1:]):
            # a Region layer also reads the network input (to normalise box sizes)
            extra = {"_input"} if stype in ("yolo", "region") and b == groups[i][-1] else set()
            assert edges.get(b) == {a} | extra, (i, stype, b)


def test_resnet50_shortcut_across_sizes_is_refused(tmp_path):
    full = _project_cfg("resnet50.cfg")
    sized = ref.cfg_with_size(full, 64, 64, str(tmp_path))
    x = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    cfg18 = ref.cfg_prefix(sized, 18, str(tmp_path))
    weights = _random_weights(cfg18, tmp_path / "r18.weights", np.random.default_rng(1))
    with pytest.raises(cv2.error, match="eltwise_layer"):
        ref.opencv_layer_outputs(cfg18, weights, x)
    cfg17 = ref.cfg_prefix(sized, 17, str(tmp_path))
    out = ref.opencv_layer_outputs(cfg17, weights, x)  # trailing weights are ignored
    assert sorted(out) == list(range(17))
    assert out[16].shape == (1, 512, 8, 8)


# ----------------------------------------------------------------- numerics


def test_two_linear_convs_match_numpy(tmp_path):
    rng = np.random.default_rng(1)
    cfg = _write_cfg(
        tmp_path / "c.cfg",
        {"width": 7, "height": 9, "channels": 3},
        [
            ("convolutional", {"filters": 4, "size": 3, "stride": 1, "pad": 1, "activation": "linear"}),
            ("convolutional", {"filters": 6, "size": 3, "stride": 2, "pad": 1, "groups": 2, "activation": "linear"}),
        ],
    )
    b0, w0 = rng.normal(size=4), rng.normal(size=(4, 3, 3, 3))
    b1, w1 = rng.normal(size=6), rng.normal(size=(6, 2, 3, 3))
    weights = _write_weights(tmp_path / "c.weights", [b0, w0, b1, w1])
    x = rng.random((2, 3, 9, 7), dtype=np.float32)

    assert ref.opencv_mapping(cfg) == {0: "conv_0", 1: "conv_1"}
    out = ref.opencv_layer_outputs(cfg, weights, x)
    y0 = _np_conv(x, w0, b0, 1, 1)
    y1 = _np_conv(out[0], w1, b1, 2, 1, groups=2)
    assert out[0].dtype == np.float32 and out[0].shape == (2, 4, 9, 7)
    assert out[1].shape == (2, 6, 5, 4)
    np.testing.assert_allclose(out[0], y0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1], y1, rtol=1e-5, atol=1e-5)
    # thread count and Winograd do not change the (direct-convolution) result materially
    again = ref.opencv_layer_outputs(cfg, weights, x, threads=2, winograd=True)
    np.testing.assert_allclose(again[1], out[1], rtol=1e-4, atol=1e-4)


def test_conv_batchnorm_leaky_matches_darknet_formula(tmp_path):
    rng = np.random.default_rng(2)
    f = 5
    cfg = _write_cfg(
        tmp_path / "bn.cfg",
        {"width": 6, "height": 6, "channels": 2},
        [("convolutional", {"batch_normalize": 1, "filters": f, "size": 3, "stride": 1, "pad": 1, "activation": "leaky"})],
    )
    bias = rng.normal(size=f)
    scale = rng.uniform(0.5, 1.5, f)
    mean = rng.normal(0, 0.1, f)
    var = np.array([1e-5, 1e-4, 1e-3, 0.3, 2.0])  # small variances make epsilon visible
    w = rng.normal(size=(f, 2, 3, 3)) * 0.01
    weights = _write_weights(tmp_path / "bn.weights", [bias, scale, mean, var, w])
    x = rng.random((1, 2, 6, 6), dtype=np.float32)

    conv = _np_conv(x, w, np.zeros(f), 1, 1)

    def darknet(eps):
        y = (conv - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + eps)
        y = y * scale[None, :, None, None] + bias[None, :, None, None]
        return y, np.where(y > 0, y, 0.1 * y)

    pre, post = darknet(1e-5)
    assert ref.opencv_mapping(cfg) == {0: "leaky_1"}
    out = ref.opencv_layer_outputs(cfg, weights, x)
    np.testing.assert_allclose(out[0], post, rtol=2e-5, atol=2e-5)

    # intermediate names give unfused values (fusion is disabled), even requested alone
    net = ref.opencv_net(cfg, weights)
    net.setInput(x)
    np.testing.assert_allclose(net.forward("bn_0"), pre, rtol=2e-5, atol=2e-5)
    net.setInput(x)
    np.testing.assert_allclose(net.forward("conv_0"), conv, rtol=1e-5, atol=1e-5)

    # OpenCV's own batch norm uses epsilon 1e-6, visibly different for small variances
    native = ref.opencv_layer_outputs(cfg, weights, x, darknet_bn_eps=False)
    np.testing.assert_allclose(native[0], darknet(1e-6)[1], rtol=2e-5, atol=2e-5)
    assert not np.allclose(native[0], post, rtol=1e-3, atol=1e-3)


def test_maxpool_and_upsample_match_numpy(tmp_path):
    cfg = _write_cfg(
        tmp_path / "p.cfg",
        {"width": 10, "height": 11, "channels": 3},
        [
            ("maxpool", {"size": 2, "stride": 2}),  # 11x10 -> 6x5 (padding defaults to size-1)
            ("maxpool", {"size": 2, "stride": 1}),  # yolov3-tiny style, keeps 6x5
            ("maxpool", {"size": 3, "stride": 2}),  # -> 3x3
            ("upsample", {"stride": 2}),  # -> 6x6
            ("maxpool", {"size": 5, "stride": 1, "padding": 4}),  # SPP style, keeps 6x6
        ],
    )
    weights = _write_weights(tmp_path / "p.weights", [])
    x = np.random.default_rng(3).random((2, 3, 11, 10), dtype=np.float32)
    out = ref.opencv_layer_outputs(cfg, weights, x)
    assert ref.opencv_mapping(cfg) == {0: "pool_0", 1: "pool_1", 2: "pool_2", 3: "upsample_3", 4: "pool_4"}
    y0 = _np_maxpool(x, 2, 2, 1)
    y1 = _np_maxpool(y0, 2, 1, 1)
    y2 = _np_maxpool(y1, 3, 2, 2)
    y3 = y2.repeat(2, axis=2).repeat(2, axis=3)
    y4 = _np_maxpool(y3, 5, 1, 4)
    for i, y in enumerate([y0, y1, y2, y3, y4]):
        assert out[i].shape == y.shape, (i, out[i].shape, y.shape)
        np.testing.assert_array_equal(out[i], y)


@pytest.mark.parametrize("new_coords", [0, 1])
def test_yolo_detections_layout(tmp_path, new_coords):
    """Documents OpenCV's decoded [yolo] output: rows (cell, anchor), cx cy w h obj cls*obj."""
    rng = np.random.default_rng(4 + new_coords)
    classes, mask, sxy = 3, [1, 2], 1.1 if not new_coords else 2.0
    anchors = [10, 14, 23, 27, 37, 58]
    A = len(mask)
    width, height = 96, 64
    cfg = _write_cfg(
        tmp_path / "y.cfg",
        {"width": width, "height": height, "channels": 3},
        [
            ("convolutional", {"filters": 8, "size": 3, "stride": 8, "pad": 1, "activation": "leaky"}),
            ("convolutional", {"filters": A * (5 + classes), "size": 1, "stride": 1, "pad": 1,
                               "activation": "logistic" if new_coords else "linear"}),
            ("yolo", {"mask": ",".join(map(str, mask)), "anchors": ",".join(map(str, anchors)),
                      "classes": classes, "num": 3, "scale_x_y": sxy, "new_coords": new_coords}),
        ],
    )
    weights = _write_weights(
        tmp_path / "y.weights",
        [rng.normal(0, 0.1, 8), rng.normal(0, 0.5, (8, 3, 3, 3)),
         rng.normal(0, 0.5, A * (5 + classes)), rng.normal(0, 0.5, (A * (5 + classes), 8))],
    )
    x = rng.random((2, 3, height, width), dtype=np.float32)

    raw = ref.opencv_layer_outputs(cfg, weights, x, layers=[1])[1]  # [B, A*(5+C), h, w]
    dets = ref.opencv_detections(cfg, weights, x)
    assert list(dets) == [2]
    det = dets[2]
    b, _, h, w = raw.shape
    assert (h, w) == (8, 12) and det.shape == (b, h * w * A, 5 + classes)

    t = raw.reshape(b, A, 5 + classes, h, w).astype(np.float64)
    gy, gx = np.mgrid[0:h, 0:w]
    act = t if new_coords else _sigmoid(t)
    cx = (gx + act[:, :, 0] * sxy - 0.5 * (sxy - 1)) / w
    cy = (gy + act[:, :, 1] * sxy - 0.5 * (sxy - 1)) / h
    aw = np.array([anchors[2 * m] for m in mask])[None, :, None, None]
    ah = np.array([anchors[2 * m + 1] for m in mask])[None, :, None, None]
    if new_coords:
        bw, bh = (2 * t[:, :, 2]) ** 2 * aw / width, (2 * t[:, :, 3]) ** 2 * ah / height
    else:
        bw, bh = np.exp(t[:, :, 2]) * aw / width, np.exp(t[:, :, 3]) * ah / height
    obj = act[:, :, 4]
    cls = act[:, :, 5:] * obj[:, :, None]
    cols = [cx, cy, bw, bh, obj] + [cls[:, :, k] for k in range(classes)]
    want = np.stack(cols, axis=-1)  # [B, A, h, w, 5+C]
    want = want.transpose(0, 2, 3, 1, 4).reshape(b, h * w * A, 5 + classes)  # row = (y*w+x)*A+a
    np.testing.assert_allclose(det, want, rtol=1e-5, atol=1e-6)

    # OpenCV's cfg defaults (thresh 0.2, no NMS) zero class scores <= 0.2, nothing else
    default = ref.opencv_detections(cfg, weights, x, thresh=None, nms_threshold=None)[2]
    np.testing.assert_array_equal(default[..., :5], det[..., :5])
    np.testing.assert_array_equal(default[..., 5:], np.where(det[..., 5:] > 0.2, det[..., 5:], 0))


def _np_reorg_old(x, stride):
    """darknet's [reorg] (AlexeyAB's reorg_old layer, pjreddie's reorg): reorg_cpu(input, w, h,
    c, batch, stride, forward=0, output) with the input's w, h, c, index for index."""
    b, c, h, w = x.shape
    out_c = c // (stride * stride)
    k, j, i = (v.ravel() for v in np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij"))
    c2, offset = k % out_c, k // out_c
    w2, h2 = i * stride + offset % stride, j * stride + offset // stride
    in_index = i + w * (j + h * k)
    out_index = w2 + w * stride * (h2 + h * stride * c2)
    flat = x.reshape(b, -1)
    out = np.empty_like(flat)
    out[:, in_index] = flat[:, out_index]
    return out.reshape(b, c * stride * stride, h // stride, w // stride)


def test_reorg_matches_darknets_old_reorg(tmp_path):
    cfg = _write_cfg(tmp_path / "r.cfg", {"width": 8, "height": 6, "channels": 8}, [("reorg", {"stride": 2})])
    weights = _write_weights(tmp_path / "r.weights", [])
    x = np.random.default_rng(6).random((2, 8, 6, 8), dtype=np.float32)
    out = ref.opencv_layer_outputs(cfg, weights, x)
    assert ref.opencv_mapping(cfg) == {0: "reorg_0"}
    want = _np_reorg_old(x, 2)
    assert out[0].shape == (2, 32, 3, 4)
    np.testing.assert_array_equal(out[0], want)
    # not a space-to-depth: darknet's reorg reads its input as if it were [c/4, 2h, 2w]
    assert not np.array_equal(want, x.reshape(2, 8, 3, 2, 4, 2).transpose(0, 3, 5, 1, 2, 4).reshape(2, 32, 3, 4))


def _np_nms(boxes, scores, thresh, nms):
    """Greedy NMS of one class: indices kept, by decreasing score, among scores > thresh."""
    x0, y0 = boxes[:, 0] - boxes[:, 2] / 2, boxes[:, 1] - boxes[:, 3] / 2
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    kept = []
    for i in sorted(np.nonzero(scores > thresh)[0], key=lambda i: -scores[i]):
        iw = np.clip(np.minimum(x1[i], x1[kept]) - np.maximum(x0[i], x0[kept]), 0, None)
        ih = np.clip(np.minimum(y1[i], y1[kept]) - np.maximum(y0[i], y0[kept]), 0, None)
        inter = iw * ih
        iou = inter / (boxes[i, 2] * boxes[i, 3] + boxes[kept, 2] * boxes[kept, 3] - inter)
        if not (iou > nms).any():
            kept.append(i)
    return kept


def test_region_detections_layout(tmp_path):
    """Documents OpenCV's decoded [region] output: rows (cell, anchor), cx cy w h obj
    softmax*obj, class scores zeroed by a per-class NMS at 0.4 that the cfg cannot turn off."""
    rng = np.random.default_rng(7)
    classes, num, anchors = 3, 2, [0.6, 0.7, 1.9, 2.1]
    cfg = _write_cfg(
        tmp_path / "r.cfg",
        {"width": 48, "height": 48, "channels": 3},
        [
            ("convolutional", {"filters": num * (5 + classes), "size": 3, "stride": 8, "pad": 1,
                               "activation": "linear"}),
            ("region", {"anchors": ",".join(map(str, anchors)), "classes": classes, "coords": 4, "num": num,
                        "softmax": 1, "thresh": 0.6}),
        ],
    )
    weights = _write_weights(
        tmp_path / "r.weights", [rng.normal(0, 0.5, num * (5 + classes)), rng.normal(0, 0.5, (num * (5 + classes), 3, 3, 3))]
    )
    x = rng.random((2, 3, 48, 48), dtype=np.float32)
    raw = ref.opencv_layer_outputs(cfg, weights, x, layers=[0])[0]  # [B, num*(5+C), h, w]
    assert ref.opencv_yolo_layers(cfg) == {1: {"region": "detection_out", "input": "conv_0", "input_index": 0}}
    det = ref.opencv_detections(cfg, weights, x)[1]
    b, _, h, w = raw.shape
    assert (h, w) == (6, 6) and det.shape == (b, h * w * num, 5 + classes)

    t = raw.reshape(b, num, 5 + classes, h, w).astype(np.float64).transpose(0, 3, 4, 1, 2)  # [B, h, w, num, 5+C]
    t = t.reshape(b, h * w * num, 5 + classes)  # row = (y*w+x)*num+n
    gy, gx, n = (v.ravel() for v in np.meshgrid(np.arange(h), np.arange(w), np.arange(num), indexing="ij"))
    an = np.array(anchors).reshape(num, 2)
    obj = _sigmoid(t[..., 4])
    e = np.exp(t[..., 5:] - t[..., 5:].max(axis=-1, keepdims=True))
    cls = e / e.sum(axis=-1, keepdims=True) * obj[..., None]
    box = np.stack([(gx + _sigmoid(t[..., 0])) / w, (gy + _sigmoid(t[..., 1])) / h,
                    np.exp(t[..., 2]) * an[n, 0] / w, np.exp(t[..., 3]) * an[n, 1] / h], axis=-1)
    np.testing.assert_allclose(det[..., :4], box, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(det[..., 4], obj, rtol=1e-5, atol=1e-6)
    for thresh in (0.0, 0.05):
        det = ref.opencv_detections(cfg, weights, x, thresh=thresh)[1]
        n_kept = 0
        for i in range(b):
            for k in range(classes):
                want = np.zeros(h * w * num)
                kept = _np_nms(box[i], cls[i, :, k], thresh, 0.4)
                want[kept] = cls[i, kept, k]
                n_kept += len(kept)
                np.testing.assert_allclose(det[i, :, 5 + k], want, rtol=1e-5, atol=1e-6)
        assert 0 < n_kept < (cls > thresh).sum()  # the NMS removed some scores and kept some


# ----------------------------------------------------------------- helpers and errors


def test_cfg_with_size_changes_only_net_size(tmp_path):
    src = _project_cfg("yolov4-tiny.cfg")
    path = ref.cfg_with_size(src, 160, 96, str(tmp_path))
    a, b = ref.read_cfg_sections(src), ref.read_cfg_sections(path)
    assert b[0][1]["width"] == "160" and b[0][1]["height"] == "96"
    assert {k: v for k, v in a[0][1].items() if k not in ("width", "height")} == {
        k: v for k, v in b[0][1].items() if k not in ("width", "height")
    }
    assert a[1:] == b[1:]
    with open(src) as fa, open(path) as fb:
        diff = [(p, q) for p, q in zip(fa.read().splitlines(), fb.read().splitlines()) if p != q]
    assert len(diff) == 2 and all(re.match(r"(width|height)=", q) for _, q in diff)


def test_input_and_weights_are_checked(tmp_path):
    cfg = _write_cfg(
        tmp_path / "c.cfg",
        {"width": 4, "height": 4, "channels": 1},
        [("convolutional", {"filters": 2, "size": 1, "stride": 1, "pad": 0, "activation": "linear"}),
         ("cost", {})],
    )
    short = _write_weights(tmp_path / "short.weights", [np.ones(3)])  # needs 2 + 2
    x = np.ones((1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="needs"):
        ref.opencv_layer_outputs(cfg, short, x)
    good = _write_weights(tmp_path / "good.weights", [np.ones(2), np.ones(2)], major=0, minor=1)
    with pytest.raises(ValueError, match="expects"):
        ref.opencv_layer_outputs(cfg, good, np.ones((1, 1, 8, 8), np.float32))
    with pytest.raises(KeyError):
        ref.opencv_layer_outputs(cfg, good, x, layers=[1])  # [cost]: not mapped
    out = ref.opencv_layer_outputs(cfg, good, x)  # old header (uint32 seen) is handled
    assert list(out) == [0]
    np.testing.assert_array_equal(out[0], np.full((1, 2, 4, 4), 2.0, np.float32))
