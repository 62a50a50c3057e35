#!/usr/bin/env python3
"""How far pydarknet's forward pass is from a pure-SGEMM lower bound.

pydarknet does not expose per-layer timings, so this script does NOT time
pydarknet's layers. Instead, for every [convolutional] layer of the cfg (default
yolov4-tiny at 416) it takes the GEMM an im2col convolution performs,

    M = filters / groups,  N = out_h * out_w,  K = (c / groups) * size * size
    (run `groups` times),

times NumPy's float32 matmul of an (M x K) by (K x N) matrix (NumPy links
OpenBLAS, so this is the "SGEMM reference"), and reports GFLOP/s = 2*M*N*K*groups / t.
It then times the whole pydarknet forward pass (random weights, batch 1) and sets
it against the sum of the per-layer SGEMM times. The sum leaves out im2col,
batch norm, activations, pooling, routes and the heads, so it is a lower bound
for any im2col+GEMM implementation, not a prediction; a Winograd or direct
convolution can go below it on 3x3 layers.

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


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", default="yolov4-tiny", help="cfg path or model name (default yolov4-tiny)")
    ap.add_argument("--size", type=int, default=416)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=15, help="timed rounds (every GEMM, then the network)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "pydarknet-bench"))
    ap.add_argument("--json", default=os.path.join(HERE, "results", "gemm_layers.json"))
    return ap.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

import pydarknet  # noqa: E402

sys.path.insert(0, HERE)
from bench_inference import load_input, machine_info, random_weights, resolve_cfg, sized_cfg  # noqa: E402


def conv_gemms(net):
    rows = []
    for layer in net.layers:
        if layer.type != "convolutional":
            continue
        a = layer.spec.attrs
        groups = int(a.get("groups", 1) or 1)
        size = int(a.get("size", 1))
        c, oh, ow = layer.shape
        # weights hold filters * (c_in / groups) * size * size values
        c_in = layer.params["weights"].size // (int(a["filters"]) * size * size) * groups
        rows.append({"layer": layer.index, "filters": int(a["filters"]), "size": size,
                     "stride": int(a.get("stride", 1)), "groups": groups, "c_in": c_in,
                     "out": [c, oh, ow], "M": int(a["filters"]) // groups, "N": oh * ow,
                     "K": c_in // groups * size * size})
    return rows


def main(args):
    cfg = resolve_cfg(args.cfg)
    name = os.path.splitext(os.path.basename(cfg))[0]
    os.makedirs(args.cache, exist_ok=True)
    weights = random_weights(cfg, args.seed, args.cache, args.threads)
    cfg_sized = sized_cfg(cfg, args.size, args.cache)
    net = pydarknet.load(cfg_sized, weights, batch=1, threads=args.threads)
    net.set_threads(args.threads)
    info = machine_info()
    info["pydarknet_blas"] = net.uses_blas

    rows = conv_gemms(net)
    rng = np.random.default_rng(0)
    print("%s at %d, %d thread(s); SGEMM reference = numpy.matmul float32 (OpenBLAS), per conv layer"
          % (name, args.size, args.threads))
    gemms = []
    for r in rows:
        A = rng.standard_normal((r["M"], r["K"]), dtype=np.float32)
        B = rng.standard_normal((r["K"], r["N"]), dtype=np.float32)
        C = np.empty((r["M"], r["N"]), np.float32)
        gemms.append((A, B, C, r["groups"]))
        r["flop"] = 2.0 * r["M"] * r["N"] * r["K"] * r["groups"]
    x = load_input(os.path.join("/work/shared/images", "dog.jpg"), args.size)

    def run_gemm(i):
        A, B, C, g = gemms[i]
        t = time.perf_counter()
        for _ in range(g):
            np.matmul(A, B, out=C)
        return time.perf_counter() - t

    def run_net():
        t = time.perf_counter()
        net.predict(x)
        return time.perf_counter() - t

    # Rounds: every GEMM once, then one network forward. A burst of noise from a
    # neighbour then touches one round of everything instead of one layer's runs.
    for _ in range(args.warmup):
        for i in range(len(rows)):
            run_gemm(i)
        run_net()
    t_gemm = [[] for _ in rows]
    t_net = []
    for _ in range(args.repeat):
        for i in range(len(rows)):
            t_gemm[i].append(run_gemm(i))
        t_net.append(run_net())
    for r, ts in zip(rows, t_gemm):
        r["sgemm_ms_median"] = float(np.median(ts)) * 1e3
        r["sgemm_ms_min"] = float(np.min(ts)) * 1e3
        r["gflops"] = r["flop"] / (r["sgemm_ms_median"] * 1e-3) / 1e9
    total_flop = sum(r["flop"] for r in rows)
    per_round = np.sum(np.asarray(t_gemm), axis=0)  # SGEMM total of each round
    total_med = float(np.median(per_round))
    total_min = float(np.min(per_round))
    net_med, net_min = float(np.median(t_net)), float(np.min(t_net))

    lines = ["| layer | filters | size/stride | groups | M | N | K | GFLOP | SGEMM ms | GFLOP/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| %d | %d | %dx%d/%d | %d | %d | %d | %d | %.3f | %.2f | %.0f |"
                     % (r["layer"], r["filters"], r["size"], r["size"], r["stride"], r["groups"],
                        r["M"], r["N"], r["K"], r["flop"] / 1e9, r["sgemm_ms_median"], r["gflops"]))
    table = "\n".join(lines)
    summary = [
        "| what | ms (median) | ms (min) | GFLOP/s (median) |",
        "|---|---|---|---|",
        "| per-layer SGEMM, summed per round (%d conv layers, %.2f GFLOP) | %.1f | %.1f | %.0f |"
        % (len(rows), total_flop / 1e9, total_med * 1e3, total_min * 1e3, total_flop / total_med / 1e9),
        "| pydarknet whole forward (`net.predict`) | %.1f | %.1f | %.0f |"
        % (net_med * 1e3, net_min * 1e3, total_flop / net_med / 1e9),
        "| ratio forward / SGEMM sum | %.2f | %.2f | |" % (net_med / total_med, net_min / total_min),
    ]
    summary = "\n".join(summary)
    print()
    print(table)
    print()
    print(summary)
    print("\nThe SGEMM sum is a lower bound for im2col+GEMM convolution only (no im2col, batch norm,"
          "\nactivations or other layers); pydarknet's per-layer times are not measured here.")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump({"machine": info, "model": name, "size": args.size, "threads": args.threads,
                       "repeat": args.repeat, "layers": rows,
                       "sgemm_sum_ms": {"median": total_med * 1e3, "min": total_min * 1e3},
                       "pydarknet_forward_ms": {"median": net_med * 1e3, "min": net_min * 1e3},
                       "conv_gflop": total_flop / 1e9, "table": table, "summary": summary}, fh, indent=2)
        print("\nwrote %s" % args.json)


if __name__ == "__main__":
    main(ARGS)
