"""Detection metrics as darknet's `detector map` computes them, and mAP@0.5:0.95.

Matching (per image, per class), darknet's way (matching="darknet"): each
detection is paired with the truth of its class it overlaps most, when that
IoU is above the threshold; going through the detections of a class in
decreasing confidence, the first detection to claim a truth is a true
positive, later ones and unpaired ones are false positives. COCO's way
(matching="coco", pycocotools' COCOeval): each detection, in decreasing
confidence, takes the truth of its class with the highest IoU (at least the
threshold) among those no earlier detection took. The two differ only where a
detection overlaps several truths of its class above the threshold.

Average precision from the precision/recall curve of a class:
  points=0   area under the interpolated curve at every recall change (VOC 2010+, darknet's default),
  points=11  mean of the interpolated precision at recall 0, .1, ..., 1 (VOC 2007),
  points=101 the same at 101 recall points (COCO).
Interpolated precision at recall r is the highest precision at any recall >= r.
The mAP is the mean AP over the classes that have truths (as COCO and VOC;
darknet divides by every class, counting the others as 0: `map_all_classes`).
mAP@0.5:0.95 is the mean of the mAP at IoU .50, .55, ..., .95 (COCO's
definition when points=101), from the same detections matched again at each
threshold.

At the confidence threshold `conf_thresh` (a detection counts when its
confidence is above it, as in darknet): TP, FP, FN, precision, recall, F1 and
darknet's "average IoU", the summed IoU of the true positives divided by
TP + FP (false positives count as 0). darknet decides TP/FP there in the
order its network lists an image's boxes; here the confidence order of the AP
is kept, so the more confident of two duplicates is the true positive.

`compute_map` runs a network over an image list and evaluates it;
`map_report` prints the result as darknet's `detector map` does. Training's
-map uses the same two functions.
Boxes are (x, y, w, h) centre and size, in any unit shared by detections and truths.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from .data.lists import DetectionDataset, imread, read_image

__all__ = [
    "box_iou", "pairwise_iou", "average_precision", "evaluate", "ClassResult", "MapResult", "COCO_IOUS",
    "detect_dataset", "compute_map", "MapRun", "map_report", "EvaluationError", "detection_classes",
    "MAP_DETECT_THRESH", "MAP_NMS",
]

COCO_IOUS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))   # .50, .55, ..., .95
MATCHINGS = ("darknet", "coco")
MAP_DETECT_THRESH = 0.005   # validate_detector_map's detection threshold
MAP_NMS = 0.45


class EvaluationError(ValueError):
    """A network or input that cannot be evaluated (the message names the file)."""


# ----------------------------------------------------------------------------- boxes and curves

def _corners(b):
    b = np.asarray(b, np.float64).reshape(-1, 4)
    return b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2


def pairwise_iou(a, b):
    """IoU of every box of a (n, 4) with every box of b (m, 4), centre/size form: (n, m)."""
    ax0, ay0, ax1, ay1 = (v[:, None] for v in _corners(a))
    bx0, by0, bx1, by1 = (v[None, :] for v in _corners(b))
    w = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
    h = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    inter = w * h
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def box_iou(a, b):
    """IoU of box a (4,) with boxes b (n, 4), centre/size form."""
    return pairwise_iou(a, b)[0]


def average_precision(recall, precision, points=0):
    """AP of a curve given in rank order (recall never decreasing)."""
    recall = np.asarray(recall, np.float64)
    precision = np.asarray(precision, np.float64)
    if recall.size == 0:
        return 0.0
    best_after = np.maximum.accumulate(precision[::-1])[::-1]   # interpolated precision
    if points:
        # r = i / (points - 1) exactly as darknet divides, so recall 3/10 reaches the point 30/100
        at = np.arange(points) / (points - 1)
        first = np.searchsorted(recall, at, side="left")
        reached = first < recall.size
        return float(np.sum(best_after[first[reached]]) / points)
    r = np.concatenate([[0.0], recall])
    steps = r[1:] - r[:-1]
    return float(np.sum(steps * best_after))


# ----------------------------------------------------------------------------- results

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
    avg_iou: float = 0.0   # darknet's: summed IoU of the true positives / (TP + FP), at the confidence threshold
    matching: str = "darknet"
    maps_by_iou: Dict[float, float] = field(default_factory=dict)   # COCO_IOUS -> mAP, when computed

    @property
    def map(self):
        aps = [c.ap for c in self.classes.values() if c.truths > 0]
        return float(np.mean(aps)) if aps else 0.0

    @property
    def map_all_classes(self):
        """darknet's mAP: the sum of the APs over every class, divided by the number of classes."""
        return float(np.mean([c.ap for c in self.classes.values()])) if self.classes else 0.0

    @property
    def map_50_95(self) -> Optional[float]:
        """Mean of the mAP at IoU .50, .55, ..., .95 (None when not computed)."""
        if not self.maps_by_iou:
            return None
        return float(np.mean([self.maps_by_iou[t] for t in COCO_IOUS]))

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


# ----------------------------------------------------------------------------- matching

class _Matches:
    """The detections of a set of images with their IoUs against the truths,
    computed once and matched again for any IoU threshold."""

    def __init__(self, detections, truths, classes, matching):
        if matching not in MATCHINGS:
            raise ValueError(f"matching must be one of {', '.join(MATCHINGS)}, got {matching!r}")
        if len(detections) != len(truths):
            raise ValueError(f"{len(detections)} lists of detections for {len(truths)} lists of truths")
        self.matching = matching
        self.counts = np.zeros(classes, np.int64)
        cls, conf, best, best_iou = [], [], [], []
        self.images = []   # (indices of the image's detections, their IoUs with its truths, -1 across classes)
        offset = start = 0   # truths and detections of the images before
        for dets, tru in zip(detections, truths):
            dets = np.asarray(dets, np.float64).reshape(-1, 6)
            tru = np.asarray(tru, np.float64).reshape(-1, 5)
            tcls = tru[:, 0].astype(int)
            self.counts += np.bincount(tcls[(tcls >= 0) & (tcls < classes)], minlength=classes)
            dcls = dets[:, 0].astype(int)
            dets = dets[(dcls >= 0) & (dcls < classes)]
            dcls = dets[:, 0].astype(int)
            n = len(dets)
            ious = np.where(dcls[:, None] == tcls[None, :], pairwise_iou(dets[:, 2:6], tru[:, 1:5]), -1.0)
            if tru.size:
                j = np.argmax(ious, axis=1)   # the first of equal IoUs, as darknet
                top = ious[np.arange(n), j]
                best.append(np.where(top >= 0, offset + j, -1))
                best_iou.append(np.maximum(top, 0.0))
            else:
                best.append(np.full(n, -1))
                best_iou.append(np.zeros(n))
            cls.append(dcls)
            conf.append(dets[:, 1])
            if matching == "coco":
                self.images.append((np.arange(start, start + n), ious))
            offset += len(tru)
            start += n
        cat = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
        self.cls = cat(cls, np.int64)
        self.conf = cat(conf, np.float64)
        self.best = cat(best, np.int64)
        self.best_iou = cat(best_iou, np.float64)
        # decreasing confidence; ties keep image order, then list order
        self.order = np.argsort(-self.conf, kind="stable")
        by_class = self.order[np.argsort(self.cls[self.order], kind="stable")]
        bounds = np.searchsorted(self.cls[by_class], np.arange(classes + 1))
        self.ranked = [by_class[bounds[k]:bounds[k + 1]] for k in range(classes)]

    def match(self, thresh):
        """(true-positive flags, IoU with the matched truth) per detection."""
        tp = np.zeros(self.conf.size, bool)
        iou = np.zeros(self.conf.size)
        if self.matching == "darknet":
            ranked = self.order[self.best_iou[self.order] > thresh]
            _, first = np.unique(self.best[ranked], return_index=True)
            tp[ranked[first]] = True
            iou[tp] = self.best_iou[tp]
            return tp, iou
        for index, ious in self.images:
            taken = np.zeros(ious.shape[1], bool)
            for d in np.argsort(-self.conf[index], kind="stable"):
                free = np.where(taken | (ious[d] < thresh), -1.0, ious[d])
                if free.size and free.max() >= 0:
                    j = int(np.argmax(free))
                    taken[j] = True
                    tp[index[d]] = True
                    iou[index[d]] = ious[d, j]
        return tp, iou

    def aps(self, tp, points):
        """AP of every class from the true-positive flags."""
        out = np.zeros(self.counts.size)
        for k, ranked in enumerate(self.ranked):
            if self.counts[k]:
                hits = np.cumsum(tp[ranked])
                out[k] = average_precision(hits / self.counts[k], hits / np.arange(1, ranked.size + 1), points)
        return out


def evaluate(detections: Sequence[np.ndarray], truths: Sequence[np.ndarray], classes: int, iou_thresh=0.5,
             points=0, conf_thresh=0.25, matching="darknet", iou_range=True) -> MapResult:
    """detections[i]: rows (class, confidence, x, y, w, h) for image i;
    truths[i]: rows (class, x, y, w, h). With `iou_range` the mAP at each
    IoU of COCO_IOUS is computed too (MapResult.maps_by_iou, map_50_95)."""
    m = _Matches(detections, truths, classes, matching)
    result = MapResult(iou_thresh=iou_thresh, points=points, conf_thresh=conf_thresh, matching=matching)
    tp, iou = m.match(iou_thresh)
    aps = m.aps(tp, points)
    above = m.conf > conf_thresh
    for k in range(classes):
        mine = above & (m.cls == k)
        result.classes[k] = ClassResult(ap=float(aps[k]), truths=int(m.counts[k]), tp=int(np.sum(tp[mine])),
                                        fp=int(np.sum(~tp[mine])))
    result.tp = int(np.sum(tp[above]))
    result.fp = int(np.sum(above)) - result.tp
    result.fn = int(m.counts.sum()) - result.tp
    result.avg_iou = float(np.sum(iou[above & tp]) / np.sum(above)) if np.any(above) else 0.0
    if iou_range:
        has_truths = m.counts > 0
        for t in COCO_IOUS:
            aps_t = aps if t == iou_thresh else m.aps(m.match(t)[0], points)
            result.maps_by_iou[t] = float(np.mean(aps_t[has_truths])) if has_truths.any() else 0.0
    return result


# ----------------------------------------------------------------------------- running a network

def detect_dataset(net, images, thresh=0.005, nms=0.45, letterbox=None):
    """Runs net.detect on each image (paths or arrays); returns rows
    (class, confidence, x, y, w, h) normalized to each image."""
    out = []
    for image in images:
        img = imread(image) if isinstance(image, str) else image   # None: unreadable, no detections
        if img is None:
            out.append(np.zeros((0, 6)))
            continue
        h, w = img.shape[:2]
        dets = net.detect(img, thresh=thresh, nms=nms, letterbox=letterbox)
        out.append(np.array([(d.class_id, d.confidence, d.x / w, d.y / h, d.w / w, d.h / h) for d in dets],
                            np.float64).reshape(-1, 6))
    return out


def detection_classes(net) -> Optional[int]:
    """classes= of the network's last [yolo]/[region] head, None without one."""
    for layer in reversed(net.output_layers):
        if layer.spec is not None and "classes" in layer.spec.attrs:
            return int(layer.spec.attrs["classes"])
    return None


def tqdm_class():
    """tqdm's bar class, or None without tqdm (log lines are printed then)."""
    try:
        from tqdm import tqdm   # optional: without it, log lines instead of a bar
    except ImportError:
        return None
    return tqdm


@dataclass
class MapRun:
    """One mAP computation over an image list."""
    result: MapResult
    images: int        # images evaluated
    detections: int
    truths: int
    seconds: float
    skipped: int = 0   # images that could not be read, left out

    @property
    def map(self) -> float:
        return self.result.map


def compute_map(net, valid_list, classes=None, *, thresh=0.25, iou_thresh=0.5, points=0, letterbox=None,
                progress=False, iou_range=True) -> MapRun:
    """darknet's validate_detector_map: detects in every image of
    `valid_list` (a list file, or a DetectionDataset to reuse across calls:
    its problems are then reported once) (threshold .005, NMS .45, letterboxed as the cfg says unless
    `letterbox`), matches the detections with the label files and computes
    the AP of every class (`evaluate`), at `iou_thresh` and, with
    `iou_range`, at IoU .50:.05:.95 from the same detections. `thresh` is the
    confidence at which TP, FP, precision, recall and average IoU are
    counted. Images missing from the list or that cannot be decoded are
    reported (logger ``pydarknet``) and left out, their truths with them."""
    if classes is None:
        classes = detection_classes(net)
        if classes is None:
            raise EvaluationError(f"{net.spec.path}: no [yolo] or [region] layer to take the classes from")
    start = time.perf_counter()
    if isinstance(valid_list, DetectionDataset):
        ds = valid_list
    else:
        ds = DetectionDataset.from_list(valid_list, classes, channels=net.channels)
    detections, truths = [], []
    skipped = 0
    tqdm = tqdm_class() if progress else None
    bar = tqdm(total=len(ds), desc="mAP", unit="img", leave=False, file=sys.stderr, dynamic_ncols=True) \
        if tqdm is not None else None
    try:
        for i, path in enumerate(ds.images):
            img, issue = read_image(path)
            if img is None:
                ds.summary.record(issue)
                skipped += 1
            else:
                boxes, issues = ds.labels(i)
                ds.summary.record_all(issues)
                truths.append(boxes)
                detections.extend(detect_dataset(net, [img], thresh=MAP_DETECT_THRESH, nms=MAP_NMS,
                                                 letterbox=letterbox))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    result = evaluate(detections, truths, classes, iou_thresh=iou_thresh, points=points, conf_thresh=thresh,
                      iou_range=iou_range)
    return MapRun(result, len(truths), int(sum(len(d) for d in detections)), int(sum(len(t) for t in truths)),
                  time.perf_counter() - start, skipped)


def map_report(run: MapRun, names: Optional[Sequence[str]] = None) -> List[str]:
    """darknet's lines for a mAP run (validate_detector_map's output), then
    mAP@0.50:0.95 and, when some classes have no truths, darknet's mean over
    every class."""
    r = run.result
    lines = [f" detections_count = {run.detections}, unique_truth_count = {run.truths}"]
    for k in sorted(r.classes):
        c = r.classes[k]
        name = names[k] if names is not None and k < len(names) else str(k)
        lines.append(f"class_id = {k}, name = {name}, ap = {c.ap * 100:.2f}%   \t (TP = {c.tp}, FP = {c.fp})")
    curve = f"used {r.points} Recall-points" if r.points else "used Area-Under-Curve for each unique Recall"
    lines += [
        "",
        f" for conf_thresh = {r.conf_thresh:.2f}, precision = {r.precision:.2f}, recall = {r.recall:.2f}, "
        f"F1-score = {r.f1:.2f}",
        f" for conf_thresh = {r.conf_thresh:.2f}, TP = {r.tp}, FP = {r.fp}, FN = {r.fn}, "
        f"average IoU = {r.avg_iou * 100:.2f} %",
        "",
        f" IoU threshold = {r.iou_thresh * 100:2.0f} %, {curve}",
        f" mean average precision (mAP@{r.iou_thresh:.2f}) = {r.map:f}, or {r.map * 100:.2f} %",
    ]
    if r.map_50_95 is not None:
        lines.append(f" mean average precision (mAP@0.50:0.95) = {r.map_50_95:f}, or {r.map_50_95 * 100:.2f} %"
                     f"   (mean over IoU thresholds 0.50, 0.55, ..., 0.95; {curve})")
    empty = sum(1 for c in r.classes.values() if c.truths == 0)
    if empty:
        lines.append(f" {empty} of {len(r.classes)} classes have no truths and are left out of the means; "
                     f"darknet counts them as AP 0: mAP@{r.iou_thresh:.2f} over all classes = "
                     f"{r.map_all_classes:f}")
    return lines
