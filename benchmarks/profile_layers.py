#!/usr/bin/env python3
"""Per-layer times of pydarknet's forward pass (and, with --train, of a training
iteration's forward and backward passes), from the C core's layer timers
(dn_net_set_profiling / dn_net_layer_times).

    python benchmarks/profile_layers.py                       # yolov4-tiny, 416, batch 1, 2 threads
    python benchmarks/profile_layers.py --speed 0             # the plain paths, for comparison
    python benchmarks/profile_layers.py --train --batch 4     # one mini-batch of 4: forward+backward
    python benchmarks/profile_layers.py --compare             # plain and fast side by side, interleaved

Times are wall-clock medians over --repeat runs (with worker threads a layer's
time is how long the caller waited for it). --speed sets the speed paths
(dn_net_set_speed bits: 1 threads, 2 fused batch norm, 4 Winograd, 8 packed kernel, 16 denormals
flushed in inference; default all).
"""
import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from paths import add_cfg_dir_arg, add_image_arg  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", default="yolov4-tiny", help="cfg path or a model name from --cfg-dir")
    add_cfg_dir_arg(ap)
    add_image_arg(ap)
    ap.add_argument("--size", type=int, default=416)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--speed", type=lambda v: int(v, 0), default=None, help="speed path bits (default: all)")
    ap.add_argument("--compare", action="store_true", help="time speed 0 and the --speed paths side by side")
    ap.add_argument("--train", action="store_true", help="profile training passes (random truths)")
    ap.add_argument("--pause", type=float, default=0.0, help="seconds of idle before each timed run (default 0)")
    ap.add_argument("--gpu", type=int, default=None, help="run on this CUDA device (the loop synchronizes around "
                    "each layer while profiling, so each time is its own)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "pydarknet-bench"))
    return ap.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

import pydarknet  # noqa: E402
from pydarknet._native import check, ffi, lib  # noqa: E402

sys.path.insert(0, HERE)
from common import load_input, random_weights, resolve_cfg, sized_cfg  # noqa: E402


def layer_times(net):
    f, b, c = ffi.new("double *"), ffi.new("double *"), ffi.new("long long *")
    out = []
    for i in range(len(net.layers)):
        check(lib.dn_net_layer_times(net._ptr, i, f, b, c))
        out.append((f[0], b[0], c[0]))
    return out


def describe(layer):
    a = layer.spec.attrs if layer.spec is not None else {}
    c, h, w = layer.shape
    extra = ""
    if layer.type == "convolutional":
        extra = "%s %dx%d/%d" % (a.get("filters"), a.get("size", 1), a.get("size", 1), a.get("stride", 1))
    return "%-3d %-14s %-14s -> %dx%dx%d" % (layer.index, layer.type[:14], extra, c, h, w)


def make_net(args):
    cfg = resolve_cfg(args.cfg, args.cfg_dir)
    weights = random_weights(cfg, args.seed, args.cache, args.threads)
    net = pydarknet.load(sized_cfg(cfg, args.size, args.cache), weights, threads=args.threads,
                         batch=args.batch if args.train else None)
    if args.gpu is not None:
        net.set_device(args.gpu)
    return net


def truths(net, n, rng):
    t = np.zeros((n, 90, 5), np.float32)
    classes = 80
    for layer in net.layers:
        if layer.type == "yolo":
            classes = int(layer.spec.attrs.get("classes", 80))
    for i in range(n):
        k = rng.integers(1, 6)
        t[i, :k, 0:2] = rng.uniform(0.2, 0.8, (k, 2))
        t[i, :k, 2:4] = rng.uniform(0.05, 0.4, (k, 2))
        t[i, :k, 4] = rng.integers(0, classes, k)
    return t


def run_once(net, args, x, t):
    if args.train:
        net.train_batch(x, t)
    else:
        net.forward(x)


def profile(net, args, x, t, speed):
    check(lib.dn_net_set_speed(net._ptr, speed))
    run_once(net, args, x, t)  # warm-up
    per_run, totals = [], []
    for _ in range(args.repeat):
        if args.pause:
            time.sleep(args.pause)
        check(lib.dn_net_set_profiling(net._ptr, 1))
        t0 = time.perf_counter()
        run_once(net, args, x, t)
        totals.append(time.perf_counter() - t0)
        per_run.append(layer_times(net))
        check(lib.dn_net_set_profiling(net._ptr, 0))
    arr = np.array([[[f, b] for f, b, _ in run] for run in per_run])  # runs x layers x 2
    return np.median(arr, axis=0) * 1e3, float(np.median(totals)) * 1e3


def main(args):
    net = make_net(args)
    rng = np.random.default_rng(0)
    n = args.batch if args.train else 1
    x = np.ascontiguousarray(np.repeat(load_input(args.image, args.size), n, 0))
    t = truths(net, n, rng) if args.train else None
    fast = lib.DN_SPEED_ALL if args.speed is None else args.speed
    speeds = [0, fast] if args.compare else [fast]
    results, algorithms = {}, {}
    for _ in range(1):
        for sp in speeds:
            results[sp] = profile(net, args, x, t, sp)
            # how each convolution ran (measured on this machine unless PYDARKNET_TUNING=off)
            algorithms[sp] = [layer.algorithm or "" for layer in net.layers]
    mode = "training mini-batch of %d (forward+backward+update)" % n if args.train else "inference, batch 1"
    print("%s at %d, %s, %s, %d thread(s); medians of %d runs, ms"
          % (args.cfg, args.size, mode, net.device_name, args.threads, args.repeat))
    head = "%-48s" % "layer"
    for sp in speeds:
        head += " | fwd sp=%d" % sp + (" | bwd sp=%d" % sp if args.train else "")
    print(head + " | algorithm")
    for i, layer in enumerate(net.layers):
        row = "%-48s" % describe(layer)
        for sp in speeds:
            lt = results[sp][0]
            row += " | %9.2f" % lt[i, 0] + (" | %9.2f" % lt[i, 1] if args.train else "")
        print(row + " | " + algorithms[speeds[-1]][i])
    row = "%-48s" % "sum of layers"
    for sp in speeds:
        lt = results[sp][0]
        row += " | %9.2f" % lt[:, 0].sum() + (" | %9.2f" % lt[:, 1].sum() if args.train else "")
    print(row)
    for sp in speeds:
        print("speed=%d: whole call median %.1f ms" % (sp, results[sp][1]))


if __name__ == "__main__":
    main(ARGS)
