"""Dataset files as darknet finds them (lists, label paths, label lines, odd
inputs), and the loader: determinism, random access, resumption, errors,
shutdown, multi-scale sizes."""
import logging
import multiprocessing
import os
import threading

import cv2
import numpy as np
import pytest

from pydarknet.data import (ClassificationDataset, ClassifierAugment, ClassifierLoader, DataError, DataSummary,
                            DetectionAugment, DetectionDataset, DetectionLoader, MultiScale, label_path,
                            label_paths, max_network_size, next_network_size, read_image_list, read_labels)
from pydarknet.data.shapes import write_shapes_dataset
from pydarknet.datafiles import DataFileError, load_data_file, resolve_path


# ----------------------------------------------------------------------------- label paths

@pytest.mark.parametrize("image, label", [
    ("data/obj/img1.jpg", "data/obj/img1.txt"),
    ("/coco/images/train2017/000001.jpg", "/coco/labels/train2017/000001.txt"),
    ("/coco/images/val2014/x.jpg", "/coco/labels/val2014/x.txt"),
    ("VOC2007/JPEGImages/000005.JPG", "VOC2007/labels/000005.txt"),
    ("C:\\coco\\images\\train2017\\a.png", "C:\\coco\\labels\\train2017\\a.txt"),
    ("pics/a.PNG", "pics/a.txt"),
    ("pics/a.jpeg", "pics/a.txt"),
    ("pics/a.JPEG", "pics/a.txt"),
    ("pics/a.bmp", "pics/a.txt"),
    ("pics/a.tiff", "pics/a.txt"),
    ("pics/a.Jpg", "pics/a.txt"),
    ("pics/a.jpg.png", "pics/a.jpg.txt"),       # only the extension at the end
    ("pics/jpg_dir/a.jpg", "pics/jpg_dir/a.txt"),
])
def test_label_path_as_darknet(image, label):
    assert label_path(image) == label


def test_label_paths_fall_back_to_images_and_raw_folders():
    assert label_paths("ds/images/train/a.jpg") == ["ds/images/train/a.txt", "ds/labels/train/a.txt"]
    assert label_paths("raw/a.png") == ["raw/a.txt", "labels/a.txt"]
    assert label_paths("data/obj/a.jpg") == ["data/obj/a.txt"]
    # darknet's own rule comes first: COCO's folders map once
    assert label_paths("/c/images/train2017/a.jpg")[0] == "/c/labels/train2017/a.txt"


def test_dataset_finds_labels_in_either_layout(tmp_path):
    img = np.zeros((20, 20, 3), np.uint8)
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "images" / "train" / "a.jpg"), img)
    (tmp_path / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    cv2.imwrite(str(tmp_path / "images" / "train" / "b.jpg"), img)
    (tmp_path / "images" / "train" / "b.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    lst = tmp_path / "train.txt"
    lst.write_text("images/train/a.jpg\nimages/train/b.jpg\n")
    ds = DetectionDataset.from_list(lst, classes=2)
    assert ds.labels(0)[0][:, 0].tolist() == [0]
    assert ds.labels(1)[0][:, 0].tolist() == [1]


# ----------------------------------------------------------------------------- lists

def test_image_list_tolerates_crlf_spaces_blank_lines_comments_and_bom(tmp_path, monkeypatch):
    for name in ("a.jpg", "b c.jpg", "d.png"):
        (tmp_path / name).write_bytes(b"x")
    lst = tmp_path / "list.txt"
    lst.write_bytes(b"\xef\xbb\xbfa.jpg\r\n\r\n   b c.jpg  \t\r\n# a comment\n\n" + str(tmp_path / "d.png").encode()
                    + b"\r\n   \n")
    monkeypatch.chdir("/")
    got = read_image_list(lst)
    assert got == [str(tmp_path / "a.jpg"), str(tmp_path / "b c.jpg"), str(tmp_path / "d.png")]


def test_image_list_resolves_list_folder_first_then_working_folder(tmp_path, monkeypatch):
    work, lists = tmp_path / "work", tmp_path / "work" / "lists"
    (lists / "img").mkdir(parents=True)
    (work / "img").mkdir()
    (lists / "img" / "both.jpg").write_bytes(b"x")
    (work / "img" / "both.jpg").write_bytes(b"x")
    (work / "img" / "cwd_only.jpg").write_bytes(b"x")
    (lists / "train.txt").write_text("img/both.jpg\nimg/cwd_only.jpg\nimg/nowhere.jpg\n")
    monkeypatch.chdir(work)
    summary = DataSummary()
    got = read_image_list("lists/train.txt", summary)
    assert got == [os.path.join("lists", "img", "both.jpg"), "img/cwd_only.jpg"]
    assert summary["missing_image"] == 1
    assert "lists/train.txt:3" in summary.examples["missing_image"][0]


def test_data_file_paths_resolve_data_folder_first(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "cfg").mkdir(parents=True)
    (work / "cfg" / "obj.names").write_text("a\nb\n")
    (work / "obj.names").write_text("x\n")
    (work / "train.txt").write_text("")
    (work / "cfg" / "obj.data").write_text("classes= 2\r\ntrain  = train.txt\r\nnames = obj.names\r\n"
                                           "# comment\r\nbackup = backup/\r\n")
    monkeypatch.chdir(work)
    df = load_data_file("cfg/obj.data")
    assert df.classes == 2
    assert df.names_path == os.path.join("cfg", "obj.names") and df.names() == ["a", "b"]
    assert df.train == "train.txt"                       # only in the working folder
    assert df.valid == df.train                          # darknet: valid falls back to train
    assert df.backup == "backup/"
    assert resolve_path("/abs/x", "cfg/obj.data") == "/abs/x"
    (work / "cfg" / "bad.data").write_text("classes = many\n")
    with pytest.raises(DataFileError, match="bad.data.*classes"):
        load_data_file("cfg/bad.data").classes


# ----------------------------------------------------------------------------- labels

def test_label_lines_odd_inputs(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes(b"0 0.5 0.5 0.2 0.2\r\n"          # 1 fine (CRLF)
                  b"   1 0.25 0.25 0.1 0.1   \r\n"   # 2 fine (spaces)
                  b"\r\n"                           # 3 blank
                  b"2 0.5 0.5 0.2\n"                # 4 malformed: 4 values
                  b"cat 0.5 0.5 0.2 0.2\n"          # 5 malformed: class not a number
                  b"1 0.5 nan 0.2 0.2\n"            # 6 malformed: NaN
                  b"7 0.5 0.5 0.2 0.2\n"            # 7 class >= classes
                  b"-1 0.5 0.5 0.2 0.2\n"           # 8 negative class
                  b"1 0.5 0.5 0 0.2\n"              # 9 zero width
                  b"1 1.5 0.5 0.2 0.2\n"            # 10 entirely outside
                  b"1 0 0 0.2 0.2\n"                # 11 centred at 0,0 (darknet rejects)
                  b"1 0.95 0.5 0.2 0.2\n"           # 12 partly outside: clipped
                  b"2.0 0.5 0.5 0.1 0.1\n"          # 13 class written as 2.0: accepted
                  b"# comment\n")
    boxes, issues = read_labels(p, classes=3)
    kinds = [(i.kind, i.line) for i in issues]
    assert kinds == [("malformed_line", 4), ("malformed_line", 5), ("malformed_line", 6), ("bad_class", 7),
                     ("bad_class", 8), ("zero_size_box", 9), ("box_outside", 10), ("box_outside", 11),
                     ("clipped_box", 12)]
    assert boxes[:, 0].tolist() == [0, 1, 1, 2]
    np.testing.assert_allclose(boxes[2, 1:], [0.925, 0.5, 0.15, 0.2], atol=1e-6)


def test_missing_label_file_means_no_objects(tmp_path):
    boxes, issues = read_labels(tmp_path / "none.txt", 3)
    assert boxes.shape == (0, 5) and [i.kind for i in issues] == ["missing_label"]


def _dataset_with_problems(tmp_path):
    img = np.full((40, 40, 3), 90, np.uint8)
    for name in ("ok", "nolabel", "badlines"):
        cv2.imwrite(str(tmp_path / f"{name}.jpg"), img)
    (tmp_path / "ok.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "badlines.txt").write_text("0 0.5 0.5 0.5\n5 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.4 0.4\n")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    lst = tmp_path / "train.txt"
    lst.write_text("ok.jpg\nnolabel.jpg\nbadlines.jpg\ncorrupt.jpg\nmissing.jpg\n")
    return lst


def test_loader_counts_each_problem_once_and_goes_on(tmp_path, caplog):
    lst = _dataset_with_problems(tmp_path)
    ds = DetectionDataset.from_list(lst, classes=2)
    assert len(ds) == 4 and ds.summary["missing_image"] == 1
    aug = DetectionAugment(width=32, height=32, classes=2, jitter=0.1)
    with caplog.at_level(logging.WARNING, logger="pydarknet"):
        with DetectionLoader(ds, aug, batch_size=8, seed=0, workers=2) as loader:
            for _ in range(2):
                for k in range(4):
                    x, t = loader.batch(k)
                    assert x.shape == (8, 3, 32, 32) and np.isfinite(x).all()
    s = loader.summary
    assert s["missing_image"] == 1 and s["corrupt_image"] == 1 and s["missing_label"] == 1
    assert s["malformed_line"] == 1 and s["bad_class"] == 1
    corrupt = [r for r in caplog.records if "corrupt.jpg" in r.getMessage()]
    assert len(corrupt) == 1                                # warned once however often drawn
    assert "badlines.txt:2" in " ".join(r.getMessage() for r in caplog.records)
    assert "corrupt_image" in s.report()


def test_unreadable_dataset_is_an_error_naming_the_list(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    lst = tmp_path / "train.txt"
    lst.write_text("bad.jpg\n")
    ds = DetectionDataset.from_list(lst, classes=1)
    with DetectionLoader(ds, DetectionAugment(width=32, height=32, classes=1), 2, workers=1) as loader:
        with pytest.raises(DataError, match="train.txt.*could not be used"):
            loader.batch(0)
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(DataError, match="empty.txt"):
        DetectionDataset.from_list(tmp_path / "empty.txt", classes=1)
    with pytest.raises(DataFileError, match="nolist.txt"):
        DetectionDataset.from_list(tmp_path / "nolist.txt", classes=1)


# ----------------------------------------------------------------------------- loader

@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), count=12, width=96, height=72, seed=3)


def _aug(**kw):
    base = dict(width=64, height=64, classes=3, max_boxes=10, jitter=0.3, resize=1.5, hue=0.1, saturation=1.5,
                exposure=1.5, mosaic=1, blur=1, gaussian_noise=5)
    base.update(kw)
    return DetectionAugment(**base)


def test_loader_is_deterministic_and_random_access(shapes):
    ds = DetectionDataset.from_data(shapes)
    with DetectionLoader(ds, _aug(), 4, seed=7, workers=2, prefetch=2) as a:
        it = [b for _, b in zip(range(5), a)]
        b3 = a.batch(3)
        resumed = next(iter(a.iterate(start=3)))
    with DetectionLoader(ds, _aug(), 4, seed=7, workers=0) as sync:
        s = [sync.batch(k) for k in range(5)]
    with DetectionLoader(ds, _aug(), 4, seed=8, workers=1) as other:
        o = other.batch(0)
    for (x1, t1), (x2, t2) in zip(it, s):
        assert np.array_equal(x1, x2) and np.array_equal(t1, t2)
    assert np.array_equal(b3[0], it[3][0]) and np.array_equal(b3[1], it[3][1])
    assert np.array_equal(resumed[0], it[3][0])
    assert not np.array_equal(o[0], it[0][0])
    assert it[0][1].shape == (4, 10, 5) and (it[0][1][:, :, 2] > 0).any()


def test_loader_shuffle_order_visits_every_image_each_epoch(shapes):
    ds = DetectionDataset.from_data(shapes)
    aug = _aug(mosaic=0, jitter=0.0, hue=0, saturation=1, exposure=1, blur=0, gaussian_noise=0, flip=0)
    seen = []

    class Spy(DetectionDataset):
        def load(self, index):
            seen.append(index)
            return super().load(index)

    spy = Spy(ds.images, ds.classes)
    with DetectionLoader(spy, aug, 4, seed=1, workers=0, order="shuffle") as loader:
        for k in range(3):
            loader.batch(k)
    assert sorted(seen) == list(range(12))


def test_worker_errors_surface_with_the_path(shapes):
    class Broken(DetectionDataset):
        def load(self, index):
            if index == 2:
                raise RuntimeError("simulated decoder crash")
            return super().load(index)

    ds = DetectionDataset.from_data(shapes)
    broken = Broken(ds.images, ds.classes)
    with DetectionLoader(broken, _aug(mosaic=0), 12, seed=0, workers=2, order="shuffle") as loader:
        with pytest.raises(DataError, match=r"shape_0002\.jpg: RuntimeError: simulated decoder crash"):
            loader.batch(0)


def _data_threads():
    return [t for t in threading.enumerate() if t.name.startswith("pydarknet-data")]


def test_clean_shutdown_mid_iteration(shapes):
    ds = DetectionDataset.from_data(shapes)
    loader = DetectionLoader(ds, _aug(), 4, seed=0, workers=2, prefetch=3)
    it = iter(loader)
    next(it)
    assert _data_threads()
    loader.close()
    it.close()
    assert not _data_threads()
    with pytest.raises(RuntimeError, match="closed"):
        loader.batch(0)
    loader.close()   # twice is fine


def test_process_workers_match_threads_and_shut_down(shapes):
    ds = DetectionDataset.from_data(shapes)
    with DetectionLoader(ds, _aug(), 3, seed=5, workers=1, backend="process") as p:
        xp, tp = p.batch(2)
    assert not multiprocessing.active_children()
    with DetectionLoader(ds, _aug(), 3, seed=5, workers=0) as t:
        xt, tt = t.batch(2)
    assert np.array_equal(xp, xt) and np.array_equal(tp, tt)


def test_process_workers_shared_slots_reused_across_sizes(shapes, write_cfg):
    """The process backend's shared-memory ring: many batches (every slot reused),
    multi-scale sizes (slots grown), batches handed out as the caller's own arrays,
    all equal to what the threads make; and nothing left in /dev/shm afterwards."""
    cfg = write_cfg("[net]\nbatch=3\nwidth=64\nheight=64\nchannels=3\nmosaic=1\n"
                    "[convolutional]\nfilters=24\nsize=1\nactivation=linear\n"
                    "[yolo]\nmask=0,1,2\nanchors=10,14, 23,27, 37,58\nclasses=3\nnum=3\nrandom=1\n")
    with DetectionLoader.from_files(shapes, cfg, seed=3, workers=2, backend="process", prefetch=2) as p:
        got = [(x, t) for x, t in p.iterate(0, 40)]
        sizes = {x.shape[2:] for x, _ in got}
        again = p.batch(5)
        slots = [shm.name.lstrip("/") for shm in p._slots._slots if shm is not None]
    assert slots
    with DetectionLoader.from_files(shapes, cfg, seed=3, workers=0) as t:
        want = [t.batch(k) for k in range(40)]
    assert len(sizes) > 1
    for (xp, tp), (xt, tt) in zip(got, want):
        assert np.array_equal(xp, xt) and np.array_equal(tp, tt)
    assert np.array_equal(again[0], want[5][0])
    assert not multiprocessing.active_children()
    if os.path.isdir("/dev/shm"):   # the slots are gone
        assert not set(slots) & set(os.listdir("/dev/shm"))


def test_process_workers_leave_the_resource_tracker_quiet(shapes, write_cfg):
    """The shared slots are the loader's: a worker attaching one must not unregister it from the resource tracker
    it shares with the loader (the loader's own unregister then made the tracker print a KeyError traceback for
    every slot). Run in a fresh interpreter, whose tracker prints to the captured stderr."""
    import subprocess
    import sys
    cfg = write_cfg("[net]\nbatch=4\nwidth=64\nheight=64\nchannels=3\nmosaic=1\n"
                    "[convolutional]\nfilters=24\nsize=1\nactivation=linear\n"
                    "[yolo]\nmask=0,1,2\nanchors=10,14, 23,27, 37,58\nclasses=3\nnum=3\n")
    code = ("import sys\nfrom pydarknet.data import DetectionLoader\n"
            "with DetectionLoader.from_files(sys.argv[1], sys.argv[2], seed=1, workers=2, backend='process') as p:\n"
            "    n = sum(1 for _ in p.iterate(0, 6))\n"
            "print('batches', n)\n")
    from helpers import child_env

    env = child_env()   # the pydarknet this process imports, not a source tree in the working folder
    r = subprocess.run([sys.executable, "-c", code, str(shapes), str(cfg)], capture_output=True, text=True,
                       timeout=240, cwd=str(cfg.parent), env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["batches", "6"]
    assert "Traceback" not in r.stderr and "KeyError" not in r.stderr, r.stderr
    assert "leaked shared_memory" not in r.stderr, r.stderr


def test_process_batches_without_copy_stay_valid_until_the_batch_after_next(shapes, write_cfg):
    """iterate(copy=False) hands out views of the workers' shared memory (no copy in this process): each batch,
    checked when the next one is taken and again when the one after it is, equals what the threads make; a batch
    of 7 rows over 3 workers goes in tasks of several rows, every row written once."""
    cfg = write_cfg("[net]\nbatch=7\nwidth=64\nheight=64\nchannels=3\nmosaic=1\n"
                    "[convolutional]\nfilters=24\nsize=1\nactivation=linear\n"
                    "[yolo]\nmask=0,1,2\nanchors=10,14, 23,27, 37,58\nclasses=3\nnum=3\nrandom=1\n")
    with DetectionLoader.from_files(shapes, cfg, seed=4, workers=0) as t:
        want = [t.batch(k) for k in range(12)]
    with DetectionLoader.from_files(shapes, cfg, seed=4, workers=3, backend="process", prefetch=2) as p:
        held = []
        for k, (x, t) in enumerate(p.iterate(0, 12, copy=False)):
            assert not x.flags.owndata   # a view of the shared slot
            held.append((k, x, t))
            for j, xj, tj in held[-3:]:   # this batch, the one before, the one before that
                assert np.array_equal(xj, want[j][0]) and np.array_equal(tj, want[j][1]), (k, j)
    assert not multiprocessing.active_children()


@pytest.mark.parametrize("workers,backend", [(0, "thread"), (2, "thread"), (2, "process")])
def test_rows_are_that_part_of_the_whole_batch(shapes, workers, backend):
    """rows=(a, b): one rank's share of every global batch, the very samples of those rows."""
    ds = DetectionDataset.from_data(shapes)
    with DetectionLoader(ds, _aug(), 4, seed=7, workers=0) as whole:
        want = [whole.batch(k) for k in range(3)]
    for first, stop in ((0, 2), (2, 4)):
        with DetectionLoader(ds, _aug(), 4, seed=7, workers=workers, backend=backend, rows=(first, stop)) as part:
            for k, (x, t) in enumerate(part.iterate(0, 3)):
                assert x.shape[0] == t.shape[0] == 2
                assert np.array_equal(x, want[k][0][first:stop]) and np.array_equal(t, want[k][1][first:stop])
    with pytest.raises(ValueError, match="rows"):
        DetectionLoader(ds, _aug(), 4, rows=(3, 6))


def test_from_files_reads_cfg_options(shapes, write_cfg):
    cfg = write_cfg("[net]\nbatch=4\nwidth=64\nheight=96\nchannels=3\nmosaic=1\nhue=.1\nflip=0\n"
                    "[convolutional]\nfilters=24\nsize=1\nactivation=linear\n"
                    "[yolo]\nmask=0,1,2\nanchors=10,14, 23,27, 37,58\nclasses=3\nnum=3\njitter=.25\nmax=30\n"
                    "random=1\nresize=1.5\n")
    with DetectionLoader.from_files(shapes, cfg, seed=2, workers=1) as loader:
        a = loader.augment
        assert (a.width, a.height, a.mosaic, a.hue, a.flip, a.jitter, a.max_boxes, a.resize, a.classes) == \
               (64, 96, 1, 0.1, 0, 0.25, 30, 1.5, 3)
        sizes = {loader.size(k) for k in range(0, 200, 10)}
        assert len(sizes) > 2 and all(w % 32 == 0 and h % 32 == 0 for w, h in sizes)
        x, t = loader.batch(25)
        assert x.shape[0] == 4 and x.shape[2:] == loader.size(25)[::-1] and t.shape == (4, 30, 5)


# ----------------------------------------------------------------------------- multi-scale

def test_next_network_size_follows_darknet():
    rng = np.random.default_rng(0)
    sizes = {next_network_size(rng, 416, 416) for _ in range(400)}
    assert max_network_size(416, 416) == (608, 608)            # round(1.4 * 13 + 1) * 32
    assert min(s[0] for s in sizes) == 320 and max(s[0] for s in sizes) == 608
    assert all(w == h and w % 32 == 0 for w, h in sizes)
    assert next_network_size(rng, 416, 416, max_size=True) == (608, 608)
    assert next_network_size(rng, 32, 32, random_factor=8) [0] >= 32
    ms = MultiScale(416, 416, random=1, seed=3, max_batches=1000)
    assert ms(0) == ms(9) == (608, 608) and ms(995) == (608, 608)
    assert ms(10) == ms(19) and len({ms(k) for k in range(10, 900, 10)}) > 3


# ----------------------------------------------------------------------------- classifier

def test_classifier_dataset_and_loader(tmp_path):
    names = ["cat", "dog"]
    for i, cls in enumerate(["cat", "dog", "cat", "dog"]):
        img = np.full((40, 50, 3), 60 * i, np.uint8)
        cv2.imwrite(str(tmp_path / f"{i}_{cls}.png"), img)
    cv2.imwrite(str(tmp_path / "4_bird.png"), np.zeros((10, 10, 3), np.uint8))
    (tmp_path / "train.list").write_text("\n".join(f"{i}_{c}.png" for i, c in
                                                   enumerate(["cat", "dog", "cat", "dog", "bird"])))
    ds = ClassificationDataset.from_list(tmp_path / "train.list", names)
    aug = ClassifierAugment(width=32, height=32, classes=2, min_crop=32, max_crop=48, angle=10, hue=0.1,
                            saturation=1.5, exposure=1.5)
    with ClassifierLoader(ds, aug, 6, seed=0, workers=2) as loader:
        x, y = loader.batch(0)
        x2, y2 = loader.batch(0)
    assert x.shape == (6, 3, 32, 32) and y.shape == (6, 2)
    assert np.array_equal(x, x2) and (y.sum(1) == 1).all()
    assert loader.summary["class_match"] == 1              # bird names no class; left out


def test_warnings_are_capped_but_everything_is_counted(caplog):
    s = DataSummary()
    with caplog.at_level(logging.WARNING, logger="pydarknet"):
        for line in range(1, 11):
            s.record(("malformed_line", "a.txt", line, "bad"))
        s.record(("malformed_line", "a.txt", 1, "bad"))          # the same problem again
    assert s["malformed_line"] == 10
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs[:3] == ["a.txt:1: bad", "a.txt:2: bad", "a.txt:3: bad"]
    assert len(msgs) == 4 and "not shown" in msgs[3]
