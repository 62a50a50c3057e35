"""Checks on what training is given: the files and settings of a training
run (TrainError, naming the file or setting), and the inputs of a batch
before they reach the C core (non-finite pixels are refused, unusable truth
rows are reported with image and row and left out)."""
from __future__ import annotations

import logging
import os

import numpy as np

from ._native import ffi, lib
from .cfg import HEAD_TYPES

log = logging.getLogger("pydarknet")


class TrainError(ValueError):
    """Training cannot start or go on (the message names the file)."""


# ----------------------------------------------------------------------------- files and settings

def check_readable(path, what, hint=""):
    """TrainError naming `path` (`what` it is, `hint` where it was named)
    unless it is a file that can be read."""
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise TrainError(f"{path}: cannot read {what}{hint}: {e.strerror or e}") from None
    if os.path.isdir(path):
        raise TrainError(f"{path}: cannot read {what}{hint}: Is a directory")


def check_positive(value, what):
    """None for None, else `value` as an int of at least 1 (TrainError otherwise)."""
    if value is not None and int(value) < 1:
        raise TrainError(f"{what} must be at least 1, got {value}")
    return None if value is None else int(value)


# ----------------------------------------------------------------------------- batches

def check_inputs(net, x):
    """x: float32 C-contiguous [B, ...]; names the first image with a NaN or
    an infinity (the C core scans, on the network's threads)."""
    bad = lib.dn_net_first_nonfinite(net._ptr, ffi.from_buffer("float[]", x), x.shape[0], x[0].size if len(x) else 0)
    if bad >= 0:
        raise ValueError(f"input image {bad} of the batch has NaN or infinite values")


def head_classes(net):
    """Classes of the detection heads, or None for a network without one."""
    classes = {l.spec.attrs["classes"] for l in net.layers if l.type in HEAD_TYPES}
    if len(classes) > 1:
        raise ValueError(f"detection heads disagree on the number of classes: {sorted(classes)}")
    return classes.pop() if classes else None


def clean_truths(net, truths, batch):
    """float32 C-contiguous truths with unusable detection rows zeroed."""
    t = np.array(truths, dtype=np.float32, copy=True)
    if t.shape[:1] != (batch,):
        raise ValueError(f"truths of shape {t.shape} do not match a batch of {batch} images")
    classes = head_classes(net)
    if classes is None:
        if not np.isfinite(t).all():
            raise ValueError("truths contain NaN or infinite values")
        return np.ascontiguousarray(t.reshape(batch, -1))
    if t.ndim != 3 or t.shape[2] != 5:
        raise ValueError(f"detection truths must be [batch, max_boxes, 5] (x y w h class), got {t.shape}")
    for b, row in zip(*np.nonzero(t.any(axis=2) | ~np.isfinite(t).all(axis=2))):
        x, y, w, h, c = (float(v) for v in t[b, row])
        problem = None
        if not np.isfinite(t[b, row]).all():
            problem = "has NaN or infinite values"
        elif c != int(c) or not 0 <= c < classes:
            problem = f"has class {c:g}, outside 0..{classes - 1}"
        elif not (0 <= x <= 1 and 0 <= y <= 1 and 0 < w <= 1 and 0 < h <= 1):
            problem = f"has a box ({x:g}, {y:g}, {w:g}, {h:g}) outside 0..1"
        if problem:
            log.warning("truth row %d of image %d %s; left out", row, b, problem)
            t[b, row] = 0
    return np.ascontiguousarray(t.reshape(batch, -1))
