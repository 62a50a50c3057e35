"""Batches for training, made in background workers while the network trains.

Every sample is a pure function of (seed, batch index, position in the
batch): its NumPy Generator is seeded with exactly that, so a batch comes out
the same whichever worker made it, however many workers there are, and
whether it was made while iterating or later by ``loader.batch(k)``; a run
that was stopped can regenerate batch k exactly and resume with
``loader.iterate(start=k)``.

Workers are threads by default: OpenCV's decode, resize, colour conversion
and blur release the GIL, and the little Python per sample does not limit a
couple of workers (see benchmarks/bench_loader.py). ``backend="process"``
runs them in spawned processes instead, for many cores (spawn-safe: the
dataset and options are sent once to each worker); they write each sample
straight into the batch in shared memory (a ring of slots, one per batch in
the making), so no image crosses a pipe, and the finished batch is copied
out once. A few batches are prefetched. ``cache_images`` keeps the decoded
images in shared memory for the run (pydarknet.data.cache), so that each is
decoded once and not once an epoch: the same pixels.

Bad data never stops a run: workers return the problems they met with the
samples (missing or corrupt images are replaced by another image drawn from
the same Generator) and the loader counts each once in ``loader.summary``,
logging it as a warning. An unexpected failure in a worker is raised in the
thread that asked for the batch, as a DataError naming the file.

Multi-scale training (the [yolo] ``random`` option) is the training loop's
choice; :func:`next_network_size` computes darknet's pick and
:class:`MultiScale` turns it into a deterministic size per batch index that
the loader can follow (``sizes=``).
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import shared_memory

import cv2
import numpy as np

from ..cfg import NetSpec, parse_cfg
from .augment import ClassifierAugment, DetectionAugment, classifier_sample, detection_sample, rand_scale
from .issues import DataError, DataSummary
from .cache import ImageCache, default_budget
from .lists import ClassificationDataset, DetectionDataset

__all__ = [
    "DetectionLoader", "ClassifierLoader", "MultiScale", "next_network_size", "max_network_size",
    "sample_rng", "default_backend",
]

MAX_TRIES = 1000   # images in a row that may fail before a sample gives up


# ----------------------------------------------------------------------------- multi-scale

def _round(v):
    """C's roundl for the positive values used here (halves away from zero)."""
    return math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)


def max_network_size(net_w, net_h, resize_step=32, random_factor=1.4):
    """The largest size next_network_size gives (darknet's max_dim_w/h)."""
    step = int(resize_step)
    return (int(_round(random_factor * net_w / step + 1) * step),
            int(_round(random_factor * net_h / step + 1) * step))


def next_network_size(rng, net_w, net_h, resize_step=32, random_factor=1.4, max_size=False):
    """darknet's multi-scale pick (detector.c train_detector, every 10
    iterations when [yolo] random is set; random_factor is 1.4 for random=1,
    else the random value): a factor s from rand_scale(random_factor), then
    each side round(s * side / step + 1) * step; a shrinking factor never
    gives a larger size than the cfg's; at least one step. max_size=True
    gives the largest size, which darknet uses for its first resize and the
    last 100 iterations. `net_w`/`net_h` are the cfg's (initial) size."""
    step = int(resize_step)
    if max_size:
        w, h = max_network_size(net_w, net_h, step, random_factor)
    else:
        s = rand_scale(rng, random_factor)
        w = int(_round(s * net_w / step + 1) * step)
        h = int(_round(s * net_h / step + 1) * step)
        if s < 1 and (w > net_w or h > net_h):
            w, h = net_w, net_h
    return max(w, step), max(h, step)


class MultiScale:
    """A network size for every batch index, as darknet's multi-scale
    training picks them: a new size every `every` batches from
    next_network_size, with a Generator seeded by (seed, block), the largest
    size for the first block and for the last 100 batches before
    max_batches. (Darknet counts blocks from the start of each run; counting
    them from batch 0 makes a resumed run see the same sizes.)"""

    def __init__(self, net_w, net_h, random=1.0, resize_step=32, seed=0, every=10, max_batches=None):
        self.net_w, self.net_h = int(net_w), int(net_h)
        self.factor = 1.4 if random == 1 else float(random)
        self.step = int(resize_step)
        self.seed, self.every, self.max_batches = int(seed), int(every), max_batches

    @classmethod
    def from_spec(cls, spec, seed=0):
        """None when the cfg's last detection layer has random=0."""
        aug = DetectionAugment.from_spec(spec)
        if not aug.random:
            return None
        return cls(aug.width, aug.height, aug.random, aug.resize_step, seed,
                   max_batches=spec.options.get("max_batches") or None)

    def __call__(self, k):
        block = int(k) // self.every
        last = self.max_batches is not None and k > self.max_batches - 100
        rng = np.random.default_rng([self.seed, 0x5ca1e, block])
        return next_network_size(rng, self.net_w, self.net_h, self.step, self.factor,
                                 max_size=block == 0 or last)


# ----------------------------------------------------------------------------- sampling

def default_backend(workers):
    """Threads for up to two workers (OpenCV releases the GIL; one process
    less), processes beyond: threads stop scaling with the GIL, processes
    writing into shared memory scale with the cores (benchmarks/bench_loader.py)."""
    return "process" if workers > 2 else "thread"


def sample_rng(seed, k, i):
    """The Generator of sample i of batch k."""
    return np.random.default_rng([int(seed), int(k), int(i)])


class _Source:
    """Draws images for one sample: the first from the batch order, any
    further ones (mosaic, mixup, replacements of unreadable images) at
    random. Collects the problems met."""

    def __init__(self, dataset, first=None):
        self.dataset = dataset
        self.first = first
        self.issues = []
        self.last_path = getattr(dataset, "origin", "")

    def draw(self, rng):
        ds = self.dataset
        for _ in range(MAX_TRIES):
            if self.first is not None:
                index, self.first = self.first, None
            else:
                index = int(rng.integers(len(ds)))
            self.last_path = ds.images[index]
            img, labels, issues = ds.load(index)
            self.issues.extend(issues)
            if img is not None:
                return img, labels, self.last_path
        raise DataError(f"{ds.origin or 'dataset'}: {MAX_TRIES} images in a row could not be used "
                        f"(last: {self.last_path}); see the warnings above")


class _Job:
    """Everything a worker needs to make samples (picklable)."""

    def __init__(self, kind, dataset, augment, batch_size, seed, order):
        self.kind, self.dataset, self.augment = kind, dataset, augment
        self.batch_size, self.seed, self.order = int(batch_size), int(seed), order
        self._perm = (None, None)

    def _first_index(self, k, i):
        if self.order != "shuffle":
            return None
        m = len(self.dataset)
        pos = int(k) * self.batch_size + int(i)
        epoch = pos // m
        cached_epoch, perm = self._perm
        if cached_epoch != epoch:
            perm = np.random.default_rng([self.seed, 0x5e9, epoch]).permutation(m)
            self._perm = (epoch, perm)
        return int(perm[pos % m])

    def sample(self, k, i, size):
        rng = sample_rng(self.seed, k, i)
        source = _Source(self.dataset, self._first_index(k, i))
        try:
            if self.kind == "detection":
                x, t = detection_sample(source, self.augment, rng, size[0], size[1])
            else:
                x, t = classifier_sample(source, self.augment, rng)
        except DataError:
            raise
        except Exception as e:   # name the file being worked on
            raise DataError(f"{source.last_path}: {type(e).__name__}: {e}") from e
        return x, t, source.issues

    def fill(self, k, i, size, x, t, row):
        """sample() i written straight into row `row` of the batch arrays (threads)."""
        xi, ti, issues = self.sample(k, i, size)
        x[row] = xi
        t[row] = ti
        return None, None, issues


_WORKER_JOB = None


def _init_process(job, parent=None):
    global _WORKER_JOB
    _WORKER_JOB = job
    try:
        cv2.setNumThreads(1)   # one worker, one core
    except Exception:
        pass
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent,), name="pydarknet-parent-watch", daemon=True).start()


def _exit_with_parent(parent, every=0.25):
    """A worker whose loader's process is gone (killed: SIGKILL, an OOM kill, a crash, with no chance to stop
    its pool) ends itself: it would otherwise wait for tasks forever, and keep the resource tracker, and with it
    the shared slots, alive."""
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(0)


_WORKER_SLOTS = OrderedDict()   # shared-memory slots this worker has attached, by name (the newest few)


def _attach(name):
    shm = _WORKER_SLOTS.get(name)
    if shm is None:
        # The loader owns the slot and unlinks it. Before Python 3.13 attaching registers the name with the
        # resource tracker, but the spawned workers share the loader's tracker, where that is a no-op: the
        # worker must not unregister it (the loader's own unregister would then fail in the tracker)
        try:
            shm = shared_memory.SharedMemory(name=name, track=False)
        except TypeError:
            shm = shared_memory.SharedMemory(name=name)
        _WORKER_SLOTS[name] = shm
        while len(_WORKER_SLOTS) > 16:
            _WORKER_SLOTS.popitem(last=False)[1].close()
    return shm


def _process_task(k, first, rows, size, slot, x_shape, t_shape):
    """Samples first + r of batch k, for r in `rows`, written into row r of its arrays in the shared slot (a few
    rows per task: each task costs the parent a round trip)."""
    buf = _attach(slot).buf
    x = np.ndarray(x_shape, np.float32, buffer=buf)
    t = np.ndarray(t_shape, np.float32, buffer=buf, offset=x.nbytes)
    issues = []
    for row in rows:
        xi, ti, iss = _WORKER_JOB.sample(k, first + row, size)
        x[row] = xi
        t[row] = ti
        issues.extend(iss)
    del x, t
    return None, None, issues


class _SharedSlots:
    """The process backend's batches in shared memory: a ring of slots, each
    holding one batch's image and truth arrays while its samples are made.
    A slot is handed out again only after every task that wrote into it has
    finished (a cancelled batch's running samples included)."""

    def __init__(self, count):
        self._slots = [None] * count       # SharedMemory, or None
        self._futures = [[] for _ in range(count)]
        self._next = 0

    def take(self, nbytes):
        j = self._next
        self._next = (j + 1) % len(self._slots)
        wait(self._futures[j])
        shm = self._slots[j]
        if shm is None or shm.size < nbytes:
            if shm is not None:
                _release(shm)
            shm = self._slots[j] = shared_memory.SharedMemory(create=True, size=max(1, nbytes))
        return j, shm

    def used_by(self, j, futures):
        self._futures[j] = futures

    def close(self):
        for shm in self._slots:
            if shm is not None:
                _release(shm)
        self._slots = [None] * len(self._slots)


def _release(shm):
    """Unlinks a slot; its memory goes when the last view of it does."""
    try:
        shm.close()
    except BufferError:   # a batch array still views it (a caller holding a pending batch)
        pass
    shm.unlink()


class _Pending:
    def __init__(self, k, x, t, futures, shared=False):
        self.k, self.x, self.t, self.futures = k, x, t, futures
        self.shared = shared   # x and t view a shared slot: copied out when collected

    def cancel(self):
        for f in self.futures:
            f.cancel()


# ----------------------------------------------------------------------------- loaders

class _Loader:
    kind = None

    def __init__(self, dataset, augment, batch_size, seed=0, workers=2, prefetch=3, backend="thread",
                 order="random", start=0, rows=None, cache_images=None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        first, stop = (0, batch_size) if rows is None else (int(rows[0]), int(rows[1]))
        if not 0 <= first < stop <= batch_size:
            raise ValueError(f"rows must be a range within the batch of {batch_size}, got {rows}")
        # the rows [first, stop) of every batch of batch_size (one rank's share of the global batch): the
        # very samples, augmentations and sizes the whole batch has in those rows
        self.first, self.rows = first, stop - first
        if order not in ("random", "shuffle"):
            raise ValueError(f"order must be 'random' (darknet's) or 'shuffle', got {order!r}")
        if backend not in ("thread", "process"):
            raise ValueError(f"backend must be 'thread' or 'process', got {backend!r}")
        if len(dataset) == 0:
            raise DataError(f"{dataset.origin or 'dataset'}: no images")
        self.dataset, self.augment = dataset, augment
        self.batch_size, self.seed, self.start = int(batch_size), int(seed), int(start)
        self.workers, self.prefetch, self.backend = max(0, int(workers)), max(1, int(prefetch)), backend
        self.summary = dataset.summary if dataset.summary is not None else DataSummary()
        # cache_images: keep decoded images in shared memory for the run (True: up to half the memory
        # available; a number: that many bytes at most); the workers receive it with the dataset
        self.image_cache = None
        if cache_images:
            budget = default_budget() if cache_images is True else int(cache_images)
            self.image_cache = dataset.image_cache = ImageCache(len(dataset), budget)
        self._job = _Job(self.kind, dataset, augment, batch_size, seed, order)
        self._lock = threading.Lock()
        self._closed = False
        self._pool = None
        self._slots = None
        if self.workers:
            if backend == "thread":
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="pydarknet-data")
            else:
                self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                                 initializer=_init_process, initargs=(self._job, os.getpid()))
                self._slots = _SharedSlots(self.prefetch + 2)

    # ---- shapes
    def size(self, k):
        """(width, height) of batch k."""
        return self.augment.width, self.augment.height

    def _truth_shape(self):
        raise NotImplementedError

    # ---- work
    def _submit(self, k):
        if self._closed:
            raise RuntimeError("the loader is closed")
        w, h = self.size(k)
        c = self.augment.channels
        x_shape, t_shape = (self.rows, c, h, w), (self.rows,) + self._truth_shape()
        if self._slots is not None:
            nx = int(np.prod(x_shape)) * 4
            j, shm = self._slots.take(nx + int(np.prod(t_shape)) * 4)
            x = np.ndarray(x_shape, np.float32, buffer=shm.buf)
            t = np.ndarray(t_shape, np.float32, buffer=shm.buf, offset=nx)
            per = max(1, -(-self.rows // (2 * self.workers)))   # about two tasks per worker and batch
            futures = [self._pool.submit(_process_task, k, self.first, range(r, min(r + per, self.rows)), (w, h),
                                         shm.name, x_shape, t_shape)
                       for r in range(0, self.rows, per)]
            self._slots.used_by(j, futures)
            return _Pending(k, x, t, futures, shared=True)
        x = np.empty(x_shape, np.float32)
        t = np.empty(t_shape, np.float32)
        if self._pool is None:
            return _Pending(k, x, t, None)
        futures = [self._pool.submit(self._job.fill, k, self.first + r, (w, h), x, t, r) for r in range(self.rows)]
        return _Pending(k, x, t, futures)

    def _collect(self, p, copy=True):
        issues = []
        try:
            if p.futures is None:
                size = (p.x.shape[3], p.x.shape[2])
                results = (self._job.sample(p.k, self.first + r, size) for r in range(self.rows))
            else:
                results = (f.result() for f in p.futures)
            for i, (xi, ti, iss) in enumerate(results):
                if xi is not None:
                    p.x[i] = xi
                    p.t[i] = ti
                issues.extend(iss)
        except BrokenProcessPool as e:
            raise DataError(f"{self.dataset.origin or 'dataset'}: a data worker process died ({e}); "
                            f"a script using backend='process' needs an `if __name__ == '__main__':` guard") from e
        except BaseException:
            if p.futures is not None:
                p.cancel()
            raise
        finally:
            self.summary.record_all(issues)
        if p.shared and copy:   # the slot is written again for a later batch: the caller gets its own arrays
            return p.x.copy(), p.t.copy()
        return p.x, p.t

    def batch(self, k):
        """Batch k: (x float32 [B, C, H, W], truths), the same as the k-th
        batch of an iteration from 0."""
        return self._collect(self._submit(int(k)))

    def iterate(self, start=None, stop=None, copy=True):
        """Batches start, start+1, ... (up to stop, exclusive, or forever),
        with `prefetch` batches in the making ahead of the one returned.
        copy=False: with the process backend the arrays view the shared
        memory the workers wrote (no copy of the batch in this process); they
        stay valid while the next two batches are taken (taking the third
        reuses the memory), so use a batch before taking the next (as a
        training loop does)."""
        k = self.start if start is None else int(start)
        ahead = 1 if self._pool is None else self.prefetch
        pending = deque()
        nxt = k
        try:
            while stop is None or k < stop:
                while len(pending) < ahead and (stop is None or nxt < stop):
                    pending.append(self._submit(nxt))
                    nxt += 1
                p = pending.popleft()
                yield self._collect(p, copy)
                k += 1
        finally:
            for p in pending:
                if p.futures is not None:
                    p.cancel()

    def __iter__(self):
        return self.iterate()

    # ---- life
    def close(self, wait=True):
        """Stops the workers: queued work is dropped, running samples finish
        (waited for unless wait=False)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pool, self._pool = self._pool, None
            slots, self._slots = self._slots, None
        if pool is not None:
            # the workers must be gone before the shared slots they write into are unlinked
            pool.shutdown(wait=wait or slots is not None, cancel_futures=True)
        if slots is not None:
            slots.close()
        cache, self.image_cache = self.image_cache, None
        if cache is not None:
            if self.dataset.image_cache is cache:
                self.dataset.image_cache = None
            cache.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close(wait=False)
        except Exception:
            pass


class DetectionLoader(_Loader):
    """Batches (x float32 [B, C, H, W] RGB 0..1, truths float32 [B, max_boxes,
    5] rows x y w h class) for Network.train_batch, made as the cfg's
    augmentation asks (pydarknet.data.augment).

    `sizes`: None (the cfg size), or a callable batch index -> (width, height),
    e.g. a MultiScale. `order`: "random" draws each image at random as darknet
    does, "shuffle" goes through the list in a new random order every epoch.
    `workers=0` makes batches in the calling thread."""

    kind = "detection"

    def __init__(self, dataset, augment, batch_size, seed=0, workers=2, prefetch=3, backend="thread",
                 order="random", sizes=None, start=0, rows=None, cache_images=None):
        if augment.classes != dataset.classes:
            augment = augment.replace(classes=dataset.classes)
        self._sizes = sizes
        super().__init__(dataset, augment, batch_size, seed, workers, prefetch, backend, order, start, rows,
                         cache_images)

    @classmethod
    def from_files(cls, data_or_list, cfg, seed=0, batch_size=None, multiscale=True, key="train", **kw):
        """From a .data file (or an image list) and a cfg (path, NetSpec or
        Network): [net] and [yolo] options, the cfg's batch, classes from the
        .data file (or the [yolo] layer for a list), multi-scale sizes when
        the cfg asks for them and `multiscale`."""
        spec = _spec_of(cfg)
        aug = DetectionAugment.from_spec(spec)
        if _is_data_file(data_or_list):
            ds = DetectionDataset.from_data(data_or_list, key=key, channels=aug.channels)
        else:
            ds = DetectionDataset.from_list(data_or_list, aug.classes, channels=aug.channels)
        if batch_size is None:
            batch_size = getattr(cfg, "full_batch", None) or max(1, spec.batch)
        if multiscale and "sizes" not in kw:
            kw["sizes"] = MultiScale.from_spec(spec, seed)
        return cls(ds, aug, batch_size, seed=seed, **kw)

    def size(self, k):
        if self._sizes is None:
            return self.augment.width, self.augment.height
        w, h = self._sizes(k)
        return int(w), int(h)

    def _truth_shape(self):
        return (self.augment.max_boxes, 5)


class ClassifierLoader(_Loader):
    """Batches (x float32 [B, C, H, W] RGB 0..1, truths float32 [B, classes])
    for a classifier; labels from the class names in the image paths."""

    kind = "classifier"

    def __init__(self, dataset, augment, batch_size, seed=0, workers=2, prefetch=3, backend="thread",
                 order="random", start=0, rows=None, cache_images=None):
        if augment.classes != dataset.classes:
            augment = augment.replace(classes=dataset.classes)
        super().__init__(dataset, augment, batch_size, seed, workers, prefetch, backend, order, start, rows,
                         cache_images)

    @classmethod
    def from_files(cls, data_or_list, cfg, seed=0, batch_size=None, names=None, key="train", **kw):
        spec = _spec_of(cfg)
        if _is_data_file(data_or_list):
            ds = ClassificationDataset.from_data(data_or_list, key=key, channels=spec.channels or 3)
        else:
            if names is None:
                raise DataError(f"{data_or_list}: an image list needs the class names (names=)")
            ds = ClassificationDataset.from_list(data_or_list, names, channels=spec.channels or 3)
        aug = ClassifierAugment.from_spec(spec, ds.classes)
        if batch_size is None:
            batch_size = getattr(cfg, "full_batch", None) or max(1, spec.batch)
        return cls(ds, aug, batch_size, seed=seed, **kw)

    def _truth_shape(self):
        return (self.augment.classes,)


def _spec_of(cfg):
    if isinstance(cfg, NetSpec):
        return cfg
    if hasattr(cfg, "spec"):
        return cfg.spec
    return parse_cfg(cfg)


def _is_data_file(path):
    """A .data file (key = value lines) rather than an image list."""
    path = os.fspath(path)
    if path.lower().endswith(".data"):
        return True
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            for line in f:
                s = line.strip()
                if s and not s.startswith("#"):
                    key = s.split("=", 1)[0].strip()
                    return "=" in s and key in ("classes", "train", "valid", "names", "backup", "labels")
    except OSError:
        pass
    return False
