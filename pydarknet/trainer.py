"""The training run that detectors (pydarknet.train) and classifiers
(pydarknet.classifier) share, as darknet's ``detector train`` and
``classifier train`` run it.

What differs between detectors and classifiers (the checks of the files,
the loader, darknet's log lines, the evaluation during training: mAP or
top-k accuracy) is a TrainTask; train_network runs the rest once for both.

One iteration trains on the loader's batch k (k = the network's iteration
count before the update; pydarknet.data makes batch k the same whenever it
is made), then, as darknet does: updates the average loss
(avg = avg * .9 + loss * .1, starting at the first loss), prints darknet's
log line (or moves a progress bar on a terminal), evaluates when due
(the task's -map or -topk), appends one JSON line to
``<backup>/<cfg-name>_train.jsonl``, saves the checkpoints that are due and
redraws the chart. A batch of another size than the network's (multi-scale
training) resizes the network before it; the cfg's size comes back at the end.

Checkpoints in the backup folder, each written to a temporary file renamed
into place:

* ``<cfg-name>_last.weights`` and ``<cfg-name>_last.state`` (optimizer
  moments, random generator, iteration) every ``last_every`` iterations
  (.data ``savelast``, default 100), at the end, and when training is
  interrupted (Ctrl-C) or stopped by an error;
* ``<cfg-name>_<N>.weights`` every ``save_every`` iterations (.data
  ``saveweights``; darknet's default: 1000, or 10000 when max_batches is
  10000 or more) and at each of the cfg's ``steps``;
* ``<cfg-name>_best.weights`` whenever the mAP is at least the best so far;
* ``<cfg-name>_final.weights`` at the end.

Resuming: given ``<cfg-name>_last.weights``, the iteration count comes from
the images seen that the file records, and the ``.state`` file beside it
(when it was saved at the same iteration) restores the optimizer and the
random generator. With the same seed the run then continues with the same
batches, sizes and learning rates, and ends with the same weights as a run
that was never stopped.

A network built without weights (or with a partial weights file such as a
``.conv.29`` backbone) starts from darknet's initialization
(Network(..., seed=seed): weights uniform in +-sqrt(2 / fan-in)).
"""
from __future__ import annotations

import json
import math
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import warnings
from array import array
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Union

from ._native import DarknetError, check, lib
from .cfg import parse_cfg
from .chart import LossCurve, draw_chart
from .console import Output, warnings_as_notes
from .datafiles import load_data_file
from .distributed import pick_device
from .distributed import world as mpi_world
from .evaluate import tqdm_class
from .fileio import replacing
from .network import Network
from .state import StateError, peek_state
from .train_checks import TrainError, check_positive, check_readable
from .weights import partial_layers

__all__ = [
    "train_network", "TrainTask", "TrainSummary", "TrainError", "cfg_base", "checkpoint_path", "state_path",
    "copy_params", "rate_line",
]


def _write_checkpoint(write, path):
    """write(path) (a checkpoint, written through a temporary file); an
    OSError (disk full, a folder in the way) becomes a TrainError naming it."""
    try:
        write(path)
    except OSError as e:
        raise TrainError(f"{path}: cannot write the checkpoint: {e.strerror or e}") from None


# ----------------------------------------------------------------------------- names of things

def cfg_base(cfg) -> str:
    """darknet's basecfg: the cfg's file name without folder and extension."""
    name = os.path.basename(os.fspath(cfg))
    stem, _ = os.path.splitext(name)
    return stem or name


def checkpoint_path(backup, base, tag) -> str:
    """<backup>/<base>_<tag>.weights (tag: last, final, best or an iteration)."""
    return os.path.join(os.fspath(backup), f"{base}_{tag}.weights")


def state_path(weights_path) -> str:
    """The training-state file beside a weights file (x.weights -> x.state)."""
    p = os.fspath(weights_path)
    stem, ext = os.path.splitext(p)
    return (stem if ext.lower() == ".weights" else p) + ".state"


def previous_state_path(weights_path) -> str:
    """Where the training state of the weights still in place waits while a
    new pair is being written (x.weights -> x.prev.state)."""
    return state_path(weights_path)[:-len(".state")] + ".prev.state"


def _write_weights_and_state(net, path):
    """The weights and their training state written so that a process killed
    at any moment (SIGKILL, a power cut) leaves weights with a state of their
    iteration: the state in place first moves to x.prev.state (it belongs to
    the weights still in place), then the new state and the new weights are
    each written whole and renamed into place. Resuming takes whichever of
    x.state and x.prev.state matches the weights."""
    spath, prev = state_path(path), previous_state_path(path)
    moved = False
    try:
        if os.path.exists(spath) and os.path.exists(path):
            os.replace(spath, prev)
            moved = True
    except OSError as e:
        raise TrainError(f"{spath}: cannot write the checkpoint: {e.strerror or e}") from None
    try:
        _write_checkpoint(net.save_training_state, spath)
        _write_checkpoint(net.save_weights, path)
    except TrainError:
        if moved:   # a failed write (a full disk): the pair in place goes back as it was
            try:
                os.replace(prev, spath)
            except OSError:
                pass
        raise
    try:
        os.remove(prev)   # the pair in place matches: the old state is no longer needed
    except OSError:
        pass


def _matching_state(weights, iteration):
    """(the training-state file saved with these weights, or None; a warning
    to print, or None): x.state, or x.prev.state when a run stopped while it
    replaced the pair."""
    current = state_path(weights)
    for path in (current, previous_state_path(weights)):
        at = peek_state(path) if os.path.exists(path) else None
        if at is not None and at[0] == iteration:
            return path, None
    if not os.path.exists(current):
        return None, None
    at = peek_state(current)
    if at is None:
        return None, f"warning: {current}: not a readable training-state file; resuming without it"
    return None, (f"warning: {current} was saved at iteration {at[0]}, {weights} at {iteration}; resuming "
                  f"without the training state")


def copy_params(src, dst):
    """Copies every parameter of network `src` into `dst` (the same cfg), as
    the networks that evaluate during training take the trained weights."""
    for a, b in zip(src.layers, dst.layers):
        pb = b.params
        for name, arr in a.params.items():
            pb[name][:] = arr


# ----------------------------------------------------------------------------- the log

class _TrainLog:
    """<backup>/<cfg-name>_train.jsonl: one JSON object per iteration. On
    start the lines past the starting iteration (from a run that went on
    after its last checkpoint) are dropped, so a resumed run's log reads as
    one run.

    In memory it keeps only what the chart, last() and best() read, in
    columns: iteration, loss and average loss as machine numbers (24 bytes an
    iteration), and the other numbers of the rare records that have more (an
    evaluation's mAP or top-1) by row. A dict per iteration (~0.5 KB, more as
    the allocator scatters them) made a long run's resident memory grow
    (benchmarks/bench_long_run.py); the file keeps every field."""

    FILE_ONLY = frozenset(("learning_rate", "images", "seconds", "load_seconds", "images_per_s", "width", "height",
                           "time", "hours_left"))
    COLUMNS = ("iteration", "loss", "avg_loss")

    def __init__(self, path, start):
        self.path = path
        self.failed = False
        self._it, self._loss, self._avg = array("q"), array("d"), array("d")
        self._extra: Dict[int, dict] = {}   # row -> the record's other numbers
        self._curve = LossCurve()           # what the chart draws of the losses, in bounded memory
        kept = []
        if start > 0 and os.path.exists(path):
            try:
                with open(path, encoding="utf-8", errors="replace") as f:   # a damaged line is dropped
                    for line in f:
                        try:
                            rec = json.loads(line)
                        except ValueError:
                            continue
                        if isinstance(rec, dict) and type(rec.get("iteration")) is int \
                                and 0 <= rec["iteration"] <= start:
                            kept.append(rec)
            except OSError:
                kept = []
        with replacing(path, "w") as f:
            for rec in kept:
                f.write(json.dumps(rec) + "\n")
        for rec in kept:
            self._keep(rec)

    def _keep(self, rec):
        self._it.append(rec["iteration"])
        self._loss.append(_number(rec.get("loss")))
        self._avg.append(_number(rec.get("avg_loss")))
        self._curve.add(rec["iteration"], self._loss[-1], self._avg[-1])
        extra = {k: v for k, v in rec.items()
                 if k not in self.COLUMNS and k not in self.FILE_ONLY and math.isfinite(_number(v))}
        if extra:
            self._extra[len(self._it) - 1] = extra

    def __len__(self):
        return len(self._it)

    @property
    def records(self) -> List[dict]:
        """The kept records as dicts (iteration, loss and avg_loss where finite, the other numbers kept)."""
        out = []
        for row, it in enumerate(self._it):
            rec = {"iteration": it}
            for key, col in (("loss", self._loss), ("avg_loss", self._avg)):
                if math.isfinite(col[row]):
                    rec[key] = col[row]
            rec.update(self._extra.get(row, ()))
            out.append(rec)
        return out

    def append(self, rec):
        """Adds one line; None, or a warning when the file cannot take it (a full disk, a size limit): the file
        is cut back to its whole lines and not written again, the records stay in memory (the chart, resume
        within this run)."""
        self._keep(rec)
        if self.failed:
            return None
        data = memoryview((json.dumps(rec) + "\n").encode("utf-8"))
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                end = os.lseek(fd, 0, os.SEEK_END)
                try:
                    while data:
                        data = data[os.write(fd, data):]
                except OSError:
                    os.ftruncate(fd, end)   # no half line left behind
                    raise
            finally:
                os.close(fd)
        except OSError as e:
            self.failed = True
            return (f"warning: {self.path}: cannot append to the training log: {e.strerror or e}; it keeps "
                    f"iterations up to {rec.get('iteration', 1) - 1}, training goes on without it")
        return None

    def series(self, metric):
        """The chart's curves (as chart.chart_series gives them): the losses from the bounded LossCurve, the
        points of `metric`."""
        import numpy as np

        its, loss, avg = self._curve.arrays()
        rows = [(row, extra[metric]) for row, extra in sorted(self._extra.items()) if metric in extra]
        map_its = np.array([self._it[row] for row, _ in rows], np.float64)
        maps = np.array([100.0 * float(v) for _, v in rows], np.float64)
        return its, loss, avg, map_its, maps

    def _values(self, key):
        if key in ("loss", "avg_loss"):
            return [v for v in (self._loss if key == "loss" else self._avg) if math.isfinite(v)]
        return [extra[key] for _, extra in sorted(self._extra.items()) if key in extra]

    def last(self, key):
        vals = self._values(key)
        return vals[-1] if vals else None

    def best(self, key):
        vals = self._values(key)
        return max(vals) if vals else None


def _number(v) -> float:
    """v as a float when it is a finite-able number (not a bool), else NaN."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return math.nan
    try:
        return float(v)
    except OverflowError:   # an integer past float's range
        return math.nan


# ----------------------------------------------------------------------------- summary

@dataclass
class TrainSummary:
    """What a training run did."""
    cfg: str
    data: str
    backup: str
    start_iteration: int
    iteration: int
    max_batches: int
    loss: Optional[float] = None
    avg_loss: Optional[float] = None
    best_map: Optional[float] = None
    maps: List[tuple] = field(default_factory=list)         # (iteration, mAP)
    accuracies: List[tuple] = field(default_factory=list)   # classifiers: (iteration, top-1, top-k)
    saved: Dict[str, str] = field(default_factory=dict)     # last, final, best, <N> -> path
    log_path: Optional[str] = None
    chart_path: Optional[str] = None
    data_problems: object = None                             # pydarknet.data.DataSummary
    interrupted: bool = False
    seconds: float = 0.0


# ----------------------------------------------------------------------------- checks

def _check_backup(folder, origin):
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise TrainError(f"{folder}: cannot create the backup folder{origin}: {e.strerror or e}") from None
    if not os.path.isdir(folder):
        raise TrainError(f"{folder}: the backup folder{origin} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".pydarknet-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise TrainError(f"{folder}: cannot write checkpoints to the backup folder{origin}: "
                         f"{e.strerror or e}") from None


# ----------------------------------------------------------------------------- what differs by network kind

class TrainTask:
    """What a kind of network adds to the shared training run
    (:func:`train_network`): its checks of the files and the cfg, its
    loader, darknet's lines for it, and its evaluation during training. The
    detector's is in pydarknet.train, the classifier's in pydarknet.classifier."""

    command = "detector"   # in the resume hint: 'pydarknet <command> train ...'
    names = None           # class names for the network, when read before it is built
    chart_metric = "mAP"   # the record key the chart plots beside the loss

    def check_data(self, out, df, data):
        """Before anything slow: what else the .data file must name."""

    def check_cfg(self, spec, cfg):
        """Raises TrainError when the cfg is not a network of this kind."""

    def check_network(self, out, net, df, cfg, data):
        """The built network against the .data file; evaluation set up."""

    def make_loader(self, data, net, seed, workers, rows=None):
        """The training batches; rows=(a, b): only those rows of each batch (an MPI rank's share)."""
        raise NotImplementedError

    def header(self, base, opts, n_train, save_every, last_every):
        """darknet's first lines."""
        return [base]

    def log_line(self, it, loss, avg_loss, rate, seconds, seen, n_train, hours_left):
        """darknet's line for one iteration."""
        raise NotImplementedError

    def resume(self, trainlog, summary):
        """Picks up what the log of the run being resumed says."""

    def evaluation_due(self, it, last, max_b, n_train, full_batch, burn_in):
        """Whether to evaluate after iteration `it` (last: the previous one)."""
        return False

    def evaluate(self, net, record, out, summary, save, bar):
        """Evaluates the trained network, adding the result to `record`
        (the iteration's log record) and `summary`; save(tag) writes a
        checkpoint."""

    def finished(self, summary):
        """What the 'Training finished' line adds."""
        return ""


def rate_line(opts):
    """darknet's learning-rate line among the first lines of training."""
    return (f"Learning Rate: {opts.get('learning_rate', 0.001):g}, Momentum: {opts.get('momentum', 0.9):g}, "
            f"Decay: {opts.get('decay', 0.0005):g}")


# ----------------------------------------------------------------------------- training

def train_network(task: TrainTask, cfg, data, weights=None, *, clear=False, backup=None, max_batches=None, seed=0,
                  save_every=None, last_every=None, chart=None, chart_every=10, workers=2, threads=None,
                  log: Optional[Callable[[str], None]] = None, progress=None, stop_after=None,
                  callback: Optional[Callable[[dict], None]] = None,
                  gpu: Union[int, Sequence[int], None] = None, watch=None, cache_images=None) -> TrainSummary:
    """The training run that detectors and classifiers share, `task` saying
    what differs (see TrainTask and the module notes).

    backup: the checkpoint folder (default: the .data file's backup=, else
      ./backup); created when missing.
    save_every / last_every: checkpoint intervals (default: .data
      saveweights / savelast, else darknet's).
    chart: the chart's path (default <backup>/chart_<cfg-name>.png), or False
      for none; redrawn every `chart_every` iterations, at each evaluation
      and at the end.
    log: receives darknet's stdout lines instead of print.
    progress: a tqdm bar instead of the log lines (default: when standard
      error is a terminal).
    stop_after: stop as Ctrl-C does once this iteration is done (saves
      _last and raises KeyboardInterrupt).
    callback: called with each iteration's log record (may raise).
    watch: (port, host): darknet's -mjpeg_port, the live page and the chart
      served over HTTP (pydarknet.watch.TrainingWatch), bound before anything
      else (rank 0 alone under MPI).
    cache_images: keep the decoded training images in shared memory for the
      run (True: up to half the memory available; a number: at most that
      many bytes), so that each is decoded once, not once an epoch."""
    dist = mpi_world()   # None unless several MPI ranks run this
    out = Output(log) if dist is None or dist.leader else _Silent()
    server = None
    try:
        if watch is not None and (dist is None or dist.leader):
            from .watch import TrainingWatch, WatchError

            try:
                server = TrainingWatch(*watch)
            except WatchError as e:
                raise TrainError(str(e)) from None
            out.note(f"serving the training page at http://{watch[1]}:{watch[0]}/ (the chart as Motion JPEG at "
                     f"/chart.mjpg)")
        with warnings_as_notes(out), _terminate_as_interrupt():
            return _train(out, task, cfg, data, weights, clear=clear, backup=backup, max_batches=max_batches,
                          seed=seed, save_every=save_every, last_every=last_every, chart=chart,
                          chart_every=chart_every, workers=workers, threads=threads, progress=progress,
                          stop_after=stop_after, callback=callback, gpu=gpu, dist=dist, watch=server,
                          cache_images=cache_images)
    except KeyboardInterrupt:
        raise
    except BaseException as e:
        if dist is not None:   # the other ranks would wait for this one forever: end the whole job
            dist.abort(e)
        raise
    finally:
        if server is not None:
            server.close()


@contextmanager
def _terminate_as_interrupt():
    """SIGTERM (a batch system's notice before it kills the job, `kill`, a container stopping) ends training as
    Ctrl-C does: _last is saved and the way to resume printed. Only from the main thread, where Python's
    signal handlers run; the previous handler comes back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except (ValueError, OSError):   # no such signal here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Silent(Output):
    """The output of an MPI rank other than 0: rank 0 alone speaks."""

    def line(self, text):
        pass

    def note(self, text):
        pass


class _NoLog:
    """The training log of an MPI rank other than 0 (rank 0 alone writes files)."""

    records: List[dict] = []

    def __len__(self):
        return 0

    def series(self, metric):
        return None

    def append(self, rec):
        pass

    def last(self, key):
        return None


class _FeedHint:
    """Watches how long the training loop waits for its batches and says once, after `after` iterations past
    the first `skip`, when the median wait is over a fifth of the median training step: the loader limits
    training, and what feeds it faster."""

    def __init__(self, out, loader, workers, skip=5, after=20):
        self.out, self.loader, self.workers = out, loader, workers
        self.skip, self.after = skip, after
        self.waits, self.steps, self.seen = [], [], 0

    def add(self, wait, step):
        self.seen += 1
        if self.seen <= self.skip or self.waits is None:
            return
        self.waits.append(wait)
        self.steps.append(step)
        if len(self.waits) < self.after:
            return
        wait, step = statistics.median(self.waits), statistics.median(self.steps)
        self.waits = self.steps = None   # said, or not needed: once either way
        if wait <= 0.2 * step:
            return
        cached = getattr(self.loader, "image_cache", None) is not None
        ways = [] if cached else ["--cache-images (each image decoded once, not once an epoch)"]
        ways.append(f"more --workers (now {self.workers}) where cores are free")
        self.out.note(f"the data loader limits training: each iteration waited {wait * 1000:.0f} ms for its batch "
                      f"against {step * 1000:.0f} ms of training; " + " or ".join(ways) + " would feed it faster")


def _train(out, task, cfg, data, weights, *, clear, backup, max_batches, seed, save_every, last_every, chart,
           chart_every, workers, threads, progress, stop_after, callback, gpu=None, dist=None, watch=None,
           cache_images=None):
    cfg, data = os.fspath(cfg), os.fspath(data)
    weights = None if weights is None else os.fspath(weights)
    base = cfg_base(cfg)
    max_batches = check_positive(max_batches, "max_batches")

    # ---- the .data file and what it names (before anything slow)
    df = load_data_file(data)
    if "train" not in df.options:
        raise TrainError(f"{data}: no 'train = <image list>' entry naming the training images")
    train_list = df.train
    check_readable(train_list, "the training image list", f" (train= in {data})")
    task.check_data(out, df, data)
    if backup is not None:
        backup_dir, origin = os.fspath(backup), ""
    elif "backup" in df.options:
        backup_dir, origin = df.backup, f" (backup= in {data})"
    else:
        backup_dir, origin = "backup", f" ({data} has no backup= entry)"
    if dist is None or dist.leader:
        _check_backup(backup_dir, origin)
    if weights is not None:
        check_readable(weights, "weights file")
        with open(weights, "rb") as f:
            head = f.read(256)
        if head.lstrip().startswith(b"[") and head.isascii():
            raise TrainError(f"{weights}: this looks like a cfg file, not weights")

    # ---- the network
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec = parse_cfg(cfg)
    for w in caught:
        out.note(f"warning: {w.message}")
    if max_batches is not None:
        spec.options["max_batches"] = max_batches
    max_b = int(spec.options.get("max_batches") or 0)
    if max_b < 1:
        raise TrainError(f"{cfg}: [net] max_batches={max_b}: nothing to train (set max_batches= or --max-batches)")
    task.check_cfg(spec, cfg)
    if dist is not None:
        # rank r trains rows r*batch/N .. of each global batch in its own subdivisions: mini-batches of
        # batch / (N * subdivisions), as one process with N times the subdivisions
        subdivisions = max(1, int(spec.options.get("subdivisions") or 1))
        if spec.batch % (dist.size * subdivisions):
            raise TrainError(f"{cfg}: batch={spec.batch} does not split over {dist.size} MPI ranks of "
                             f"subdivisions={subdivisions} (batch must be a multiple of {dist.size * subdivisions})")
        spec.options["subdivisions"] = subdivisions * dist.size
    net = Network(spec, threads=threads, names=task.names, seed=seed)  # darknet's initialization, seeded
    if net.full_batch < 2:
        raise TrainError(f"{cfg}: batch={net.full_batch} in [net]; training needs a batch of several images "
                         f"(e.g. batch=64 subdivisions=16)")
    check(lib.dn_net_seed(net._ptr, int(seed) & 0xFFFFFFFFFFFFFFFF))
    state_file = None
    if weights is not None:
        partial = partial_layers(net, weights)
        if partial is not None:
            net.load_weights(weights, max_layers=partial, clear=clear)
            out.note(f"{weights} holds the first {partial} of {len(net.layers)} layers; the others start "
                     f"from darknet's random initialization")
        else:
            net.load_weights(weights, clear=clear)
        if not clear:
            state_file, warning = _matching_state(weights, net.iteration)
            if warning:
                out.note(warning)
        if state_file is not None:
            try:
                net.load_training_state(state_file)
            except StateError as e:
                raise TrainError(str(e)) from None
    task.check_network(out, net, df, cfg, data)

    # ---- schedule
    def interval(value, key, default):
        if value is None:
            raw = df.options.get(key)
            if raw is None:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise TrainError(f"{data}: {key} = {raw!r} is not a whole number") from None
        if int(value) < 1:
            raise TrainError(f"{key} must be at least 1, got {value}")
        return int(value)

    opts = spec.options
    save_every = interval(save_every, "saveweights", 1000 if max_b < 10000 else 10000)
    last_every = interval(last_every, "savelast", 100)
    steps = set(int(s) for s in (opts.get("steps") or [])) if opts.get("policy") == "steps" else set()
    devices = gpu
    gpu = pick_device(devices, dist)
    if dist is None and devices is not None and not isinstance(devices, int) and len(devices) > 1:
        out.note(f"-gpus {','.join(map(str, devices))}: one process trains on device {gpu}; "
                 f"'mpiexec -n {len(devices)} pydarknet ...' trains on all of them")
    if gpu is not None:
        try:
            net.set_device(gpu)
        except DarknetError as e:
            raise TrainError(f"-gpus {gpu}: {e}") from None
    burn_in = int(opts.get("burn_in") or 0)

    if dist is not None:
        dist.attach(net)
        ranks = dist.describe(net.device_name)
        out.note(f"data-parallel over {dist.size} MPI ranks: " +
                 ", ".join(f"rank {r} on {host} ({device})" for r, host, device in ranks) +
                 f"; each trains {net.full_batch // dist.size} images of every batch of {net.full_batch} "
                 f"in mini-batches of {net.mini_batch}")

    # ---- data
    if workers is None:   # the CPU trains: 2 threads; a GPU trains: processes on every core but two (the
        # training thread with the loss heads' host work, and the rest of this process)
        workers = 2 if net.gpu is None else max(2, len(os.sched_getaffinity(0)) - 2)
    if cache_images is True and dist is not None and dist.local_size > 1:
        # the ranks of a machine keep a cache each: the default budget is shared between them
        from .data.cache import default_budget

        cache_images = max(1, default_budget() // dist.local_size)
    loader = task.make_loader(data, net, seed, workers, rows=None if dist is None else dist.rows(net.full_batch),
                              cache_images=cache_images)
    if loader.image_cache is not None:
        out.note(f"keeping the decoded training images in shared memory, up to "
                 f"{loader.image_cache.budget / 1e9:.2f} GB (each is decoded once)")
    try:
        return _loop(out, task, net, loader, cfg=cfg, data=data, base=base, backup_dir=backup_dir, weights=weights,
                     state_file=state_file, train_list=train_list, save_every=save_every, last_every=last_every,
                     steps=steps, burn_in=burn_in, chart=chart, chart_every=chart_every, progress=progress,
                     stop_after=stop_after, callback=callback, dist=dist, watch=watch)
    finally:
        loader.close()
        if dist is not None:
            dist.detach(net)


def _loop(out, task, net, loader, *, cfg, data, base, backup_dir, weights, state_file, train_list, save_every,
          last_every, steps, burn_in, chart, chart_every, progress, stop_after, callback, dist=None, watch=None):
    start = net.iteration
    full_batch = net.full_batch
    opts = net.spec.options
    max_b = int(opts["max_batches"])
    init_w, init_h = net.spec.width, net.spec.height
    n_train = len(loader.dataset)

    leader = dist is None or dist.leader   # the process that writes files and evaluates
    log_path = os.path.join(backup_dir, f"{base}_train.jsonl")
    try:
        trainlog = _TrainLog(log_path, start) if leader else _NoLog()
    except OSError as e:
        raise TrainError(f"{log_path}: cannot write the training log: {e.strerror or e}") from None
    chart_path = None
    if chart is not False and leader:
        chart_path = os.fspath(chart) if chart is not None else os.path.join(backup_dir, f"chart_{base}.png")

    if watch is not None:
        watch.begin(log_path, title=base, max_batches=max_b, metric=task.chart_metric)
    summary = TrainSummary(cfg=cfg, data=data, backup=backup_dir, start_iteration=start, iteration=start,
                           max_batches=max_b, log_path=log_path, chart_path=chart_path,
                           data_problems=loader.summary)
    avg_loss = None
    if start > 0 and leader:
        task.resume(trainlog, summary)
        avg_loss = trainlog.last("avg_loss")

    for line in task.header(base, opts, n_train, save_every, last_every):
        out.line(line)
    resumed = ""
    if weights is not None and start > 0:
        resumed = (f"; resuming from {weights}" + (f" with the training state in {state_file}" if state_file
                   else " (no training state beside it: the optimizer starts afresh)"))
    out.note(f"training {base} on {n_train} images of {train_list}: batch {full_batch} "
             f"(mini-batches of {net.mini_batch}), {init_w}x{init_h}, iterations {start} -> {max_b}{resumed}; "
             f"checkpoints in {backup_dir}; " +
             (f"on {net.device_name}" if net.gpu is not None else f"on the CPU with {net.threads} threads"))

    if progress is None:
        try:
            progress = sys.stderr.isatty()
        except (AttributeError, ValueError):
            progress = False

    chart_ok = [chart_path is not None]
    # the drawing in progress (a future of the one chart thread), and what stopped the chart. One thread for
    # the whole run: a new thread per drawing took a malloc arena of its own each time, and the resident memory
    # of a long training grew by what those arenas kept (benchmarks/bench_long_run.py)
    chart_job = [None, None]
    chart_thread = []

    def draw(series, hours):
        try:
            draw_chart(chart_path, (), max_b, title=base, hours_left=hours, metric=task.chart_metric, series=series)
            if watch is not None:
                watch.publish_chart(chart_path)
        except ImportError:
            chart_job[1] = "warning: matplotlib is not installed; no training chart is drawn (pip install matplotlib)"
        except (OSError, ValueError, RuntimeError) as e:
            chart_job[1] = (f"warning: {chart_path}: cannot draw the training chart: {e}; training goes on "
                            f"without it")

    def redraw(hours, wait=True):
        """Draws the chart; during training (wait=False) in the chart's thread, so the
        iterations do not stop for it (a drawing still running is let finish, this one
        skipped). The last drawing (wait=True) waits for that thread and draws in this one."""
        if chart_job[0] is not None and (wait or chart_job[0].done()):
            chart_job[0].result()
            chart_job[0] = None
        if chart_job[1] is not None and chart_ok[0]:
            chart_ok[0] = False
            out.note(chart_job[1])
        if not chart_ok[0] or chart_job[0] is not None:
            return
        series = trainlog.series(task.chart_metric)   # a snapshot: the drawing may run in its own thread
        if wait:
            draw(series, hours)
            if chart_job[1] is not None:
                chart_ok[0] = False
                out.note(chart_job[1])
            return
        if not chart_thread:
            chart_thread.append(ThreadPoolExecutor(1, thread_name_prefix="pydarknet-chart"))
        chart_job[0] = chart_thread[0].submit(draw, series, hours)

    def save(tag, with_state=False, quiet=False):
        path = checkpoint_path(backup_dir, base, tag)
        if not leader:   # rank 0 writes the run's checkpoint
            summary.saved[str(tag)] = path
            return path
        if not quiet:
            out.line(f"Saving weights to {path}")
        try:
            if with_state:
                _write_weights_and_state(net, path)
            else:
                _write_checkpoint(net.save_weights, path)
        except TrainError as e:
            raise TrainError(f"{e}; training stopped at iteration {net.iteration} (files written before are "
                             f"intact)") from None
        summary.saved[str(tag)] = path
        return path

    # one note when the loader cannot keep up (the first batches and the start-up left out)
    feed_hint = _FeedHint(out, loader, loader.workers) if leader else None
    t0 = time.perf_counter()
    iter_save = iter_save_last = iter_eval = start
    hours_left = None
    it = start
    if start >= max_b:
        out.note(f"already at iteration {start} of max_batches {max_b}; nothing to train")
    bar = None
    try:
        tqdm = tqdm_class() if progress and start < max_b and leader else None
        if tqdm is not None:
            bar = tqdm(total=max_b, initial=start, unit="it", file=sys.stderr, dynamic_ncols=True,
                       desc=base, smoothing=0.05)
            out.bar = bar
        t_wait = time.perf_counter()
        # each batch is trained before the next is taken: it may stay in the workers' shared memory
        for k, (x, truths) in enumerate(loader.iterate(start=start, stop=max_b, copy=False), start):
            load_time = time.perf_counter() - t_wait
            h, w = int(x.shape[2]), int(x.shape[3])
            if (w, h) != (net.width, net.height):
                net.resize(height=h, width=w)
                if bar is None:
                    out.line(f"Resizing: {w} x {h}")
            t_train = time.perf_counter()
            try:
                loss = net.train_batch(x, truths)
            except DarknetError:
                if dist is not None and dist.error is not None:
                    raise TrainError(f"an all-reduce over the MPI ranks failed: {dist.error}") from None
                raise
            if dist is not None:   # the loss per image of the whole batch
                loss = dist.sum(loss * x.shape[0]) / full_batch
            train_time = time.perf_counter() - t_train
            it = net.iteration
            if avg_loss is None or not math.isfinite(avg_loss):
                avg_loss = loss
            avg_loss = avg_loss * 0.9 + loss * 0.1
            rate = net.learning_rate(it)
            step_time = load_time + train_time
            remaining = (max_b - it) * step_time / 3600.0
            hours_left = remaining if hours_left is None else 0.01 * remaining + 0.99 * hours_left
            ips = full_batch / step_time if step_time > 0 else float("inf")
            summary.iteration, summary.loss, summary.avg_loss = it, loss, avg_loss
            if bar is None:
                out.line(task.log_line(it, loss, avg_loss, rate, train_time, it * full_batch, n_train, hours_left))
            else:
                bar.set_postfix_str(f"loss={loss:.3f} avg={avg_loss:.3f} lr={rate:.3g} {ips:.1f} img/s {w}x{h}",
                                    refresh=False)
                bar.update(it - bar.n)
            record = {"iteration": it, "loss": loss, "avg_loss": avg_loss, "learning_rate": rate,
                      "images": it * full_batch, "seconds": round(train_time, 6),
                      "load_seconds": round(load_time, 6), "images_per_s": round(ips, 3),
                      "width": w, "height": h, "time": round(time.time(), 3),
                      "hours_left": round(hours_left, 6)}
            if watch is not None and (k == start or it % max(1, chart_every or 10) == 0):
                watch.publish_sample(x, truths)   # before the next batch is taken: x may be shared memory
            if feed_hint is not None:
                feed_hint.add(load_time, train_time)

            # ---- evaluation (-map, -topk)
            evaluated = task.evaluation_due(it, iter_eval, max_b, n_train, full_batch, burn_in) and leader
            if evaluated:
                iter_eval = it
                task.evaluate(net, record, out, summary, save, bar)
            problem = trainlog.append(record)
            if problem:
                out.note(problem)

            # ---- checkpoints (darknet's conditions, plus the steps)
            if it >= iter_save + save_every or it % save_every == 0 or it in steps:
                iter_save = it
                save(it)
            if save_every > last_every and (it >= iter_save_last + last_every or (it % last_every == 0 and it > 1)):
                iter_save_last = it
                save("last", with_state=True)
            if chart_every and (it % chart_every == 0 or evaluated):
                redraw(hours_left, wait=False)
            if callback is not None:
                callback(record)
            if stop_after is not None and it >= stop_after and it < max_b:
                raise KeyboardInterrupt
            t_wait = time.perf_counter()
    except KeyboardInterrupt:
        summary.interrupted = True
        if bar is not None:
            bar.close()
            out.bar = bar = None
        summary.seconds = time.perf_counter() - t0
        if net.iteration > start:
            last = save("last", with_state=True, quiet=True)
            redraw(hours_left)
            out.note(f"interrupted at iteration {net.iteration}: saved {last} and {state_path(last)}; resume with "
                     f"'pydarknet {task.command} train {data} {cfg} {last}'")
        else:
            out.note(f"interrupted at iteration {net.iteration}, before any update; no checkpoint written")
        raise
    except Exception:
        if bar is not None:
            bar.close()
            out.bar = bar = None
        if net.iteration > start:
            try:
                last = save("last", with_state=True, quiet=True)
                out.note(f"training stopped at iteration {net.iteration}; saved {last} and {state_path(last)}")
            except Exception:
                pass
        raise
    finally:
        if chart_job[0] is not None:   # a drawing still running finishes before train() returns
            chart_job[0].result()
            chart_job[0] = None
        for pool in chart_thread:
            pool.shutdown(wait=True)
        chart_thread.clear()
        if bar is not None:
            bar.close()
            out.bar = None
        if (net.width, net.height) != (init_w, init_h):
            net.resize(height=init_h, width=init_w)

    summary.seconds = time.perf_counter() - t0
    summary.iteration = net.iteration
    save("final")
    save("last", with_state=True)
    redraw(0.0)
    if loader.summary.total:
        out.note(f"data problems met (each counted once, the samples skipped or repaired):\n{loader.summary.report()}")
    out.line(f"Training finished at iteration {net.iteration}: {summary.saved['final']}" + task.finished(summary))
    out.line("If you want to train from the beginning, then use flag in the end of training command: -clear")
    return summary
