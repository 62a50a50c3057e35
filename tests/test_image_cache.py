"""Decoded training images kept in shared memory (pydarknet.data.cache and the
loaders' cache_images): the same pixels and batches as decoding every time,
each image decoded once, shared with spawned worker processes, a budget
that is kept, bad images still reported, the blocks removed at the end, and
the training commands' --cache-images."""
import multiprocessing as mp
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from pydarknet.data import DetectionAugment, DetectionDataset, DetectionLoader, ImageCache
from pydarknet.data import lists
from pydarknet.data.shapes import write_shapes_dataset
from helpers import child_env

PHOTO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "dog.jpg")


def _child(cache, queue):
    """In a spawned process: reads image 0, writes image 1, reports."""
    img = cache.get(0)
    queue.put(None if img is None else (img.shape, int(img.astype(np.int64).sum())))
    cache.put(1, np.full((5, 7), 9, np.uint8))
    cache.close()


def test_put_and_get_keep_the_pixels_read_only():
    photo = cv2.imread(PHOTO)
    grey = cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)
    cache = ImageCache(3, photo.nbytes + grey.nbytes)
    try:
        assert cache.get(0) is None
        assert cache.put(0, photo) and cache.put(2, grey)
        assert not cache.put(0, grey)                   # the first keeps its place
        a, b = cache.get(0), cache.get(2)
        assert np.array_equal(a, photo) and a.shape == photo.shape and a.dtype == np.uint8
        assert np.array_equal(b, grey) and b.shape == grey.shape
        assert a.channel_mean == cv2.mean(photo) and b.channel_mean == cv2.mean(grey)   # the padding colour
        with pytest.raises(ValueError):
            a[0, 0, 0] = 1                              # augmentations make new images; nothing writes here
        assert not cache.put(1, photo[:2])              # the budget is spent
        assert cache.get(1) is None
        assert cache.stats() == (2, photo.nbytes + grey.nbytes)
    finally:
        cache.close()


def test_a_spawned_process_shares_the_cache():
    photo = cv2.imread(PHOTO)
    cache = ImageCache(2, 1 << 22)
    try:
        cache.put(0, photo)
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        p = ctx.Process(target=_child, args=(cache, queue))
        p.start()
        got = queue.get(timeout=60)
        p.join(60)
        assert p.exitcode == 0
        assert got == (photo.shape, int(photo.astype(np.int64).sum()))
        assert np.array_equal(cache.get(1), np.full((5, 7), 9, np.uint8))   # what the child kept
    finally:
        cache.close()


def test_close_removes_the_shared_blocks():
    cache = ImageCache(2, 1000)
    names = [cache._index_shm.name, cache._data_shm.name]
    assert all(os.path.exists(f"/dev/shm/{n}") for n in names)
    cache.close()
    assert not any(os.path.exists(f"/dev/shm/{n}") for n in names)


@pytest.fixture
def shapes(tmp_path):
    data = write_shapes_dataset(tmp_path, count=10, width=96, height=80, seed=2)
    return os.path.join(os.path.dirname(data), "train.txt")


def _batches(lst, backend, workers, cache, count=6):
    aug = DetectionAugment(width=64, height=64, classes=3, jitter=0.3, flip=1, hue=0.1, saturation=1.5,
                           exposure=1.5, mosaic=1)
    ds = DetectionDataset.from_list(lst, 3)
    with DetectionLoader(ds, aug, 4, seed=3, workers=workers, backend=backend, cache_images=cache) as loader:
        it = loader.iterate(copy=True)
        out = [next(it) for _ in range(count)]
        stats = None if loader.image_cache is None else loader.image_cache.stats()
        name = None if loader.image_cache is None else loader.image_cache._data_shm.name
    assert ds.image_cache is None   # the loader's close took it off the dataset
    return out, stats, name


@pytest.mark.parametrize("backend,workers", [("thread", 0), ("thread", 2), ("process", 2)])
def test_batches_with_the_cache_are_the_batches_without(shapes, backend, workers):
    plain, _, _ = _batches(shapes, backend, workers, None)
    cached, (kept, used), name = _batches(shapes, backend, workers, True)
    for (x1, t1), (x2, t2) in zip(plain, cached):
        assert np.array_equal(x1, x2) and np.array_equal(t1, t2)
    assert kept == 10 and used == 10 * 80 * 96 * 3   # 6 batches of 4 mosaics drew every image
    assert not os.path.exists(f"/dev/shm/{name}")


def test_each_image_is_decoded_once(shapes, monkeypatch):
    decoded = []
    real = lists.read_image

    def counting(path, channels=3):
        decoded.append(path)
        return real(path, channels)

    monkeypatch.setattr(lists, "read_image", counting)
    _batches(shapes, "thread", 0, True, count=8)
    assert len(decoded) == len(set(decoded)) == 10
    decoded.clear()
    _batches(shapes, "thread", 0, None, count=8)
    assert len(decoded) > 60   # 8 batches of 4 mosaics of 4 images


def test_a_classifier_loader_too(tmp_path):
    from pydarknet.data import ClassificationDataset, ClassifierAugment, ClassifierLoader
    from pydarknet.data.shapes import make_shapes_classification

    data = make_shapes_classification(tmp_path / "set", train=12, valid=3, size=40, seed=3)
    aug = ClassifierAugment(width=32, height=32, classes=3, min_crop=32, max_crop=48, angle=10, hue=0.1,
                            saturation=1.5, exposure=1.5)
    got = {}
    for cache in (None, True):
        ds = ClassificationDataset.from_data(data)
        with ClassifierLoader(ds, aug, 6, seed=0, workers=2, cache_images=cache) as loader:
            got[cache] = [loader.batch(k) for k in range(6)]
            if cache:
                assert 6 < loader.image_cache.stats()[0] <= 12   # most were drawn, and kept
    for (x1, y1), (x2, y2) in zip(got[None], got[True]):
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)


def test_a_small_budget_keeps_what_fits_and_decodes_the_rest(shapes):
    plain, _, _ = _batches(shapes, "thread", 2, None)
    cached, (kept, used), _ = _batches(shapes, "thread", 2, 3 * 80 * 96 * 3 + 100)
    assert kept == 3 and used == 3 * 80 * 96 * 3
    for (x1, t1), (x2, t2) in zip(plain, cached):
        assert np.array_equal(x1, x2) and np.array_equal(t1, t2)


def test_a_corrupt_image_is_still_reported_once(tmp_path):
    write_shapes_dataset(tmp_path, count=4, width=64, height=64, seed=1)
    (tmp_path / "obj" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    lst = tmp_path / "train.txt"
    lst.write_text(lst.read_text() + "obj/broken.jpg\n")
    aug = DetectionAugment(width=64, height=64, classes=3, mosaic=1)
    ds = DetectionDataset.from_list(str(lst), 3)
    with DetectionLoader(ds, aug, 4, seed=0, workers=0, cache_images=True) as loader:
        for _ in range(6):
            loader.batch(_)
        assert loader.image_cache.stats()[0] == 4
    assert loader.summary.counts["corrupt_image"] == 1


def test_the_training_commands_take_cache_images(tmp_path):
    data = write_shapes_dataset(tmp_path, count=8, width=64, height=64, seed=1)
    cfg = tmp_path / "net.cfg"
    cfg.write_text("[net]\nwidth=32\nheight=32\nchannels=3\nbatch=4\nsubdivisions=1\nlearning_rate=0.001\n"
                   "max_batches=2\n[convolutional]\nfilters=24\nsize=1\nstride=1\nactivation=linear\n"
                   "[yolo]\nmask=0,1,2\nanchors=4,4, 8,8, 12,12\nclasses=3\nnum=3\n")
    run = lambda *more: subprocess.run([sys.executable, "-m", "pydarknet", "detector", "train", data, str(cfg),
                                        "-dont_show", "--backup", str(tmp_path / "bk"), "--workers", "0", *more],
                                       capture_output=True, text=True, env=child_env(), timeout=120,
                                       cwd=tmp_path)   # not the checkout: -m would import its source tree
    r = run("--cache-images")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "keeping the decoded training images in shared memory" in r.stderr
    r = run("--cache-images", "0.001")
    assert r.returncode == 0 and "up to 0.00 GB" in r.stderr, r.stderr[-2000:]
    r = run("--cache-images", "-2")
    assert r.returncode == 2 and "expected a positive number of gigabytes, got '-2'" in r.stderr


def _train_cli(tmp_path, cfg_text, *more, count=8):
    data = write_shapes_dataset(tmp_path, count=count, width=64, height=64, seed=1)
    cfg = tmp_path / "net.cfg"
    cfg.write_text(cfg_text)
    return subprocess.run([sys.executable, "-m", "pydarknet", "detector", "train", data, str(cfg), "-dont_show",
                           "--backup", str(tmp_path / "bk"), *more], capture_output=True, text=True,
                          env=child_env(), timeout=300, cwd=tmp_path)


HEAD = "[convolutional]\nfilters=24\nsize=1\nstride=1\nactivation=linear\n[yolo]\nmask=0,1,2\nanchors=4,4, 8,8, 12,12\n" \
       "classes=3\nnum=3\n"


def test_a_loader_that_limits_training_is_named_once(tmp_path):
    """A tiny network whose batches (mosaics, made in the training thread: --workers 0) take longer than its
    steps: one note saying so and what would help."""
    r = _train_cli(tmp_path, "[net]\nwidth=32\nheight=32\nchannels=3\nbatch=4\nsubdivisions=1\nlearning_rate=0.001\n"
                   "max_batches=30\nmosaic=1\n" + HEAD, "--workers", "0")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.count("the data loader limits training") == 1, r.stderr[-3000:]
    assert "--cache-images (each image decoded once" in r.stderr and "more --workers (now 0)" in r.stderr


def test_no_note_when_training_is_the_slow_part(tmp_path):
    conv = "[convolutional]\nbatch_normalize=1\nfilters=64\nsize=3\nstride=1\npad=1\nactivation=leaky\n"
    r = _train_cli(tmp_path, "[net]\nwidth=64\nheight=64\nchannels=3\nbatch=8\nsubdivisions=1\nlearning_rate=0.001\n"
                   "max_batches=27\n" + conv * 3 + HEAD, "--workers", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "the data loader limits training" not in r.stderr
