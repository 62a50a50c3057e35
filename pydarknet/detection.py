"""Detections as small typed records, and drawing them on an image."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class Detection:
    """One detected object: box centre (x, y) and size (w, h) in the pixels of
    the image it was found in, its class and confidence (objectness times the
    class probability)."""

    class_id: int
    confidence: float
    x: float
    y: float
    w: float
    h: float
    objectness: float = 1.0
    name: Optional[str] = None

    @property
    def left(self):
        return self.x - self.w / 2

    @property
    def top(self):
        return self.y - self.h / 2

    @property
    def right(self):
        return self.x + self.w / 2

    @property
    def bottom(self):
        return self.y + self.h / 2

    @property
    def corners(self):
        """(left, top, right, bottom)."""
        return (self.left, self.top, self.right, self.bottom)

    def relative(self, width, height):
        """(x, y, w, h) as fractions of an image of width x height pixels,
        the form of YOLO label files and darknet's JSON output."""
        return (self.x / width, self.y / height, self.w / width, self.h / height)

    @property
    def label(self):
        return self.name if self.name is not None else str(self.class_id)


def _color(class_id, classes=80):
    # darknet's palette walk: six corner colours interpolated by class offset
    colors = [(1, 0, 1), (0, 0, 1), (0, 1, 1), (0, 1, 0), (1, 1, 0), (1, 0, 0)]
    offset = class_id * 123457 % max(classes, 1)
    ratio = offset / max(classes, 1) * 5
    i, j = int(np.floor(ratio)), int(np.ceil(ratio))
    r = ratio - i
    rgb = [(1 - r) * colors[i][c] + r * colors[j][c] for c in range(3)]
    return tuple(int(255 * v) for v in reversed(rgb))  # BGR


def draw_detections(image_bgr, detections, classes=80):
    """Returns a copy of the image with each detection's box and label drawn
    (in colour: a grey image [H, W] is drawn on as BGR)."""
    import cv2  # OpenCV (~25 MiB, ~80 ms) only when used: `import pydarknet` stays light

    out = cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR) if image_bgr.ndim == 2 else image_bgr.copy()
    thick = max(1, int(round(out.shape[0] * 0.006)))
    for d in detections:
        color = _color(d.class_id, classes)
        l, t, r, b = (int(round(v)) for v in d.corners)
        cv2.rectangle(out, (l, t), (r, b), color, thick)
        text = f"{d.label} {d.confidence:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        y0 = max(t, th + base)
        cv2.rectangle(out, (l, y0 - th - base), (l + tw, y0), color, -1)
        cv2.putText(out, text, (l, y0 - base), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return out
