#!/usr/bin/env python3
"""Trains a detector from scratch with the Python API and measures its mAP.

    python scripts/make_dataset.py out/shapes
    python scripts/train_shapes.py --data out/shapes/shapes.data     # cfg/shapes.cfg, its max_batches

The loop is the core of darknet's `detector train` (which `pydarknet
detector train` runs with checkpoints, resuming and charts): darknet's seeded
initial weights (pydarknet.load(cfg, seed=S): uniform in +-sqrt(2/fan_in),
zero biases), background batches from DetectionLoader with the cfg's
augmentation, one Network.train_batch per batch. It prints the loss
every --print iterations and mAP@0.5 on the .data file's valid= list every
--map-every iterations and at the end, writes <backup>/<cfg>_final.weights
(darknet's name; backup= of the .data file) and, with --predict IMAGE, an
annotated copy of IMAGE with its detections.
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def valid_set(data_path, classes):
    """(image paths, label rows per image) of the .data file's valid= list."""
    from pydarknet.data import DetectionDataset

    ds = DetectionDataset.from_data(data_path, key="valid", classes=classes)
    return ds.images, [ds.labels(i)[0] for i in range(len(ds))]


def mean_ap(net, images, truths, classes):
    from pydarknet.evaluate import detect_dataset, evaluate

    return evaluate(detect_dataset(net, images), truths, classes, iou_thresh=0.5)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--cfg", default=os.path.join(ROOT, "cfg", "shapes.cfg"))
    ap.add_argument("--data", default=os.path.join("out", "shapes", "shapes.data"))
    ap.add_argument("--iterations", type=int, default=None, help="updates to make (default: the cfg's max_batches)")
    ap.add_argument("--seed", type=int, default=0, help="initial weights and batches (default 0)")
    ap.add_argument("--threads", type=int, default=None, help="compute threads (default: all cores)")
    ap.add_argument("--workers", type=int, default=1, help="data loading threads (default 1)")
    ap.add_argument("--print", dest="print_every", type=int, default=10, help="loss every N iterations")
    ap.add_argument("--map-every", type=int, default=0, help="also measure mAP every N iterations (0: only at the end)")
    ap.add_argument("--weights", default=None, help="where to write the trained weights "
                                                     "(default <backup>/<cfg name>_final.weights)")
    ap.add_argument("--predict", default=None, metavar="IMAGE", help="detect on IMAGE after training and write "
                                                                      "<backup>/predictions.jpg")
    ap.add_argument("--thresh", type=float, default=0.25, help="confidence for --predict (default 0.25)")
    args = ap.parse_args(argv)
    import pydarknet
    from pydarknet.data import DetectionLoader
    from pydarknet.datafiles import load_data_file

    start = time.time()
    df = load_data_file(args.data)
    names = df.names()
    net = pydarknet.load(args.cfg, threads=args.threads, names=names, seed=args.seed)   # darknet's init
    iterations = args.iterations or int(net.spec.options.get("max_batches") or 0)
    if iterations < 1:
        ap.error("no iterations: give --iterations or max_batches in the cfg")
    images, truths = valid_set(args.data, df.classes)
    print(f"{args.cfg}: {net.width}x{net.height}, batch {net.full_batch} (mini-batch {net.mini_batch}), "
          f"{iterations} iterations, {net.threads} threads; train {df.train}, valid {len(images)} images",
          flush=True)
    curve = []
    loss_avg = None
    with DetectionLoader.from_files(args.data, net, seed=args.seed, workers=args.workers) as loader:
        for k, (x, t) in enumerate(loader.iterate(start=net.iteration, stop=iterations), net.iteration):
            if x.shape[2:] != (net.height, net.width):      # multi-scale ([yolo] random)
                net.resize(height=x.shape[2], width=x.shape[3])
            loss = net.train_batch(x, t)
            loss_avg = loss if loss_avg is None else 0.9 * loss_avg + 0.1 * loss
            it = k + 1
            if it % args.print_every == 0 or it == iterations:
                print(f"{it:5d}: loss {loss:8.3f}, avg {loss_avg:8.3f}, rate {net.learning_rate(it):.6f}, "
                      f"{time.time() - start:6.1f} s", flush=True)
            if args.map_every and it % args.map_every == 0 and it != iterations:
                r = mean_ap(net, images, truths, df.classes)
                curve.append((it, loss_avg, r.map, time.time() - start))
                print(f"{it:5d}: mAP@0.5 {r.map:.4f} (precision {r.precision:.2f}, recall {r.recall:.2f}, "
                      f"avg IoU {r.avg_iou:.2f} at 0.25), {time.time() - start:6.1f} s", flush=True)
    if net.width != int(net.spec.width) or net.height != int(net.spec.height):
        net.resize(height=int(net.spec.height), width=int(net.spec.width))
    weights = args.weights or os.path.join(df.backup, os.path.splitext(os.path.basename(args.cfg))[0]
                                           + "_final.weights")
    os.makedirs(os.path.dirname(weights) or ".", exist_ok=True)
    net.save_weights(weights)
    r = mean_ap(net, images, truths, df.classes)
    curve.append((iterations, loss_avg, r.map, time.time() - start))
    for k, c in sorted(r.classes.items()):
        name = names[k] if names and k < len(names) else str(k)
        print(f"class {k} ({name}): ap {c.ap:.4f}, {c.truths} objects, tp {c.tp}, fp {c.fp}")
    print(f"mAP@0.5 = {r.map:.4f} on {len(images)} images (precision {r.precision:.2f}, recall {r.recall:.2f}, "
          f"F1 {r.f1:.2f}, avg IoU {r.avg_iou:.2f} at 0.25); weights written to {weights}; "
          f"{time.time() - start:.1f} s in all")
    if args.predict:
        import cv2

        from pydarknet.detection import draw_detections

        image = cv2.imread(args.predict)
        if image is None:
            print(f"{args.predict}: cannot read image", file=sys.stderr)
            return 1
        dets = net.detect(image, thresh=args.thresh)
        for d in dets:
            print(f"{d.label}: {100 * d.confidence:.0f}%  (left {d.left:.0f}, top {d.top:.0f}, "
                  f"width {d.w:.0f}, height {d.h:.0f})")
        out = os.path.join(df.backup, "predictions.jpg")
        cv2.imwrite(out, draw_detections(image, dets, classes=df.classes))
        print(f"annotated picture: {os.path.abspath(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
