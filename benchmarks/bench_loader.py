#!/usr/bin/env python3
"""Training data loader throughput against what a training step consumes.

Builds a small detection set in a temp folder (the .jpg photos of --photo-dir,
default the checkout's data/, or synthetic shapes with --images shapes, 640x480,
with random YOLO labels), then times pydarknet.data.DetectionLoader making batches
at --size (416) with yolov4-tiny's augmentation (jitter .3, resize 1.5, hue .1,
saturation and exposure 1.5), mosaic off and on, for each --workers count and
backend. Reported: images per second delivered (after one warm-up batch) and
milliseconds of work per sample per worker.

Next to it: images per second a training step of the cfg (yolov4-tiny at
--size, batch --batch, seeded random weights) consumes, timing
net.train_batch after one warm-up step, and the time the training loop
spent waiting for the loader while both ran together (workers 2, mosaic on).

    python benchmarks/bench_loader.py                      # 416, batch 16, workers 1 and 2, threads
    python benchmarks/bench_loader.py --backend thread --backend process --batches 10
    python benchmarks/bench_loader.py --no-train           # loader only
    python benchmarks/bench_loader.py --no-train --cache-images --backend process --workers 1 --workers 2
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)
from paths import CFG_DIR, DATA_DIR, recorded_command  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cfg", default=os.path.join(CFG_DIR, "yolov4-tiny.cfg"))
    ap.add_argument("--size", type=int, default=416)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=6, help="timed loader batches per row (default 6)")
    ap.add_argument("--workers", type=int, action="append", help="worker counts (default 1 and 2)")
    ap.add_argument("--backend", action="append", choices=("thread", "process"), help="default thread")
    ap.add_argument("--images", choices=("photos", "shapes"), default="photos")
    ap.add_argument("--photo-dir", default=DATA_DIR,
                    help="folder of the .jpg photos of --images photos (default: the checkout's data/)")
    ap.add_argument("--train-steps", type=int, default=2, help="timed training steps (default 2)")
    ap.add_argument("--no-train", action="store_true", help="time the loader only")
    ap.add_argument("--cache-images", action="store_true",
                    help="also time each row with the decoded images kept in shared memory (cache_images=True), "
                         "after batches that put every image there: an epoch after the first")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=os.path.join(HERE, "results", "loader.json"))
    return ap.parse_args(argv)


def make_dataset(folder, kind, photo_dir=DATA_DIR, count=64, seed=0):
    """An image list of `count` entries with label files; returns its path."""
    import cv2
    import numpy as np

    from pydarknet.data.shapes import write_shapes_dataset

    if kind == "shapes":
        data = write_shapes_dataset(folder, count=count, width=640, height=480, seed=seed)
        return os.path.join(os.path.dirname(data), "train.txt")
    rng = np.random.default_rng(seed)
    photos = sorted(f for f in os.listdir(photo_dir) if f.lower().endswith(".jpg")) if os.path.isdir(photo_dir) else []
    if not photos:
        raise SystemExit("no .jpg photos in %s (use --photo-dir, or --images shapes)" % photo_dir)
    lines = []
    for name in photos:
        shutil.copy(os.path.join(photo_dir, name), os.path.join(folder, name))
        with open(os.path.join(folder, os.path.splitext(name)[0] + ".txt"), "w") as f:
            for _ in range(int(rng.integers(2, 8))):
                x, y = rng.uniform(0.2, 0.8, 2)
                w, h = rng.uniform(0.05, 0.35, 2)
                f.write(f"{int(rng.integers(80))} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n")
        assert cv2.imread(os.path.join(folder, name)) is not None
    lst = os.path.join(folder, "train.txt")
    with open(lst, "w") as f:
        f.write("\n".join(photos[i % len(photos)] for i in range(count)) + "\n")
    return lst


def time_loader(ds, aug, batch, workers, backend, batches, cache=False):
    from pydarknet.data import DetectionLoader

    with DetectionLoader(ds, aug, batch, seed=0, workers=workers, backend=backend, prefetch=3,
                         cache_images=cache or None) as loader:
        it = loader.iterate(copy=False)             # as the trainer takes its batches
        next(it)                                    # warm-up (and process start-up)
        for _ in range(100):                        # with the cache: until every image is there
            if not cache or loader.image_cache.stats()[0] == len(ds):
                break
            next(it)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        dt = time.perf_counter() - t0
    n = batches * batch
    return {"images_per_s": n / dt, "ms_per_sample_per_worker": dt * 1000 * workers / n}


def main(argv=None):
    args = parse_args(argv)
    import numpy as np

    import pydarknet
    from common import machine_info, sized_cfg
    from pydarknet.data import DetectionAugment, DetectionDataset

    workers = args.workers or [1, 2]
    backends = args.backend or ["thread"]
    tmp = tempfile.mkdtemp(prefix="pydarknet-bench-loader-")
    results = {"machine": machine_info(), "command": recorded_command(sys.argv), "size": args.size, "batch": args.batch,
               "images": args.images, "loader": [], "train": None}
    try:
        cfg = sized_cfg(args.cfg, args.size, tmp)
        spec = pydarknet.parse_cfg(cfg)
        lst = make_dataset(tmp, args.images, args.photo_dir)
        base = DetectionAugment.from_spec(spec)
        ds = DetectionDataset.from_list(lst, 80)
        print(f"dataset: {len(ds)} entries ({args.images}) in {tmp}; augmentation from {os.path.basename(args.cfg)}: "
              f"jitter {base.jitter}, resize {base.resize}, hue {base.hue}, saturation {base.saturation}, "
              f"exposure {base.exposure}", flush=True)
        rows = []
        for mosaic in (0, 1):
            aug = base.replace(mosaic=mosaic, letter_box=0, classes=80)
            for backend in backends:
                for w in workers:
                    for cache in (False, True) if args.cache_images else (False,):
                        r = time_loader(ds, aug, args.batch, w, backend, args.batches, cache)
                        r.update(mosaic=mosaic, workers=w, backend=backend, cache_images=cache)
                        rows.append(r)
                        print(f"  mosaic={mosaic} {backend} x{w}{' cache' if cache else ''}: "
                              f"{r['images_per_s']:.1f} images/s", flush=True)
        results["loader"] = rows

        train = None
        if not args.no_train:
            from pydarknet.data import DetectionLoader

            sys.path.insert(0, os.path.join(REPO, "scripts"))
            from make_random_weights import randomize

            net = pydarknet.load(cfg, batch=args.batch)
            randomize(net, args.seed)
            aug = base.replace(mosaic=1, classes=80)
            with DetectionLoader(ds, aug, args.batch, seed=0, workers=2, prefetch=2) as loader:
                it = iter(loader)
                x, t = next(it)
                net.train_batch(x, t)                   # warm-up: allocates training buffers
                steps, waits = [], []
                for _ in range(args.train_steps):
                    t0 = time.perf_counter()
                    x, t = next(it)
                    t1 = time.perf_counter()
                    net.train_batch(x, t)
                    t2 = time.perf_counter()
                    waits.append(t1 - t0)
                    steps.append(t2 - t1)
            step = statistics.median(steps)
            train = {"step_s": steps, "wait_s": waits, "images_per_s": args.batch / step, "threads": net.threads}
            results["train"] = train
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"Loader at {args.size}x{args.size}, batch {args.batch}, {args.images} "
          f"({results['machine']['cpus_usable']} CPUs usable):")
    print()
    print("| mosaic | backend | workers | decoded images kept | images/s | ms per sample per worker |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {'on' if r['mosaic'] else 'off'} | {r['backend']} | {r['workers']} | "
              f"{'yes' if r['cache_images'] else 'no'} | {r['images_per_s']:.1f} | "
              f"{r['ms_per_sample_per_worker']:.1f} |")
    if train:
        print()
        print(f"Training step, {os.path.basename(args.cfg)} {args.size}x{args.size} batch {args.batch} "
              f"({train['threads']} threads): median {statistics.median(train['step_s']):.2f} s "
              f"-> consumes {train['images_per_s']:.2f} images/s; waited for data "
              f"{max(train['wait_s']) * 1000:.1f} ms at most per step (workers 2, mosaic on)")
        slowest = min(r["images_per_s"] for r in rows)
        print(f"The slowest loader row delivers {slowest / train['images_per_s']:.0f}x what training consumes.")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
