#!/usr/bin/env python3
"""How far pydarknet's forward pass is from a pure-SGEMM lower bound.

For every [convolutional] layer of the cfg (default
yolov4-tiny at 416) it takes the GEMM an im2col convolution performs,

    M = filters / groups,  N = out_h * out_w,  K = (c / groups) * size * size
    (done `groups` times),

times NumPy's float32 matmul of an (M x K) by (K x N) matrix (NumPy links its own
OpenBLAS build, so this is the "SGEMM reference"), and reports
GFLOP/s = 2*M*N*K*groups / t, and sets against it the layer's own time in
pydarknet's forward pass (the core's per-layer timers, dn_net_layer_times: the
whole layer, packing, GEMM or Winograd, batch norm and activation included).
It also times the whole pydarknet forward pass
(random weights, batch 1, the same photo as bench_inference.py) and sets it
against the sum of the per-layer SGEMM times. That sum leaves out im2col, batch
norm, activations, pooling, routes, upsampling and the heads: it is a lower bound
for an im2col+GEMM implementation built on the same GEMM, not a prediction, and a
Winograd or direct convolution can go below it on 3x3 layers.

Each round times every layer's GEMM once (right after an untimed run of the same
GEMM, so with warm caches and threads: the favourable case, as a lower bound
should be), idles --pause seconds (so NumPy's
OpenBLAS threads stop spinning), times one pydarknet forward, and idles again;
medians are over --repeat rounds. Rounds during which other processes kept more
than --max-neighbours CPUs busy are run again.

    python benchmarks/bench_gemm_layers.py                 # yolov4-tiny, 416, 2 threads
    python benchmarks/bench_gemm_layers.py --cfg yolov3-tiny --threads 1
"""
import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from paths import add_cfg_dir_arg, add_image_arg, recorded_command  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", default="yolov4-tiny", help="cfg path or model name (default yolov4-tiny)")
    add_cfg_dir_arg(ap)
    add_image_arg(ap)
    ap.add_argument("--size", type=int, default=416)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=15, help="timed rounds (default 15)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pause", type=float, default=0.3,
                    help="seconds of idle between the GEMMs and the network forward (default 0.3)")
    ap.add_argument("--max-neighbours", type=float, default=0.15)
    ap.add_argument("--wait-idle", type=float, default=300)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "pydarknet-bench"))
    ap.add_argument("--json", default=os.path.join(HERE, "results", "gemm_layers.json"))
    ap.add_argument("--speed", type=lambda v: int(v, 0), default=None,
                    help="pydarknet speed paths (dn_net_set_speed bits; default all)")
    return ap.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

import pydarknet  # noqa: E402
from pydarknet._native import check, ffi, lib  # noqa: E402

sys.path.insert(0, HERE)
from common import (Neighbours, load_input, machine_info, random_weights,  # noqa: E402
                    resolve_cfg, sized_cfg, wait_idle)


def conv_gemms(net):
    """The im2col GEMM of every convolutional layer."""
    rows = []
    for layer in net.layers:
        if layer.type != "convolutional":
            continue
        a = layer.spec.attrs
        filters = int(a["filters"])
        groups = int(a.get("groups", 1) or 1)
        size = int(a.get("size", 1))
        _, oh, ow = layer.shape
        # the weights hold filters * (c_in / groups) * size * size values
        c_in = layer.params["weights"].size // (filters * size * size) * groups
        rows.append({"layer": layer.index, "filters": filters, "size": size,
                     "stride": int(a.get("stride", 1)), "groups": groups, "c_in": c_in,
                     "out_hw": [oh, ow], "M": filters // groups, "N": oh * ow,
                     "K": c_in // groups * size * size})
    return rows


def sum_med_tmp(t_gemm):
    return float(np.median(t_gemm.sum(axis=1)))


def main(args):
    cfg = resolve_cfg(args.cfg, args.cfg_dir)
    name = os.path.splitext(os.path.basename(cfg))[0]
    weights = random_weights(cfg, args.seed, args.cache, args.threads)
    cfg_sized = sized_cfg(cfg, args.size, args.cache)
    net = pydarknet.load(cfg_sized, weights, batch=1, threads=args.threads)
    net.set_threads(args.threads)
    info = machine_info()
    info["pydarknet_blas"] = net.uses_blas
    x = load_input(args.image, args.size)
    print("%s at %d, %d thread(s); SGEMM reference = numpy.matmul float32 (OpenBLAS), per conv layer"
          % (name, args.size, args.threads), flush=True)

    rows = conv_gemms(net)
    rng = np.random.default_rng(0)
    gemms = []
    for r in rows:
        A = rng.standard_normal((r["M"], r["K"]), dtype=np.float32)
        B = rng.standard_normal((r["K"], r["N"]), dtype=np.float32)
        C = np.empty((r["M"], r["N"]), np.float32)
        gemms.append((A, B, C, r["groups"]))
        r["gflop"] = 2.0 * r["M"] * r["N"] * r["K"] * r["groups"] / 1e9

    def run_gemms():
        out = []
        for A, B, C, g in gemms:
            np.matmul(A, B, out=C)  # untimed: warms caches and OpenBLAS's threads
            t = time.perf_counter()
            for _ in range(g):
                np.matmul(A, B, out=C)
            out.append(time.perf_counter() - t)
        return out

    if args.speed is not None:
        check(lib.dn_net_set_speed(net._ptr, args.speed))
    f_s, b_s, calls = ffi.new("double *"), ffi.new("double *"), ffi.new("long long *")
    layer_ms = []

    warm_ms = []

    def layer_times():
        per = []
        for r in rows:
            check(lib.dn_net_layer_times(net._ptr, r["layer"], f_s, b_s, calls))
            per.append(f_s[0] * 1e3)
        return per

    def run_net():
        # cold: after an idle pause, as bench_inference.py times it
        time.sleep(args.pause)
        check(lib.dn_net_set_profiling(net._ptr, 1))
        t = time.perf_counter()
        net.predict(x)
        dt = time.perf_counter() - t
        layer_ms.append(layer_times())
        # warm: right after, as the SGEMM reference is timed
        check(lib.dn_net_set_profiling(net._ptr, 1))
        net.predict(x)
        warm_ms.append(layer_times())
        check(lib.dn_net_set_profiling(net._ptr, 0))
        time.sleep(args.pause)
        return dt

    for _ in range(args.warmup):
        run_gemms()
        run_net()
    if args.wait_idle:
        wait_idle(args.wait_idle)
    t_gemm, t_net, kept, dropped, kept_layer_ms, kept_warm_ms = [], [], [], [], [], []
    mon = Neighbours()
    while len(t_net) < args.repeat:
        mon.start()
        g = run_gemms()
        n = run_net()
        load = mon.stop()
        if load > args.max_neighbours and len(dropped) < args.repeat:
            dropped.append(round(load, 3))
            if args.wait_idle:
                wait_idle(args.wait_idle)
            continue
        t_gemm.append(g)
        t_net.append(n)
        kept.append(round(load, 3))
        kept_layer_ms.append(layer_ms[-1])
        kept_warm_ms.append(warm_ms[-1])
    if dropped:
        print("  %d round(s) run again: other processes used %s CPU during them"
              % (len(dropped), ", ".join("%.2f" % v for v in dropped)))
    noisy = max(kept) > args.max_neighbours
    if noisy:
        print("  WARNING: kept rounds during which other processes were busy (up to %.2f CPU)" % max(kept))

    t_gemm = np.asarray(t_gemm) * 1e3  # [round, layer] ms
    t_layer = np.asarray(kept_layer_ms)  # [round, layer] ms, pydarknet's own layer timers (cold)
    t_warm = np.asarray(kept_warm_ms)    # the same in the forward pass right after (warm)
    for i, r in enumerate(rows):
        r["sgemm_ms_median"] = float(np.median(t_gemm[:, i]))
        r["sgemm_ms_min"] = float(np.min(t_gemm[:, i]))
        r["gflops"] = r["gflop"] / r["sgemm_ms_median"] * 1e3
        r["pydarknet_ms_median"] = float(np.median(t_layer[:, i]))
        r["pydarknet_gflops"] = r["gflop"] / r["pydarknet_ms_median"] * 1e3
        r["pydarknet_vs_sgemm"] = r["pydarknet_gflops"] / r["gflops"]
        r["pydarknet_warm_ms_median"] = float(np.median(t_warm[:, i]))
        r["pydarknet_warm_gflops"] = r["gflop"] / r["pydarknet_warm_ms_median"] * 1e3
        r["pydarknet_warm_vs_sgemm"] = r["pydarknet_warm_gflops"] / r["gflops"]
    per_round = t_gemm.sum(axis=1)
    sum_med, sum_min = float(np.median(per_round)), float(np.min(per_round))
    net_ms = np.asarray(t_net) * 1e3
    net_med, net_min = float(np.median(net_ms)), float(np.min(net_ms))
    total = sum(r["gflop"] for r in rows)

    lines = ["| layer | filters | size/stride | M | N | K | GFLOP | SGEMM ms | SGEMM GFLOP/s "
             "| pydarknet warm ms | GFLOP/s | / SGEMM | pydarknet cold ms | GFLOP/s | / SGEMM |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| %d | %d | %dx%d/%d | %d | %d | %d | %.3f | %.2f | %.0f | %.2f | %.0f | %.2f | %.2f | %.0f | %.2f |"
                     % (r["layer"], r["filters"], r["size"], r["size"], r["stride"],
                        r["M"], r["N"], r["K"], r["gflop"], r["sgemm_ms_median"], r["gflops"],
                        r["pydarknet_warm_ms_median"], r["pydarknet_warm_gflops"], r["pydarknet_warm_vs_sgemm"],
                        r["pydarknet_ms_median"], r["pydarknet_gflops"], r["pydarknet_vs_sgemm"]))
    gsum = sum(r["gflop"] for r in rows)
    conv_ms = float(np.median(t_layer.sum(axis=1)))
    warm_conv_ms = float(np.median(t_warm.sum(axis=1)))
    lines.append("| all conv | | | | | | %.3f | %.2f | %.0f | %.2f | %.0f | %.2f | %.2f | %.0f | %.2f |"
                 % (gsum, sum_med_tmp(t_gemm), gsum / sum_med_tmp(t_gemm) * 1e3,
                    warm_conv_ms, gsum / warm_conv_ms * 1e3, sum_med_tmp(t_gemm) / warm_conv_ms,
                    conv_ms, gsum / conv_ms * 1e3, sum_med_tmp(t_gemm) / conv_ms))
    table = "\n".join(lines)
    summary = "\n".join([
        "| what | ms (median) | ms (min) | conv GFLOP/s at the median |",
        "|---|---|---|---|",
        "| sum of per-layer SGEMM, numpy (%d conv layers, %.2f GFLOP) | %.1f | %.1f | %.0f |"
        % (len(rows), total, sum_med, sum_min, total / sum_med * 1e3),
        "| pydarknet whole forward (`net.predict`) | %.1f | %.1f | %.0f |"
        % (net_med, net_min, total / net_med * 1e3),
        "| ratio forward / SGEMM sum | %.2f | %.2f | |" % (net_med / sum_med, net_min / sum_min),
    ])
    print()
    print(table)
    print()
    print(summary)
    print("\nSGEMM: numpy.matmul of each layer's im2col GEMM shape alone, right after an untimed run\n"
          "(warm). pydarknet: the layer's whole forward (im2col/packing, GEMM or Winograd, batch norm,\n"
          "activation) from its own timers (dn_net_layer_times), in a forward pass right after\n"
          "another (warm) and in one after an idle pause (cold, as bench_inference.py times);\n"
          "its GFLOP/s counts the direct convolution's 2*M*N*K.")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "command": recorded_command(sys.argv),
                       "model": name, "size": args.size, "threads": args.threads, "repeat": args.repeat,
                       "pause_s": args.pause, "layers": rows, "conv_gflop": total,
                       "sgemm_sum_ms": {"median": sum_med, "min": sum_min},
                       "pydarknet_forward_ms": {"median": net_med, "min": net_min,
                                                "runs": [round(v, 3) for v in net_ms.tolist()]},
                       "neighbour_cpus_kept_rounds": kept, "neighbour_cpus_dropped_rounds": dropped,
                       "noisy": noisy, "table": table, "summary": summary}, fh, indent=2)
        print("\nwrote %s" % args.json)


if __name__ == "__main__":
    main(ARGS)
