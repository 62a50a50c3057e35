"""Long runs, flat memory (short versions of benchmarks/bench_long_run.py,
whose functions they use): `detector demo` over a generated video and
`detector train` over a few hundred iterations run in a child process whose
resident memory (VmRSS) is sampled every 0.1 s; after the warm-up (the first
10% of the frames or iterations) it must stay flat.

The bounds are absolute, set from what a leak of one frame or one batch per
step would add over the measured part of the run (from the median RSS just
after the warm-up to the median over the last 5%: about 80% of the steps):

* demo: 1,500 frames of 160x120 BGR (57,600 bytes each) through cfg/shapes.cfg
  at 64x64: a frame kept per frame adds ~1,200 x 57,600 = 66 MiB, the
  network's float input kept (64x64x3x4 = 49,152 bytes) 56 MiB, even a
  1 KiB object kept per frame 1.2 MiB. Measured growth (Xeon, 2 cores):
  ~0.1 MiB. Bound: 1 MiB, and a slope under 512 bytes a frame.
* train: 1,200 iterations of batch 4 of a two-convolution network at 32x32
  (checkpoints every 20 iterations; warm-up the first 25%, as the run is
  fast and matplotlib's first chart comes in it): a batch kept per iteration
  (4x3x32x32 float32 = 49,152 bytes plus its truths) adds ~850 x 48 KiB =
  40 MiB. The in-memory training log and the chart's redraws grow by design
  by a few hundred bytes an iteration and move in steps (measured: +2.5 MiB,
  slope ~330 bytes an iteration). Bound: 6 MiB (a leak of 7 KiB an iteration
  exceeds it), and a slope under 4 KiB an iteration.

Checked to fail: a module-level list keeping each frame in
detect_cli._demo_loop, or each batch in trainer._loop, trips both bounds.
"""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20

if not sys.platform.startswith("linux"):
    pytest.skip("reads /proc/<pid>/status", allow_module_level=True)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_long_run", ROOT / "benchmarks" / "bench_long_run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = _bench()

# two strided convolutions and a [yolo] head for the 3 shape classes (tests/helpers.py's small yolo)
TINY_CFG = """[net]
batch=4
subdivisions=1
width=32
height=32
channels=3
momentum=0.9
decay=0.0005
learning_rate=0.001
burn_in=10
max_batches=1200
policy=steps
steps=800
scales=.1

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

[convolutional]
size=1
stride=1
filters=24
activation=linear

[yolo]
mask=0,1,2
anchors=6,6, 12,12, 24,24
classes=3
num=3
random=0
"""


def _explain(result):
    return ", ".join(f"{k}={result[k]}" for k in ("rss_warmup_mib", "rss_end_mib", "rss_max_mib", "growth_bytes",
                                                    "growth_pct", "slope_bytes_per_step", "seconds"))


def test_demo_memory_is_flat_over_1500_frames(tmp_path):
    r = bench.demo_run(str(tmp_path), frames=1500, width=160, height=120, size=64, interval=0.1, threads=1,
                       timeout=120)
    assert r["samples_after_warmup"] >= 10, _explain(r)
    assert r["growth_bytes"] < 1 * MiB, _explain(r)
    assert r["slope_bytes_per_step"] < 512, _explain(r)


def test_training_memory_is_flat_over_1200_iterations(tmp_path):
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY_CFG)
    r = bench.train_run(str(tmp_path / "run"), iterations=1200, batch=4, size=32, images=16, cfg=str(cfg),
                        interval=0.1, threads=1, timeout=120, savelast=20, warmup=0.25)
    assert r["samples_after_warmup"] >= 10, _explain(r)
    assert r["growth_bytes"] < 6 * MiB, _explain(r)
    assert r["slope_bytes_per_step"] < 4 * 1024, _explain(r)


def test_chart_loss_curve_stays_bounded_and_keeps_the_extremes():
    """The training chart's curve (pydarknet.chart.LossCurve) over 100,000 iterations: at most 2 points per
    bucket plus the last, in iteration order, every point a real (iteration, loss, average loss) of the run,
    the highest and lowest losses kept (a spike stays visible), the last iteration last."""
    import numpy as np

    from pydarknet.chart import LossCurve

    curve = LossCurve(buckets=50)
    loss = lambda it: 1000.0 if it == 31337 else (0.001 if it == 77777 else 1.0 + 1.0 / it)
    for it in range(1, 100001):
        curve.add(it, loss(it), 2.0 / it)
    its, losses, avgs = curve.arrays()
    assert len(its) <= 2 * 50 + 1 and np.all(np.diff(its) > 0)
    assert its[-1] == 100000 and losses[-1] == loss(100000)
    assert np.array_equal(losses, [loss(int(i)) for i in its]) and np.array_equal(avgs, 2.0 / its)
    assert losses.max() == 1000.0 and losses.min() == 0.001
