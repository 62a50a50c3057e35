"""The training chart: loss and average loss over iterations, with the mAP
(or a classifier's top-k accuracy) points when they are computed, as
darknet's chart.png shows them.

Drawn with matplotlib's Agg canvas directly (no pyplot, so no window and no
change to the process's matplotlib backend) and written through a temporary
file renamed into place, so a reader never sees half a PNG.
"""
from __future__ import annotations

import gc
import math
import os
from typing import Iterable, Mapping, Optional

from .fileio import replacing

__all__ = ["draw_chart", "chart_available", "chart_series", "LossCurve"]

_MAX_POINTS = 400   # points per curve drawn (200 runs' lowest and highest; the chart is 1000 pixels wide)


def chart_available() -> bool:
    """Whether matplotlib can be imported."""
    try:   # matplotlib is optional and slow to import: only when a chart is asked for
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _finite(v):
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def draw_chart(path, records: Iterable[Mapping], max_batches: Optional[int] = None, title: Optional[str] = None,
               hours_left: Optional[float] = None, size=(10.0, 6.0), dpi=100, metric: str = "mAP",
               series=None) -> str:
    """Writes the chart of `records` (mappings with iteration, loss,
    avg_loss and, where computed, `metric` (mAP, top5 ...) as a fraction)
    to `path` as a PNG.
    The loss axis is cut at 1.1 times the 95th percentile of the loss so a
    few huge early losses do not flatten the rest (darknet cuts at its
    max_chart_loss). `series`: the curves as chart_series gives them, in
    place of `records` (no Python object per iteration: a long training's
    redraws do not grow with it). Raises ImportError without matplotlib.
    Returns path."""
    try:
        return _draw(path, records, max_batches, title, hours_left, size, dpi, metric, series)
    finally:
        # A matplotlib Figure is a web of reference cycles (figure, canvas, axes, artists, the renderer its texts
        # keep) that only the cyclic garbage collector frees, and in a long training a full collection comes
        # seldom: every redraw left its Agg pixel buffer (2.4 MB at 1000x600) behind until then, and the resident
        # memory grew by megabytes every few redraws (benchmarks/bench_long_run.py). Free the figure now.
        gc.collect()
        _trim_heap()


def _trim_heap():
    """Gives the C heap's free pages back to the system (glibc's malloc_trim, which also reaches the arenas of
    other threads, such as the one a chart is drawn in): a drawing's many short-lived allocations left free
    holes in its thread's arena that the resident memory of a long training kept growing by. Nothing where
    the C library has no malloc_trim."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


_TRIM = []


def _malloc_trim():
    if not _TRIM:
        fn = None
        try:
            import ctypes
            import ctypes.util

            name = ctypes.util.find_library("c")
            fn = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
            if fn is not None:
                fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
        except (OSError, AttributeError, ImportError):
            fn = None
        _TRIM.append(fn)
    return _TRIM[0]


class LossCurve:
    """The loss curves of a training as the chart draws them, in bounded
    memory however long the training: the points go into buckets of `size`
    consecutive iterations, each keeping its lowest and highest loss (so
    spikes stay visible) and its last average loss; when there are `buckets`
    buckets, neighbours merge and the size doubles. What a redraw reads
    (arrays()) is at most 2 * buckets + 1 points, built fresh each time: the
    allocations of a redraw stop growing with the iterations done."""

    def __init__(self, buckets=_MAX_POINTS // 2):
        self.buckets, self.size = int(buckets), 1
        # per bucket: its lowest and its highest point, its last point (iteration, loss, average loss each),
        # and how many points it holds
        self._rows = []

    def add(self, it, loss, avg):
        if not (_finite(it) and _finite(loss) and _finite(avg)):
            return
        p = (float(it), float(loss), float(avg))
        if self._rows and self._rows[-1][3] < self.size:
            r = self._rows[-1]
            if p[1] < r[0][1]:
                r[0] = p
            if p[1] > r[1][1]:
                r[1] = p
            r[2], r[3] = p, r[3] + 1
            return
        if len(self._rows) == self.buckets:   # neighbours merge: buckets of twice the size
            rows, merged = self._rows, []
            for k in range(0, len(rows), 2):
                a = list(rows[k])
                if k + 1 < len(rows):
                    b = rows[k + 1]
                    a = [min(a[0], b[0], key=lambda q: q[1]), max(a[1], b[1], key=lambda q: q[1]), b[2], a[3] + b[3]]
                merged.append(a)
            self._rows = merged
            self.size *= 2
        self._rows.append([p, p, p, 1])

    def arrays(self):
        """(iterations, losses, average losses) to plot: each bucket's lowest and highest point in iteration
        order, then the last iteration's."""
        import numpy as np

        pts = []
        for lo, hi, _, _ in self._rows:
            pts.extend(sorted({lo, hi}))
        if self._rows and pts[-1] != self._rows[-1][2]:
            pts.append(self._rows[-1][2])
        a = np.asarray(pts, np.float64).reshape(-1, 3)
        return a[:, 0].copy(), a[:, 1].copy(), a[:, 2].copy()


def chart_series(records: Iterable[Mapping], metric: str = "mAP"):
    """The curves of `records` as float64 arrays: iterations, losses and average losses (where both are
    finite; through a LossCurve, so at most its points), and the iterations and values (in %) of `metric`."""
    import numpy as np

    curve, map_its, maps = LossCurve(), [], []
    for r in records:
        it = r.get("iteration")
        if it is None:
            continue
        curve.add(it, r.get("loss"), r.get("avg_loss"))
        if _finite(r.get(metric)):
            map_its.append(int(it))
            maps.append(100.0 * float(r[metric]))
    return curve.arrays() + (np.asarray(map_its, np.float64), np.asarray(maps, np.float64))


def _draw(path, records, max_batches, title, hours_left, size, dpi, metric, series=None):
    # matplotlib is optional and slow to import: only when a chart is drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    import numpy as np

    path = os.fspath(path)
    its, losses, avgs, map_its, maps = series if series is not None else chart_series(records, metric)

    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(its, losses, color="#9ab8e0", linewidth=0.8, label="loss")
    ax.plot(its, avgs, color="#1f4fa0", linewidth=1.6, label="avg loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.grid(True, color="#dddddd", linewidth=0.6)
    right = max_batches if max_batches else (max(np.max(its, initial=0), np.max(map_its, initial=0)) or 1)
    ax.set_xlim(0, max(1, right))
    if len(losses):
        ordered = np.sort(losses)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * (len(ordered) - 1) + 0.5))]
        top = 1.1 * max(p95, avgs[-1], 1e-6)
        ax.set_ylim(0, top)
    handles, labels = ax.get_legend_handles_labels()
    if len(maps):
        ax2 = ax.twinx()
        ax2.plot(map_its, maps, color="#c02020", marker="o", markersize=4, linewidth=1.0, label=f"{metric}%")
        ax2.set_ylim(0, 100)
        ax2.set_ylabel(f"{metric} %", color="#c02020")
        ax2.tick_params(axis="y", colors="#c02020")
        best = int(np.argmax(maps))
        ax2.annotate(f"{maps[best]:.1f}%", (map_its[best], maps[best]), textcoords="offset points",
                     xytext=(0, 6), ha="center", color="#c02020", fontsize=8)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, loc="upper right", fontsize=9)
    if title is None:
        title = "training"
    if len(its):
        title += f"   iteration {int(its[-1])}" + (f"/{max_batches}" if max_batches else "")
        title += f"   avg loss {avgs[-1]:.4f}"
    if _finite(hours_left):
        title += f"   time left {hours_left:.2f} h"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()

    with replacing(path, mode=None, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path
