"""Classifications as small typed records: which networks are classifiers,
and the most probable classes of a classifier's output (darknet's top_k).
Network.classify gives them; pydarknet.classifier trains and evaluates
classifiers."""
from __future__ import annotations

from typing import List, NamedTuple, Optional

import numpy as np

from .cfg import HEAD_TYPES
from .train_checks import TrainError

__all__ = ["Classification", "ClassifierError", "top_k", "classify_output", "require_classifier"]


class ClassifierError(TrainError):
    """A classifier's cfg, .data or labels file that cannot be used (the
    message names the file)."""


class Classification(NamedTuple):
    class_id: int
    name: Optional[str]
    probability: float


def top_k(probs, k) -> np.ndarray:
    """The indices of the k largest values, largest first; equal values in
    index order (darknet's top_k)."""
    p = np.asarray(probs, np.float32).reshape(-1)
    return np.argsort(-p, kind="stable")[:max(0, min(int(k), p.size))]


def classify_output(probs, top, names=None) -> List[Classification]:
    """The `top` most probable classes of one image's output vector."""
    probs = np.asarray(probs, np.float32).reshape(-1)
    return [Classification(int(i), names[i] if names is not None and i < len(names) else None, float(probs[i]))
            for i in top_k(probs, top)]


def require_classifier(spec, cfg=None):
    """Raises ClassifierError unless the cfg ends in a [softmax] (then
    optionally [cost] layers) and has no detection layer."""
    cfg = cfg or spec.path
    heads = [l for l in spec.layers if l.type in HEAD_TYPES]
    if heads:
        raise ClassifierError(f"{cfg}: has a [{heads[0].type}] layer (line {heads[0].line}): a detection network; "
                              f"use 'pydarknet detector' for it, 'classifier' needs a cfg ending in [softmax]")
    body = [l for l in spec.layers if l.type != "cost"]
    if not body or body[-1].type != "softmax":
        last = body[-1] if body else None
        what = f"ends in [{last.type}] (line {last.line})" if last else "has no layers"
        raise ClassifierError(f"{cfg}: {what}; a classifier cfg ends in [softmax] (then optionally [cost])")
