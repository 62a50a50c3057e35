"""Training-time augmentation as darknet's [net] options ask for it.

Detectors follow darknet's ``load_data_detection`` (data.c, OpenCV build) and
``image_data_augmentation`` (image_opencv.cpp); classifiers follow
``load_data_augment`` / ``random_augment_image``. Every random choice comes
from the NumPy Generator passed in, so a sample is repeatable from its seed.
Images travel as OpenCV's BGR uint8 and leave as float32 [C, H, W] RGB in 0..1;
boxes travel as darknet's truth rows (x, y, w, h, class), normalized.

Detector options, per image:

* ``jitter`` (and ``resize``, both from the last [yolo]/[region] layer): each
  side of the source image moves by up to ``jitter`` of its size, inwards
  (crop) or outwards (padding filled with the image's mean colour), so the
  crop's aspect changes too; ``resize`` adds a common zoom in or out. The crop
  is resized to the network size (bilinear). Boxes follow with darknet's
  ``correct_boxes``: shifted, scaled, clipped to the crop, then dropped when
  narrower or lower than one network pixel, and at most ``max`` are kept
  (after shuffling their order, as darknet does).
* ``letter_box``: the crop is widened (or heightened) to the network's aspect
  ratio before the jitter, so the image keeps its proportions.
* ``flip``: mirror left-right with probability 1/2.
* ``hue``, ``saturation``, ``exposure``: one HSV distortion per image, done on
  8-bit HSV as darknet's OpenCV path does: H += 179*dhue (dhue uniform in
  +-hue), S *= dsat, V *= dexp (rand_scale: uniform in 1..s, inverted half of
  the time), saturating at 0..255. A 1-channel network only scales by dexp.
* ``blur``: a third of the images are sharp, a third have a 17x17 Gaussian
  blur outside the boxes, a third blur all over with kernel ``blur`` (made
  odd; limited to an eighth of the smallest box, as in darknet; blur=1 means
  the background blur for that third as well).
* ``gaussian_noise``: half of the images get noise of standard deviation
  ``gaussian_noise`` (at most 127). As in darknet the noise is drawn into an
  8-bit image, so its negative half is lost: the pixels only brighten.
* ``mosaic``: with probability 1/2 a sample is made of four images, each
  jittered on its own and cut at a random point (20%..80% of each side);
  each quarter shows the part of its image nearest the cut, half of the time
  pushed to the corner so more of it is visible. Boxes are shifted, clipped
  to the canvas (``mosaic_bound``: to their quarter) and dropped below a pixel.
  Each quarter starts where its image's padding ends; darknet measures that
  padding with the wrong scale (w/ow rather than w/swidth), which can cut a
  few pixels off objects whose boxes stay whole, so here the right scale is
  used.
* ``mixup``: with probability 1/2 a second image is averaged in (0.5 each)
  and its boxes are appended.
* ``cutmix``: darknet prints "cutmix=1 isn't supported for Detector" and
  ignores it (cutmix with mosaic means mosaic). Here cutmix=1 without mosaic
  does what it does for classifiers, for detectors: with probability 1/2 a
  rectangle of 30%..80% of each side from a second image is pasted in. The
  pasted image's boxes are clipped to the rectangle (dropped below a pixel);
  the base image's boxes shrink to the bounding box of their visible part and
  are dropped when less than a quarter of their area stays visible.

Where this simplifies darknet: the random decisions darknet makes once per
loading thread (whether a batch uses mosaic/mixup) are made per sample here;
boxes partly outside the image are clipped to the image when read (darknet
clips them to the crop, which only differs where the crop pads the image);
``track``, ``contrastive`` and ``augment_speed`` are not supported.

Classifier options follow ``random_augment_image``: ``aspect`` (rand_scale),
``min_crop``/``max_crop`` (the shorter side is scaled to a random length in
that range), ``angle`` (rotation uniform in +-angle degrees, zero outside the
image) and a random shift, giving a square crop of max(width, height) pixels;
then ``flip``, a float HSV distortion (darknet's distort_image: hue added and
wrapped, saturation and value scaled, clipped to 0..1), and a bilinear resize
to the network size (OpenCV's resize instead of darknet's own, a sub-pixel
difference). ``mixup``, ``cutmix`` and ``mosaic`` mix images and their one-hot
labels as darknet's classifier does (each sample with probability 1/2);
``blur`` blurs a quarter of the images (kernel 15 for blur=1).
``label_smooth_eps`` softens the one-hot labels.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

from ..cfg import HEAD_TYPES

__all__ = [
    "DetectionAugment", "ClassifierAugment", "detection_sample", "classifier_sample",
    "rand_scale", "ListSource", "to_chw",
]


# ----------------------------------------------------------------------------- darknet's random helpers

def rand_int(rng, lo, hi):
    """darknet's rand_int: an integer in [lo, hi] (either order)."""
    lo, hi = int(lo), int(hi)
    if hi < lo:
        lo, hi = hi, lo
    return int(rng.integers(lo, hi + 1))


def rand_uniform(rng, lo, hi):
    if hi < lo:
        lo, hi = hi, lo
    return float(rng.random() * (hi - lo) + lo)


def rand_scale(rng, s):
    """darknet's rand_scale: uniform in 1..s, inverted half of the time."""
    scale = rand_uniform(rng, 1.0, s)
    return scale if rng.integers(2) else 1.0 / scale


def _trunc(v):
    """C's float -> int conversion (towards zero)."""
    return int(v)


def to_chw(img):
    """BGR (or gray) uint8/float [H, W, C] -> float32 RGB [C, H, W] in 0..1."""
    if img.ndim == 2:
        img = img[:, :, None]
    out = np.empty((img.shape[2], img.shape[0], img.shape[1]), np.float32)
    src = img[:, :, ::-1] if img.shape[2] == 3 else img
    np.copyto(out, src.transpose(2, 0, 1))
    if img.dtype == np.uint8:
        out *= np.float32(1.0 / 255.0)
    return out


# ----------------------------------------------------------------------------- options

def _detection_layer(spec):
    heads = [l for l in spec.layers if l.type in HEAD_TYPES]
    return heads[-1] if heads else None


@dataclass
class DetectionAugment:
    """The augmentation a detector's cfg asks for (see the module notes)."""
    width: int = 416
    height: int = 416
    channels: int = 3
    classes: int = 80
    max_boxes: int = 200
    jitter: float = 0.2
    resize: float = 1.0
    flip: int = 1
    hue: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0
    mosaic: int = 0
    mixup: int = 0
    cutmix: int = 0
    mosaic_bound: int = 0
    letter_box: int = 0
    blur: int = 0
    gaussian_noise: int = 0
    random: float = 0.0          # [yolo] random: multi-scale factor (used by the training loop)
    resize_step: int = 32

    def __post_init__(self):
        if self.mosaic and self.letter_box:
            raise ValueError("letter_box=1 together with mosaic=1 is not supported (darknet refuses it too)")
        self.channels = 1 if self.channels == 1 else 3

    @classmethod
    def from_spec(cls, spec, **overrides):
        """From a parsed cfg (pydarknet.cfg.NetSpec): [net] options and the
        last detection layer's jitter, resize, max, classes and random."""
        o = spec.options
        head = _detection_layer(spec)
        a = head.attrs if head is not None else {}
        kw = dict(
            width=o["width"], height=o["height"], channels=o.get("channels") or 3,
            classes=a.get("classes", 80), max_boxes=a.get("max", 200), jitter=a.get("jitter", 0.2),
            resize=a.get("resize", 1.0), random=a.get("random", 0.0),
            flip=o.get("flip", 1), hue=o.get("hue", 0.0), saturation=o.get("saturation", 1.0),
            exposure=o.get("exposure", 1.0), mosaic=o.get("mosaic", 0), mixup=o.get("mixup", 0),
            cutmix=o.get("cutmix", 0), mosaic_bound=o.get("mosaic_bound", 0),
            letter_box=o.get("letter_box", 0), blur=o.get("blur", 0),
            gaussian_noise=o.get("gaussian_noise", 0), resize_step=int(o.get("resize_step", 32)),
        )
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_network(cls, net, **overrides):
        return cls.from_spec(net.spec, **overrides)

    @property
    def mode(self):
        """darknet's use_mixup for a detector: 0 none, 1 mixup, 2 cutmix
        (an extension here), 3 mosaic."""
        if self.mosaic:
            return 3
        if self.cutmix:
            return 2
        return 1 if self.mixup else 0

    def replace(self, **kw):
        d = asdict(self)
        d.update(kw)
        return type(self)(**d)


@dataclass
class ClassifierAugment:
    """The augmentation a classifier's cfg asks for (see the module notes)."""
    width: int = 224
    height: int = 224
    channels: int = 3
    classes: int = 1000
    min_crop: int = 224
    max_crop: int = 448
    angle: float = 0.0
    aspect: float = 1.0
    flip: int = 1
    hue: float = 0.0
    saturation: float = 1.0
    exposure: float = 1.0
    mosaic: int = 0
    mixup: int = 0
    cutmix: int = 0
    blur: int = 0
    label_smooth_eps: float = 0.0

    def __post_init__(self):
        self.channels = 1 if self.channels == 1 else 3

    @classmethod
    def from_spec(cls, spec, classes, **overrides):
        o = spec.options
        kw = dict(
            width=o["width"], height=o["height"], channels=o.get("channels") or 3, classes=classes,
            min_crop=o.get("min_crop", o["width"]), max_crop=o.get("max_crop", 2 * o["width"]),
            angle=o.get("angle", 0.0), aspect=o.get("aspect", 1.0), flip=o.get("flip", 1),
            hue=o.get("hue", 0.0), saturation=o.get("saturation", 1.0), exposure=o.get("exposure", 1.0),
            mosaic=o.get("mosaic", 0), mixup=o.get("mixup", 0), cutmix=o.get("cutmix", 0),
            blur=o.get("blur", 0), label_smooth_eps=o.get("label_smooth_eps", 0.0),
        )
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_network(cls, net, classes, **overrides):
        return cls.from_spec(net.spec, classes, **overrides)

    @property
    def mode(self):
        """darknet's net->mixup: 4 mosaic+cutmix, 2 cutmix, 3 mosaic, 1 mixup."""
        if self.mosaic and self.cutmix:
            return 4
        if self.cutmix:
            return 2
        if self.mosaic:
            return 3
        return 1 if self.mixup else 0

    def replace(self, **kw):
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(kw)
        return type(self)(**d)


class ListSource:
    """In-memory images for the samplers: draw(rng) picks one at random and
    returns (BGR uint8 image, labels, name). For detection `labels` are rows
    (class, x, y, w, h); for classification a list of class indices."""

    def __init__(self, items):
        self.items = list(items)

    def draw(self, rng):
        i = int(rng.integers(len(self.items)))
        img, labels = self.items[i][:2]
        return img, labels, f"item {i}"


# ----------------------------------------------------------------------------- detection

def _truths(labels, rng, dx, dy, sx, sy, flip, net_w, net_h, max_boxes):
    """darknet's fill_truth_detection + correct_boxes: label rows (class, x,
    y, w, h) of the source image -> truth rows (x, y, w, h, class) of the
    crop, shuffled, clipped, at most max_boxes, boxes under a pixel dropped.
    Also returns darknet's min_w_h (smallest side in network pixels)."""
    if len(labels) == 0:
        return np.zeros((0, 5), np.float32), 0
    b = labels[rng.permutation(len(labels))].astype(np.float64)
    cls, x, y, w, h = b.T
    left = (x - w / 2) * sx - dx
    right = (x + w / 2) * sx - dx
    top = (y - h / 2) * sy - dy
    bot = (y + h / 2) * sy - dy
    if flip:
        left, right = 1.0 - right, 1.0 - left
    left, right = np.clip(left, 0, 1), np.clip(right, 0, 1)
    top, bot = np.clip(top, 0, 1), np.clip(bot, 0, 1)
    x, y = (left + right) / 2, (top + bot) / 2
    w, h = right - left, bot - top
    n = min(len(b), max_boxes)
    x, y, w, h, cls = x[:n], y[:n], w[:n], h[:n], cls[:n]
    keep = (w >= 1.0 / net_w) & (h >= 1.0 / net_h) & (x > 0) & (x <= 1) & (y > 0) & (y <= 1)
    out = np.stack([x, y, w, h, cls], 1)[keep].astype(np.float32)
    min_w_h = 0
    if len(out):
        min_w_h = int(min((out[:, 2] * net_w).min(), (out[:, 3] * net_h).min()))
    return out, min_w_h


def _hsv(img, dhue, dsat, dexp):
    """darknet's 8-bit HSV distortion (image_data_augmentation)."""
    if dsat == 1 and dexp == 1 and dhue == 0:
        return img
    if img.ndim == 2 or img.shape[2] == 1:
        return cv2.convertScaleAbs(img, alpha=dexp) if dexp != 1 else img
    v = np.arange(256, dtype=np.float64)
    lut = np.empty((256, 1, 3), np.uint8)
    lut[:, 0, 0] = np.clip(np.rint(v + 179 * dhue), 0, 255)
    lut[:, 0, 1] = np.clip(np.rint(v * dsat), 0, 255)
    lut[:, 0, 2] = np.clip(np.rint(v * dexp), 0, 255)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    hsv = cv2.LUT(hsv, lut)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def _mean(src):
    """cv2.mean of the image: kept with it when it comes from the decoded-image cache (data.cache)."""
    kept = getattr(src, "channel_mean", None)
    return kept if kept is not None else cv2.mean(src)


def _place(src, w, h, pleft, ptop, swidth, sheight):
    """The crop (pleft, ptop, swidth, sheight) of src, padded with the
    image's mean colour where it leaves the image, resized to w x h."""
    oh, ow = src.shape[:2]
    if pleft == 0 and ptop == 0 and swidth == ow and sheight == oh:
        return cv2.resize(src, (w, h), interpolation=cv2.INTER_LINEAR)
    x0, y0 = max(pleft, 0), max(ptop, 0)
    x1, y1 = min(pleft + swidth, ow), min(ptop + sheight, oh)
    if x0 >= x1 or y0 >= y1:
        mean = _mean(src)[:1 if src.ndim == 2 else 3]
        crop = np.empty((sheight, swidth) + src.shape[2:], np.uint8)
        crop[:] = np.clip(np.rint(mean), 0, 255).astype(np.uint8)
    else:
        crop = src[y0:y1, x0:x1]
        if (x0, y0, x1, y1) != (pleft, ptop, pleft + swidth, ptop + sheight):
            mean = _mean(src)
            crop = cv2.copyMakeBorder(crop, y0 - ptop, ptop + sheight - y1, x0 - pleft, pleft + swidth - x1,
                                      cv2.BORDER_CONSTANT, value=[int(round(m)) for m in mean])
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)


# a mosaic part's flip and colour distortion run on the rows of it that show (False: on the whole image, as darknet;
# the same values, tests/test_augment.py)
MOSAIC_QUARTERS_ONLY = True


def _augment_image(src, w, h, pleft, ptop, swidth, sheight, flip, dhue, dsat, dexp, noise, blur, truth, rng,
                   region=None):
    """darknet's image_data_augmentation on an 8-bit image. `region` (y0, y1):
    only those rows of the result are wanted (a mosaic quarter's); without
    blur and noise, which read or draw over the whole image, the flip and the
    colour distortion then run on those rows alone (whole rows: OpenCV's HSV
    conversions give a pixel's value by its place in a row, so that only
    whole rows keep every value), and only they are returned."""
    sized = _place(src, w, h, pleft, ptop, swidth, sheight)
    if region is not None and not blur and not noise:
        sized = sized[region[0]:region[1]]
    if flip:
        sized = cv2.flip(sized, 1)
    sized = _hsv(sized, dhue, dsat, dexp)
    if blur:
        if blur == 1:
            dst = cv2.GaussianBlur(sized, (17, 17), 0)
            for x, y, bw, bh, _ in truth:   # keep the objects sharp
                left, top = _trunc((x - bw / 2) * w), _trunc((y - bh / 2) * h)
                right, bot = left + _trunc(bw * w), top + _trunc(bh * h)
                left, top = max(left, 0), max(top, 0)
                right, bot = min(right, w), min(bot, h)
                if right > left and bot > top:
                    dst[top:bot, left:right] = sized[top:bot, left:right]
        else:
            k = (blur // 2) * 2 + 1
            dst = cv2.GaussianBlur(sized, (k, k), 0)
        sized = dst
    if noise:
        sigma = min(max(int(noise), 0), 127)
        n = np.clip(np.rint(rng.normal(0.0, sigma, sized.shape)), 0, 255).astype(np.uint8)
        sized = cv2.add(sized, n)
    return sized


def _mosaic_truth(acc, truth, w, h, cut_x, cut_y, part, left_shift, right_shift, top_shift, bot_shift,
                  mosaic_bound, max_boxes):
    """darknet's blend_truth_mosaic: this part's boxes moved into its quarter."""
    lowest_w, lowest_h = 1.0 / w, 1.0 / h
    for xb, yb, wb, hb, cls in truth:
        if len(acc) >= max_boxes:
            break
        xb, yb, wb, hb = float(xb), float(yb), float(wb), float(hb)
        if part in (0, 2):
            xb -= (w - cut_x - right_shift) / w
        else:
            xb += (cut_x - left_shift) / w
        if part in (0, 1):
            yb -= (h - cut_y - bot_shift) / h
        else:
            yb += (cut_y - top_shift) / h
        left, right = _trunc((xb - wb / 2) * w), _trunc((xb + wb / 2) * w)
        top, bot = _trunc((yb - hb / 2) * h), _trunc((yb + hb / 2) * h)
        if mosaic_bound:
            lb, rb = (0, cut_x) if part in (0, 2) else (cut_x, w)
            tb, bb = (0, cut_y) if part in (0, 1) else (cut_y, h)
            left, right = max(left, lb), min(right, rb)
            top, bot = max(top, tb), min(bot, bb)
            xb, wb = (right + left) / 2 / w, (right - left) / w
            yb, hb = (bot + top) / 2 / h, (bot - top) / h
        else:
            if left < 0:
                d = left / w
                xb, wb = xb - d / 2, wb + d
            if right > w:
                d = (right - w) / w
                xb, wb = xb - d / 2, wb - d
            if top < 0:
                d = top / h
                yb, hb = yb - d / 2, hb + d
            if bot > h:
                d = (bot - h) / h
                yb, hb = yb - d / 2, hb - d
            left, right = _trunc((xb - wb / 2) * w), _trunc((xb + wb / 2) * w)
            top, bot = _trunc((yb - hb / 2) * h), _trunc((yb + hb / 2) * h)
        if (left >= 0 and right <= w and top >= 0 and bot <= h and 0 < wb < 1 and 0 < hb < 1
                and 0 < xb < 1 and 0 < yb < 1 and wb > lowest_w and hb > lowest_h):
            acc.append((xb, yb, wb, hb, cls))


def _clip_row(row):
    x, y, w, h, c = row
    l, t = max(x - w / 2, 0.0), max(y - h / 2, 0.0)
    r, b = min(x + w / 2, 1.0), min(y + h / 2, 1.0)
    return ((l + r) / 2, (t + b) / 2, r - l, b - t, c)


def _visible_box(box, cut):
    """Bounding box (l, t, r, b) of box minus the rectangle cut, or None."""
    l, t, r, b = box
    cl, ct, cr, cb = cut
    if cr <= l or cl >= r or cb <= t or ct >= b:
        return box
    if cl <= l and cr >= r:             # the cut spans the box's width
        if ct <= t and cb >= b:
            return None
        if ct <= t:
            return (l, cb, r, b)
        if cb >= b:
            return (l, t, r, ct)
        return box
    if ct <= t and cb >= b:             # ... or its height
        if cl <= l:
            return (cr, t, r, b)
        if cr >= r:
            return (l, t, cl, b)
    return box


def _cutmix_truth(base, pasted, cut, w, h, max_boxes):
    """Boxes after pasting the rectangle cut (pixels l, t, r, b) of a second
    image: base boxes shrink to their visible part (dropped when under a
    quarter stays visible), pasted boxes are clipped to the rectangle."""
    cl, ct, cr, cb = (cut[0] / w, cut[1] / h, cut[2] / w, cut[3] / h)
    out = []
    area_cut = lambda l, t, r, b: max(0.0, min(r, cr) - max(l, cl)) * max(0.0, min(b, cb) - max(t, ct))
    for x, y, bw, bh, c in base:
        box = (x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2)
        area = bw * bh
        if area <= 0 or (area - area_cut(*box)) < 0.25 * area:
            continue
        vis = _visible_box(box, (cl, ct, cr, cb))
        if vis is None:
            continue
        l, t, r, b = vis
        if r - l >= 1.0 / w and b - t >= 1.0 / h:
            out.append(((l + r) / 2, (t + b) / 2, r - l, b - t, c))
    for x, y, bw, bh, c in pasted:
        l, t = max(x - bw / 2, cl), max(y - bh / 2, ct)
        r, b = min(x + bw / 2, cr), min(y + bh / 2, cb)
        if r - l >= 1.0 / w and b - t >= 1.0 / h:
            out.append(((l + r) / 2, (t + b) / 2, r - l, b - t, c))
    return out[:max_boxes]


def _truth_array(rows, max_boxes):
    t = np.zeros((max_boxes, 5), np.float32)
    n = min(len(rows), max_boxes)
    if n:
        t[:n] = np.asarray(rows[:n], np.float32)
    return t


def detection_sample(source, aug, rng, width=None, height=None, info=None):
    """One augmented training sample: float32 [C, H, W] RGB in 0..1 and
    truths float32 [max_boxes, 5] (x, y, w, h, class; zero rows pad).
    `source.draw(rng)` gives (BGR uint8 image, label rows (class, x, y, w,
    h), name); `width`/`height` override the network size (multi-scale).
    `info`, a dict when given, receives the random choices made."""
    w = int(width or aug.width)
    h = int(height or aug.height)
    mode = aug.mode
    if mode and rng.integers(2) == 0:      # darknet: half of the loads without mixup/mosaic
        mode = 0
    if info is not None:
        info.update(mode=mode, parts=[])
    if mode == 3:
        cut_x = rand_int(rng, _trunc(w * 0.2), _trunc(w * 0.8))
        cut_y = rand_int(rng, _trunc(h * 0.2), _trunc(h * 0.8))
        canvas = np.zeros((h, w) + ((3,) if aug.channels == 3 else ()), np.uint8)
        if info is not None:
            info.update(cut_x=cut_x, cut_y=cut_y)
    passes = 4 if mode == 3 else 2 if mode in (1, 2) else 1
    acc, out = [], None
    for part in range(passes):
        src, labels, name = source.draw(rng)
        oh, ow = src.shape[:2]
        dw, dh = _trunc(ow * aug.jitter), _trunc(oh * aug.jitter)
        resize_down = aug.resize if aug.resize <= 1.0 else 1.0 / aug.resize
        resize_up = aug.resize if aug.resize >= 1.0 else 1.0 / aug.resize
        min_rdw, min_rdh = _trunc(ow * (1 - 1 / resize_down) / 2), _trunc(oh * (1 - 1 / resize_down) / 2)
        max_rdw, max_rdh = _trunc(ow * (1 - 1 / resize_up) / 2), _trunc(oh * (1 - 1 / resize_up) / 2)
        rr1, rr2 = rng.random(), rng.random()
        r1, r2, r3, r4 = rng.random(4)
        flip = int(rng.integers(2)) if aug.flip else 0
        dhue = rand_uniform(rng, -aug.hue, aug.hue)
        dsat = rand_scale(rng, aug.saturation)
        dexp = rand_scale(rng, aug.exposure)
        blur = 0
        if aug.blur:
            b = rand_int(rng, 0, 2)
            blur = 0 if b == 0 else 1 if b == 1 else aug.blur
        noise = aug.gaussian_noise if aug.gaussian_noise and rand_int(rng, 0, 1) == 1 else 0

        def pre(lo, hi, r):
            if hi < lo:
                lo, hi = hi, lo
            return r * (hi - lo) + lo

        pleft, pright = _trunc(pre(-dw, dw, r1)), _trunc(pre(-dw, dw, r2))
        ptop, pbot = _trunc(pre(-dh, dh, r3)), _trunc(pre(-dh, dh, r4))
        if aug.resize < 1:
            pleft += _trunc(pre(min_rdw, 0, rr1))
            pright += _trunc(pre(min_rdw, 0, rr2))
            ptop += _trunc(pre(min_rdh, 0, rr1))
            pbot += _trunc(pre(min_rdh, 0, rr2))
        else:
            pleft += _trunc(pre(min_rdw, max_rdw, rr1))
            pright += _trunc(pre(min_rdw, max_rdw, rr2))
            ptop += _trunc(pre(min_rdh, max_rdh, rr1))
            pbot += _trunc(pre(min_rdh, max_rdh, rr2))
        if aug.letter_box:
            img_ar, net_ar = ow / oh, w / h
            if img_ar / net_ar > 1:
                delta = (ow / net_ar - oh) / 2
                ptop, pbot = _trunc(ptop - delta), _trunc(pbot - delta)
            else:
                delta = (oh * net_ar - ow) / 2
                pleft, pright = _trunc(pleft - delta), _trunc(pright - delta)
        if mode == 3 and rng.integers(2) == 0:   # push to the corner so more of it shows
            if flip:
                if part == 0:
                    pleft, pright, pbot, ptop = pleft + pright, 0, pbot + ptop, 0
                elif part == 1:
                    pright, pleft, pbot, ptop = pright + pleft, 0, pbot + ptop, 0
                elif part == 2:
                    pleft, pright, ptop, pbot = pleft + pright, 0, ptop + pbot, 0
                else:
                    pright, pleft, ptop, pbot = pright + pleft, 0, ptop + pbot, 0
            else:
                if part == 0:
                    pright, pleft, pbot, ptop = pright + pleft, 0, pbot + ptop, 0
                elif part == 1:
                    pleft, pright, pbot, ptop = pleft + pright, 0, pbot + ptop, 0
                elif part == 2:
                    pright, pleft, ptop, pbot = pright + pleft, 0, ptop + pbot, 0
                else:
                    pleft, pright, ptop, pbot = pleft + pright, 0, ptop + pbot, 0
        swidth, sheight = ow - pleft - pright, oh - ptop - pbot
        if swidth <= 0 or sheight <= 0 or ow - pleft <= 0 or oh - ptop <= 0:
            swidth, sheight, pleft, ptop, pright, pbot = ow, oh, 0, 0, 0, 0
        sx, sy = swidth / ow, sheight / oh
        dx, dy = (pleft / ow) / sx, (ptop / oh) / sy
        truth, min_w_h = _truths(labels, rng, dx, dy, 1.0 / sx, 1.0 / sy, flip, w, h, aug.max_boxes)
        if blur > 1 and min_w_h // 8 < blur:
            blur = min_w_h // 8
        region = ys = None
        if mode == 3:
            # the padding each side got, in network pixels (darknet scales by
            # w / ow instead of w / swidth, which can cut objects off while
            # their boxes stay whole); the flip swaps the sides
            sl, sr = (pright, pleft) if flip else (pleft, pright)
            left_shift = min(cut_x, max(0, (-sl * w) // swidth))
            top_shift = min(cut_y, max(0, (-ptop * h) // sheight))
            right_shift = min(w - cut_x, max(0, (-sr * w) // swidth))
            bot_shift = min(h - cut_y, max(0, (-pbot * h) // sheight))
            # the part of this image that shows in its quarter
            ys = (h - cut_y - bot_shift, h - bot_shift) if part < 2 else (top_shift, top_shift + h - cut_y)
            xs = (w - cut_x - right_shift, w - right_shift) if part % 2 == 0 else (left_shift, left_shift + w - cut_x)
            region = ys + xs
        ai = _augment_image(src, w, h, pleft, ptop, swidth, sheight, flip, dhue, dsat, dexp, noise, blur,
                            truth, rng, ys if MOSAIC_QUARTERS_ONLY else None)
        if info is not None:
            info["parts"].append(dict(name=name, pleft=pleft, ptop=ptop, pright=pright, pbot=pbot,
                                      swidth=swidth, sheight=sheight, flip=flip, dhue=dhue, dsat=dsat,
                                      dexp=dexp, blur=blur, noise=noise))

        if mode == 0:
            out, acc = ai, list(map(tuple, truth))
        elif mode == 1:
            if part == 0:
                out, acc = ai, list(map(tuple, truth))
            else:
                out = to_chw(out) * 0.5 + to_chw(ai) * 0.5
                acc = (acc + list(map(tuple, truth)))[:aug.max_boxes]
        elif mode == 2:
            if part == 0:
                out, acc = ai, list(map(tuple, truth))
            else:
                cut_w = rand_int(rng, _trunc(w * 0.3), _trunc(w * 0.8))
                cut_h = rand_int(rng, _trunc(h * 0.3), _trunc(h * 0.8))
                cx = rand_int(rng, 0, w - cut_w - 1)
                cy = rand_int(rng, 0, h - cut_h - 1)
                out = out.copy()
                out[cy:cy + cut_h, cx:cx + cut_w] = ai[cy:cy + cut_h, cx:cx + cut_w]
                acc = _cutmix_truth(acc, truth, (cx, cy, cx + cut_w, cy + cut_h), w, h, aug.max_boxes)
                if info is not None:
                    info["cut"] = (cx, cy, cx + cut_w, cy + cut_h)
        else:
            y0, y1, x0, x1 = region
            quarter = (ai[y0:y1] if ai.shape[0] == h else ai)[:, x0:x1]   # the whole image (blur, noise) or its rows
            canvas[(slice(0, cut_y) if part < 2 else slice(cut_y, h)),
                   (slice(0, cut_x) if part % 2 == 0 else slice(cut_x, w))] = quarter
            _mosaic_truth(acc, truth, w, h, cut_x, cut_y, part, left_shift, right_shift, top_shift, bot_shift,
                          aug.mosaic_bound, aug.max_boxes)
            out = canvas
    if mode == 3 and acc:   # darknet's int truncation can leave an edge a pixel outside
        acc = [r for r in map(_clip_row, acc) if r[2] >= 1.0 / w and r[3] >= 1.0 / h]
    x = out if out.dtype == np.float32 and out.ndim == 3 and out.shape[0] == aug.channels else to_chw(out)
    return np.ascontiguousarray(x, np.float32), _truth_array(acc, aug.max_boxes)


# ----------------------------------------------------------------------------- classification

def _distort_float(img, dhue, dsat, dexp):
    """darknet's distort_image on a float RGB-or-BGR [H, W, 3] image in 0..1."""
    if img.ndim == 2 or img.shape[2] == 1:
        return np.clip(img * dexp, 0, 1)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    hch = hsv[:, :, 0] / 360.0 + dhue
    hch = np.where(hch > 1, hch - 1, np.where(hch < 0, hch + 1, hch))
    hsv[:, :, 0] = hch * 360.0
    hsv[:, :, 1] *= dsat
    hsv[:, :, 2] *= dexp
    return np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR), 0, 1)


def _random_crop(img, aug, rng, info=None):
    """darknet's random_augment_image: rotate, scale, stretch and shift into
    a square of max(width, height) pixels (zero outside the image)."""
    size = max(aug.width, aug.height)
    ih, iw = img.shape[:2]
    aspect = rand_scale(rng, aug.aspect)
    r = rand_int(rng, aug.min_crop, aug.max_crop)
    m = _trunc(ih if ih < iw * aspect else iw * aspect)
    scale = r / max(m, 1)
    rad = rand_uniform(rng, -aug.angle, aug.angle) * 2.0 * math.pi / 360.0
    dx = max((iw * scale / aspect - size) / 2.0, 0.0)
    dy = max((ih * scale - size) / 2.0, 0.0)
    dx = rand_uniform(rng, -dx, dx)
    dy = rand_uniform(rng, -dy, dy)
    c, s = math.cos(rad), math.sin(rad)
    # output (x, y) samples the source at darknet's rotate_crop_image position
    a, b = aspect / scale, 1.0 / scale
    ox = (-size / 2.0 + dx) * a
    oy = (-size / 2.0 + dy) * b
    mat = np.array([[c * a, -s * b, c * ox - s * oy + iw / 2.0],
                    [s * a, c * b, s * ox + c * oy + ih / 2.0]], np.float64)
    crop = cv2.warpAffine(img, mat, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if info is not None:
        info.update(aspect=aspect, scale=scale, rad=rad, dx=dx, dy=dy, matrix=mat)
    return crop


def _classifier_one(source, aug, rng, info=None):
    img, classes, name = source.draw(rng)
    crop = _random_crop(img.astype(np.float32) * np.float32(1 / 255.0), aug, rng, info)
    flip = int(rng.integers(2)) if aug.flip else 0
    if flip:
        crop = cv2.flip(crop, 1)
    dhue = rand_uniform(rng, -aug.hue, aug.hue)
    dsat = rand_scale(rng, aug.saturation)
    dexp = rand_scale(rng, aug.exposure)
    if (dhue, dsat, dexp) != (0, 1, 1):
        crop = _distort_float(crop, dhue, dsat, dexp)
    if crop.shape[1] != aug.width or crop.shape[0] != aug.height:
        crop = cv2.resize(crop, (aug.width, aug.height), interpolation=cv2.INTER_LINEAR)
    k = aug.classes
    eps = aug.label_smooth_eps
    y = np.full(k, eps / (k - 1) if k > 1 and eps else 0.0, np.float32)
    for c in classes:
        y[c] = 1.0 - eps
    if info is not None:
        info.update(name=name, flip=flip, dhue=dhue, dsat=dsat, dexp=dexp)
    return to_chw(crop), y


def classifier_sample(source, aug, rng, info=None):
    """One augmented classifier sample: float32 [C, H, W] RGB in 0..1 and its
    label vector float32 [classes] (one-hot, smoothed, or mixed).
    `source.draw(rng)` gives (BGR uint8 image, class indices, name)."""
    w, h = aug.width, aug.height
    x, y = _classifier_one(source, aug, rng, info)
    mode = aug.mode
    if mode and rand_int(rng, 0, 1):
        if mode == 4:
            mode = rand_int(rng, 2, 3)
        x2, y2 = _classifier_one(source, aug, rng)
        if mode == 1:
            x, y = (x + x2) / 2, (y + y2) / 2
        elif mode == 2:
            cut_w = rand_int(rng, _trunc(w * 0.3), _trunc(w * 0.8))
            cut_h = rand_int(rng, _trunc(h * 0.3), _trunc(h * 0.8))
            cx, cy = rand_int(rng, 0, w - cut_w - 1), rand_int(rng, 0, h - cut_h - 1)
            x[:, cy:cy + cut_h, cx:cx + cut_w] = x2[:, cy:cy + cut_h, cx:cx + cut_w]
            alpha = cut_w * cut_h / (w * h)
            y = y * (1 - alpha) + y2 * alpha
        elif mode == 3:
            x3, y3 = _classifier_one(source, aug, rng)
            x4, y4 = _classifier_one(source, aug, rng)
            cx = rand_int(rng, _trunc(w * 0.2), _trunc(w * 0.8))
            cy = rand_int(rng, _trunc(h * 0.2), _trunc(h * 0.8))
            x[:, :cy, cx:] = x2[:, :cy, cx:]
            x[:, cy:, :cx] = x3[:, cy:, :cx]
            x[:, cy:, cx:] = x4[:, cy:, cx:]
            s1, s2 = cx * cy / (w * h), (w - cx) * cy / (w * h)
            s3, s4 = cx * (h - cy) / (w * h), (w - cx) * (h - cy) / (w * h)
            y = y * s1 + y2 * s2 + y3 * s3 + y4 * s4
        if info is not None:
            info["mix"] = mode
    if aug.blur and rng.integers(4) == 0:
        k = 15 if aug.blur == 1 else aug.blur
        k = k if k % 2 else k + 1
        hwc = cv2.GaussianBlur(np.ascontiguousarray(x.transpose(1, 2, 0)), (k, k), 0)
        x = np.ascontiguousarray(hwc.reshape(h, w, -1).transpose(2, 0, 1))
    return np.ascontiguousarray(x, np.float32), np.asarray(y, np.float32)
