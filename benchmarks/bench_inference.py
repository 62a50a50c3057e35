#!/usr/bin/env python3
"""Inference latency of pydarknet against OpenCV DNN, side by side in one process.

For each cfg: writes seeded random weights once (scripts/make_random_weights.py,
cached in a temp folder), writes a copy of the cfg with [net] width/height set to
--size, loads it in both pydarknet and OpenCV's darknet importer (OpenCV backend,
CPU target), checks that both give outputs of the same shapes and close values at
the convolution feeding each [yolo] head, warms both up, then times them in
alternation (pydarknet, OpenCV, pydarknet, ...) for --repeat rounds, batch 1
(or --batch copies of the photo, one forward call each).

Two things keep the comparison fair on a small shared machine:
  * --pause (0.3 s) of idle before every timed run. Both libraries leave their
    worker threads spinning for a while after a call (OpenBLAS under pydarknet,
    OpenCV's own pool); run back to back, one system's spinning threads steal the
    CPUs from the other (measured here: OpenCV ~57 ms alone, ~96 ms right after
    pydarknet on 2 vCPUs).
  * other processes' CPU use is measured over every round (/proc/stat minus this
    process); a round during which they used more than --max-neighbours CPUs is
    thrown away and run again, and each model waits first for the machine to be
    idle (--wait-idle).

    python benchmarks/bench_inference.py                      # yolov4-tiny at 416, 2 threads
    python benchmarks/bench_inference.py --all --repeat 15
    python benchmarks/bench_inference.py --cfg path/to/model.cfg --size 320 --threads 1

Timed: pydarknet ``net.predict(x)`` (forward pass plus copying the head outputs
to NumPy) and OpenCV ``net.setInput(x); net.forward(out_names)``. Both get the
same float32 NCHW input (a real photo resized to size x size, RGB, /255).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from paths import add_cfg_dir_arg, add_image_arg, recorded_command, shown_path  # noqa: E402

ALL_MODELS = ["yolov3-tiny", "yolov4-tiny", "yolov7-tiny", "yolov4"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", action="append", default=[],
                    help="cfg path or a model name from --cfg-dir (repeatable; default yolov4-tiny)")
    add_cfg_dir_arg(ap)
    ap.add_argument("--all", action="store_true", help="run " + ", ".join(ALL_MODELS))
    ap.add_argument("--size", type=int, default=416, help="input width and height (default 416)")
    ap.add_argument("--threads", type=int, default=2, help="threads for both systems (default 2)")
    ap.add_argument("--batch", type=int, default=1,
                    help="images per forward call for both systems (default 1); the table adds images/s")
    ap.add_argument("--repeat", type=int, default=15, help="timed rounds per system (default 15)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs per system first (default 3)")
    add_image_arg(ap)
    ap.add_argument("--seed", type=int, default=1, help="seed of the random weights (default 1)")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "pydarknet-bench"),
                    help="folder for the generated weights and cfg copies")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "inference.json"))
    ap.add_argument("--pause", type=float, default=0.3,
                    help="seconds of idle before each timed run (default 0.3): lets the other system's "
                         "worker threads stop spinning; 0 to disable")
    ap.add_argument("--max-neighbours", type=float, default=0.15,
                    help="a round during which other processes kept more CPUs busy than this is "
                         "thrown away and run again (default 0.15)")
    ap.add_argument("--max-redo", type=int, default=None,
                    help="most rounds thrown away per model before keeping noisy ones (default --repeat)")
    ap.add_argument("--wait-idle", type=float, default=300,
                    help="before each model, wait up to this many seconds for other processes to go "
                         "quiet (default 300; 0 to skip)")
    ap.add_argument("--no-check", action="store_true", help="skip the output sanity check")
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-memory measurement")
    ap.add_argument("--onnx", action="store_true",
                    help="also time onnxruntime (CPU, the same threads) on the model pydarknet exports to ONNX")
    return ap.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    # Thread pools read these when the libraries load: set them before importing.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import cv2  # noqa: E402
import numpy as np  # noqa: E402

import pydarknet  # noqa: E402

sys.path.insert(0, HERE)
from common import (Neighbours, load_input, machine_info, random_weights, resolve_cfg,  # noqa: E402
                    sized_cfg, wait_idle)


# ------------------------------------------------------------------ check

def sanity_check(dn, cv, x):
    """Compares head shapes and the conv output feeding each [yolo]/[region].

    OpenCV's darknet importer turns a head at cfg index i into 'permute_i'
    followed by 'yolo_i'/'region_i'; the layer just before 'permute_i' is the last
    operation of layer i-1 (its conv, or the activation after it). Returns a dict
    for the JSON; raises on a shape mismatch; prints a note and skips the value
    comparison when the names cannot be matched."""
    out_names = list(cv.getUnconnectedOutLayersNames())
    outs_dn = dn.predict(x)
    cv.setInput(x)
    outs_cv = cv.forward(out_names)
    result = {"heads": [], "skipped": None}
    if len(outs_dn) != len(outs_cv):
        raise SystemExit("head count differs: pydarknet %d, OpenCV %d" % (len(outs_dn), len(outs_cv)))
    for layer, a, b in zip(dn.output_layers, outs_dn, outs_cv):
        if a.size != b.size:
            raise SystemExit("layer %d: pydarknet head %s, OpenCV %s: sizes differ"
                             % (layer.index, a.shape, b.shape))
    names = list(cv.getLayerNames())
    targets = []
    for layer in dn.output_layers:
        perm = "permute_%d" % layer.index
        if perm not in names or names.index(perm) == 0:
            result["skipped"] = "OpenCV has no '%s' layer to match head %d" % (perm, layer.index)
            print("  note: %s; value check skipped" % result["skipped"])
            return result
        targets.append((layer.index, names[names.index(perm) - 1]))
    feeds = cv.forward([t[1] for t in targets])  # same input is still set
    for (idx, cv_name), b in zip(targets, feeds):
        a = dn.layers[idx - 1].output
        if a.shape != b.shape:
            raise SystemExit("layer %d: pydarknet %s, OpenCV '%s' %s: shapes differ"
                             % (idx - 1, a.shape, cv_name, b.shape))
        diff = float(np.abs(a - b).max())
        scale = float(np.abs(b).max())
        result["heads"].append({"layer": idx - 1, "opencv_name": cv_name, "shape": list(a.shape),
                                "max_abs_diff": diff, "max_abs_value": scale})
        print("  check: layer %d vs OpenCV '%s' %s: max |diff| %.2e (max |value| %.2f)"
              % (idx - 1, cv_name, "x".join(map(str, a.shape)), diff, scale))
        if not diff <= 1e-2 * max(1.0, scale):
            print("  WARNING: large difference at layer %d" % (idx - 1))
    return result


# ------------------------------------------------------------------ memory

RSS_SCRIPT = r"""
import os, sys
import numpy as np


def hwm():
    # peak resident set of this process in KiB (VmHWM; ru_maxrss would carry the
    # parent's peak over from fork and exec)
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])


which, cfg, weights, size, threads, runs = sys.argv[1:7]
size, threads, runs = int(size), int(threads), int(runs)
x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
base = hwm()
if which == "pydarknet":
    import pydarknet
    base = hwm()
    net = pydarknet.load(cfg, weights, threads=threads)
    for _ in range(runs):
        net.predict(x)
elif which == "opencv":
    import cv2
    cv2.setNumThreads(threads)
    base = hwm()
    net = cv2.dnn.readNetFromDarknet(cfg, weights)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    names = net.getUnconnectedOutLayersNames()
    for _ in range(runs):
        net.setInput(x)
        net.forward(names)
print(hwm(), base)
"""


def peak_rss(which, cfg, weights, size, threads, runs=3):
    """Peak resident memory (MiB) of a fresh process that loads the model with
    `which` (pydarknet or opencv) and runs `runs` forward passes; and the peak
    before the model was loaded (the interpreter, NumPy and the library)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, which, cfg, weights, str(size), str(threads), str(runs)],
                         env=env, capture_output=True, text=True)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise SystemExit("peak RSS measurement failed for %s" % which)
    peak, base = (int(v) for v in out.stdout.split()[-2:])
    return peak / 1024.0, base / 1024.0


# ------------------------------------------------------------------ timing

def stats(ms):
    a = np.asarray(ms)
    return {"median": float(np.median(a)), "min": float(a.min()), "p90": float(np.percentile(a, 90)),
            "mean": float(a.mean()), "runs": [round(v, 3) for v in ms]}


def bench_model(cfg, args):
    name = os.path.splitext(os.path.basename(cfg))[0]
    print("%s at %d, %d thread(s), batch %d, CPU kernel %s:" % (name, args.size, args.threads, args.batch,
                                                                pydarknet.cpu_kernel()), flush=True)
    os.makedirs(args.cache, exist_ok=True)
    weights = random_weights(cfg, args.seed, args.cache, args.threads)
    cfg_sized = sized_cfg(cfg, args.size, args.cache)
    x = load_input(args.image, args.size)
    if args.batch > 1:
        x = np.ascontiguousarray(np.repeat(x, args.batch, axis=0))

    dn = pydarknet.load(cfg_sized, weights, batch=args.batch, threads=args.threads)
    dn.set_threads(args.threads)
    cv2.setNumThreads(args.threads)
    cv = cv2.dnn.readNetFromDarknet(cfg_sized, weights)
    cv.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    out_names = cv.getUnconnectedOutLayersNames()

    # the first pass measures each convolution's algorithm on this CPU unless the tuning file
    # already holds them (pydarknet.tuning_file(); PYDARKNET_TUNING=off: the fixed rules)
    t = time.perf_counter()
    dn.predict(x)
    first_ms = (time.perf_counter() - t) * 1e3
    algorithms = {}
    for layer in dn.layers:
        if layer.algorithm:
            algorithms[layer.algorithm] = algorithms.get(layer.algorithm, 0) + 1
    print("  first pass %.0f ms; convolution algorithms %s" % (first_ms, algorithms), flush=True)
    check = None if args.no_check else sanity_check(dn, cv, x)
    ort_sess = None
    if args.onnx:   # the exported model under onnxruntime: the CPU runtime a deployed model would use
        import onnxruntime as ort
        from pydarknet.onnx_export import export_onnx

        path = os.path.join(args.cache, name + "-%d.onnx" % args.size)
        export_onnx(dn, path)
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        ort_sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        got, want = ort_sess.run(None, {"input": x}), dn.predict(x)
        err = max(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6)) for a, b in zip(got, want))
        print("  onnxruntime %s: heads within %.1e of pydarknet's" % (ort.__version__, err), flush=True)
        check = dict(check or {}, onnx_max_rel_diff=err, onnxruntime=ort.__version__)

    def timed(fn):
        if args.pause:
            time.sleep(args.pause)
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    def run_dn():
        dn.predict(x)

    def run_cv():
        cv.setInput(x)
        cv.forward(out_names)

    def run_ort():
        ort_sess.run(None, {"input": x})

    for _ in range(args.warmup):
        timed(run_dn)
        timed(run_cv)
        if ort_sess is not None:
            timed(run_ort)
    if args.wait_idle:
        wait_idle(args.wait_idle)
    max_redo = args.repeat if args.max_redo is None else args.max_redo
    t_dn, t_cv, t_ort, kept_load, dropped = [], [], [], [], []
    mon = Neighbours()
    r = 0
    while len(t_dn) < args.repeat:
        mon.start()
        # alternate which goes first so neither always follows the other
        if r % 2 == 0:
            a, b = timed(run_dn), timed(run_cv)
        else:
            b, a = timed(run_cv), timed(run_dn)
        o = timed(run_ort) if ort_sess is not None else None
        load = mon.stop()
        r += 1
        if load > args.max_neighbours and len(dropped) < max_redo:
            dropped.append(round(load, 3))
            if args.wait_idle:
                wait_idle(args.wait_idle)
            continue
        t_dn.append(a)
        t_cv.append(b)
        if o is not None:
            t_ort.append(o)
        kept_load.append(round(load, 3))
    if dropped:
        print("  %d round(s) run again: other processes used %s CPU during them"
              % (len(dropped), ", ".join("%.2f" % v for v in dropped)))
    noisy = max(kept_load) > args.max_neighbours
    if noisy:
        print("  WARNING: kept rounds during which other processes were busy (up to %.2f CPU)"
              % max(kept_load))
    s_dn, s_cv = stats(t_dn), stats(t_cv)
    ratio = s_dn["median"] / s_cv["median"]
    s_ort = stats(t_ort) if t_ort else None
    if s_ort is not None:
        print("  onnxruntime median %.1f ms (min %.1f, p90 %.1f); pydarknet / onnxruntime %.2f"
              % (s_ort["median"], s_ort["min"], s_ort["p90"], s_dn["median"] / s_ort["median"]), flush=True)
    rss = None
    if not args.no_rss:
        dn_peak, dn_base = peak_rss("pydarknet", cfg_sized, weights, args.size, args.threads)
        cv_peak, cv_base = peak_rss("opencv", cfg_sized, weights, args.size, args.threads)
        rss = {"pydarknet_peak_mib": dn_peak, "pydarknet_before_load_mib": dn_base,
               "opencv_peak_mib": cv_peak, "opencv_before_load_mib": cv_base}
        print("  peak RSS (own process, 3 forward passes): pydarknet %.0f MiB (%.0f before loading), "
              "OpenCV %.0f MiB (%.0f before loading)" % (dn_peak, dn_base, cv_peak, cv_base), flush=True)
    print("  pydarknet median %.1f ms (min %.1f, p90 %.1f); OpenCV median %.1f ms (min %.1f, p90 %.1f); "
          "ratio %.2f" % (s_dn["median"], s_dn["min"], s_dn["p90"], s_cv["median"], s_cv["min"],
                          s_cv["p90"], ratio), flush=True)
    return {"model": name, "cfg": shown_path(cfg), "size": args.size, "threads": args.threads, "batch": args.batch,
            "cpu_kernel": pydarknet.cpu_kernel(), "first_pass_ms": first_ms, "conv_algorithms": algorithms,
            "pydarknet_images_per_s": 1e3 * args.batch / s_dn["median"],
            "opencv_images_per_s": 1e3 * args.batch / s_cv["median"],
            "repeat": args.repeat, "warmup": args.warmup, "uses_blas": dn.uses_blas,
            "pause_s": args.pause, "pydarknet_ms": s_dn, "opencv_ms": s_cv, "ratio_median": ratio,
            "ratio_min": s_dn["min"] / s_cv["min"], "peak_rss": rss, "neighbour_cpus_kept_rounds": kept_load,
            "neighbour_cpus_dropped_rounds": dropped, "noisy": noisy, "check": check,
            "onnxruntime_ms": s_ort, "ratio_onnxruntime_median": s_dn["median"] / s_ort["median"] if s_ort else None}


def markdown(results):
    with_ort = any(r.get("onnxruntime_ms") for r in results)
    batched = any(r["batch"] > 1 for r in results)
    rows = ["| model | size | threads | pydarknet ms (min / p90) | OpenCV ms (min / p90) | ratio "
            "| peak RSS MiB pydarknet / OpenCV |" + (" onnxruntime ms (min / p90) | pydarknet / onnxruntime |"
                                                     if with_ort else "")
            + (" batch | images/s pydarknet / OpenCV |" if batched else ""),
            "|---|---|---|---|---|---|---|" + ("---|---|" if with_ort else "") + ("---|---|" if batched else "")]
    for r in results:
        d, c = r["pydarknet_ms"], r["opencv_ms"]
        m = r.get("peak_rss")
        mem = "%.0f / %.0f" % (m["pydarknet_peak_mib"], m["opencv_peak_mib"]) if m else "-"
        row = ("| %s | %d | %d | %.1f (%.1f / %.1f) | %.1f (%.1f / %.1f) | %.2f | %s |"
               % (r["model"] + (" (noisy)" if r["noisy"] else ""), r["size"], r["threads"], d["median"], d["min"],
                  d["p90"], c["median"], c["min"], c["p90"], r["ratio_median"], mem))
        if with_ort:
            o = r.get("onnxruntime_ms")
            row += (" %.1f (%.1f / %.1f) | %.2f |" % (o["median"], o["min"], o["p90"], r["ratio_onnxruntime_median"])
                    if o else " - | - |")
        if batched:
            row += " %d | %.1f / %.1f |" % (r["batch"], r["pydarknet_images_per_s"], r["opencv_images_per_s"])
        rows.append(row)
    return "\n".join(rows)


def main(args):
    names = list(args.cfg)
    if args.all:
        names += [m for m in ALL_MODELS if m not in names]
    if not names:
        names = ["yolov4-tiny"]
    cfgs = [resolve_cfg(n, args.cfg_dir) for n in names]
    info = machine_info()
    print("machine: %s, %s usable CPU(s); python %s, numpy %s, cv2 %s"
          % (info["cpu_model"], info["cpus_usable"], info["python"], info["numpy"], info["cv2"]))
    results = [bench_model(c, args) for c in cfgs]
    info["pydarknet_blas"] = results[0]["uses_blas"] if results else None
    info["env"] = {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "PYDARKNET_GEMM",
                                                  "PYDARKNET_SPEED", "PYDARKNET_CPU_KERNEL", "OPENBLAS_CORETYPE",
                                                  "OPENCV_CPU_DISABLE", "PYDARKNET_CPU_L2")}
    info["pydarknet_cpu_kernel"] = pydarknet.cpu_kernel()
    # measured convolution algorithms (on unless PYDARKNET_TUNING=off); the file's place is the user's own
    info["pydarknet_tuning"] = "off" if pydarknet.tuning_file() is None else "on"
    info["pydarknet_tuning_machine"] = pydarknet.tuning_machine()
    # which kernels this build and CPU run (a build with -DDN_NO_AVX512 has no AVX-512 path at all)
    from pydarknet._native import lib
    info["pydarknet_cpu_kernels_available"] = [k for k in ("avx512", "avx2")
                                               if lib.dn_cpu_kernel_available(k.encode())]
    table = markdown(results)
    print()
    print("Medians of %d interleaved rounds (%.2g s idle before each run) after %d warm-up runs; "
          "ratio = pydarknet / OpenCV medians (lower is better); CPU kernel %s."
          % (args.repeat, args.pause, args.warmup, pydarknet.cpu_kernel()))
    print()
    print(table)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "command": recorded_command(sys.argv),
                       "results": results, "table": table}, fh, indent=2)
        print("\nwrote %s" % args.json)


if __name__ == "__main__":
    main(ARGS)
