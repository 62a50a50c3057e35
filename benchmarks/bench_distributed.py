#!/usr/bin/env python3
"""Data-parallel training over MPI: iteration time and images/s with 1 and
more ranks on this machine, the time an iteration waits for the gradient
all-reduce after its backward pass (all of it with --bucket-mb 0; with
buckets, what their all-reduces during the backward pass left), and the
all-reduce bandwidth measured on a buffer of the model's gradient size.

    python benchmarks/bench_distributed.py                    # yolov4-tiny at 256, batch 8, 1 and 2 ranks
    python benchmarks/bench_distributed.py --ranks 1 2 4 --cfg yolov4 --size 160 --json out/dist.json

The same total of cores in every row: R ranks of --cores / R threads each.
Random images and truths (the loader is bench_loader.py's subject); seeded
random weights. Needs mpi4py and an MPI (pip install '.[mpi]').
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cfg", default="yolov4-tiny", help="cfg path or a model name from --cfg-dir")
    ap.add_argument("--cfg-dir", default=os.path.join(os.path.dirname(HERE), "cfg"))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8, help="the global batch of an iteration")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--bucket-mb", type=float, nargs="+", default=[0.0, 4.0],
                    help="PYDARKNET_MPI_BUCKET_MB of the runs with several ranks (0: one all-reduce after the "
                         "backward pass; more: buckets all-reduced while it runs)")
    ap.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--iterations", type=int, default=4, help="timed iterations (after one warm-up)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "pydarknet-bench"))
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def worker(args):
    """One rank: builds the network, trains --iterations timed iterations, and
    rank 0 prints a JSON line with the medians."""
    import numpy as np

    sys.path.insert(0, HERE)
    import pydarknet
    from common import random_weights, resolve_cfg, sized_cfg
    from pydarknet._native import lib
    from pydarknet.distributed import world

    dist = world()
    size, rank = (1, 0) if dist is None else (dist.size, dist.rank)
    cfg = sized_cfg(resolve_cfg(args.cfg, args.cfg_dir), args.size, args.cache)
    weights = random_weights(cfg, args.seed, args.cache, 1)
    spec = pydarknet.parse_cfg(cfg)
    spec.options["batch"] = args.batch
    spec.options["subdivisions"] = size          # one mini-batch per rank
    threads = max(1, args.cores // size)
    net = pydarknet.Network(spec, threads=threads)
    net.load_weights(weights)
    reduce_times = []
    if dist is not None:
        dist.attach(net)
        inner = dist._reduce_gradients

        def timed(net_ptr, images):
            t = time.perf_counter()
            inner(net_ptr, images)
            reduce_times.append(time.perf_counter() - t)

        dist._reduce_gradients = timed
    rng = np.random.default_rng(args.seed + rank)
    local = args.batch // size
    x = rng.random((local, 3, args.size, args.size), dtype=np.float32)
    classes = next((l.spec.attrs["classes"] for l in net.layers if l.type == "yolo"), 80)
    t = np.zeros((local, 30, 5), np.float32)
    t[:, :4, 0:2] = rng.uniform(0.2, 0.8, (local, 4, 2))
    t[:, :4, 2:4] = rng.uniform(0.1, 0.4, (local, 4, 2))
    t[:, :4, 4] = rng.integers(0, classes, (local, 4))
    times = []
    for i in range(args.iterations + 1):
        if dist is not None:
            dist.barrier()
        t0 = time.perf_counter()
        net.train_batch(x, t)
        if i:
            times.append(time.perf_counter() - t0)
    bandwidth = None
    if dist is not None:
        from mpi4py import MPI

        buf = np.ones(lib.dn_net_gradient_count(net._ptr), np.float32)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(3):
            dist.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        per = (time.perf_counter() - t0) / 3
        # a ring all-reduce moves 2 (N-1)/N of the buffer through each rank's link
        bandwidth = 2 * (size - 1) / size * buf.nbytes / per / 1e9
    if rank == 0:
        med = float(np.median(times))
        row = {"ranks": size, "threads_per_rank": threads,
               "bucket_mb": None if dist is None else dist.bucket_mb,
               "iteration_s": med, "images_per_s": args.batch / med,
               "allreduce_s": float(np.median(reduce_times[1:])) if len(reduce_times) > 1 else 0.0,
               "allreduce_GBps": bandwidth}
        print("ROW " + json.dumps(row), flush=True)


def main(args):
    mpiexec = shutil.which("mpiexec") or os.path.join(os.path.dirname(sys.executable), "mpiexec")
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    rows = []
    for r in args.ranks:
        for mb in args.bucket_mb if r > 1 else [None]:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker"] + [a for a in sys.argv[1:]]
            if r > 1:
                cmd = [mpiexec, "-n", str(r), "--oversubscribe", "--bind-to", "none"] + cmd
                env["PYDARKNET_MPI_BUCKET_MB"] = str(mb)
            p = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(f"bench_distributed.py: {r} rank(s) failed:\n{p.stderr[-2000:]}")
            rows += [json.loads(line[4:]) for line in p.stdout.splitlines() if line.startswith("ROW ")]
    import platform

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor())
    print(f"{args.cfg} at {args.size}, global batch {args.batch}, {args.cores} cores in all; {cpu}")
    print("| ranks | threads per rank | bucket MB | iteration s | images/s | all-reduce wait after the backward s "
          "(share) | all-reduce GB/s |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        share = row["allreduce_s"] / row["iteration_s"]
        bw = "-" if row["allreduce_GBps"] is None else f"{row['allreduce_GBps']:.2f}"
        mb = "-" if row["bucket_mb"] is None else f"{row['bucket_mb']:g}"
        print(f"| {row['ranks']} | {row['threads_per_rank']} | {mb} | {row['iteration_s']:.3f} | "
              f"{row['images_per_s']:.1f} | {row['allreduce_s']:.4f} ({100 * share:.1f}%) | {bw} |")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump({"cfg": args.cfg, "size": args.size, "batch": args.batch, "cpu": cpu, "rows": rows}, fh,
                      indent=1)


if __name__ == "__main__":
    ARGS = parse_args()
    if ARGS.worker:
        try:
            worker(ARGS)
        except BaseException as e:   # one rank failing must not leave the others waiting in a collective
            from pydarknet.distributed import world

            dist = world()
            if dist is None:
                raise
            dist.abort(e)
    else:
        main(ARGS)
