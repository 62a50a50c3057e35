#!/usr/bin/env python3
"""Per-kernel GPU time of pydarknet: which CUDA kernels and copies a forward
pass (--batch images) and a training iteration spend the device's time on.

    python benchmarks/profile_kernels.py                      # yolov4-tiny, 416, batch 64, GPU 0
    python benchmarks/profile_kernels.py --cfg yolov4 --batch 16 --json out/kernels.json

The trace comes from PyTorch's profiler (CUPTI), which records every kernel
launched in the process, pydarknet's included; PyTorch itself runs nothing
here. Printed per part: kernels sorted by total device time, with their launch
count, and the device-busy share of the wall time. Needs PyTorch with CUDA and
pydarknet built with PYDARKNET_CUDA=1.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import pydarknet  # noqa: E402
from common import random_weights, resolve_cfg, sized_cfg  # noqa: E402
from paths import CFG_DIR  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cfg", default="yolov4-tiny", help="cfg path or a model name from --cfg-dir")
    ap.add_argument("--cfg-dir", default=CFG_DIR)
    ap.add_argument("--size", type=int, default=416)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--gpu", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--top", type=int, default=15, help="kernels printed per part")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "pydarknet-bench"))
    ap.add_argument("--json", default=None)
    return ap.parse_args(argv)


def kernel_table(prof):
    """[(name, device ms, launches)] of every device activity, largest first."""
    rows = {}
    for e in prof.events():
        dev_us = getattr(e, "device_time", None)
        if dev_us is None:
            dev_us = getattr(e, "cuda_time", 0.0)
        if not dev_us or str(getattr(e, "device_type", "")).endswith("CPU"):
            continue
        ms, n = rows.get(e.name, (0.0, 0))
        rows[e.name] = (ms + dev_us / 1e3, n + 1)
    return sorted(((k, v[0], v[1]) for k, v in rows.items()), key=lambda r: -r[1])


def profiled(fn, torch):
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm-up
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) * 1e3
    return kernel_table(prof), wall


def main(args):
    try:
        import torch
    except ImportError:
        raise SystemExit("profile_kernels.py needs PyTorch (with CUDA) for its profiler")
    if not torch.cuda.is_available() or not pydarknet.cuda_devices():
        raise SystemExit("profile_kernels.py needs a CUDA device and pydarknet built with PYDARKNET_CUDA=1")
    cfg = sized_cfg(resolve_cfg(args.cfg, args.cfg_dir), args.size, args.cache)
    weights = random_weights(cfg, args.seed, args.cache, min(args.threads, 8))
    net = pydarknet.load(cfg, weights, batch=args.batch, threads=args.threads, gpu=args.gpu)
    torch.cuda.set_device(args.gpu)
    rng = np.random.default_rng(args.seed)
    x = rng.random((args.batch, 3, args.size, args.size), dtype=np.float32)
    classes = next((l.spec.attrs["classes"] for l in net.layers if l.type == "yolo"), 80)
    t = np.zeros((args.batch, 90, 5), np.float32)
    t[:, :8, 0:2] = rng.uniform(0.1, 0.9, (args.batch, 8, 2))
    t[:, :8, 2:4] = rng.uniform(0.05, 0.5, (args.batch, 8, 2))
    t[:, :8, 4] = rng.integers(0, classes, (args.batch, 8))
    def train():
        net.enable_training()
        net.train_batch(x, t)

    parts = {"forward": lambda: net.predict(x), "training iteration (train_batch, [yolo] loss)": train}
    result = {"cfg": os.path.basename(cfg), "batch": args.batch, "gpu": torch.cuda.get_device_name(args.gpu), "parts": {}}
    for name, fn in parts.items():
        table, wall = profiled(fn, torch)
        busy = sum(ms for _, ms, _ in table)
        print("%s, %s, batch %d: wall %.1f ms, device busy %.1f ms (%.0f%%)"
              % (os.path.basename(cfg), name, args.batch, wall, busy, 100 * busy / max(wall, 1e-9)))
        for k, ms, n in table[:args.top]:
            print("  %9.2f ms  %6d x  %s" % (ms, n, k[:110]))
        result["parts"][name] = {"wall_ms": wall, "device_ms": busy,
                                 "kernels": [{"name": k, "ms": ms, "launches": n} for k, ms, n in table]}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main(parse_args())
