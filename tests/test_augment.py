"""Augmentation keeps boxes on their pixels: filled rectangles of distinct
colours are drawn at known label boxes, the image is augmented, and each
output box must match the bounding box of its colour's pixels."""
import math
import os

import cv2
import numpy as np
import pytest

from pydarknet.data import ClassifierAugment, DetectionAugment, ListSource, classifier_sample, detection_sample
from pydarknet.data.augment import _augment_image, _hsv, _visible_box

# BGR, far apart from each other and from the grey background
PALETTE = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255), (255, 255, 0),
           (255, 255, 255), (0, 140, 255)]
BG = (60, 60, 60)
PLAIN = dict(hue=0.0, saturation=1.0, exposure=1.0, blur=0, gaussian_noise=0)


def scene(w, h, rects, bg=BG):
    """A plain image with filled rectangles (colour, left, top, right, bottom)
    in pixels (right/bottom exclusive) and their label rows."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = bg
    labels = []
    for c, l, t, r, b in rects:
        cv2.rectangle(img, (l, t), (r - 1, b - 1), PALETTE[c], -1)
        labels.append((c, (l + r) / 2 / w, (t + b) / 2 / h, (r - l) / w, (b - t) / h))
    return img, np.array(labels, np.float32).reshape(-1, 5)


class Cycle:
    """Returns its images in turn (so mosaic parts are known and distinct)."""

    def __init__(self, items):
        self.items, self.n = items, 0

    def draw(self, rng):
        img, labels = self.items[self.n % len(self.items)]
        self.n += 1
        return img, labels, f"item {self.n - 1}"


def label_map(x, colours, used, extra=()):
    """Index of the nearest colour (of those used) per pixel, -1 for the
    background and extra colours (the padding's mean colour)."""
    img = x.transpose(1, 2, 0)[:, :, ::-1].astype(np.float32) * 255
    used = sorted(used)
    cands = np.array([colours[c] for c in used] + [BG] + list(extra), np.float32)
    d = np.sqrt(((img[:, :, None, :] - cands[None, None]) ** 2).sum(-1))
    k = d.argmin(-1)
    # a pixel counts only when clearly its colour (edge pixels blend two)
    gap = np.sqrt(((cands[:, None] - cands[None]) ** 2).sum(-1))
    np.fill_diagonal(gap, np.inf)
    sure = d.min(-1) < 0.4 * gap.min(1)[k]
    lut = np.array(used + [-1] * (1 + len(extra)))
    return np.where(sure, lut[k], -1)


def check_boxes(x, truths, used, colours=PALETTE, tol=2.0, extra=(), absent_px=2, skip_absent=()):
    """Each truth box matches its colour's pixel bounding box within tol
    pixels; colours (of those drawn, `used`) without a box have (almost) no
    pixels."""
    _, H, W = x.shape
    m = label_map(x, colours, used, extra)
    rows = truths[truths[:, 2] > 0]
    seen = set()
    for bx, by, bw, bh, c in rows:
        c = int(c)
        assert c not in seen, f"colour {c} has two boxes"
        seen.add(c)
        ys, xs = np.nonzero(m == c)
        assert len(xs), f"box of colour {c} has no pixels"
        got = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)
        want = np.array([(bx - bw / 2) * W, (by - bh / 2) * H, (bx + bw / 2) * W, (by + bh / 2) * H])
        assert np.abs(got - want).max() <= tol, f"colour {c}: pixels {got} vs box {want}"
    for c in used:
        if c in seen or c in skip_absent:
            continue
        ys, xs = np.nonzero(m == c)
        if len(xs):
            assert min(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) <= absent_px, \
                f"colour {c} is visible ({len(xs)} px) but has no box"
    return len(rows)


RECTS_A = [(0, 20, 15, 70, 55), (1, 120, 30, 180, 100), (2, 40, 90, 90, 140), (3, 150, 120, 195, 145)]


@pytest.mark.parametrize("seed", range(6))
def test_jitter_flip_keep_boxes_on_pixels(seed):
    img, labels = scene(200, 150, RECTS_A)
    aug = DetectionAugment(width=160, height=128, classes=8, jitter=0.3, resize=1.5, flip=1, **PLAIN)
    info = {}
    x, t = detection_sample(ListSource([(img, labels)]), aug, np.random.default_rng(seed), info=info)
    assert x.shape == (3, 128, 160) and x.dtype == np.float32 and t.shape == (200, 5)
    mean = cv2.mean(img)[:3]
    check_boxes(x, t, range(4), extra=[mean])


def test_flip_mirrors_boxes_and_pixels():
    img, labels = scene(200, 150, RECTS_A)
    aug = DetectionAugment(width=200, height=150, classes=8, jitter=0.0, flip=1, **PLAIN)
    flipped = 0
    for seed in range(8):
        info = {}
        x, t = detection_sample(ListSource([(img, labels)]), aug, np.random.default_rng(seed), info=info)
        check_boxes(x, t, range(4), tol=1.0)
        if info["parts"][0]["flip"]:
            flipped += 1
            ref = img[:, ::-1, ::-1].transpose(2, 0, 1) / 255.0
            assert np.abs(x - ref).max() < 1e-6
            row = t[t[:, 4] == 0][0]
            assert row[0] == pytest.approx(1 - labels[0, 1], abs=1e-6)
    assert 0 < flipped < 8


@pytest.mark.parametrize("seed", range(3))
def test_letter_box_keeps_aspect(seed):
    img, labels = scene(200, 100, [(0, 10, 10, 60, 40), (1, 120, 50, 190, 95)])
    aug = DetectionAugment(width=128, height=128, classes=8, jitter=0.0, flip=0, letter_box=1, **PLAIN)
    x, t = detection_sample(ListSource([(img, labels)]), aug, np.random.default_rng(seed))
    check_boxes(x, t, range(2), extra=[cv2.mean(img)[:3]])
    # the 2:1 image fills a 128 x 64 band in the middle; boxes keep their aspect
    r = t[t[:, 4] == 0][0]
    assert r[2] * 128 / (r[3] * 128) == pytest.approx(50 / 30, rel=0.05)
    assert r[1] * 128 == pytest.approx(32 + 25 * 64 / 100, abs=1.0)
    aug_j = aug.replace(jitter=0.2)
    x, t = detection_sample(ListSource([(img, labels)]), aug_j, np.random.default_rng(seed))
    check_boxes(x, t, range(2), extra=[cv2.mean(img)[:3]])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("bound", [0, 1])
def test_mosaic_boxes_follow_their_quarters(seed, bound):
    items = []
    for k in range(4):
        img, labels = scene(160, 120, [(2 * k, 10, 10, 60, 50), (2 * k + 1, 90, 60, 150, 110)])
        items.append((img, labels))
    aug = DetectionAugment(width=160, height=160, classes=8, jitter=0.2, flip=1, mosaic=1, mosaic_bound=bound,
                           **PLAIN)
    for s in range(seed * 10, seed * 10 + 10):   # find a sample that used the mosaic
        info = {}
        x, t = detection_sample(Cycle(items), aug, np.random.default_rng(s), info=info)
        if info["mode"] == 3:
            break
    assert info["mode"] == 3
    means = [cv2.mean(im)[:3] for im, _ in items]
    n = check_boxes(x, t, range(8), extra=means, tol=2.5)   # mosaic_bound truncates to whole pixels
    assert n >= 2


@pytest.mark.parametrize("seed", range(4))
def test_mixup_keeps_boxes_of_both(seed):
    a = scene(200, 150, [(0, 10, 10, 50, 60), (1, 20, 90, 60, 140)])
    b = scene(200, 150, [(4, 140, 10, 190, 60), (5, 150, 90, 190, 140)])
    aug = DetectionAugment(width=200, height=150, classes=8, jitter=0.05, flip=0, mixup=1, **PLAIN)
    for s in range(seed * 10, seed * 10 + 10):
        info = {}
        x, t = detection_sample(Cycle([a, b]), aug, np.random.default_rng(s), info=info)
        if info["mode"] == 1:
            break
    assert info["mode"] == 1
    half = [tuple(0.5 * np.array(c) + 0.5 * np.array(BG)) for c in PALETTE]
    assert check_boxes(x, t, [0, 1, 4, 5], colours=half, extra=[cv2.mean(a[0])[:3]]) == 4
    assert sorted(t[t[:, 2] > 0, 4].astype(int)) == [0, 1, 4, 5]


@pytest.mark.parametrize("seed", range(6))
def test_cutmix_boxes_of_pasted_region(seed):
    a = scene(160, 160, [(0, 10, 10, 60, 60), (1, 90, 20, 150, 70), (2, 20, 100, 70, 150), (3, 100, 100, 150, 150)])
    b = scene(160, 160, [(4, 5, 5, 75, 75), (5, 85, 5, 155, 75), (6, 5, 85, 75, 155), (7, 85, 85, 155, 155)])
    aug = DetectionAugment(width=160, height=160, classes=8, jitter=0.0, flip=0, cutmix=1, **PLAIN)
    for s in range(seed * 10, seed * 10 + 10):
        info = {}
        x, t = detection_sample(Cycle([a, b]), aug, np.random.default_rng(s), info=info)
        if info["mode"] == 2:
            break
    assert info["mode"] == 2
    l, tp, r, bt = info["cut"]
    # the base image's boxes may be dropped when mostly covered; every box
    # kept matches the visible pixels of its colour, pasted ones lie in the cut
    check_boxes(x, t, range(8), skip_absent=range(4))
    for bx, by, bw, bh, c in t[t[:, 2] > 0]:
        if c >= 4:
            assert l - 1 <= (bx - bw / 2) * 160 and (bx + bw / 2) * 160 <= r + 1
            assert tp - 1 <= (by - bh / 2) * 160 and (by + bh / 2) * 160 <= bt + 1


def test_cutmix_visible_box_cases():
    box = (0.2, 0.2, 0.6, 0.6)
    assert _visible_box(box, (0.0, 0.0, 1.0, 0.4)) == (0.2, 0.4, 0.6, 0.6)   # covers the top
    assert _visible_box(box, (0.5, 0.0, 1.0, 1.0)) == (0.2, 0.2, 0.5, 0.6)   # covers the right
    assert _visible_box(box, (0.3, 0.3, 0.4, 0.4)) == box                    # a hole inside
    assert _visible_box(box, (0.0, 0.0, 1.0, 1.0)) is None


def test_boxes_cut_by_crop_or_too_small_are_dropped():
    img, labels = scene(200, 200, [(0, 0, 0, 20, 20), (1, 100, 100, 101, 101)])
    aug = DetectionAugment(width=100, height=100, classes=8, jitter=0.0, flip=0, **PLAIN)
    x, t = detection_sample(ListSource([(img, labels)]), aug, np.random.default_rng(0))
    # the 1-pixel box becomes half a network pixel: dropped like darknet's < 1 px rule
    assert t[t[:, 2] > 0, 4].tolist() == [0.0]


def test_max_boxes_caps_truths():
    rects = [(i % 8, 10 + 20 * i, 10, 25 + 20 * i, 30) for i in range(8)]
    img, labels = scene(200, 50, rects)
    aug = DetectionAugment(width=200, height=50, classes=8, max_boxes=3, jitter=0.0, flip=0, **PLAIN)
    x, t = detection_sample(ListSource([(img, labels)]), aug, np.random.default_rng(0))
    assert t.shape == (3, 5) and (t[:, 2] > 0).all()


def test_hsv_identity_and_exposure():
    img, _ = scene(40, 30, [(0, 5, 5, 20, 20)])
    assert _hsv(img, 0.0, 1.0, 1.0) is img
    darker = _hsv(img, 0.0, 1.0, 0.5)
    assert abs(int(darker[0, 0, 0]) - 30) <= 1                     # grey V 60 -> 30
    assert darker[10, 10].tolist() == [0, 0, 128]                  # red stays red, half as bright
    hue = _hsv(img, 1 / 3, 1.0, 1.0)                                # red turned by 120 degrees: green
    assert hue[10, 10].argmax() == 1


def test_background_blur_keeps_objects_sharp_and_noise_brightens():
    img, labels = scene(120, 100, [(0, 20, 20, 60, 60)])
    rng = np.random.default_rng(0)
    truth = np.array([[40 / 120, 40 / 100, 40 / 120, 40 / 100, 0]], np.float32)
    sharp = _augment_image(img, 120, 100, 0, 0, 120, 100, 0, 0, 1, 1, 0, 0, truth, rng)
    blurred = _augment_image(img, 120, 100, 0, 0, 120, 100, 0, 0, 1, 1, 0, 1, truth, rng)
    assert np.array_equal(blurred[20:60, 20:60], sharp[20:60, 20:60])
    assert not np.array_equal(blurred, sharp)
    noisy = _augment_image(img, 120, 100, 0, 0, 120, 100, 0, 0, 1, 1, 20, 0, truth, rng)
    assert (noisy >= sharp).all() and noisy.mean() > sharp.mean() + 3


def test_classifier_rotation_moves_pixels_as_computed():
    img = np.zeros((100, 100, 3), np.uint8)
    cv2.rectangle(img, (40, 30), (69, 59), (255, 255, 255), -1)   # pixels 40..69 x 30..59
    aug = ClassifierAugment(width=80, height=80, classes=2, min_crop=100, max_crop=100, angle=30, aspect=1.0,
                            flip=0)
    rotated = 0
    for seed in range(4):
        info = {}
        x, y = classifier_sample(ListSource([(img, [1])]), aug, np.random.default_rng(seed), info=info)
        assert x.shape == (3, 80, 80) and y.tolist() == [0.0, 1.0]
        inv = cv2.invertAffineTransform(info["matrix"])    # source -> output
        corners = np.array([[40, 30, 1], [70, 30, 1], [70, 60, 1], [40, 60, 1]], np.float64) - [0.5, 0.5, 0]
        out = corners @ inv.T + 0.5
        ys, xs = np.nonzero(x[0] > 0.5)
        got = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        want = [out[:, 0].min(), out[:, 1].min(), out[:, 0].max(), out[:, 1].max()]
        assert np.abs(np.array(got) - np.array(want)).max() <= 2.0, (got, want, info["rad"])
        rotated += abs(info["rad"]) > math.radians(5)
    assert rotated


def test_classifier_label_smoothing_and_mixup():
    a = np.zeros((50, 50, 3), np.uint8)
    b = np.full((50, 50, 3), 255, np.uint8)
    aug = ClassifierAugment(width=32, height=32, classes=4, min_crop=32, max_crop=32, flip=0, mixup=1,
                            label_smooth_eps=0.1)
    ys = []
    for s in range(8):
        x, y = classifier_sample(Cycle([(a, [0]), (b, [2])]), aug, np.random.default_rng(s))
        assert y.sum() == pytest.approx(1.0, abs=1e-5)
        ys.append(y)
    assert any(abs(y[0] - 0.9) < 1e-6 for y in ys)                      # plain, smoothed
    assert any(abs(y[0] - (0.9 + 0.1 / 3) / 2) < 1e-6 for y in ys)       # mixed half and half


def test_detection_sample_is_a_function_of_its_generator():
    img, labels = scene(200, 150, RECTS_A)
    aug = DetectionAugment(width=96, height=96, classes=8, jitter=0.3, hue=0.1, saturation=1.5, exposure=1.5,
                           mosaic=1, blur=1, gaussian_noise=10)
    src = ListSource([(img, labels)])
    x1, t1 = detection_sample(src, aug, np.random.default_rng(5))
    x2, t2 = detection_sample(src, aug, np.random.default_rng(5))
    x3, _ = detection_sample(src, aug, np.random.default_rng(6))
    assert np.array_equal(x1, x2) and np.array_equal(t1, t2)
    assert not np.array_equal(x1, x3)


def test_letter_box_with_mosaic_is_refused():
    with pytest.raises(ValueError, match="letter_box"):
        DetectionAugment(mosaic=1, letter_box=1)


def test_one_channel_network():
    img, labels = scene(120, 90, RECTS_A[:2])
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    aug = DetectionAugment(width=64, height=48, channels=1, classes=8, jitter=0.2, exposure=1.5, mosaic=1,
                           blur=1, gaussian_noise=4)
    for s in range(4):
        x, t = detection_sample(ListSource([(gray, labels)]), aug, np.random.default_rng(s))
        assert x.shape == (1, 48, 64) and 0 <= x.min() and x.max() <= 1 and (t[:, 2] > 0).any()


@pytest.mark.parametrize("channels", [3, 1])
def test_mosaic_quarters_only_give_the_whole_image_values(monkeypatch, channels):
    """A mosaic part's flip and colour distortion done on the quarter that shows give the values darknet's order
    (the whole image, then the quarter cut out) gives, bit for bit: photos of several sizes, jitter, flips, hue,
    saturation and exposure; with blur or noise the whole image is worked as before."""
    from pydarknet.data import augment

    data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data")
    photos = [cv2.imread(os.path.join(data, name)) for name in ("dog.jpg", "eagle.jpg", "person.jpg")]
    if channels == 1:
        photos = [cv2.cvtColor(p, cv2.COLOR_BGR2GRAY) for p in photos]
    labels = np.array([[0, 0.5, 0.5, 0.3, 0.4], [1, 0.3, 0.6, 0.2, 0.2]], np.float32)
    items = [(p, labels) for p in photos]
    used = 0
    for extra in ({}, dict(blur=1), dict(gaussian_noise=10)):
        aug = DetectionAugment(width=96, height=64, channels=channels, classes=2, jitter=0.3, resize=1.5, flip=1,
                               hue=0.1, saturation=1.5, exposure=1.5, mosaic=1, **extra)
        for seed in range(24):
            info = {}
            monkeypatch.setattr(augment, "MOSAIC_QUARTERS_ONLY", True)
            x1, t1 = detection_sample(Cycle(items), aug, np.random.default_rng(seed), info=info)
            monkeypatch.setattr(augment, "MOSAIC_QUARTERS_ONLY", False)
            x2, t2 = detection_sample(Cycle(items), aug, np.random.default_rng(seed))
            assert np.array_equal(x1, x2) and np.array_equal(t1, t2), (extra, seed)
            used += info["mode"] == 3 and any(p["flip"] for p in info["parts"])
    assert used >= 10   # flipped mosaics were among them
