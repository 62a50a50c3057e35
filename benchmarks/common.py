"""Helpers shared by the benchmark scripts: model files, the input image, machine
facts, and a watch on what other processes do with the CPUs while we time.

This module imports NumPy and OpenCV: the scripts set OPENBLAS_NUM_THREADS and
OMP_NUM_THREADS before importing it.
"""
import datetime
import hashlib
import os
import platform
import re
import subprocess
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paths import CFG_DIR, DATA_DIR, HERE, IMAGE, REPO, resolve_cfg  # noqa: E402,F401  (re-exported)


# ------------------------------------------------------------------ files


def sized_cfg(cfg, size, folder):
    """Writes a copy of cfg into folder with only the [net] width= and height= lines changed."""
    with open(cfg) as fh:
        lines = fh.read().split("\n")
    section, seen = None, set()
    for i, line in enumerate(lines):
        s = line.strip()
        if s.startswith("["):
            section = s.lower()
            continue
        m = re.match(r"^\s*(width|height)\s*=", line)
        if m and section in ("[net]", "[network]"):
            lines[i] = "%s=%d" % (m.group(1), size)
            seen.add(m.group(1))
    if seen != {"width", "height"}:
        raise SystemExit("%s: [net] lacks width= or height=" % cfg)
    stem = os.path.splitext(os.path.basename(cfg))[0]
    os.makedirs(folder, exist_ok=True)
    out = os.path.join(folder, "%s-%d.cfg" % (stem, size))
    tmp = out + ".part%d" % os.getpid()   # whole or not at all: processes started together (MPI ranks) read it
    with open(tmp, "w") as fh:
        fh.write("\n".join(lines))
    os.replace(tmp, out)
    return out


def random_weights(cfg, seed, folder, threads):
    """Seeded random weights for cfg (scripts/make_random_weights.py), written once
    into folder and reused while the cfg's content is unchanged."""
    with open(cfg, "rb") as fh:
        digest = hashlib.sha1(fh.read()).hexdigest()[:12]
    stem = os.path.splitext(os.path.basename(cfg))[0]
    os.makedirs(folder, exist_ok=True)
    out = os.path.join(folder, "%s-%s-seed%d.weights" % (stem, digest, seed))
    if not os.path.isfile(out):
        tmp = out + ".part%d" % os.getpid()
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "make_random_weights.py"),
                               cfg, tmp, "--seed", str(seed)], env=env, capture_output=True, text=True)
        if proc.returncode:
            sys.stderr.write(proc.stdout + proc.stderr)
            raise SystemExit("make_random_weights.py failed for %s" % cfg)
        os.replace(tmp, out)
        print("  wrote random weights %s" % out)
    return out


def load_input(path, size):
    """The photo at path resized to size x size, RGB, /255, float32 [1, 3, size, size]."""
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit("cannot read image %s" % path)
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    x = img.astype(np.float32).transpose(2, 0, 1)[None] / 255.0
    return np.ascontiguousarray(x, dtype=np.float32)


# ------------------------------------------------------------------ machine

def machine_info():
    model, flags = None, ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and model is None:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1]
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = None
    simd = [f for f in ("avx2", "fma", "avx512f") if f in flags.split()]
    return {
        "cpu_model": model or platform.processor(),
        "cpu_flags": simd,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cv2": cv2.__version__,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------ neighbours

_HZ = os.sysconf("SC_CLK_TCK")


def _proc_ticks(pid):
    """utime + stime of a process (all its threads), 0 if it is gone."""
    try:
        with open("/proc/%s/stat" % pid) as fh:
            f = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(f[11]) + int(f[12])


def _cpu_ticks(pids=()):
    """(busy ticks of the whole machine, busy ticks of this process and of pids)."""
    with open("/proc/stat") as fh:
        v = [int(t) for t in fh.readline().split()[1:9]]
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # user nice system irq softirq steal
    mine = _proc_ticks("self") + sum(_proc_ticks(p) for p in pids)
    return busy, mine


class Neighbours:
    """Measures how many CPUs other processes kept busy between start() and stop().

    Ticks are 1/100 s, so over a window of a second the figure is good to about
    0.02 CPU; shorter windows are coarser."""

    def __init__(self, pids=()):
        self.pids = list(pids)  # processes of ours (e.g. a child being timed) not to count as others

    def start(self):
        self._t = time.perf_counter()
        self._ticks = _cpu_ticks(self.pids)

    def stop(self):
        busy, mine = _cpu_ticks(self.pids)
        dt = time.perf_counter() - self._t
        others = (busy - self._ticks[0]) - (mine - self._ticks[1])
        return max(0.0, others / _HZ / max(dt, 1e-9))


def wait_idle(max_wait, threshold=0.1, window=1.0):
    """Waits (at most max_wait seconds) until other processes use under threshold CPUs
    over a window. Returns the last figure measured."""
    t0 = time.time()
    mon = Neighbours()
    said = False
    while True:
        mon.start()
        time.sleep(window)
        load = mon.stop()
        if load < threshold or time.time() - t0 >= max_wait:
            if said or load >= threshold:
                print("  machine %s: other processes use %.2f CPU (waited %.0f s)"
                      % ("idle" if load < threshold else "still busy", load, time.time() - t0), flush=True)
            return load
        if not said:
            print("  waiting for other processes to quiet down (%.2f CPU in use)..." % load, flush=True)
            said = True
