#!/usr/bin/env python3
"""Time of one training iteration of pydarknet, optionally side by side with darknet.

An iteration is darknet's: one batch of --batch images (default 16) run as
--subdivisions mini-batches (default 4), gradients accumulated, one update.

pydarknet: ``net.train_batch(x, truths)`` on fixed arrays (the images of the
dataset, stretched to --size, and their boxes), so only the network's work is
timed: no loading or augmentation. Weights start from darknet's random
initialization (no weights file).

darknet (with ``--darknet /path/to/darknet``, a CPU build): ``darknet detector
train DATA CFG -dont_show`` with no weights, run in the data file's
folder; its per-iteration "N: loss, avg loss, rate, S seconds" lines are
parsed. darknet's S covers train_network() only (its image loading runs in
other threads, at the same time, on the same CPUs: on a small machine that
slows it down, which is part of what darknet costs).

Both use a copy of the cfg made for training here: [net] batch, subdivisions,
width, height, max_batches (warm-up + timed iterations for darknet), and the
classes of the data set (every [yolo]/[region] classes=, the filters= of the
convolution before each head), random=0 so darknet keeps one input size.

Without --data a small synthetic data set of coloured shapes is written
(pydarknet.data.shapes, 32 images at --size).

    python benchmarks/bench_training.py                                  # pydarknet alone
    python benchmarks/bench_training.py --darknet /tmp/darknet-src/darknet --iterations 5
    python benchmarks/bench_training.py --threads 1 --speed 0            # plain code paths

The order is pydarknet, darknet, pydarknet (the two pydarknet runs pooled), so
drift in the machine's load hits both. Other processes' CPU use during each
part is measured and printed.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from paths import add_cfg_dir_arg, recorded_command  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", default="yolov4-tiny", help="cfg path or model name (default yolov4-tiny)")
    add_cfg_dir_arg(ap)
    ap.add_argument("--data", default=None, help="darknet .data file (default: a synthetic shapes set)")
    ap.add_argument("--size", type=int, default=416)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--subdivisions", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=4, help="timed iterations per run (default 4)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed iterations first (default 1)")
    ap.add_argument("--speed", type=lambda v: int(v, 0), default=None,
                    help="pydarknet speed paths (dn_net_set_speed bits; default all)")
    ap.add_argument("--darknet", default=None, help="path of a darknet binary to run side by side")
    ap.add_argument("--darknet-iterations", type=int, default=None,
                    help="darknet's timed iterations (default --iterations)")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "pydarknet-bench-train"),
                    help="folder for the cfg copy and the synthetic data set")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "training.json"))
    return ap.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import cv2  # noqa: E402
import numpy as np  # noqa: E402

import pydarknet  # noqa: E402
from pydarknet._native import check, lib  # noqa: E402

sys.path.insert(0, HERE)
from common import Neighbours, machine_info, resolve_cfg  # noqa: E402


# ------------------------------------------------------------------ files

def read_data_file(path):
    opts = {}
    with open(path) as fh:
        for line in fh:
            if "=" in line and not line.lstrip().startswith("#"):
                k, v = line.split("=", 1)
                opts[k.strip()] = v.strip()
    return opts


def synthetic_data(folder, size):
    from pydarknet.data.shapes import write_shapes_dataset

    data = os.path.join(folder, "shapes.data")
    if not os.path.isfile(data):
        write_shapes_dataset(folder, count=32, width=size, height=size)
    os.makedirs(os.path.join(folder, "backup"), exist_ok=True)
    return data


def train_cfg(src, out, classes, batch, subdivisions, size, max_batches):
    """Writes the training copy of a detector cfg (see the module docstring)."""
    with open(src) as fh:
        lines = fh.read().split("\n")
    sections = []  # (name, start line)
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            sections.append((s.lower(), i))
    sections.append(("[end]", len(lines)))

    def body(k):
        return range(sections[k][1] + 1, sections[k + 1][1])

    def key_of(line):
        m = re.match(r"^\s*([A-Za-z_0-9]+)\s*=", line)
        return m.group(1) if m else None

    def set_key(k, key, value):
        for i in body(k):
            if key_of(lines[i]) == key:
                lines[i] = "%s=%s" % (key, value)
                return
        lines[sections[k][1]] += "\n%s=%s" % (key, value)

    def get_key(k, key, default=None):
        for i in body(k):
            if key_of(lines[i]) == key:
                return lines[i].split("=", 1)[1].strip()
        return default

    for k, (name, _) in enumerate(sections[:-1]):
        if name in ("[net]", "[network]"):
            for key, value in (("batch", batch), ("subdivisions", subdivisions), ("width", size), ("height", size),
                               ("max_batches", max_batches)):
                set_key(k, key, value)
        elif name in ("[yolo]", "[region]"):
            set_key(k, "classes", classes)
            if name == "[yolo]":
                set_key(k, "random", 0)
                mask = get_key(k, "mask")
                per = len(mask.split(",")) if mask else int(get_key(k, "num", "1"))
                filters = (classes + 5) * per
            else:
                filters = (classes + int(get_key(k, "coords", "4")) + 1) * int(get_key(k, "num", "1"))
            for j in range(k - 1, -1, -1):
                if sections[j][0] in ("[convolutional]", "[conv]"):
                    set_key(j, "filters", filters)
                    break
    with open(out, "w") as fh:
        fh.write("\n".join(lines))
    return out


def load_batch(data_path, size, n):
    """The first n images of the data set's train list (cycled), stretched to
    size x size, RGB, /255, and their boxes as [n, 90, 5] rows x y w h class."""
    opts = read_data_file(data_path)
    root = os.path.dirname(os.path.abspath(data_path))
    train = opts["train"] if os.path.isabs(opts["train"]) else os.path.join(root, opts["train"])
    with open(train) as fh:
        images = [ln.strip() for ln in fh if ln.strip()]
    x = np.zeros((n, 3, size, size), np.float32)
    t = np.zeros((n, 90, 5), np.float32)
    for i in range(n):
        path = images[i % len(images)]
        path = path if os.path.isabs(path) else os.path.join(root, path)
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        img = cv2.cvtColor(cv2.resize(img, (size, size)), cv2.COLOR_BGR2RGB)
        x[i] = img.transpose(2, 0, 1) / 255.0
        label = os.path.splitext(path)[0] + ".txt"
        rows = np.loadtxt(label, ndmin=2) if os.path.isfile(label) and os.path.getsize(label) else np.zeros((0, 5))
        for r, (cls, bx, by, bw, bh) in enumerate(rows[:90]):
            t[i, r] = (bx, by, bw, bh, cls)
    return x, t


# ------------------------------------------------------------------ runs

def time_pydarknet(cfg, x, t, args):
    net = pydarknet.load(cfg, threads=args.threads)
    if args.speed is not None:
        check(lib.dn_net_set_speed(net._ptr, args.speed))
    for _ in range(args.warmup):
        net.train_batch(x, t)
    times, mon, loads = [], Neighbours(), []
    for _ in range(args.iterations):
        mon.start()
        t0 = time.perf_counter()
        loss = net.train_batch(x, t)
        times.append(time.perf_counter() - t0)
        loads.append(round(mon.stop(), 2))
        print("  pydarknet: %.2f s (loss %.2f; other processes %.2f CPU)" % (times[-1], loss, loads[-1]), flush=True)
    return times, loads, {"mini_batch": net.mini_batch, "subdivisions": net.subdivisions, "speed": int(lib.dn_net_speed(net._ptr))}


LINE = re.compile(r"^\s*(\d+): ([-+\w.]+), ([-+\w.]+) avg loss, ([-+\w.]+) rate, ([\d.]+) seconds, (\d+) images")


def time_darknet(binary, data, cfg, args, iterations):
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    cmd = [os.path.abspath(binary), "detector", "train", os.path.abspath(data), os.path.abspath(cfg), "-dont_show"]
    print("  running: %s (in %s)" % (" ".join(cmd), os.path.dirname(os.path.abspath(data))), flush=True)
    proc = subprocess.Popen(cmd, cwd=os.path.dirname(os.path.abspath(data)), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    mon = Neighbours([proc.pid])
    rows, loads, tail = [], [], []
    mon.start()
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        m = LINE.match(line)
        if m:
            loads.append(round(mon.stop(), 2))
            mon.start()
            rows.append((int(m.group(1)), float(m.group(5))))
            print("  darknet: iteration %s %.2f s (loss %s; other processes %.2f CPU)"
                  % (m.group(1), rows[-1][1], m.group(2), loads[-1]), flush=True)
            if len(rows) >= args.warmup + iterations:
                proc.terminate()
                break
    proc.wait()
    if len(rows) <= args.warmup:
        sys.stderr.write("".join(tail))
        raise SystemExit("darknet printed %d iteration lines" % len(rows))
    return [s for _, s in rows[args.warmup:]], loads[args.warmup:]


def main(args):
    cfg_src = resolve_cfg(args.cfg, args.cfg_dir)
    os.makedirs(args.work, exist_ok=True)
    data = os.path.abspath(args.data) if args.data else synthetic_data(os.path.join(args.work, "shapes"), args.size)
    classes = int(read_data_file(data)["classes"])
    dn_iters = args.darknet_iterations or args.iterations
    stem = os.path.splitext(os.path.basename(cfg_src))[0]
    cfg = train_cfg(cfg_src, os.path.join(args.work, "%s-train-%d.cfg" % (stem, args.size)), classes, args.batch,
                    args.subdivisions, args.size, args.warmup + dn_iters)
    x, t = load_batch(data, args.size, args.batch)
    info = machine_info()
    print("machine: %s, %s usable CPU(s); %d thread(s); %s at %d, batch %d, subdivisions %d"
          % (info["cpu_model"], info["cpus_usable"], args.threads, stem, args.size, args.batch, args.subdivisions))
    result = {"machine": info, "command": recorded_command(sys.argv),
              "cfg": os.path.basename(cfg),
              "data": data, "threads": args.threads, "batch": args.batch, "subdivisions": args.subdivisions}
    print("pydarknet (1):", flush=True)
    dn_times, dn_loads, meta = time_pydarknet(cfg, x, t, args)
    result["pydarknet"] = meta
    if args.darknet:
        print("darknet:", flush=True)
        dk_times, dk_loads = time_darknet(args.darknet, data, cfg, args, dn_iters)
        print("pydarknet (2):", flush=True)
        more, more_loads, _ = time_pydarknet(cfg, x, t, args)
        dn_times += more
        dn_loads += more_loads
        result["darknet_s"] = dk_times
        result["darknet_neighbour_cpus"] = dk_loads
    result["pydarknet_s"] = dn_times
    result["pydarknet_neighbour_cpus"] = dn_loads
    med = float(np.median(dn_times))
    print()
    print("| system | iteration s (median) | min | images/s | other processes' CPU (max) |")
    print("|---|---|---|---|---|")
    print("| pydarknet | %.2f | %.2f | %.1f | %.2f |" % (med, min(dn_times), args.batch / med, max(dn_loads)))
    if args.darknet:
        dmed = float(np.median(dk_times))
        print("| darknet | %.2f | %.2f | %.1f | %.2f |" % (dmed, min(dk_times), args.batch / dmed, max(dk_loads)))
        print("\nratio darknet / pydarknet (medians): %.2f (higher: pydarknet faster)" % (dmed / med))
        result["speedup_vs_darknet"] = dmed / med
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
        print("wrote %s" % args.json)


if __name__ == "__main__":
    main(ARGS)
