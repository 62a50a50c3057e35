"""Training a detector as darknet's ``detector train`` does, with its mAP
on the valid= list during training (-map) and ``_best.weights``.

    from pydarknet.train import train_detector
    summary = train_detector("yolo-obj.cfg", "obj.data", "yolov4-tiny.conv.29", calc_map=True)

The training run itself (iterations, log lines, checkpoints, resuming, the
JSON log and the chart) is pydarknet.trainer's, which classifiers share;
this module is the detector's TrainTask.

Multi-scale training ([yolo] random): a new size every 10 iterations from
pydarknet.data.MultiScale (largest size first and in the last 100
iterations), the network resized before each batch whose size differs and
back to the cfg's size at the end.
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Sequence, Union

from .cfg import HEAD_TYPES
from .console import warnings_as_notes
from .data import DetectionDataset, DetectionLoader, default_backend
from .datafiles import read_names
from .evaluate import MapRun, compute_map, detection_classes, map_report
from .network import Network
from .train_checks import TrainError, check_positive, check_readable
from .trainer import (TrainSummary, TrainTask, cfg_base, checkpoint_path, copy_params, rate_line, state_path,
                      train_network)

__all__ = [
    "train_detector", "train_network", "TrainTask", "TrainSummary", "TrainError", "compute_map", "MapRun",
    "map_report",
    "cfg_base", "checkpoint_path", "state_path", "warnings_as_notes",
]


class _DetectorTask(TrainTask):
    """darknet's detector train: a [yolo] or [region] head, DetectionLoader
    (multi-scale), the mAP on the valid= list with -map and _best.weights."""

    def __init__(self, calc_map, map_every, map_epochs, thresh, iou_thresh, points, multiscale):
        if map_every is not None:
            map_every = check_positive(map_every, "the mAP interval")
            calc_map = True
        self.map_epochs = check_positive(map_epochs, "mAP_epochs")
        if not (isinstance(points, int) and (points == 0 or points > 1)):
            raise TrainError(f"points must be 0 (area under the curve) or a number of recall points (11, 101), "
                             f"got {points!r}")
        self.calc_map, self.map_every = calc_map, map_every
        self.thresh, self.iou_thresh, self.points = thresh, iou_thresh, points
        self.multiscale = multiscale
        self.valid_list = self.map_net = self.valid_ds = self.net_classes = self.best = None

    def check_data(self, out, df, data):
        if not self.calc_map:
            return
        names_path = df.names_path
        if "names" not in df.options and not os.path.exists(names_path):
            raise TrainError(f"{data}: no 'names = <file>' entry; -map needs the class names")
        check_readable(names_path, "the names file", f" (names= in {data})")
        self.names = read_names(names_path)
        self.valid_list = df.valid
        if "valid" not in df.options:
            out.note(f"{data} has no 'valid = <image list>' entry; the mAP is computed on the training "
                     f"list {df.train} (as darknet does)")
        check_readable(self.valid_list, "the validation image list for -map", f" (valid= in {data})")

    def check_cfg(self, spec, cfg):
        self.heads = [l for l in spec.layers if l.type in HEAD_TYPES]
        if not self.heads:
            raise TrainError(f"{cfg}: no [yolo] or [region] layer; 'detector train' needs a detection network")

    def check_network(self, out, net, df, cfg, data):
        names = self.names
        self.net_classes = net_classes = detection_classes(net)
        data_classes = df.classes
        if net_classes is not None and net_classes != data_classes:
            out.note(f"warning: {data} has classes = {data_classes} but the last [{self.heads[-1].type}] layer of "
                     f"{cfg} has classes={net_classes}")
        if names is not None and net_classes is not None and len(names) != net_classes:
            out.note(f"warning: {df.names_path} has {len(names)} class names but {cfg} has classes={net_classes}")
        if self.calc_map:
            self.map_net = Network(net.spec, threads=net.threads, names=names)
            self.valid_ds = DetectionDataset.from_list(self.valid_list, net_classes or data_classes,
                                                       channels=net.channels)

    def make_loader(self, data, net, seed, workers, rows=None, cache_images=None):
        kw = {"rows": rows, "cache_images": cache_images}
        if self.multiscale is False:
            kw["multiscale"] = False
        elif self.multiscale is not None:
            kw["sizes"] = self.multiscale
        return DetectionLoader.from_files(data, net, seed=seed, workers=workers, backend=default_backend(workers), **kw)

    def header(self, base, opts, n_train, save_every, last_every):
        return [base, f"Weights are saved after: {save_every} iterations. Last weights (*_last.weights) are stored "
                      f"every {last_every} iterations.", rate_line(opts)]

    def log_line(self, it, loss, avg_loss, rate, seconds, seen, n_train, hours_left):
        return (f" {it}: {loss:f}, {avg_loss:f} avg loss, {rate:f} rate, {seconds:f} seconds, {seen} images, "
                f"{hours_left:f} hours left")

    def resume(self, trainlog, summary):
        self.best = summary.best_map = trainlog.best("mAP")

    def evaluation_due(self, it, last, max_b, n_train, full_batch, burn_in):
        if not self.calc_map:
            return False
        if self.map_every is not None:
            next_map = last + self.map_every
        else:
            next_map = max(last + max(self.map_epochs * n_train // full_batch, 100), burn_in)
        return it >= next_map or it == max_b

    def evaluate(self, net, record, out, summary, save, bar):
        it, iou = record["iteration"], self.iou_thresh
        copy_params(net, self.map_net)
        out.line("")
        out.line(" calculation mAP (mean average precision)...")
        run = compute_map(self.map_net, self.valid_ds, self.net_classes, thresh=self.thresh, iou_thresh=iou,
                          points=self.points, progress=bar is not None)
        for line in map_report(run, self.names):
            out.line(line)
        out.line(f"\n mean_average_precision (mAP@{iou:.2f}) = {run.map:f}")
        record["mAP"] = run.map
        record["mAP@0.5:0.95"] = run.result.map_50_95
        summary.maps.append((it, run.map))
        if self.best is None or run.map >= self.best:
            self.best = summary.best_map = run.map
            out.line("New best mAP!")
            save("best")
        if bar is not None:
            bar.set_description(f"{cfg_base(summary.cfg)} mAP {run.map * 100:.1f}% best {self.best * 100:.1f}%",
                                refresh=False)

    def finished(self, summary):
        if self.best is None or "best" not in summary.saved:
            return ""
        return f" (best mAP@{self.iou_thresh:.2f} = {self.best * 100:.2f} % in {summary.saved['best']})"


def train_detector(cfg, data, weights=None, *, clear=False, calc_map=False, map_every=None, map_epochs=4,
                   backup=None, max_batches=None, seed=0, dont_show=True, thresh=0.25, iou_thresh=0.5,
                   points=0, save_every=None, last_every=None, chart=None, chart_every=10, multiscale=None,
                   workers=2, threads=None, log: Optional[Callable[[str], None]] = None, progress=None,
                   stop_after=None, callback: Optional[Callable[[dict], None]] = None,
                   gpu: Union[int, Sequence[int], None] = None, watch=None, cache_images=None) -> TrainSummary:
    """Trains the detector of `cfg` on the `train=` list of the .data file
    `data`, from `weights` when given (a full or partial weights file), up
    to the cfg's max_batches (or `max_batches`). See the module notes.

    clear: start the iteration count at 0 (and ignore a .state file).
    calc_map / map_every: compute the mAP@iou_thresh on the `valid=` list
      every max(map_epochs epochs, 100) iterations, not before burn_in, and at
      the end (darknet's schedule), or every `map_every` iterations when
      given (which implies calc_map); keep _best.weights.
    gpu: train on this CUDA device, or on one of a list of them (darknet's -gpus; under MPI the ranks of
      a machine take them in turn; None: the CPU).
    multiscale: None (as the cfg's [yolo] random says), False (never), or a
      callable batch index -> (width, height).
    dont_show: accepted for darknet's flag; no window is ever opened.
    The other arguments are pydarknet.trainer.train_network's.

    Raises TrainError (or the DataFileError / CfgError / WeightsError /
    DataError of the file at fault) before training when something it needs
    is missing; KeyboardInterrupt after saving _last when interrupted."""
    max_batches = check_positive(max_batches, "max_batches")
    task = _DetectorTask(calc_map, map_every, map_epochs, thresh, iou_thresh, points, multiscale)
    return train_network(task, cfg, data, weights, clear=clear, backup=backup, max_batches=max_batches, seed=seed,
                         save_every=save_every, last_every=last_every, chart=chart, chart_every=chart_every,
                         workers=workers, threads=threads, log=log, progress=progress, stop_after=stop_after,
                         callback=callback, gpu=gpu, watch=watch, cache_images=cache_images)
