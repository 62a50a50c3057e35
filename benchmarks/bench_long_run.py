#!/usr/bin/env python3
"""Long runs, flat memory: the resident memory of ``pydarknet detector demo``
over a long generated video and of ``pydarknet detector train`` over many
iterations, sampled from outside while each command runs.

Both commands run as a user runs them, in a child process:

    python -m pydarknet detector demo DATA CFG WEIGHTS video.avi -dont_show -out_filename out.avi -json_file_output frames.json
    python -m pydarknet detector train DATA CFG -dont_show --backup backup --max-batches N

* demo: a Motion JPEG video of --frames frames (default 10,000) of
  --width x --height (160x120) is generated (a moving pattern, so every frame
  differs), and cfg/shapes.cfg at --size x --size (64) with seeded random
  weights detects in every frame; the annotated video and darknet's JSON go to
  files, the objects printed on standard output to /dev/null.
* train: a shapes data set (pydarknet.data.shapes, --images images of 64x64)
  and cfg/shapes.cfg at --train-size (32), batch --batch (4), random=0,
  trained for --iterations iterations (default 2,000) with the command's own
  loader, JSON-lines log, checkpoints (every 100 iterations) and chart (every
  10).

The child's resident set (VmRSS of /proc/<pid>/status) is read every
--interval seconds (0.2) together with its progress (the frames and
iterations it has reported on its standard error and output). Reported for
each run (see summarize): the RSS at the end of the warm-up (--warmup of the
frames or iterations, default 10%; the median of the samples of the next
5%), at the end (the median of the samples of the last 5% before the last
frame or iteration), the largest in between, the growth end - warm-up in
percent and the slope of a least-squares line of RSS against progress after
the warm-up (bytes per frame or iteration, what a leak would show as).
The issue's goal: growth under 1%.

    python benchmarks/bench_long_run.py                                  # 10,000 frames, 2,000 iterations
    python benchmarks/bench_long_run.py --frames 2000 --iterations 300 --json ''   # a quick look
    python benchmarks/bench_long_run.py --only train

Imports only the standard library at the top; tests/test_long_run.py uses
its functions with smaller counts.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHAPES_CFG = os.path.join(REPO, "cfg", "shapes.cfg")

DEMO_PROGRESS = re.compile(r"^FPS:")                 # one line per frame on standard error
TRAIN_PROGRESS = re.compile(r"^\s*(\d+): -?\d")      # darknet's line per iteration on standard output


# ------------------------------------------------------------------ inputs


def write_video(path, frames, width=160, height=120, fps=25):
    """A Motion JPEG .avi of `frames` frames: a gradient shifted one pixel a
    frame with a square moving across it."""
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(os.fspath(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise SystemExit("cannot write the video %s" % path)
    ramp = np.add.outer(np.arange(height), np.arange(2 * width)).astype(np.uint8)
    base = np.stack([ramp, ramp[::-1], 255 - ramp], axis=2)
    side = max(4, min(width, height) // 4)
    for i in range(frames):
        shift = i % width
        frame = np.ascontiguousarray(base[:, shift:shift + width])
        x, y = (3 * i) % (width - side), (2 * i) % (height - side)
        frame[y:y + side, x:x + side] = (40, 200, 40)
        writer.write(frame)
    writer.release()
    return os.fspath(path)


def sized_cfg(src, dst, size, batch=None, max_batches=None):
    """A copy of the cfg with [net] width/height (and batch, subdivisions=1,
    max_batches when given) changed and random=0 in every [yolo]."""
    with open(src) as fh:
        lines = fh.read().split("\n")
    section, out = None, []
    for line in lines:
        s = line.strip()
        if s.startswith("["):
            section = s.lower()
        key = s.split("=", 1)[0].strip().lower() if "=" in s and not s.startswith("#") else None
        if section in ("[net]", "[network]") and key in ("width", "height"):
            line = "%s=%d" % (key, size)
        elif section in ("[net]", "[network]") and key == "batch" and batch is not None:
            line = "batch=%d" % batch
        elif section in ("[net]", "[network]") and key == "subdivisions" and batch is not None:
            line = "subdivisions=1"
        elif section in ("[net]", "[network]") and key == "max_batches" and max_batches is not None:
            line = "max_batches=%d" % max_batches
        elif section == "[yolo]" and key == "random":
            line = "random=0"
        out.append(line)
    with open(dst, "w") as fh:
        fh.write("\n".join(out))
    return os.fspath(dst)


def random_weights(cfg, path, seed=1):
    """darknet's random initial weights of cfg (seeded), written to path."""
    import pydarknet

    pydarknet.load(cfg, seed=seed).save_weights(path)
    return os.fspath(path)


def shapes_data(folder, images=32, size=64):
    """A shapes data set in folder (count images of size x size); its .data path."""
    from pydarknet.data.shapes import write_shapes_dataset

    return write_shapes_dataset(folder, count=images, width=size, height=size)


# ------------------------------------------------------------------ watching a process


def rss_bytes(pid):
    """VmRSS of a process in bytes, None once it is gone."""
    try:
        with open("/proc/%d/status" % pid) as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run_watched(cmd, progress, stream="stderr", interval=0.2, cwd=None, env=None, timeout=None):
    """Runs cmd, counting the lines of `stream` ("stdout" or "stderr") that
    match the regex `progress` while sampling the child's RSS every interval
    seconds. Returns {"samples": [(seconds, progress, rss_bytes), ...],
    "returncode", "seconds", "tail"} (tail: the stream's last lines)."""
    pipes = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, stream: subprocess.PIPE}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=pipes["stdout"], stderr=pipes["stderr"], cwd=cwd, env=env,
                            text=True, errors="replace")
    count = [0]
    tail = []

    def reader():
        for line in getattr(proc, stream):
            if progress.match(line):
                count[0] += 1
            else:
                tail.append(line.rstrip("\n"))
                del tail[:-40]

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    samples = []
    try:
        while proc.poll() is None:
            rss = rss_bytes(proc.pid)
            done = count[0]
            if rss is not None and proc.poll() is None:
                samples.append((round(time.perf_counter() - t0, 3), done, rss))
            if timeout is not None and time.perf_counter() - t0 > timeout:
                proc.kill()
                break
            time.sleep(interval)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        thread.join(5)
    return {"samples": samples, "returncode": proc.returncode, "seconds": round(time.perf_counter() - t0, 2),
            "tail": tail, "progress": count[0]}


def summarize(samples, total, warmup=0.1, window=0.05):
    """RSS at the end of warm-up and at the end, the largest after warm-up,
    the growth (bytes and percent) and the least-squares slope of RSS against
    progress after warm-up (bytes per unit of progress). samples:
    (seconds, progress, rss) as run_watched takes them. The run proper is the
    samples from progress warmup * total up to the last one before progress
    reaches total (after that the command writes its last files and exits);
    "warm-up" is the median of its samples within the first `window` * total
    of progress, "end" the median of those within the last, so that a
    momentary peak (a checkpoint written) moves neither."""
    run = [s for s in samples if warmup * total <= s[1] < total]
    if len(run) < 4:
        raise ValueError("too few samples after the warm-up (%d of %d samples; progress %s of %d)"
                         % (len(run), len(samples), samples[-1][1] if samples else 0, total))
    lo, hi = run[0][1], run[-1][1]
    span = max(1, window * total)

    def median(values):
        values = sorted(values)
        return values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1]
                                                                  + values[len(values) // 2]) / 2

    warm = median([s[2] for s in run if s[1] <= lo + span])
    end = median([s[2] for s in run if s[1] >= hi - span])
    xs = [s[1] for s in run]
    ys = [s[2] for s in run]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    return {"warmup_progress": lo, "end_progress": hi, "samples_after_warmup": len(run),
            "rss_warmup_mib": round(warm / 2**20, 2), "rss_end_mib": round(end / 2**20, 2),
            "rss_max_mib": round(max(ys) / 2**20, 2), "rss_max_whole_run_mib": round(max(s[2] for s in samples)
                                                                                       / 2**20, 2),
            "growth_bytes": int(end - warm), "growth_pct": round(100.0 * (end - warm) / warm, 3),
            "max_growth_pct": round(100.0 * (max(ys) - warm) / warm, 3),
            "slope_bytes_per_step": round(slope, 1)}


def child_env(threads):
    env = dict(os.environ)
    if threads:
        env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(threads)
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    env["PYTHONPATH"] = _package_root() + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _package_root():
    """The folder holding the pydarknet this process imports (an installed one, or a checkout built in place);
    the checkout when none imports: the children run that one, never a source tree without its built core."""
    try:
        import pydarknet
    except ImportError:
        return REPO
    return os.path.dirname(os.path.dirname(os.path.abspath(pydarknet.__file__)))


# ------------------------------------------------------------------ the two runs


def demo_run(work, frames, width=160, height=120, size=64, cfg=SHAPES_CFG, interval=0.2, threads=None,
             warmup=0.1, timeout=None, python=sys.executable):
    """detector demo over a generated video of `frames` frames; the summary
    (see summarize) with the run's facts."""
    os.makedirs(work, exist_ok=True)
    data = shapes_data(os.path.join(work, "data"), images=4)
    net_cfg = sized_cfg(cfg, os.path.join(work, "demo.cfg"), size)
    weights = random_weights(net_cfg, os.path.join(work, "demo.weights"))
    video = write_video(os.path.join(work, "in.avi"), frames, width, height)
    cmd = [python, "-m", "pydarknet", "detector", "demo", data, net_cfg, weights, video, "-dont_show",
           "-out_filename", os.path.join(work, "out.avi"), "-json_file_output", os.path.join(work, "frames.json")]
    run = run_watched(cmd, DEMO_PROGRESS, "stderr", interval, cwd=work, env=child_env(threads), timeout=timeout)
    return _result("demo", cmd, run, frames, warmup,
                   {"frames": frames, "frame_size": [width, height], "cfg": os.path.relpath(cfg, REPO)
                    if cfg.startswith(REPO) else cfg, "network_size": size})


def train_run(work, iterations, batch=4, size=32, images=32, cfg=SHAPES_CFG, interval=0.2, threads=None,
              warmup=0.1, timeout=None, python=sys.executable, workers=None, savelast=None):
    """detector train for `iterations` iterations; the summary with the run's facts.
    savelast: iterations between _last checkpoints (the .data file's savelast=; default the command's 100)."""
    os.makedirs(work, exist_ok=True)
    data = shapes_data(os.path.join(work, "data"), images=images)
    if savelast is not None:
        with open(data, "a") as fh:
            fh.write("savelast = %d\n" % savelast)
    net_cfg = sized_cfg(cfg, os.path.join(work, "train.cfg"), size, batch=batch, max_batches=iterations)
    backup = os.path.join(work, "backup")
    if os.path.isdir(backup):
        for name in os.listdir(backup):
            os.remove(os.path.join(backup, name))
    cmd = [python, "-m", "pydarknet", "detector", "train", data, net_cfg, "-dont_show", "--backup", backup,
           "--max-batches", str(iterations)]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    run = run_watched(cmd, TRAIN_PROGRESS, "stdout", interval, cwd=work, env=child_env(threads), timeout=timeout)
    return _result("train", cmd, run, iterations, warmup,
                   {"iterations": iterations, "batch": batch, "network_size": size, "images": images,
                    "cfg": os.path.relpath(cfg, REPO) if cfg.startswith(REPO) else cfg})


def _result(name, cmd, run, total, warmup, facts):
    if run["returncode"] != 0 or run["progress"] < total:
        raise RuntimeError("%s: exit %s after %d of %d steps:\n%s" % (name, run["returncode"], run["progress"],
                                                                       total, "\n".join(run["tail"])))
    out = dict(facts)
    out.update(summarize(run["samples"], total, warmup))
    out.update(seconds=run["seconds"], command=" ".join(os.path.basename(c) if os.path.isabs(c) else c for c in cmd),
               samples=[[t, p, round(r / 2**20, 3)] for t, p, r in run["samples"]])
    return out


def _line(name, unit, r):
    return ("%-5s %6d %-10s %6.1f s   RSS warm-up %7.2f MiB (at %d)   end %7.2f MiB   max %7.2f MiB   "
            "growth %+6.2f%%   slope %+8.1f B/%s"
            % (name, r.get("frames", r.get("iterations")), unit, r["seconds"], r["rss_warmup_mib"], r["warmup_progress"],
               r["rss_end_mib"], r["rss_max_mib"], r["growth_pct"], r["slope_bytes_per_step"], unit.rstrip("s")))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=10000, help="demo: frames of the video (default 10000)")
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--height", type=int, default=120)
    ap.add_argument("--size", type=int, default=64, help="demo: network input size (default 64)")
    ap.add_argument("--iterations", type=int, default=2000, help="train: iterations (default 2000)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--train-size", type=int, default=32, help="train: network input size (default 32)")
    ap.add_argument("--images", type=int, default=32, help="train: images in the shapes data set")
    ap.add_argument("--cfg", default=SHAPES_CFG, help="the detector cfg (default cfg/shapes.cfg)")
    ap.add_argument("--warmup", type=float, default=0.1, help="fraction of the run counted as warm-up (0.1)")
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between RSS samples (0.2)")
    ap.add_argument("--threads", type=int, default=None, help="OPENBLAS/OMP_NUM_THREADS of the children")
    ap.add_argument("--only", choices=("demo", "train"), default=None)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "pydarknet-bench-long-run"))
    ap.add_argument("--json", default=os.path.join(HERE, "results", "long_run.json"),
                    help="where to write the results ('' for nowhere)")
    args = ap.parse_args(argv)

    sys.path.insert(0, HERE)
    from common import machine_info
    from paths import recorded_command

    results = {"machine": machine_info(), "command": recorded_command(sys.argv),
               "warmup_fraction": args.warmup, "interval_s": args.interval}
    if args.only in (None, "demo"):
        print("demo: %d frames of %dx%d, network %d ..." % (args.frames, args.width, args.height, args.size),
              flush=True)
        results["demo"] = demo_run(os.path.join(args.work, "demo"), args.frames, args.width, args.height,
                                   args.size, args.cfg, args.interval, args.threads, args.warmup)
        print(_line("demo", "frames", results["demo"]), flush=True)
    if args.only in (None, "train"):
        print("train: %d iterations of batch %d at %d ..." % (args.iterations, args.batch, args.train_size),
              flush=True)
        results["train"] = train_run(os.path.join(args.work, "train"), args.iterations, args.batch,
                                     args.train_size, args.images, args.cfg, args.interval, args.threads,
                                     args.warmup)
        print(_line("train", "iterations", results["train"]), flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
        print("wrote", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
