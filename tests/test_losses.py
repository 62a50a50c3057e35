"""The loss heads: [yolo], [region], [softmax] with truths, [cost].

Values: each loss against a NumPy reference written from darknet's
forward_*_layer (float64), which also yields darknet's step (its delta)
where that step is the gradient of our loss (mse boxes, objectness, classes),
so there the layer's gradient must equal minus darknet's delta. Gradients:
the shared finite-difference check at every input coordinate. Inputs are
chosen so no IoU or probability compared with a threshold lies within 0.02 of
it (asserted through the references' margins), away from where a finite
difference could flip a decision."""
from dataclasses import replace

import numpy as np
import pytest

import pydarknet
from gradcheck import check_gradients, delta
from pydarknet._native import check, ffi, lib
from pydarknet.cfg import parse_cfg
from pydarknet.network import Network

MARGIN = 0.02  # of an IoU or a probability from a threshold; of an IoU's kink, in logit units


def sig(x):
    return 1 / (1 + np.exp(-x))


def softplus(x):
    return np.logaddexp(0, x)


def build(write_cfg, body, c, h, w, batch=2):
    net = pydarknet.load(write_cfg(f"[net]\nwidth={w}\nheight={h}\nchannels={c}\n" + body), batch=batch)
    net.enable_training()
    return net


def train_forward(net, x, truth=None):
    """A training forward pass: (loss, gradient kept by the last layer)."""
    x = np.ascontiguousarray(x, np.float32)
    t = None if truth is None else np.ascontiguousarray(truth, np.float32).reshape(-1)
    check(lib.dn_net_forward_train(net._ptr, ffi.from_buffer("float[]", x), x.size,
                                   ffi.NULL if t is None else ffi.from_buffer("float[]", t), 0 if t is None else t.size))
    return float(lib.dn_net_loss(net._ptr)), delta(net, len(net.layers) - 1).reshape(x.shape).astype(np.float64)


def assert_margins(margins, kinks=()):
    assert not margins or min(margins) > MARGIN, f"a decision lies within {MARGIN} of its threshold: {min(margins)}"
    assert not kinks or min(kinks) > MARGIN, f"a box edge lies within {MARGIN} (in logits) of a truth's: {min(kinks)}"


def kink_distances(a, b, sens):
    """How far (in logits) each edge of box a is from the matching edge of box b, where IoU(a, b) has a kink;
    sens: d(x, y, w, h of a)/d(their logits). None when the boxes do not overlap."""
    if measure(a, b) == 0:
        return []
    return [abs((a[k] + sgn * a[k + 2] / 2) - (b[k] + sgn * b[k + 2] / 2)) / (abs(sens[k]) + abs(sens[k + 2]) / 2)
            for k in (0, 1) for sgn in (-1, 1)]


def measure(a, b, kind="iou"):
    """darknet's box_iou / box_giou / box_ciou; DIoU with rho^2/c^2 (the paper's, whose gradient darknet uses)."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = min(ax + aw / 2, bx + bw / 2) - max(ax - aw / 2, bx - bw / 2)
    ih = min(ay + ah / 2, by + bh / 2) - max(ay - ah / 2, by - bh / 2)
    inter = iw * ih if iw > 0 and ih > 0 else 0.0
    union = aw * ah + bw * bh - inter
    iou = inter / union if inter and union else 0.0
    if kind == "iou":
        return iou
    cw = max(ax + aw / 2, bx + bw / 2) - min(ax - aw / 2, bx - bw / 2)
    ch = max(ay + ah / 2, by + bh / 2) - min(ay - ah / 2, by - bh / 2)
    if kind == "giou":
        return iou - (cw * ch - union) / (cw * ch)
    d = ((ax - bx) ** 2 + (ay - by) ** 2) / (cw ** 2 + ch ** 2)
    if kind == "diou":
        return iou - d
    v = 4 / np.pi ** 2 * (np.arctan(bw / bh) - np.arctan(aw / ah)) ** 2
    return iou - d - v / (1 - iou + v + 1e-6) * v


def truth_rows(truth, b):
    return [(tuple(r[:4]), int(r[4])) for r in truth[b] if r[2] > 0 and r[3] > 0]


def logit(p):
    return np.log(p / (1 - p))


# ---------------------------------------------------------------- [yolo]
ANCHORS = [(1.2, 1.6), (2.4, 2.0), (4.0, 4.5)]   # network-input pixels; the network is 5 x 5, so is the grid
MASK = [0, 1]
CLASSES = 2
G = 5
YOLO = "[empty]\n[yolo]\nmask=0,1\nanchors=1.2,1.6, 2.4,2, 4,4.5\nnum=3\nclasses=2\n"
YOLO_C = len(MASK) * (5 + CLASSES)

# image 0: two truths and a padding row; image 1: a truth whose best anchor (2) is not in the mask,
# a padding row, then a truth after it
TRUTH = np.array([
    [[0.3, 0.4, 0.3, 0.35, 1], [0.7, 0.6, 0.5, 0.45, 0], [0, 0, 0, 0, 0]],
    [[0.5, 0.7, 0.8, 0.9, 1], [0, 0, 0, 0, 0], [0.55, 0.2, 0.2, 0.25, 1]],
], np.float32)

YOLO_DEFAULTS = dict(ignore_thresh=0.5, truth_thresh=1.0, iou_thresh=1.0, iou_thresh_kind="iou", iou_loss="mse",
                     scale_x_y=1.0, new_coords=0, label_smooth_eps=0.0, focal_loss=0, objectness_smooth=0,
                     iou_normalizer=0.75, obj_normalizer=1.0, cls_normalizer=1.0, counters_per_class=None)


def yolo_reference(x, truth, **opts):
    """darknet's forward_yolo_layer for our [yolo] (anchors above), in NumPy: returns (loss as defined in
    yolo.c, darknet's delta, margins of the decisions)."""
    o = dict(YOLO_DEFAULTS, **opts)
    B = x.shape[0]
    n, per, s, nc = len(MASK), 5 + CLASSES, o["scale_x_y"], o["new_coords"]
    z = x.astype(np.float64).reshape(B, n, per, G, G)
    out = z.copy()
    if not nc:
        out[:, :, :2], out[:, :, 4:] = sig(z[:, :, :2]), sig(z[:, :, 4:])
    out[:, :, :2] = out[:, :, :2] * s - (s - 1) / 2
    step = np.zeros_like(z)
    terms, box_loss, margins, edges = {}, np.zeros((B, n, G, G)), [], []
    cpc = o["counters_per_class"]
    cm = [max(cpc) / c for c in cpc] if cpc else [1.0] * CLASSES
    eps = o["label_smooth_eps"]
    smooth = lambda t: t * (1 - eps) + 0.5 * eps

    def pred(b, a, j, i):
        aw, ah = ANCHORS[MASK[a]]
        zw, zh = out[b, a, 2, j, i], out[b, a, 3, j, i]
        w, h = (4 * zw * zw * aw / G, 4 * zh * zh * ah / G) if nc else (np.exp(zw) * aw / G, np.exp(zh) * ah / G)
        return (i + out[b, a, 0, j, i]) / G, (j + out[b, a, 1, j, i]) / G, w, h

    def kinks(b, a, j, i, tb):
        aw, ah = ANCHORS[MASK[a]]
        if nc:
            sens = (s / G, s / G, 8 * z[b, a, 2, j, i] * aw / G, 8 * z[b, a, 3, j, i] * ah / G)
        else:
            sx, sy = sig(z[b, a, 0, j, i]), sig(z[b, a, 1, j, i])
            sens = (s * sx * (1 - sx) / G, s * sy * (1 - sy) / G) + pred(b, a, j, i)[2:]
        edges.extend(kink_distances(pred(b, a, j, i), tb, sens))

    def delta_box(b, a, j, i, tb, norm):
        if o["iou_loss"] != "mse":
            box_loss[b, a, j, i] += norm * (1 - measure(pred(b, a, j, i), tb, o["iou_loss"]))
            kinks(b, a, j, i, tb)
            return
        aw, ah = ANCHORS[MASK[a]]
        k = (2 - tb[2] * tb[3]) * norm
        if nc:
            t = [tb[0] * G - i, tb[1] * G - j, np.sqrt(tb[2] * G / (4 * aw)), np.sqrt(tb[3] * G / (4 * ah))]
        else:
            t = [tb[0] * G - i, tb[1] * G - j, np.log(tb[2] * G / aw), np.log(tb[3] * G / ah)]
        for q in range(4):
            step[b, a, q, j, i] += k * (t[q] - out[b, a, q, j, i])
        for q in range(2):
            zq, oq = z[b, a, q, j, i], out[b, a, q, j, i]
            box_loss[b, a, j, i] += (k / (2 * s) * (oq - t[q]) ** 2 if nc else
                                     k * s * (softplus(zq) - (t[q] + (s - 1) / 2) / s * zq))
        for q in range(2, 4):
            box_loss[b, a, j, i] += 0.5 * k * (z[b, a, q, j, i] - t[q]) ** 2

    def delta_class(b, a, j, i, c):
        if step[b, a, 5 + c, j, i]:
            step[b, a, 5 + c, j, i] = (smooth(1) - out[b, a, 5 + c, j, i]) * (cm[c] if cpc else 1)
            terms[b, a, 5 + c, j, i] = ("p", smooth(1), cm[c] if cpc else 1)
            return
        if o["focal_loss"]:
            pt = out[b, a, 5 + c, j, i]
            grad = -(1 - pt) * (2 * pt * np.log(pt) + pt - 1)
            for k in range(CLASSES):
                step[b, a, 5 + k, j, i] = ((k == c) - out[b, a, 5 + k, j, i]) * 0.5 * grad
                terms[b, a, 5 + k, j, i] = ("focal", c)
            return
        for k in range(CLASSES):
            w = cm[c] * o["cls_normalizer"] if cpc and k == c else 1
            step[b, a, 5 + k, j, i] = (smooth(k == c) - out[b, a, 5 + k, j, i]) * w
            terms[b, a, 5 + k, j, i] = ("p", smooth(k == c), w)
            if eps and not cpc:
                margins.append(abs(smooth(k == c) - out[b, a, 5 + k, j, i]))

    def assign(b, a, j, i, tb, c):
        delta_box(b, a, j, i, tb, o["iou_normalizer"] * cm[c])
        if not o["objectness_smooth"] or step[b, a, 4, j, i] == 0:
            step[b, a, 4, j, i] = cm[c] * o["obj_normalizer"] * (1 - out[b, a, 4, j, i])
            terms[b, a, 4, j, i] = ("p", 1.0, cm[c] * o["obj_normalizer"])
        delta_class(b, a, j, i, c)

    for b in range(B):
        rows = truth_rows(truth, b)
        for j in range(G):
            for i in range(G):
                for a in range(n):
                    p = pred(b, a, j, i)
                    match = (out[b, a, 5:, j, i] > 0.25).any()
                    ious = [measure(p, tb) for tb, _ in rows]
                    best_match = max([0.0] + [m for m in ious if match])
                    best = max([0.0] + ious)
                    margins += [abs(best - o["ignore_thresh"]), abs(best - o["truth_thresh"])]
                    if best > o["ignore_thresh"]:  # the class scores decide whether it counts
                        margins += list(np.abs(out[b, a, 5:, j, i] - 0.25))
                    step[b, a, 4, j, i] = o["obj_normalizer"] * -out[b, a, 4, j, i]
                    terms[b, a, 4, j, i] = ("p", 0.0, o["obj_normalizer"])
                    if best_match > o["ignore_thresh"]:
                        if not o["objectness_smooth"]:
                            step[b, a, 4, j, i] = 0
                            del terms[b, a, 4, j, i]
                        else:
                            kinks(b, a, j, i, rows[int(np.argmax(ious))][0])
                            step[b, a, 4, j, i] = o["obj_normalizer"] * (best_match - out[b, a, 4, j, i])
                            terms[b, a, 4, j, i] = ("p", best_match, o["obj_normalizer"])
                    if best > o["truth_thresh"]:
                        tb, c = rows[int(np.argmax(ious))]
                        if o["objectness_smooth"]:
                            kinks(b, a, j, i, tb)
                        target = best ** 2 if o["objectness_smooth"] else 1.0
                        step[b, a, 4, j, i] = o["obj_normalizer"] * (target - out[b, a, 4, j, i])
                        terms[b, a, 4, j, i] = ("p", target, o["obj_normalizer"])
                        delta_class(b, a, j, i, c)
                        if o["objectness_smooth"]:
                            step[b, a, 5 + c, j, i] = cm[c] * (target - out[b, a, 5 + c, j, i])
                            terms[b, a, 5 + c, j, i] = ("p", target, cm[c])
                        delta_box(b, a, j, i, tb, o["iou_normalizer"] * cm[c])
        for tb, c in rows:
            i, j = int(tb[0] * G), int(tb[1] * G)
            shape = (0, 0, tb[2], tb[3])
            ious = [measure((0, 0, aw / G, ah / G), shape) for aw, ah in ANCHORS]
            best_n = int(np.argmax(ious))
            if best_n in MASK:
                assign(b, MASK.index(best_n), j, i, tb, c)
            if o["iou_thresh"] < 1:
                for nn, (aw, ah) in enumerate(ANCHORS):
                    if nn in MASK and nn != best_n:
                        m = measure((0, 0, aw / G, ah / G), shape, o["iou_thresh_kind"])
                        margins.append(abs(m - o["iou_thresh"]))
                        if m > o["iou_thresh"]:
                            assign(b, MASK.index(nn), j, i, tb, c)
        if o["iou_thresh"] < 1:
            for a in range(n):
                for j in range(G):
                    for i in range(G):
                        if step[b, a, 4, j, i]:
                            k = int((step[b, a, 5:, j, i] > 0).sum())
                            if k:
                                step[b, a, :4, j, i] /= k
                                box_loss[b, a, j, i] /= k
    loss = box_loss.sum()
    for (b, a, e, j, i), term in terms.items():
        zz = z[b, a, e, j, i]
        if term[0] == "p":
            t, w = term[1], term[2]
            loss += 0.5 * w * (zz - t) ** 2 if nc else w * (softplus(zz) - t * zz)
        else:
            c = term[1]
            pt = out[b, a, 5 + c, j, i]
            g = (1 - pt) * (1 - pt - 2 * pt * np.log(pt))
            loss += 0.5 * (-(1 - pt) ** 2 * np.log(pt) if e == 5 + c else g * softplus(zz))
    return loss, step.reshape(x.shape), (margins, edges)


def yolo_cfg(**opts):
    lines = []
    for k, v in opts.items():
        lines.append(f"{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}")
    return YOLO + "\n".join(lines) + "\n"


def place(x, b, a, box, s=1.0, new_coords=False):
    """Sets the logits of anchor slot a so its decoded box is `box`, with class scores of .5."""
    col, row = int(box[0] * G), int(box[1] * G)
    aw, ah = ANCHORS[MASK[a]]
    v = np.array([box[0] * G - col, box[1] * G - row])
    x[b, a * 7:a * 7 + 2, row, col] = (v + (s - 1) / 2) / s if new_coords else logit((v + (s - 1) / 2) / s)
    if new_coords:
        x[b, a * 7 + 2:a * 7 + 4, row, col] = np.sqrt([box[2] * G / (4 * aw), box[3] * G / (4 * ah)])
    else:
        x[b, a * 7 + 2:a * 7 + 4, row, col] = np.log([box[2] * G / aw, box[3] * G / ah])
    x[b, a * 7 + 5:a * 7 + 7, row, col] = 0.5 if new_coords else 0.0


def yolo_input(seed=53, new_coords=False, overlaps=False, s=1.0):
    rng = np.random.default_rng(seed)
    if new_coords:
        x = rng.uniform(0.1, 0.9, (2, YOLO_C, G, G))
    else:
        x = rng.normal(0, 1, (2, YOLO_C, G, G))
    if overlaps:
        # predictions overlapping truths: IoU .87 (slot 1 beside truth 0's slot 0), .76 and .65 (image 1);
        # no edge within .005 of a truth's edge
        place(x, 0, 1, (0.3, 0.405, 0.28, 0.325), s, new_coords)
        place(x, 1, 1, (0.55, 0.21, 0.18, 0.21), s, new_coords)
        place(x, 1, 0, (0.53, 0.23, 0.18, 0.26), s, new_coords)
    return x.astype(np.float32)


YOLO_CASES = {
    "mse": dict(),
    "mse_normalizers": dict(iou_normalizer=3.0, obj_normalizer=0.4, cls_normalizer=2.0, counters_per_class=[100, 300]),
    "iou": dict(iou_loss="iou", iou_normalizer=4.0),
    "giou": dict(iou_loss="giou", iou_normalizer=4.0, obj_normalizer=0.5),
    "diou": dict(iou_loss="diou", iou_normalizer=4.0),
    "ciou": dict(iou_loss="ciou", iou_normalizer=4.0, scale_x_y=1.05),
    "label_smooth": dict(label_smooth_eps=0.1),
    "focal": dict(focal_loss=1),
    "iou_thresh": dict(iou_thresh=0.213),
    "iou_thresh_ciou": dict(iou_thresh=0.213, iou_thresh_kind="ciou", iou_loss="ciou", iou_normalizer=4.0),
    "ignore": dict(ignore_thresh=0.7, overlaps=True),
    "smooth": dict(objectness_smooth=1, truth_thresh=0.8, overlaps=True),
    "scale_x_y": dict(scale_x_y=1.05, iou_normalizer=2.0),
    "new_coords": dict(new_coords=1, scale_x_y=2.0),
    "new_coords_giou": dict(new_coords=1, scale_x_y=2.0, iou_loss="giou", iou_normalizer=4.0),
    "new_coords_focal": dict(new_coords=1, scale_x_y=2.0, focal_loss=1, overlaps=True, ignore_thresh=0.7),
}


def yolo_case(write_cfg, name):
    opts = dict(YOLO_CASES[name])
    overlaps = opts.pop("overlaps", False)
    net = build(write_cfg, yolo_cfg(**opts), YOLO_C, G, G)
    x = yolo_input(new_coords=opts.get("new_coords", 0), overlaps=overlaps, s=opts.get("scale_x_y", 1.0))
    return net, x, opts


@pytest.mark.parametrize("name", [n for n in YOLO_CASES if n != "new_coords_focal"])
def test_yolo_loss_matches_reference(write_cfg, name):
    net, x, opts = yolo_case(write_cfg, name)
    loss, grad = train_forward(net, x, TRUTH)
    want, step, margins = yolo_reference(x, TRUTH, **opts)
    assert_margins(*margins)
    assert loss == pytest.approx(want, rel=1e-4)
    if opts.get("iou_loss", "mse") == "mse" and not opts.get("focal_loss") and not opts.get("objectness_smooth"):
        # here our gradient is darknet's step exactly
        np.testing.assert_allclose(grad, -step, atol=1e-5 * np.abs(step).max())


def test_yolo_decisions_are_exercised():
    """The cases above reach the branches they are named for."""
    _, step, _ = yolo_reference(yolo_input(overlaps=True), TRUTH, ignore_thresh=0.7)
    _, plain, _ = yolo_reference(yolo_input(overlaps=True), TRUTH)
    obj = lambda s: s.reshape(2, 2, 7, G, G)[:, :, 4]
    assert ((obj(step) == 0) & (obj(plain) != 0)).sum() == 0  # ignore .7 drops fewer than .5 ...
    assert (obj(step) == 0).sum() >= 2                        # ... but some
    _, thr, _ = yolo_reference(yolo_input(), TRUTH, iou_thresh=0.213)
    _, one, _ = yolo_reference(yolo_input(), TRUTH)
    assert (obj(thr) > 0).sum() == 7 and (obj(one) > 0).sum() == 3  # several anchors per truth


@pytest.mark.parametrize("name", list(YOLO_CASES))
def test_yolo_gradients(write_cfg, name):
    net, x, opts = yolo_case(write_cfg, name)
    assert_margins(*yolo_reference(x, TRUTH, **opts)[2])
    check_gradients(net, x, TRUTH, samples=x.size, params=False)


def test_yolo_one_truth_by_hand(write_cfg):
    """One truth, mse: the loss written out for its cell and anchor."""
    net = build(write_cfg, yolo_cfg(ignore_thresh=1.0, iou_normalizer=0.5), YOLO_C, G, G, batch=1)
    x = yolo_input()[:1]
    truth = np.array([[[0.3, 0.4, 0.3, 0.35, 1]]], np.float32)
    loss, _ = train_forward(net, x, truth)
    z = x.astype(np.float64).reshape(2, 7, G, G)
    obj = softplus(z[:, 4]).sum()                       # every objectness toward 0 ...
    zc = z[0, :, 2, 1]                                  # ... but the truth's: cell (1, 2), anchor 0 (slot 0)
    obj += -zc[4]                                        # softplus(z) - z: toward 1
    cls = softplus(zc[5]) + softplus(zc[6]) - zc[6]      # class 1
    k = (2 - 0.3 * 0.35) * 0.5
    tx, ty = 0.3 * G - 1, 0.4 * G - 2
    tw, th = np.log(0.3 * G / 1.2), np.log(0.35 * G / 1.6)
    box = k * (softplus(zc[0]) - tx * zc[0] + softplus(zc[1]) - ty * zc[1])
    box += k / 2 * ((zc[2] - tw) ** 2 + (zc[3] - th) ** 2)
    assert loss == pytest.approx(obj + cls + box, rel=1e-5)


def test_yolo_max_delta_clips_box_steps(write_cfg):
    net = build(write_cfg, yolo_cfg(iou_loss="giou", iou_normalizer=40.0, max_delta=0.05), YOLO_C, G, G)
    x = yolo_input()
    _, grad = train_forward(net, x, TRUTH)
    box = grad.reshape(2, 2, 7, G, G)[:, :, :4]
    assert np.abs(box).max() == pytest.approx(0.05)


@pytest.mark.parametrize("opts", ["", "new_coords=1\nscale_x_y=2.0"])
def test_yolo_without_truth_passes_its_jacobian(write_cfg, opts):
    net = build(write_cfg, YOLO + opts + "\n", YOLO_C, G, G)
    x = yolo_input(new_coords="new_coords" in opts)
    check_gradients(net, x, samples=x.size, params=False)


@pytest.mark.parametrize("head", ["yolo", "region"])
def test_training_output_is_inference_output(write_cfg, head):
    if head == "yolo":
        net, x, truth = build(write_cfg, yolo_cfg(iou_loss="ciou"), YOLO_C, G, G), yolo_input(), TRUTH
    else:
        net, x, _, _ = region_case(write_cfg, "softmax_scales")
        truth = R_TRUTH
    train_forward(net, x, truth)
    trained = net.layers[-1].output.copy()
    net.forward(x)
    np.testing.assert_array_equal(net.layers[-1].output, trained)


def test_box_measure_gradients():
    """core/box.c's IoU, GIoU, DIoU, CIoU and their gradients against the NumPy ones above
    (float64 central differences, away from the kinks)."""
    import ctypes

    import pydarknet._core

    class Box(ctypes.Structure):
        _fields_ = [(k, ctypes.c_float) for k in "xywh"]

    fn = ctypes.CDLL(pydarknet._core.__file__).dn_box_measure
    fn.restype, fn.argtypes = ctypes.c_float, [Box, Box, ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(300):
        a, b = rng.uniform(0.2, 0.6, 4), rng.uniform(0.2, 0.6, 4)
        a[2:], b[2:] = rng.uniform(0.05, 0.5, 2), rng.uniform(0.05, 0.5, 2)
        for kind, name in enumerate(["iou", "giou", "diou", "ciou"]):
            grad = (ctypes.c_float * 4)()
            value = fn(Box(*a), Box(*b), kind, grad)
            assert value == pytest.approx(measure(a, b, name), abs=1e-5)
            for q in range(4):
                num = []
                for h in (1e-6, 2e-6):
                    up, down = a.copy(), a.copy()
                    up[q] += h
                    down[q] -= h
                    num.append((measure(up, b, name) - measure(down, b, name)) / (2 * h))
                if abs(num[0] - num[1]) > 1e-4:  # a kink within reach
                    continue
                assert grad[q] == pytest.approx(num[0], abs=1e-4, rel=1e-4), (name, a, b, q)
                checked += 1
    assert checked > 4000


def test_yolo_truth_rows_must_be_whole(write_cfg):
    net = build(write_cfg, YOLO, YOLO_C, G, G)
    with pytest.raises(pydarknet.DarknetError, match="rows of 5"):
        train_forward(net, yolo_input(), np.zeros((2, 7), np.float32))


# ---------------------------------------------------------------- [region]
R_ANCHORS = [(1.0, 1.5), (3.0, 2.5)]   # grid cells
R_CLASSES = 3
R_C = len(R_ANCHORS) * (5 + R_CLASSES)
REGION = "[empty]\n[region]\nanchors=1,1.5, 3,2.5\nnum=2\nclasses=3\ncoords=4\n"
R_TRUTH = np.array([
    [[0.3, 0.4, 0.25, 0.3, 2], [0.7, 0.65, 0.55, 0.5, 0], [0, 0, 0, 0, 0]],
    [[0.55, 0.2, 0.2, 0.3, 1], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]],
], np.float32)
REGION_DEFAULTS = dict(softmax=0, coord_scale=1.0, object_scale=1.0, noobject_scale=1.0, class_scale=1.0,
                       thresh=0.5, rescore=0, bias_match=0, focal_loss=0)


def region_reference(x, truth, seen=0, **opts):
    """darknet's forward_region_layer (DOABS) in NumPy: (loss as defined in region.c, darknet's delta, margins)."""
    o = dict(REGION_DEFAULTS, **opts)
    B, n, per = x.shape[0], len(R_ANCHORS), 5 + R_CLASSES
    z = x.astype(np.float64).reshape(B, n, per, G, G)
    out = z.copy()
    out[:, :, :2], out[:, :, 4] = sig(z[:, :, :2]), sig(z[:, :, 4])
    if o["softmax"]:
        e = np.exp(z[:, :, 5:] - z[:, :, 5:].max(axis=2, keepdims=True))
        out[:, :, 5:] = e / e.sum(axis=2, keepdims=True)
    step = np.zeros_like(z)
    boxes, objs, classes, margins, edges = {}, {}, {}, [], []

    def pred(b, a, j, i):
        aw, ah = R_ANCHORS[a]
        return ((i + out[b, a, 0, j, i]) / G, (j + out[b, a, 1, j, i]) / G,
                np.exp(z[b, a, 2, j, i]) * aw / G, np.exp(z[b, a, 3, j, i]) * ah / G)

    def delta_box(b, a, j, i, tb, scale):
        aw, ah = R_ANCHORS[a]
        t = [tb[0] * G - i, tb[1] * G - j, np.log(tb[2] * G / aw), np.log(tb[3] * G / ah)]
        for q in range(2):
            p = out[b, a, q, j, i]
            step[b, a, q, j, i] = scale * (t[q] - p) * p * (1 - p)
        for q in range(2, 4):
            step[b, a, q, j, i] = scale * (t[q] - z[b, a, q, j, i])
        boxes[b, a, j, i] = (t, scale)

    for b in range(B):
        rows = truth_rows(truth, b)
        for j in range(G):
            for i in range(G):
                for a in range(n):
                    best = max([0.0] + [measure(pred(b, a, j, i), tb) for tb, _ in rows])
                    margins.append(abs(best - o["thresh"]))
                    p = out[b, a, 4, j, i]
                    step[b, a, 4, j, i] = o["noobject_scale"] * -p * p * (1 - p)
                    objs[b, a, j, i] = (0.0, o["noobject_scale"])
                    if best > o["thresh"]:
                        step[b, a, 4, j, i] = 0
                        del objs[b, a, j, i]
                    if seen < 12800:
                        aw, ah = R_ANCHORS[a]
                        delta_box(b, a, j, i, ((i + 0.5) / G, (j + 0.5) / G, aw / G, ah / G), 0.01)
        for tb, c in rows:
            i, j = int(tb[0] * G), int(tb[1] * G)
            ious = []
            for a, (aw, ah) in enumerate(R_ANCHORS):
                w, h = (aw / G, ah / G) if o["bias_match"] else pred(b, a, j, i)[2:]
                ious.append(measure((0, 0, w, h), (0, 0, tb[2], tb[3])))
            if not o["bias_match"]:
                margins.append(abs(ious[0] - ious[1]))
            a = int(np.argmax(ious))
            delta_box(b, a, j, i, tb, o["coord_scale"])
            p = out[b, a, 4, j, i]
            iou = measure(pred(b, a, j, i), tb)
            if o["rescore"]:
                sx, sy = out[b, a, 0, j, i], out[b, a, 1, j, i]
                sens = (sx * (1 - sx) / G, sy * (1 - sy) / G) + pred(b, a, j, i)[2:]
                edges.extend(kink_distances(pred(b, a, j, i), tb, sens))
            target = iou if o["rescore"] else 1.0
            step[b, a, 4, j, i] = o["object_scale"] * (target - p) * p * (1 - p)
            objs[b, a, j, i] = (target, o["object_scale"])
            pt = out[b, a, 5 + c, j, i]
            focal = 0.5 * -(1 - pt) * (2 * pt * np.log(pt) + pt - 1) if o["focal_loss"] else 1
            for k in range(R_CLASSES):
                step[b, a, 5 + k, j, i] = o["class_scale"] * ((k == c) - out[b, a, 5 + k, j, i]) * focal
            classes[b, a, j, i] = c
    loss = 0.0
    for (b, a, j, i), (t, scale) in boxes.items():
        v = [out[b, a, 0, j, i], out[b, a, 1, j, i], z[b, a, 2, j, i], z[b, a, 3, j, i]]
        loss += 0.5 * scale * sum((v[q] - t[q]) ** 2 for q in range(4))
    for (b, a, j, i), (t, scale) in objs.items():
        loss += 0.5 * scale * (out[b, a, 4, j, i] - t) ** 2
    for (b, a, j, i), c in classes.items():
        if not o["softmax"]:
            loss += 0.5 * o["class_scale"] * sum((z[b, a, 5 + k, j, i] - (k == c)) ** 2 for k in range(R_CLASSES))
        elif o["focal_loss"]:
            pt = out[b, a, 5 + c, j, i]
            loss += o["class_scale"] * 0.5 * -(1 - pt) ** 2 * np.log(pt)
        else:
            loss += -o["class_scale"] * np.log(out[b, a, 5 + c, j, i])
    return loss, step.reshape(x.shape), (margins, edges)


REGION_CASES = {
    "plain": (dict(), 0),
    "softmax_scales": (dict(softmax=1, coord_scale=2.0, object_scale=5.0, noobject_scale=0.5, class_scale=1.5), 0),
    "after_prior_phase": (dict(softmax=1, bias_match=1, thresh=0.6), 12800),
    "rescore": (dict(softmax=1, rescore=1, object_scale=5.0, thresh=0.6), 20000),
    "focal": (dict(softmax=1, focal_loss=1, class_scale=2.0), 20000),
}


def region_case(write_cfg, name, seed=2):
    opts, seen = REGION_CASES[name]
    net = build(write_cfg, REGION + "".join(f"{k}={v}\n" for k, v in opts.items()), R_C, G, G)
    check(lib.dn_net_set_iteration(net._ptr, 0, seen))
    x = np.random.default_rng(seed).normal(0, 1, (2, R_C, G, G)).astype(np.float32)
    # one prediction overlapping the first truth (IoU .79), to be left without an objectness term
    x[0, 8:12, 2, 1] = [logit(0.46), logit(0.1), np.log(0.28 * G / 3.0), np.log(0.3 * G / 2.5)]
    return net, x, opts, seen


@pytest.mark.parametrize("name", list(REGION_CASES))
def test_region_loss_matches_reference(write_cfg, name):
    net, x, opts, seen = region_case(write_cfg, name)
    loss, grad = train_forward(net, x, R_TRUTH)
    want, step, margins = region_reference(x, R_TRUTH, seen, **opts)
    assert_margins(*margins)
    assert loss == pytest.approx(want, rel=1e-4)
    if not opts.get("rescore"):
        np.testing.assert_allclose(grad, -step, atol=1e-5 * np.abs(step).max())


@pytest.mark.parametrize("name", list(REGION_CASES))
def test_region_gradients(write_cfg, name):
    net, x, opts, seen = region_case(write_cfg, name)
    assert_margins(*region_reference(x, R_TRUTH, seen, **opts)[2])
    check_gradients(net, x, R_TRUTH, samples=x.size, params=False)


@pytest.mark.parametrize("softmax", [0, 1])
def test_region_without_truth_passes_its_jacobian(write_cfg, softmax):
    net = build(write_cfg, REGION + f"softmax={softmax}\n", R_C, G, G)
    x = np.random.default_rng(3).normal(0, 1, (2, R_C, G, G)).astype(np.float32)
    check_gradients(net, x, samples=x.size, params=False)


# ---------------------------------------------------------------- [softmax] and [cost]
def softmax_ref(x, groups, temp):
    g = x.reshape(x.shape[0], groups, -1).astype(np.float64) / temp
    e = np.exp(g - g.max(axis=2, keepdims=True))
    return (e / e.sum(axis=2, keepdims=True)).reshape(x.shape)


def classifier_data(n=12, groups=3, seed=0, soft=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (2, n, 1, 1)).astype(np.float32)
    t = np.zeros((2, n), np.float32)
    for b in range(2):
        for g in range(groups):
            size = n // groups
            if soft:
                t[b, g * size:(g + 1) * size] = rng.dirichlet(np.ones(size)) * 0.8
            else:
                t[b, g * size + rng.integers(size)] = 1
    return x, t


@pytest.mark.parametrize("soft", [False, True])
def test_softmax_cross_entropy(write_cfg, soft):
    net = build(write_cfg, "[softmax]\ngroups=3\ntemperature=0.5\n", 12, 1, 1)
    x, t = classifier_data(soft=soft)
    loss, _ = train_forward(net, x, t)
    p = softmax_ref(x, 3, 0.5).reshape(2, 12)
    assert loss == pytest.approx(-(t * np.log(p)).sum(), rel=1e-5)
    check_gradients(net, x, t, samples=x.size)


@pytest.mark.parametrize("gamma,alpha,soft", [(2.0, 1.0, False), (0.5, 0.25, False), (2.0, 0.75, True)])
def test_softmax_focal_loss(write_cfg, gamma, alpha, soft):
    """focal_gamma / focal_alpha: -alpha * sum t (1 - p)^gamma log p (NumPy), its exact gradient against central
    differences; focal_gamma=0 is the cross-entropy."""
    net = build(write_cfg, f"[softmax]\ngroups=3\ntemperature=0.5\nfocal_gamma={gamma}\nfocal_alpha={alpha}\n",
                12, 1, 1)
    x, t = classifier_data(soft=soft, seed=3)
    loss, _ = train_forward(net, x, t)
    p = softmax_ref(x, 3, 0.5).reshape(2, 12)
    assert loss == pytest.approx(-(alpha * t * (1 - p) ** gamma * np.log(p)).sum(), rel=1e-5)
    check_gradients(net, x, t, samples=x.size)
    plain = build(write_cfg, "[softmax]\ngroups=3\ntemperature=0.5\nfocal_gamma=0\n", 12, 1, 1)
    assert train_forward(plain, x, t)[0] == pytest.approx(-(t * np.log(p)).sum(), rel=1e-5)


def test_softmax_then_cost(write_cfg):
    """Both losses: the cross-entropy's gradient plus the cost's through the softmax Jacobian."""
    net = build(write_cfg, "[softmax]\ngroups=2\ntemperature=0.5\n[cost]\ntype=sse\nscale=3\n", 12, 1, 1)
    x, t = classifier_data(groups=2, seed=1)
    loss, _ = train_forward(net, x, t)
    p = softmax_ref(x, 2, 0.5).reshape(2, 12)
    assert loss == pytest.approx(-(t * np.log(p)).sum() + 1.5 * ((p - t) ** 2).sum(), rel=1e-5)
    check_gradients(net, x, t, samples=x.size)


def test_softmax_noloss_then_cost(write_cfg):
    net = build(write_cfg, "[softmax]\ngroups=2\ntemperature=0.5\nnoloss=1\n[cost]\ntype=sse\n", 12, 1, 1)
    x, t = classifier_data(groups=2, seed=2)
    loss, _ = train_forward(net, x, t)
    assert loss == pytest.approx(0.5 * ((softmax_ref(x, 2, 0.5).reshape(2, 12) - t) ** 2).sum(), rel=1e-5)
    check_gradients(net, x, t, samples=x.size)


def test_softmax_without_truth_passes_its_jacobian(write_cfg):
    net = build(write_cfg, "[softmax]\ngroups=3\ntemperature=0.5\n", 12, 1, 1)
    x, _ = classifier_data()
    check_gradients(net, x, samples=x.size)


def test_softmax_truth_size_is_checked(write_cfg):
    net = build(write_cfg, "[softmax]\n", 12, 1, 1)
    with pytest.raises(pydarknet.DarknetError, match="truth values per image"):
        train_forward(net, classifier_data()[0], np.zeros((2, 5), np.float32))


def cost_net(write_cfg, kind, scale, extra=""):
    net = Network(parse_cfg(write_cfg(f"[net]\nwidth=4\nheight=3\nchannels=2\n[empty]\n[cost]\ntype={kind}\n"
                                      f"scale={scale}\n{extra}")), batch=2)
    net.enable_training()
    return net


SIGMA, DELTA = 1.2, 0.7   # their kinks (1/SIGMA^2 = .694, .7) away from every |d| of the test by > MARGIN
# the losses per value from their definitions (Caffe's EuclideanLoss divides by the batch, 2 images here)
COSTS = {
    "sse": lambda d, t: 0.5 * d ** 2,
    "masked": lambda d, t: np.where(t == -1234, 0, 0.5 * d ** 2),
    "smooth": lambda d, t: np.where(np.abs(d) < 1, 0.5 * d ** 2, np.abs(d) - 0.5),
    "l1": lambda d, t: np.abs(d),
    "L1": lambda d, t: np.abs(d),
    "l2": lambda d, t: d ** 2 / (2 * 2),
    "smooth_l1": lambda d, t: np.where(np.abs(d) < 1 / SIGMA ** 2, 0.5 * (SIGMA * d) ** 2,
                                       np.abs(d) - 0.5 / SIGMA ** 2),
    "huber": lambda d, t: np.where(np.abs(d) <= DELTA, 0.5 * d ** 2, DELTA * (np.abs(d) - 0.5 * DELTA)),
}
KINKS = {"smooth": 1, "l1": 0, "L1": 0, "smooth_l1": 1 / SIGMA ** 2, "huber": DELTA}


@pytest.mark.parametrize("kind", list(COSTS))
def test_cost(write_cfg, kind):
    net = cost_net(write_cfg, kind, 2.0, f"sigma={SIGMA}\ndelta={DELTA}\n")
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1.5, (2, 2, 3, 4)).astype(np.float32)
    t = rng.normal(0, 1.5, (2, 24)).astype(np.float32)
    if kind == "masked":
        t[:, ::3] = -1234
    d = x.reshape(2, 24).astype(np.float64) - t
    kink = KINKS.get(kind)
    if kind in ("smooth_l1", "huber"):   # values on both sides of the kink
        assert (np.abs(d) < kink).sum() > 5 and (np.abs(d) > kink).sum() > 5
    assert kink is None or np.abs(np.abs(d) - kink).min() > MARGIN  # away from the kink
    loss, grad = train_forward(net, x, t)
    assert loss == pytest.approx(2.0 * COSTS[kind](d, t).sum(), rel=1e-5)
    check_gradients(net, x, t, samples=x.size)
    net.forward(x)
    np.testing.assert_array_equal(net.layers[-1].output, x)
