#!/usr/bin/env python3
"""The training command end to end: images/s of ``pydarknet detector train``
against its own pure iteration rate, in one run.

A synthetic shapes data set (pydarknet.data.shapes; --images JPEGs at
--size) and a training copy of the cfg (bench_training.train_cfg: [net]
batch, subdivisions, width, height, max_batches; the heads' classes and the
filters before them; random=0, so the input size stays fixed; mosaic as
--mosaic) are written into --work, then the command itself runs in a
child process:

    python -m pydarknet detector train DATA CFG [-gpus G] -dont_show --workers W

with its loader, augmentation, logging and checkpoints as a user gets them.
Its training log (backup/<cfg>_train.jsonl) gives, per iteration, the wall
time at its end, the time of ``train_batch`` and the time spent waiting for
the loader. After --warmup iterations:

  command images/s   = batch * iterations / wall time of those iterations
  iteration images/s = batch / median train_batch time (the network alone)
  share              = command / iteration (1.0: the loader never holds the
                       network back)

and where an iteration's wall time goes, as means: train_batch, the wait for
the loader, and the rest (the command's own work: logging, the chart,
checkpoints; a mean train_batch above the median is the iteration's own
spread).

    python benchmarks/bench_train_command.py                         # yolov4-tiny 416, batch 64, GPU 0
    python benchmarks/bench_train_command.py --gpus none --size 128 --batch 8 --iterations 4   # CPU
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_training import train_cfg  # noqa: E402
from common import machine_info, resolve_cfg  # noqa: E402
from paths import CFG_DIR  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cfg", default="yolov4-tiny", help="cfg path or a model name from --cfg-dir")
    ap.add_argument("--cfg-dir", default=CFG_DIR)
    ap.add_argument("--size", type=int, default=416)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--subdivisions", type=int, default=1)
    ap.add_argument("--images", type=int, default=256, help="training images written (default 256)")
    ap.add_argument("--mosaic", type=int, choices=(0, 1), default=1)
    ap.add_argument("--gpus", default="0", help="-gpus of the command (default 0; 'none' trains on the CPU)")
    ap.add_argument("--workers", type=int, default=None, help="--workers of the command (default: its own)")
    ap.add_argument("--cache-images", action="store_true", help="the command's --cache-images (decoded images kept)")
    ap.add_argument("--iterations", type=int, default=20, help="timed iterations (default 20)")
    ap.add_argument("--warmup", type=int, default=5, help="iterations left out first (default 5)")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "pydarknet-bench-command"))
    ap.add_argument("--json", default=os.path.join(HERE, "results", "train_command.json"))
    args = ap.parse_args(argv)
    if args.iterations < 2 or args.warmup < 0 or args.batch < 1 or args.batch % args.subdivisions:
        ap.error("need --iterations >= 2, --warmup >= 0 and --batch a multiple of --subdivisions")
    return args


def dataset(folder, images, size):
    from pydarknet.data.shapes import make_shapes_dataset

    data = os.path.join(folder, "shapes.data")
    stamp = os.path.join(folder, "made-%d-%d" % (images, size))
    if not os.path.isfile(stamp):
        make_shapes_dataset(folder, train=images, valid=4, width=size, height=size, sample=None)
        open(stamp, "w").close()
    return data


def set_mosaic(cfg, mosaic):
    with open(cfg) as fh:
        lines = fh.read().split("\n")
    lines = [ln for ln in lines if not ln.strip().startswith("mosaic")]
    for i, ln in enumerate(lines):
        if ln.strip().lower() in ("[net]", "[network]"):
            lines.insert(i + 1, "mosaic=%d" % mosaic)
            break
    with open(cfg, "w") as fh:
        fh.write("\n".join(lines))


def main(args):
    os.makedirs(args.work, exist_ok=True)
    data = dataset(os.path.join(args.work, "data-%d" % args.size), args.images, args.size)
    total = args.warmup + args.iterations
    cfg = train_cfg(resolve_cfg(args.cfg, args.cfg_dir), os.path.join(args.work, "train.cfg"), 3, args.batch,
                    args.subdivisions, args.size, total)
    set_mosaic(cfg, args.mosaic)
    backup = os.path.join(args.work, "backup")
    if os.path.isdir(backup):
        for name in os.listdir(backup):
            os.remove(os.path.join(backup, name))
    cmd = [sys.executable, "-m", "pydarknet", "detector", "train", data, cfg, "-dont_show", "--backup", backup]
    if args.gpus != "none":
        cmd += ["-gpus", args.gpus]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    if args.cache_images:
        cmd += ["--cache-images"]
    print("running:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit("the training command failed (exit %d)" % proc.returncode)
    startup = [ln for ln in proc.stdout.splitlines() + proc.stderr.splitlines() if "worker" in ln.lower()]
    with open(os.path.join(backup, "train_train.jsonl")) as fh:
        records = [json.loads(ln) for ln in fh if ln.strip()]
    records = [r for r in records if "iteration" in r]
    if len(records) < total:
        raise SystemExit("the log has %d iterations, %d expected" % (len(records), total))
    timed = records[args.warmup:total]
    first, last = records[args.warmup - 1] if args.warmup else None, timed[-1]
    if first is None:
        span, n = last["time"] - timed[0]["time"], len(timed) - 1
    else:
        span, n = last["time"] - first["time"], len(timed)
    command_ips = args.batch * n / span
    iteration_ips = args.batch / statistics.median(r["seconds"] for r in timed)
    load_wait = statistics.median(r["load_seconds"] for r in timed)
    mean_train = statistics.fmean(r["seconds"] for r in timed)
    mean_load = statistics.fmean(r["load_seconds"] for r in timed)
    mean_rest = span / n - mean_train - mean_load
    try:
        import pydarknet

        devices = pydarknet.cuda_devices() if args.gpus != "none" else []
    except Exception:  # noqa: BLE001 - the figure stands without the name
        devices = []
    info = machine_info()
    result = {
        "cfg": os.path.basename(resolve_cfg(args.cfg, args.cfg_dir)), "size": args.size, "batch": args.batch,
        "subdivisions": args.subdivisions, "mosaic": args.mosaic, "gpus": args.gpus, "workers": args.workers,
        "cache_images": args.cache_images,
        "device": devices[int(args.gpus.split(",")[0])] if devices else "CPU",
        "cpu": info["cpu_model"], "cpus": info["cpus_usable"], "iterations": n,
        "command_images_per_s": round(command_ips, 2), "iteration_images_per_s": round(iteration_ips, 2),
        "share": round(command_ips / iteration_ips, 3), "median_load_wait_s": round(load_wait, 4),
        "mean_train_s": round(mean_train, 4), "mean_load_wait_s": round(mean_load, 4),
        "mean_rest_s": round(mean_rest, 4),
        "command_wall_s": round(wall, 1), "startup_lines": startup[:4],
    }
    print("%s %dx%d batch %d, mosaic %d, %s (%s, %d CPUs): the command %.1f images/s, the iteration alone %.1f "
          "images/s: %.0f%% (median loader wait %.1f ms)"
          % (result["cfg"], args.size, args.size, args.batch, args.mosaic, result["device"], result["cpu"],
             result["cpus"], command_ips, iteration_ips, 100 * result["share"], 1000 * load_wait))
    print("per iteration, means: train_batch %.1f ms, waiting for the loader %.1f ms, the rest %.1f ms"
          % (1000 * mean_train, 1000 * mean_load, 1000 * mean_rest))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=1)
    print("wrote", args.json)


if __name__ == "__main__":
    main(parse_args())
