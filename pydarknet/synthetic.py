"""Synthetic images of simple shapes with YOLO labels, for tests, demos and
as the seed of the bundled dataset: filled squares, circles and triangles
of random colours and sizes on a plain or noisy background."""
from __future__ import annotations

import cv2
import numpy as np

SHAPES = ("square", "circle", "triangle")


def draw_shape(img, kind, cx, cy, r, color):
    """Draws one filled shape of SHAPES (`kind`), centre (cx, cy), half size r, in place."""
    if kind == "square":
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), color, -1)
    elif kind == "circle":
        cv2.circle(img, (cx, cy), r, color, -1, cv2.LINE_AA)
    else:
        pts = np.array([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], np.int32)
        cv2.fillPoly(img, [pts], color, cv2.LINE_AA)


def draw_shapes(size, count, rng, background=None, min_r=None, max_r=None):
    """One BGR uint8 image (size x size) with `count` non-overlapping shapes
    and its labels as rows (class, x, y, w, h) normalized, YOLO's order."""
    img = np.empty((size, size, 3), np.uint8)
    img[:] = rng.integers(0, 80, 3) if background is None else background
    min_r = min_r or max(3, size // 12)
    max_r = max_r or max(min_r + 1, size // 5)
    placed, labels = [], []
    for _ in range(count * 20):
        if len(labels) == count:
            break
        r = int(rng.integers(min_r, max_r + 1))
        cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
        if any(abs(cx - x) < r + q + 2 and abs(cy - y) < r + q + 2 for x, y, q in placed):
            continue
        k = int(rng.integers(len(SHAPES)))
        color = tuple(int(c) for c in rng.integers(130, 256, 3))
        draw_shape(img, SHAPES[k], cx, cy, r, color)
        placed.append((cx, cy, r))
        labels.append((k, cx / size, cy / size, (2 * r + 1) / size, (2 * r + 1) / size))
    return img, np.array(labels, np.float32).reshape(-1, 5)


def shapes_batch(n, size=64, per_image=(1, 3), max_boxes=8, seed=0):
    """n images as float32 [n, 3, size, size] RGB in 0..1 and truths
    [n, max_boxes, 5] in darknet's layout (x, y, w, h, class; zero padding)."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, 3, size, size), np.float32)
    t = np.zeros((n, max_boxes, 5), np.float32)
    for i in range(n):
        img, labels = draw_shapes(size, int(rng.integers(per_image[0], per_image[1] + 1)), rng)
        x[i] = img[:, :, ::-1].transpose(2, 0, 1) / 255.0
        m = min(len(labels), max_boxes)
        t[i, :m, :4] = labels[:m, 1:]
        t[i, :m, 4] = labels[:m, 0]
    return x, t
