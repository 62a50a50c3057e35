"""Decoded training images kept in shared memory for the whole run.

Decoding is most of what a data worker does (a 770x512 JPEG takes ~2.4 ms
on one core, two thirds of a mosaic sample, which decodes four), and every
epoch decodes every image again. With a cache the first worker to decode an
image writes it into one shared block, and from then on every worker (the
loader's threads or processes, which attach to the block by name) takes it
from there: the same pixels, decoded once per run.

The block is reserved at the budget's size; the system's shared memory
(/dev/shm) holds only the pages written, so the budget is capped by what
that file system has free (a container's /dev/shm can be small) and by the
memory available. Images are placed in the order they are first decoded
until the budget is spent; the rest are decoded each time as without a
cache. An index in a second block says where each image is (state, height,
width, offset, byte count) and keeps its cv2.mean (the augmentation's
padding colour, computed once); a lock shared by the processes orders every
read and write of it, so a worker that finds an image ready sees all of its
bytes.
"""
import multiprocessing as mp
import os
from multiprocessing import shared_memory

import cv2
import numpy as np

__all__ = ["ImageCache", "CachedImage", "default_budget"]

_EMPTY, _WRITING, _READY = 0, 1, 2
_FIELDS = 5                   # state, height, width, offset, bytes
_NEXT = 0                     # row 0 of the index: the next free offset


def _available_memory():
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0


def _shm_free():
    """Bytes free in the file system that holds POSIX shared memory (None where there is none to ask)."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def default_budget():
    """Half the memory available now, and at most half of what /dev/shm has free."""
    budget = _available_memory() // 2
    free = _shm_free()
    return budget if free is None else min(budget, free // 2)


class CachedImage(np.ndarray):
    """An image from the cache (a read-only view of the shared block) with `channel_mean`, cv2.mean of its
    pixels, computed once when it was kept (the augmentation pads with it)."""

    channel_mean = None


class ImageCache:
    """Decoded images of a dataset of `count` entries, in shared memory of at most `budget` bytes. Picklable:
    a process it is sent to attaches to the same blocks (the loader's worker processes receive it at start)."""

    def __init__(self, count, budget):
        self.count, self.budget = int(count), max(0, int(budget))
        free = _shm_free()
        if free is not None:
            self.budget = min(self.budget, free // 2)
        self._lock = mp.get_context("spawn").Lock()
        self._index_shm = shared_memory.SharedMemory(create=True, size=(self.count + 1) * (_FIELDS + 4) * 8)
        self._data_shm = shared_memory.SharedMemory(create=True, size=max(1, self.budget))
        self._owner = True
        self._attach_views()
        self._index[:] = 0

    def _attach_views(self):
        self._index = np.ndarray((self.count + 1, _FIELDS), np.int64, buffer=self._index_shm.buf)
        self._means = np.ndarray((self.count + 1, 4), np.float64, buffer=self._index_shm.buf,
                                 offset=self._index.nbytes)
        self._data = np.ndarray((self._data_shm.size,), np.uint8, buffer=self._data_shm.buf)

    def __getstate__(self):
        return {"count": self.count, "budget": self.budget, "lock": self._lock,
                "names": (self._index_shm.name, self._data_shm.name)}

    def __setstate__(self, state):
        self.count, self.budget, self._lock = state["count"], state["budget"], state["lock"]
        self._index_shm, self._data_shm = (_attach(name) for name in state["names"])
        self._owner = False
        self._attach_views()

    def get(self, i):
        """Image i as it was decoded (a read-only view of the shared block), or None when it is not there."""
        with self._lock:
            state, h, w, offset, nbytes = (int(v) for v in self._index[i + 1])
            mean = tuple(float(v) for v in self._means[i + 1])
        if state != _READY:
            return None
        shape = (h, w) if nbytes == h * w else (h, w, nbytes // (h * w))
        img = self._data[offset:offset + nbytes].reshape(shape).view(CachedImage)
        img.flags.writeable = False
        img.channel_mean = mean
        return img

    def put(self, i, img):
        """Keeps image i (uint8, [H, W] or [H, W, C]) if the budget has room and no other worker has it."""
        img = np.ascontiguousarray(img)
        nbytes = img.nbytes
        with self._lock:
            row, top = self._index[i + 1], int(self._index[_NEXT, 0])
            if row[0] != _EMPTY or top + nbytes > self.budget:
                return False
            self._index[_NEXT, 0] = top + nbytes
            row[:] = (_WRITING, img.shape[0], img.shape[1], top, nbytes)
        self._data[top:top + nbytes] = img.reshape(-1)
        mean = cv2.mean(img)   # once an image has its place (a full budget costs no mean)
        with self._lock:
            self._means[i + 1] = mean
            self._index[i + 1, 0] = _READY
        return True

    def stats(self):
        """(images kept, bytes used)."""
        with self._lock:
            return int((self._index[1:, 0] == _READY).sum()), int(self._index[_NEXT, 0])

    def close(self):
        """Detaches; the owner (the loader that made it) also removes the blocks. Views handed out stay valid
        until they are dropped."""
        self._index = self._data = self._means = None
        for shm in (self._index_shm, self._data_shm):
            try:
                shm.close()
            except BufferError:   # an image view is still held: the mapping goes with it
                pass
            if self._owner:
                try:
                    shm.unlink()
                except FileNotFoundError:
                    pass
        self._owner = False


def _attach(name):
    # the loader owns the blocks and unlinks them; its workers share its resource tracker (see loader._attach)
    try:
        return shared_memory.SharedMemory(name=name, track=False)
    except TypeError:
        return shared_memory.SharedMemory(name=name)
