"""Detection metrics as darknet's `detector map` computes them.

Matching (per image, per class): each detection is paired with the truth of
its class it overlaps most (IoU above `iou_thresh`); going through all
detections of a class in decreasing confidence, the first detection to claim
a truth is a true positive, later ones and unpaired ones are false positives.
Average precision from the precision/recall curve:
  points=0   area under the interpolated curve at every recall change (VOC 2010+, darknet's default),
  points=11  mean of the interpolated precision at recall 0, .1, ..., 1 (VOC 2007),
  points=101 the same at 101 recall points (COCO).
Interpolated precision at recall r is the highest precision at any recall >= r.
Boxes are (x, y, w, h) centre and size, in any unit shared by detections and truths.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import numpy as np


def box_iou(a, b):
    """IoU of box a (4,) with boxes b (n, 4), centre/size form."""
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2
    w = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
    h = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    inter = w * h
    union = a[2] * a[3] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def average_precision(recall, precision, points=0):
    recall = np.asarray(recall, np.float64)
    precision = np.asarray(precision, np.float64)
    if recall.size == 0:
        return 0.0
    if points:
        total = 0.0
        for r in np.linspace(0, 1, points):
            above = precision[recall >= r - 1e-12]
            total += above.max() if above.size else 0.0
        return total / points
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(p) - 2, -1, -1):
        p[i] = max(p[i], p[i + 1])
    changed = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[changed + 1] - r[changed]) * p[changed + 1]))


@dataclass
class ClassResult:
    ap: float = 0.0
    truths: int = 0
    tp: int = 0          # at the confidence threshold
    fp: int = 0


@dataclass
class MapResult:
    classes: Dict[int, ClassResult] = field(default_factory=dict)
    iou_thresh: float = 0.5
    points: int = 0
    conf_thresh: float = 0.25
    tp: int = 0
    fp: int = 0
    fn: int = 0
    avg_iou: float = 0.0   # mean IoU of the true positives at the confidence threshold

    @property
    def map(self):
        aps = [c.ap for c in self.classes.values() if c.truths > 0]
        return float(np.mean(aps)) if aps else 0.0

    @property
    def precision(self):
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self):
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self):
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def evaluate(detections: Sequence[np.ndarray], truths: Sequence[np.ndarray], classes: int, iou_thresh=0.5,
             points=0, conf_thresh=0.25) -> MapResult:
    """detections[i]: rows (class, confidence, x, y, w, h) for image i;
    truths[i]: rows (class, x, y, w, h)."""
    result = MapResult(iou_thresh=iou_thresh, points=points, conf_thresh=conf_thresh)
    records = {k: [] for k in range(classes)}  # class -> [(confidence, image, truth index or -1, iou)]
    counts = np.zeros(classes, int)
    for img, (dets, tru) in enumerate(zip(detections, truths)):
        dets = np.asarray(dets, np.float64).reshape(-1, 6)
        tru = np.asarray(tru, np.float64).reshape(-1, 5)
        for c in tru[:, 0].astype(int):
            if 0 <= c < classes:
                counts[c] += 1
        for d in dets:
            k = int(d[0])
            if not 0 <= k < classes:
                continue
            same = np.nonzero(tru[:, 0].astype(int) == k)[0]
            best, best_iou = -1, 0.0
            if same.size:
                ious = box_iou(d[2:6], tru[same, 1:5])
                j = int(np.argmax(ious))
                if ious[j] > iou_thresh:
                    best, best_iou = int(same[j]), float(ious[j])
            records[k].append((d[1], img, best, best_iou))
    iou_sum = 0.0
    for k in range(classes):
        recs = sorted(records[k], key=lambda r: -r[0])
        taken = set()
        tp = np.zeros(len(recs))
        for i, (conf, img, j, iou) in enumerate(recs):
            if j >= 0 and (img, j) not in taken:
                taken.add((img, j))
                tp[i] = 1
                if conf >= conf_thresh:
                    iou_sum += iou
            above = conf >= conf_thresh
            result.tp += int(tp[i] and above)
            result.fp += int(not tp[i] and above)
        ctp = np.cumsum(tp)
        cfp = np.cumsum(1 - tp)
        recall = ctp / counts[k] if counts[k] else np.zeros_like(ctp)
        precision = ctp / np.maximum(ctp + cfp, 1e-12)
        confs = np.array([r[0] for r in recs])
        result.classes[k] = ClassResult(
            ap=average_precision(recall, precision, points) if counts[k] else 0.0,
            truths=int(counts[k]),
            tp=int(tp[confs >= conf_thresh].sum()) if len(recs) else 0,
            fp=int((1 - tp)[confs >= conf_thresh].sum()) if len(recs) else 0,
        )
    result.fn = int(counts.sum()) - result.tp
    result.avg_iou = iou_sum / result.tp if result.tp else 0.0
    return result


def detect_dataset(net, images, thresh=0.005, nms=0.45, letterbox=None):
    """Runs net.detect on each image (paths or arrays); returns rows
    (class, confidence, x, y, w, h) normalized to each image."""
    import cv2

    out = []
    for image in images:
        img = cv2.imread(image) if isinstance(image, str) else image
        if img is None:
            out.append(np.zeros((0, 6)))
            continue
        h, w = img.shape[:2]
        dets = net.detect(img, thresh=thresh, nms=nms, letterbox=letterbox)
        out.append(np.array([(d.class_id, d.confidence, d.x / w, d.y / h, d.w / w, d.h / h) for d in dets],
                            np.float64).reshape(-1, 6))
    return out
