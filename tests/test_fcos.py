"""[fcos], the anchor-free detection head: its output and decoding, its loss
against a NumPy re-statement of FCOS's (float64: target assignment by
location, scale range, centre sampling and smallest area; sigmoid focal loss;
GIoU or IoU box loss weighted by the centerness target; centerness BCE),
its gradients by central differences, cfg errors, and a small network that
learns to find the shapes."""
import numpy as np
import pytest

import pydarknet
from pydarknet import CfgError
from pydarknet._native import check, ffi, lib
from gradcheck import check_gradients
from helpers import SHAPES_BACKBONE, conv, learn_shapes, section
from test_losses import build, sig, softplus, train_forward

CLASSES, G = 3, 6   # a 6x6 grid
C = 5 + CLASSES
# truths (x, y, w, h, class) per image: nested boxes (the smaller wins where both cover a position), one
# beside them, and an empty row
TRUTH = np.array([[[0.5, 0.5, 0.8, 0.7, 0], [0.42, 0.46, 0.3, 0.35, 2], [0.0, 0.0, 0.0, 0.0, 0]],
                  [[0.3, 0.7, 0.5, 0.45, 1], [0.8, 0.25, 0.3, 0.4, 0], [0.0, 0.0, 0.0, 0.0, 0]]], np.float32)


def fcos_cfg(**opts):
    return f"[fcos]\nclasses={CLASSES}\n" + "".join(f"{k}={v}\n" for k, v in opts.items())


def fcos_input(opts, stride=1, seed=5):
    """Logits: distances near their targets' scale (exp: log of 0.3..4 cells; relu: 0.3..4), kept away from
    the kinks where finite differences would cross one (a predicted distance within 0.1 cell of its target,
    where IoU's min and max switch sides; z = 0 for relu)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1.2, (2, C, G, G))
    d = rng.uniform(0.3, 4.0, (2, 4, G, G))
    for b in range(2):
        for (row, col), (_, *t) in assignment(TRUTH[b], opts, stride).items():
            for q in range(4):
                if abs(d[b, q, row, col] - t[q]) < 0.1:
                    d[b, q, row, col] = t[q] + 0.2
    x[:, :4] = d if opts.get("distance") == "relu" else np.log(d)
    return x.astype(np.float32)


def assignment(truth, opts, stride=1):
    """FCOS's targets for one image: {position: (row, l*, t*, r*, b*)} (distances in cells; the scale range
    object_sizes is in network-input pixels, `stride` of them to a cell)."""
    lo, hi = opts.get("object_sizes", (0.0, -1.0))
    hi = np.inf if hi < 0 else hi
    radius = opts.get("center_sampling", 0.0)
    out = {}
    for row in range(G):
        for col in range(G):
            px, py = col + 0.5, row + 0.5
            best = None
            for r, (x, y, w, h, k) in enumerate(truth):
                if w <= 0 or h <= 0:
                    continue
                t = (px - (x - w / 2) * G, py - (y - h / 2) * G, (x + w / 2) * G - px, (y + h / 2) * G - py)
                if min(t) <= 0:
                    continue
                if radius > 0 and (abs(px - x * G) >= radius or abs(py - y * G) >= radius):
                    continue
                far = max(t) * stride
                if not lo <= far <= hi:
                    continue
                if best is None or w * h < best[0]:
                    best = (w * h, r, t)
            if best is not None:
                out[(row, col)] = (best[1],) + best[2]
    return out


def box_term(d, t, giou):
    """1 - GIoU (or IoU) of the boxes around one point, distances (l, t, r, b)."""
    inter = (min(d[0], t[0]) + min(d[2], t[2])) * (min(d[1], t[1]) + min(d[3], t[3]))
    union = (d[0] + d[2]) * (d[1] + d[3]) + (t[0] + t[2]) * (t[1] + t[3]) - inter
    v = inter / union
    if giou:
        hull = (max(d[0], t[0]) + max(d[2], t[2])) * (max(d[1], t[1]) + max(d[3], t[3]))
        v -= (hull - union) / hull
    return 1 - v


def fcos_reference(x, truth, stride=1, **opts):
    """The loss of a batch (float64): each image's class and centerness sums divided by the mini-batch's
    positives per image, its box terms' centerness weights by the mini-batch's centerness targets per image
    (FCOS's normalizers over the batch, the sum over images every head's loss is); and the positives of each
    image."""
    x = x.astype(np.float64)
    alpha, gamma = opts.get("alpha", 0.25), opts.get("gamma", 2.0)
    giou = opts.get("iou_loss", "giou") == "giou"
    dist = (lambda z: np.maximum(z, 0)) if opts.get("distance", "exp") == "relu" else np.exp
    images = x.shape[0]
    targets = [assignment(truth[b], opts, stride) for b in range(images)]
    cstars = [{k: np.sqrt(min(v[1], v[3]) / max(v[1], v[3]) * min(v[2], v[4]) / max(v[2], v[4]))
               for k, v in t.items()} for t in targets]
    positives = sum(len(t) for t in targets)
    per_image = positives / images if positives else 1.0
    ctr_per_image = sum(sum(c.values()) for c in cstars) / images
    total = 0.0
    for b in range(images):
        p = sig(x[b, 5:])                                     # [classes, G, G]
        y = np.zeros_like(p)
        for (row, col), (r, *_) in targets[b].items():
            y[int(truth[b, r, 4]), row, col] = 1
        pt = np.where(y == 1, p, 1 - p)
        at = np.where(y == 1, alpha, 1 - alpha)
        bce = np.where(y == 1, softplus(-x[b, 5:]), softplus(x[b, 5:]))
        cls = (at * (1 - pt) ** gamma * bce).sum()
        ctr = box = 0.0
        for (row, col), (r, *t) in targets[b].items():
            z = x[b, 4, row, col]
            cstar = cstars[b][(row, col)]
            ctr += softplus(z) - cstar * z
            d = dist(x[b, :4, row, col])
            box += opts.get("iou_normalizer", 1.0) * cstar / ctr_per_image * box_term(d, t, giou)
        total += (cls + ctr) / per_image + box
    return total, [len(t) for t in targets]


CASES = {
    "giou": {},
    "iou": dict(iou_loss="iou"),
    "relu": dict(distance="relu"),
    "center_sampling": dict(center_sampling=1.5),
    "object_sizes": dict(object_sizes=(0.0, 2.5)),           # in cells here; in pixels, times the stride
    "object_sizes_upper": dict(object_sizes=(2.5, -1.0)),
    "plain_bce": dict(gamma=0.0, alpha=0.5, iou_normalizer=2.0),
}


def fcos_case(write_cfg, name, batch=2, stride=1):
    """The case's network and head input. stride 1: the head reads the network input; else a [maxpool] of
    size and stride `stride` before it (the input given repeated over each pool window, so the head reads x)."""
    opts = dict(CASES[name])
    if "object_sizes" in opts:
        opts["object_sizes"] = tuple(v * stride if v > 0 else v for v in opts["object_sizes"])
    cfg_opts = {k: (",".join(str(v) for v in val) if isinstance(val, tuple) else val) for k, val in opts.items()}
    pool = f"[maxpool]\nsize={stride}\nstride={stride}\npadding=0\n" if stride > 1 else ""
    net = build(write_cfg, pool + fcos_cfg(**cfg_opts), C, G * stride, G * stride, batch=batch)
    return net, fcos_input(opts, stride)[:batch], opts


def train_loss(net, x, truth):
    x, t = np.ascontiguousarray(x, np.float32), np.ascontiguousarray(truth, np.float32).reshape(-1)
    check(lib.dn_net_forward_train(net._ptr, ffi.from_buffer("float[]", x), x.size, ffi.from_buffer("float[]", t),
                                   t.size))
    return float(lib.dn_net_loss(net._ptr))


def repeat(x, stride):
    return np.ascontiguousarray(np.repeat(np.repeat(x, stride, axis=2), stride, axis=3))


def test_assignment_cases_differ():
    """The cases exercise what they are named for: different positives."""
    sets = {name: [sorted(assignment(TRUTH[b], opts)) for b in range(2)] for name, opts in CASES.items()}
    for name in ("center_sampling", "object_sizes", "object_sizes_upper"):
        assert sets[name] != sets["giou"], name
        assert all(sets[name][b] for b in range(2)), name
    # nested boxes: where both cover a position, the smaller (row 1) wins
    plain = assignment(TRUTH[0], {})
    assert {v[0] for v in plain.values()} == {0, 1}
    assert plain[(2, 2)][0] == 1


@pytest.mark.parametrize("stride", [1, 8])
@pytest.mark.parametrize("name", list(CASES))
def test_fcos_loss_matches_reference(write_cfg, name, stride):
    net, x, opts = fcos_case(write_cfg, name, stride=stride)
    loss = train_loss(net, repeat(x, stride), TRUTH)
    want, counts = fcos_reference(x, TRUTH, stride, **opts)
    assert min(counts) > 0
    assert loss == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_fcos_gradients(write_cfg, name):
    net, x, _ = fcos_case(write_cfg, name)
    check_gradients(net, x, TRUTH, samples=x.size, params=False)


def test_fcos_image_without_truths_has_only_the_negative_class_terms(write_cfg):
    net, x, opts = fcos_case(write_cfg, "giou", batch=1)
    empty = np.zeros((1, 3, 5), np.float32)
    loss, grad = train_forward(net, x, empty)
    assert loss == pytest.approx(fcos_reference(x, empty)[0], rel=1e-5)
    assert not grad[:, :5].any() and grad[:, 5:].all()


@pytest.mark.parametrize("distance", ["exp", "relu"])
def test_fcos_without_truth_passes_its_jacobian(write_cfg, distance):
    net = build(write_cfg, fcos_cfg(distance=distance), C, G, G)
    check_gradients(net, fcos_input({"distance": distance}), samples=C * G * G * 2, params=False)


def test_fcos_output_and_decoding(write_cfg):
    """Forward: exp of the distances, the logistic elsewhere, the same in a training pass; detect decodes
    each position's box around its centre with score sqrt(class * centerness)."""
    net, x, _ = fcos_case(write_cfg, "giou", batch=1, stride=8)
    net.forward(repeat(x, 8))
    out = net.layers[-1].output
    np.testing.assert_allclose(out[:, :4], np.exp(x[:, :4].astype(np.float64)), rtol=1e-6)
    np.testing.assert_allclose(out[:, 4:], sig(x[:, 4:].astype(np.float64)), rtol=1e-6)
    train_loss(net, repeat(x, 8), TRUTH[:1])
    np.testing.assert_array_equal(net.layers[-1].output, out)
    # decoding (the network's detections of image 0 of the last pass, in pixels of a 48 square image,
    # no NMS) against the positions and scores written out here
    got = sorted((d.class_id, d.confidence, d.x, d.y, d.w, d.h) for d in net._detections(0, 48, 48,
                                                                                          0.3, 0.0, False))
    o = out[0].astype(np.float64)
    want = []
    for row in range(G):
        for col in range(G):
            l, t, r, b = o[:4, row, col]
            for k in range(CLASSES):
                score = np.sqrt(o[5 + k, row, col] * o[4, row, col])
                if score > 0.3:
                    want.append((k, score, (col + 0.5 + (r - l) / 2) * 48 / G,
                                 (row + 0.5 + (b - t) / 2) * 48 / G, (l + r) * 48 / G,
                                 (t + b) * 48 / G))
    assert len(want) > 5
    np.testing.assert_allclose(np.array(got), np.array(sorted(want)), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("body,match", [
    ("object_sizes=64\n", "object_sizes must be lo,hi"),
    ("object_sizes=64,32\n", "object_sizes must be lo,hi"),
    ("center_sampling=-1\n", "center_sampling must be >= 0"),
    ("alpha=1.5\n", "alpha must be in 0..1"),
    ("distance=sigmoid\n", "distance"),
    ("iou_loss=ciou\n", "iou_loss"),
])
def test_fcos_cfg_errors(write_cfg, body, match):
    with pytest.raises(CfgError, match=match):
        pydarknet.load(write_cfg(f"[net]\nwidth=48\nheight=48\nchannels={C}\n" + fcos_cfg() + body))


def test_fcos_input_channels_must_fit(write_cfg):
    with pytest.raises(CfgError, match=r"4 distances \+ centerness \+ 3 classes = 8 needed"):
        pydarknet.load(write_cfg("[net]\nwidth=48\nheight=48\nchannels=7\n" + fcos_cfg()))


DETECTOR = SHAPES_BACKBONE + conv(C, size=1, activation="linear") + section("fcos", classes=CLASSES, center_sampling=1.5)


def test_small_fcos_learns_to_detect_shapes(write_cfg):
    """A small FCOS network trained for a few seconds finds most shapes it saw, with the right class."""
    start, end, found, total = learn_shapes(write_cfg, DETECTOR)
    assert end < 0.3 * start, (start, end)
    assert found >= 0.8 * total, (found, total)
