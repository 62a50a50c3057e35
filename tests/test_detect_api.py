"""The Python API for batches and streams: detect_batch against one detect
per image, the Detection record, draw_detections, video_frames in both
modes (every frame; latest frame from a live source), and memory that stays
flat over thousands of detect calls."""
import os
import sys
import threading
import time

import cv2
import numpy as np
import pytest

import pydarknet
from conftest import randomize
from pydarknet.detection import _color
from pydarknet.video import VideoSource, is_live_source

CFG = """[net]
width=48
height=32
channels=3
letter_box={letter_box}

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
filters=21
size=1
stride=1
activation=linear

[yolo]
mask=0,1,2
anchors=6,6, 12,12, 24,24
classes=2
num=3
"""


@pytest.fixture
def tiny(write_cfg):
    def make(letter_box=0):
        net = pydarknet.load(write_cfg(CFG.format(letter_box=letter_box)), names=["cat", "dog"])
        randomize(net, seed=3)
        return net
    return make


def _images():
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((60, 90, 3), (32, 48, 3), (120, 40, 3))]


def _rows(detections):
    return sorted((d.class_id, d.confidence, d.x, d.y, d.w, d.h, d.objectness) for d in detections)


@pytest.mark.parametrize("letter_box", [0, 1])
def test_detect_batch_matches_one_detect_per_image(tiny, letter_box):
    net = tiny(letter_box)
    images = _images()
    single = [_rows(net.detect(img, thresh=0.3, nms=0.45)) for img in images]
    batch = [_rows(d) for d in net.detect_batch(images, thresh=0.3, nms=0.45)]
    assert net.batch == len(images)     # one pass over a batch of three
    assert [len(s) for s in single] == [len(b) for b in batch]
    assert sum(len(s) for s in single) > 0
    for s, b in zip(single, batch):
        # the same float32 arithmetic per batch entry: equal up to rounding of the summation order
        assert np.allclose(np.array(s), np.array(b), rtol=1e-5, atol=1e-4)
    if not letter_box:   # stretched: boxes are in each image's own pixels, the centres inside it
        for img, dets in zip(images, net.detect_batch(images, thresh=0.3)):
            assert all(0 <= d.x <= img.shape[1] and 0 <= d.y <= img.shape[0] for d in dets)
    assert net.detect_batch([]) == []


def test_detect_batch_takes_paths_and_reports_unreadable_ones(tiny, tmp_path):
    net = tiny()
    img = _images()[0]
    cv2.imwrite(str(tmp_path / "a.png"), img)
    assert _rows(net.detect_batch([str(tmp_path / "a.png")], thresh=0.3)[0]) == _rows(net.detect(img, thresh=0.3))
    with pytest.raises(pydarknet.DarknetError, match="nope.png"):
        net.detect_batch([img, str(tmp_path / "nope.png")])


def test_detect_refuses_thresholds_outside_0_1_and_names_why_a_path_fails(tiny, tmp_path):
    net = tiny()
    img = _images()[0]
    for kw in ({"thresh": float("nan")}, {"thresh": -0.5}, {"nms": 1.5}, {"thresh": "high"}):
        with pytest.raises(ValueError, match=f"{next(iter(kw))} must be a number from 0 to 1"):
            net.detect(img, **kw)
    assert net.detect(img, thresh=0.0, nms=0.0) is not None       # the ends of the range are fine
    with pytest.raises(pydarknet.DarknetError, match=r"nope\.png: cannot read image: No such file or directory"):
        net.detect(str(tmp_path / "nope.png"))
    with pytest.raises(pydarknet.DarknetError, match="cannot read image: Is a directory"):
        net.detect(tmp_path)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    assert _rows(net.detect(os.fsencode(tmp_path / "a.png"))) == _rows(net.detect(img))   # a bytes path


def test_detection_record():
    d = pydarknet.Detection(class_id=1, confidence=0.8, x=50, y=20, w=40, h=10, objectness=0.9, name="dog")
    assert (d.left, d.top, d.right, d.bottom) == (30, 15, 70, 25)
    assert d.corners == (30, 15, 70, 25)
    assert d.relative(200, 100) == (0.25, 0.2, 0.2, 0.1)
    assert d.label == "dog"
    assert pydarknet.Detection(3, 0.5, 0, 0, 1, 1).label == "3"
    with pytest.raises(Exception):
        d.x = 3   # frozen record


def test_draw_detections_draws_on_a_copy():
    image = np.zeros((60, 80, 3), np.uint8)
    d = pydarknet.Detection(1, 0.9, 40, 40, 20, 20, name="dog")
    out = pydarknet.draw_detections(image, [d], classes=2)
    assert not image.any()              # the input is left alone
    # the box outline (left edge at x=30, rows 30..50) has the class colour
    assert tuple(out[45, 30]) == _color(1, 2)
    assert not out[45, 40].any()        # inside the box stays untouched


# ----------------------------------------------------------------------------- video

def _write_video(path, frames):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), 10 * i, np.uint8))
    writer.release()
    return str(path)


def test_video_frames_reads_every_frame_in_order(tmp_path):
    path = _write_video(tmp_path / "v.avi", 12)
    levels = [float(f.mean()) for f in pydarknet.video_frames(path)]
    assert len(levels) == 12
    assert np.allclose(levels, [10 * i for i in range(12)], atol=2)     # Motion JPEG of flat frames


class FakeCamera:
    """A live source: a new frame every `period` seconds, numbered in its
    first pixel, `count` frames in all; read() blocks until the next one."""

    def __init__(self, count=60, period=0.003):
        self.count, self.period = count, period
        self.produced = 0
        self.released = 0

    def read(self):
        if self.produced >= self.count:
            return False, None
        time.sleep(self.period)
        frame = np.zeros((4, 4, 3), np.uint8)
        frame[0, 0, 0] = self.produced
        self.produced += 1
        return True, frame

    def release(self):
        self.released += 1


def test_latest_frame_mode_keeps_up_with_a_live_source():
    camera = FakeCamera()
    seen = []
    for frame in pydarknet.video_frames(camera, latest=True):
        seen.append((int(frame[0, 0, 0]), camera.produced))
        time.sleep(0.02)                # a model far slower than the camera
    numbers = [n for n, _ in seen]
    assert numbers == sorted(set(numbers))           # never a frame twice, never out of order
    assert len(numbers) < camera.count // 2          # most frames were dropped ...
    for n, produced in seen:
        assert n >= produced - 2                     # ... and each frame taken was the newest (or one being read)
    assert numbers[-1] == camera.count - 1           # the last frame is not lost
    assert camera.released == 1


def test_every_frame_mode_with_a_live_source_and_early_close():
    camera = FakeCamera(count=10, period=0)
    frames = pydarknet.video_frames(camera)
    assert [int(next(frames)[0, 0, 0]) for _ in range(3)] == [0, 1, 2]
    frames.close()                      # leaving the loop early releases the capture
    assert camera.released == 1
    with VideoSource(FakeCamera(count=5, period=0)) as video:
        assert [int(f[0, 0, 0]) for f in video] == [0, 1, 2, 3, 4]
        assert video.frames == 5 and video.dropped == 0


def test_latest_mode_close_stops_the_reader_thread():
    camera = FakeCamera(count=10 ** 6, period=0.001)
    before = threading.active_count()
    frames = pydarknet.video_frames(camera, latest=True)
    next(frames)
    frames.close()
    assert camera.released == 1 and threading.active_count() == before


def test_video_errors_name_the_source(tmp_path):
    with pytest.raises(pydarknet.VideoError, match="nope.avi.*No such file"):
        next(pydarknet.video_frames(str(tmp_path / "nope.avi")))
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"garbage" * 100)
    with pytest.raises(pydarknet.VideoError, match="bad.avi.*cannot open video"):
        next(pydarknet.video_frames(str(bad)))
    # OpenCV itself crashes on camera -1 when there is no camera: refused before it is asked
    for index in (-1, 2**40):
        with pytest.raises(pydarknet.VideoError, match=f"camera {index}: a camera index is a whole number from 0"):
            next(pydarknet.video_frames(index))
    assert is_live_source(0) and is_live_source("2") and is_live_source("rtsp://cam/stream")
    assert not is_live_source("clip.mp4") and not is_live_source("file:///clip.mp4")


# ----------------------------------------------------------------------------- memory

def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_repeated_detect_calls_do_not_leak(tiny):
    net = tiny()
    images = _images()
    net.set_threads(1)

    def work(rounds):
        found = 0
        for i in range(rounds):
            found += len(net.detect(images[i % 3], thresh=0.5))
            if i % 20 == 0:             # switching between batch 1 and batch 3 resizes the network
                found += sum(len(d) for d in net.detect_batch(images, thresh=0.5))
        return found

    assert work(300) > 0                # warm-up: buffers, free lists and allocator arenas reach their size
    # Each call returns ~70 Detection records (~10 kB); keeping a single one per call (~350 bytes)
    # adds ~1 MB over 3000 calls, so a margin of 512 kB catches any leak of ~170 bytes a call or
    # more. Without a leak the growth measured is a page or two of allocator noise. A leak grows in
    # every window of 3000 calls; a one-off (an allocator arena or a collection in the worker
    # process the test shares with others) in one window only: the smaller of two windows counts.
    grown = []
    for _ in range(2):
        before = _rss_bytes()
        work(3000)
        grown.append(_rss_bytes() - before)
    assert min(grown) < 512 << 10, f"resident memory grew by {grown} bytes over two runs of 3000 detect calls"
