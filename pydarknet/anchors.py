"""Anchors for a detector from its training labels: darknet's ``detector calc_anchors``.

    pydarknet detector calc_anchors obj.data -num_of_clusters 9 -width 416 -height 416
    pydarknet detector calc_anchors obj.data -cfg yolo-obj.cfg -out_cfg yolo-obj-anchors.cfg

The (w, h) of every box in the label files of the .data file's train= list,
scaled to width x height pixels, are grouped by k-means with darknet's
distance, 1 - IoU of two boxes that share a centre. The starting centres are
chosen by k-means++ from a seeded generator (the first box drawn uniformly,
each next one with probability proportional to its squared distance to the
nearest centre so far), where darknet draws k boxes uniformly at random; the
result is the same for the same labels and seed. Then Lloyd's steps: each box
joins the centre it overlaps most, each centre moves to the mean (w, h) of its
boxes (a centre left without boxes stays), until no box changes cluster (at
most 1000 steps). The anchors are the centres in increasing area; the
average IoU is the mean over boxes of the IoU with the anchor each overlaps
most.

Label files are read as for training (pydarknet.data.lists): bad lines are
reported with file and line and left out, and so are images missing from the
list. Like darknet, the command prints the counts per class and the anchors,
and writes them to anchors.txt and counters_per_class.txt in the working
folder; with -out_cfg it also writes a copy of the cfg whose [yolo] sections
have the new anchors= and num=.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import List

import cv2
import numpy as np

from .cfg import parse_cfg
from .commands import (EXIT_OK, TRAIN_ERRORS, CliError, UsageError, Viewer, emit_warnings, flag, note, positive_int,
                       seed_int, warnings_as_notes)
from .data.lists import DetectionDataset
from .fileio import replacing

__all__ = ["AnchorsError", "wh_iou", "kmeans_anchors", "average_iou", "label_sizes", "format_anchors",
           "cfg_with_anchors", "calc_anchors", "AnchorsResult", "add_parser"]

MAX_STEPS = 1000
HEAD_SECTIONS = ("yolo", "Gaussian_yolo", "gaussian_yolo")


class AnchorsError(ValueError):
    """Labels or a cfg that anchors cannot be computed from or written to (names the file)."""


# ----------------------------------------------------------------------------- k-means

def wh_iou(wh, centres):
    """IoU of boxes (n, 2) with centres (k, 2), every pair sharing a centre point: (n, k)."""
    wh = np.asarray(wh, np.float64).reshape(-1, 2)
    centres = np.asarray(centres, np.float64).reshape(-1, 2)
    inter = np.minimum(wh[:, None, 0], centres[None, :, 0]) * np.minimum(wh[:, None, 1], centres[None, :, 1])
    union = (wh[:, 0] * wh[:, 1])[:, None] + (centres[:, 0] * centres[:, 1])[None, :] - inter
    return inter / union


def _kmeans_pp(wh, k, rng):
    """k starting centres drawn from the boxes by k-means++ with the 1 - IoU distance."""
    chosen = [int(rng.integers(len(wh)))]
    nearest = 1.0 - wh_iou(wh, wh[chosen[0]])[:, 0]
    for _ in range(1, k):
        weights = np.clip(nearest, 0.0, None) ** 2
        total = weights.sum()
        if total <= 0:
            raise AnchorsError(f"only {len(chosen)} different box sizes for {k} anchors")
        pick = int(np.searchsorted(np.cumsum(weights), rng.random() * total, side="right"))
        pick = min(pick, len(wh) - 1)
        chosen.append(pick)
        nearest = np.minimum(nearest, 1.0 - wh_iou(wh, wh[pick])[:, 0])
    return wh[chosen].copy()


def kmeans_anchors(wh, k, seed=0, max_steps=MAX_STEPS):
    """(anchors (k, 2) in increasing area, cluster of each box in that order,
    steps taken) for box sizes wh (n, 2)."""
    wh = np.asarray(wh, np.float64).reshape(-1, 2)
    if k < 1:
        raise AnchorsError(f"the number of clusters must be at least 1, got {k}")
    if len(wh) < k:
        raise AnchorsError(f"{len(wh)} boxes are too few for {k} anchors")
    rng = np.random.default_rng(seed)
    centres = _kmeans_pp(wh, k, rng)
    assign = np.full(len(wh), -1)
    steps = 0
    while steps < max_steps:
        new = np.argmax(wh_iou(wh, centres), axis=1)
        if np.array_equal(new, assign):
            break
        assign = new
        steps += 1
        for j in range(k):
            members = wh[assign == j]
            if len(members):
                centres[j] = members.mean(axis=0)
    order = np.argsort(centres[:, 0] * centres[:, 1], kind="stable")
    rank = np.empty(k, int)
    rank[order] = np.arange(k)
    return centres[order], rank[assign], steps


def average_iou(wh, anchors):
    """Mean over boxes of the IoU with the anchor each overlaps most."""
    return float(np.mean(np.max(wh_iou(wh, anchors), axis=1))) if len(wh) else 0.0


# ----------------------------------------------------------------------------- labels, text, cfg

def label_sizes(data_path, width, height):
    """(box sizes (n, 2) in pixels of a width x height image, boxes per
    class, images) from the label files of the .data file's train= list.
    Problems are logged (logger ``pydarknet``) with file and line."""
    ds = DetectionDataset.from_data(data_path, "train")
    sizes, counts = [], np.zeros(ds.classes, np.int64)
    for i in range(len(ds)):
        boxes, issues = ds.labels(i)
        ds.summary.record_all(issues)
        sizes.append(boxes[:, 3:5].astype(np.float64) * (width, height))
        counts += np.bincount(boxes[:, 0].astype(int), minlength=ds.classes)
    wh = np.concatenate(sizes) if sizes else np.zeros((0, 2))
    return wh, counts, len(ds)


def format_anchors(anchors, width) -> str:
    """darknet's anchors text: whole pixels (%3.0f) when width > 32, else 4 decimals."""
    fmt = "{:3.0f},{:3.0f}" if width > 32 else "{:2.4f},{:2.4f}"
    return ", ".join(fmt.format(w, h) for w, h in anchors)


def cfg_with_anchors(cfg_path, anchors_text, count) -> str:
    """The text of the cfg with anchors= and num= of every [yolo] section
    replaced (added after the header when missing); everything else, comments
    included, as it was. AnchorsError when it has no [yolo] section or a mask=
    names an anchor past `count`."""
    spec = parse_cfg(cfg_path)
    heads = [layer for layer in spec.layers if layer.type in HEAD_SECTIONS]
    if not heads:
        raise AnchorsError(f"{cfg_path}: no [yolo] section to write the anchors into")
    for layer in heads:
        mask = layer.attrs.get("mask") or []
        if mask and max(mask) >= count:
            raise AnchorsError(f"{cfg_path}:{layer.line}: [{layer.type}] mask={','.join(map(str, mask))} uses "
                               f"anchor {max(mask)}, but there are {count} anchors (give -num_of_clusters "
                               f"{max(mask) + 1} or more, or edit the masks)")
    with open(cfg_path, "rb") as f:
        text = f.read().decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    header_lines = {layer.line for layer in heads}
    out: List[str] = []
    head_at = None      # index in `out` of the current [yolo] header
    missing = set()

    def close_section():
        if head_at is not None:
            end = "\r" if out[head_at].endswith("\r") else ""
            extra = [f"anchors = {anchors_text}{end}"] * ("anchors" in missing) + [f"num={count}{end}"] * (
                "num" in missing)
            out[head_at + 1:head_at + 1] = extra

    for num, raw in enumerate(lines, 1):
        end = "\r" if raw.endswith("\r") else ""
        squeezed = "".join(raw.split())
        if squeezed.startswith("["):
            close_section()
            head_at = len(out) if num in header_lines else None
            missing = {"anchors", "num"}
        elif head_at is not None and squeezed and squeezed[0] not in "#;":
            key = squeezed.partition("=")[0]
            if key == "anchors":
                raw = f"anchors = {anchors_text}{end}"
                missing.discard("anchors")
            elif key == "num":
                raw = f"num={count}{end}"
                missing.discard("num")
        out.append(raw)
    close_section()
    return "\n".join(out)


# ----------------------------------------------------------------------------- the command

@dataclass
class AnchorsResult:
    anchors: np.ndarray      # (k, 2) pixels, increasing area
    sizes: np.ndarray        # (n, 2) the boxes' sizes in pixels
    avg_iou: float
    counts: np.ndarray       # boxes per class
    images: int
    boxes: int
    steps: int
    text: str                # darknet's anchors text


def calc_anchors(data_path, num_of_clusters, width, height, seed=0) -> AnchorsResult:
    """Anchors for the labels of the .data file's train= list (see the module notes)."""
    wh, counts, images = label_sizes(data_path, width, height)
    if len(wh) == 0:
        raise AnchorsError(f"{data_path}: the label files of the train= list hold no boxes")
    try:
        anchors, _, steps = kmeans_anchors(wh, num_of_clusters, seed)
    except AnchorsError as e:
        raise AnchorsError(f"{data_path}: {e}") from None
    return AnchorsResult(anchors, wh, average_iou(wh, anchors), counts, images, len(wh), steps,
                         format_anchors(anchors, width))


def report(result: AnchorsResult, num_of_clusters, width, height) -> List[str]:
    """darknet's lines for calc_anchors."""
    return [
        f" num_of_clusters = {num_of_clusters}, width = {width}, height = {height}",
        f" read labels from {result.images} images",
        f" loaded \t image: {result.images} \t box: {result.boxes}",
        " all loaded.",
        "",
        " calculating k-means++ ...",
        f" iterations = {result.steps}",
        "counters_per_class = " + ", ".join(str(int(n)) for n in result.counts),
        "",
        f" avg IoU = {result.avg_iou * 100:2.2f} %",
        "",
        "Saving anchors to the file: anchors.txt",
        f"anchors = {result.text}",
    ]


def plot(wh, anchors, width, height):
    """An image of the box sizes (dots, coloured by nearest anchor) and the
    anchors (rectangles of their size, centred), on a width x height canvas
    scaled to 600 pixels on its longer side."""
    scale = 600.0 / max(width, height)
    w, h = max(int(width * scale), 1), max(int(height * scale), 1)
    img = np.full((h, w, 3), 255, np.uint8)
    colours = [tuple(int(c) for c in cv2.applyColorMap(np.uint8([[i * 255 // max(len(anchors) - 1, 1)]]),
                                                       cv2.COLORMAP_JET)[0, 0]) for i in range(len(anchors))]
    nearest = np.argmax(wh_iou(wh, anchors), axis=1)
    for (bw, bh), j in zip(wh, nearest):
        cv2.circle(img, (int(bw * scale), int(bh * scale)), 2, colours[j], -1)
    for (aw, ah), colour in zip(anchors, colours):
        x0, y0 = int((width - aw) / 2 * scale), int((height - ah) / 2 * scale)
        cv2.rectangle(img, (x0, y0), (x0 + int(aw * scale), y0 + int(ah * scale)), colour, 2)
    return img


def _write(path, text):
    """Writes through a temporary file renamed into place: a failed write
    (of -out_cfg over the cfg itself, say) leaves the old file whole."""
    try:
        with replacing(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
    except OSError as e:
        raise AnchorsError(f"{path}: cannot write: {e.strerror or e}") from None


def add_parser(subcommands):
    """The ``calc_anchors`` subcommand, added to ``detector``."""
    p = subcommands.add_parser(
        "calc_anchors", help="anchors for the labels of the train= list (k-means, 1 - IoU distance)",
        description="k-means on the sizes of the label boxes of the .data file's train= list, scaled to "
                    "-width x -height, with distance 1 - IoU. Prints the boxes per class, the anchors and "
                    "their average IoU with the boxes, and writes anchors.txt and counters_per_class.txt in the "
                    "working folder. With -cfg, the size and number of anchors default to the cfg's; with "
                    "-out_cfg, a copy of that cfg with the new anchors= and num= in every [yolo] section "
                    "is written.")
    p.intermixed = True
    p.add_argument("data", help="the .data file (train=, classes=)")
    flag(p, "num_of_clusters", type=positive_int, metavar="N",
         help="number of anchors (default: num= of the cfg's [yolo] sections with -cfg, else 5 as darknet)")
    flag(p, "width", type=positive_int, metavar="W", help="network width in pixels (default: the cfg's)")
    flag(p, "height", type=positive_int, metavar="H", help="network height in pixels (default: the cfg's)")
    flag(p, "show", action="store_true",
         help="draw the box sizes and anchors to anchors.png, and show it when a display is available")
    flag(p, "cfg", metavar="FILE", help="a cfg giving the default size and number of anchors")
    flag(p, "out_cfg", metavar="FILE", help="write a copy of -cfg with the new anchors here")
    flag(p, "seed", type=seed_int, default=0, metavar="N", help="seed of the k-means++ start (default 0)")
    p.set_defaults(func=run_command)
    return p


def _cfg_defaults(cfg_path):
    """(width, height, num of the first [yolo] section or None) of a cfg."""
    spec = parse_cfg(cfg_path)
    heads = [layer for layer in spec.layers if layer.type in HEAD_SECTIONS]
    return spec.width, spec.height, (int(heads[0].attrs["num"]) if heads else None)


def run_command(args) -> int:
    if args.out_cfg is not None and args.cfg is None:
        raise UsageError("detector calc_anchors: -out_cfg needs -cfg, the cfg to copy")
    width, height, count = args.width, args.height, args.num_of_clusters
    if args.cfg is not None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                cfg_w, cfg_h, cfg_num = _cfg_defaults(args.cfg)
            finally:
                emit_warnings(caught)
        width, height = width or cfg_w, height or cfg_h
        count = count or cfg_num
    if width is None or height is None:
        raise UsageError("detector calc_anchors: give -width and -height (or -cfg to take them from)")
    count = count or 5
    try:
        with warnings_as_notes():
            result = calc_anchors(args.data, count, width, height, seed=args.seed)
            new_cfg = None
            if args.out_cfg is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")   # the cfg's warnings were shown above
                    new_cfg = cfg_with_anchors(args.cfg, result.text, count)
        for line in report(result, count, width, height):
            print(line)
        _write("anchors.txt", result.text)
        _write("counters_per_class.txt", "counters_per_class = " + ", ".join(str(int(n)) for n in result.counts))
        if new_cfg is not None:
            _write(args.out_cfg, new_cfg)
            note(f"{args.out_cfg}: {args.cfg} with anchors= and num={count} in its [yolo] sections")
    except (AnchorsError, *TRAIN_ERRORS) as e:
        raise CliError(str(e)) from None
    if args.show:
        img = plot(result.sizes, result.anchors, width, height)
        if not cv2.imwrite("anchors.png", img):
            raise CliError(f"{os.path.abspath('anchors.png')}: cannot write the plot")
        note(f"plot written to {os.path.abspath('anchors.png')}")
        Viewer(True).show(img)
    return EXIT_OK
