"""Watching from a browser (pydarknet/watch.py): detector demo's -mjpeg_port and -json_port on loopback (the
frames decoded by OpenCV, the JSON records equal to -json_file_output's, two clients at once, a client that
stops reading), a busy port, and a training's -mjpeg_port: the live page, its log, sample and chart, and the
page rendered by a headless Chromium where one is installed."""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import cv2
import numpy as np
import pytest

import pydarknet
from pydarknet.data.shapes import write_shapes_dataset
from pydarknet.weights import save_weights
from helpers import child_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    return child_env()


def _wait_port(port, proc, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError("the command ended before its port opened: " + proc.stderr.read().decode()[-2000:])
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"port {port} never opened")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A shapes data set, a small detector at 64x64 with seeded weights, and a 160x120 video of 500 frames."""
    folder = tmp_path_factory.mktemp("watch")
    write_shapes_dataset(folder, count=8, width=64, height=64)
    text = open(os.path.join(ROOT, "cfg", "shapes.cfg")).read()
    text = re.sub(r"(?m)^(width|height)=\d+", lambda m: f"{m.group(1)}=64", text)
    (folder / "d.cfg").write_text(text)
    save_weights(pydarknet.load(str(folder / "d.cfg"), seed=1), str(folder / "d.weights"))
    writer = cv2.VideoWriter(str(folder / "in.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (160, 120))
    for i in range(500):
        frame = np.full((120, 160, 3), 70, np.uint8)
        cv2.circle(frame, (20 + i % 120, 60), 15, (0, 220, 0), -1)
        writer.write(frame)
    writer.release()
    return folder


def _demo(work, *flags):
    return subprocess.Popen([sys.executable, "-m", "pydarknet", "detector", "demo", "shapes.data", "d.cfg", "d.weights",
                             "in.avi", "-dont_show", "-thresh", "0.01", *flags], cwd=work, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _mjpeg_frames(port, count, out):
    cap = cv2.VideoCapture(f"http://127.0.0.1:{port}/")
    for _ in range(count):
        ok, frame = cap.read()
        out.append(frame.shape if ok else None)
    cap.release()


def _next_jpeg(stream):
    """The next part of a multipart/x-mixed-replace stream, decoded by OpenCV."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = stream.read(1)
        assert byte, "the stream ended"
        head += byte
    assert head.lstrip(b"\r\n").startswith(b"--mjpegstream\r\nContent-Type: image/jpeg\r\n"), head
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    image = cv2.imdecode(np.frombuffer(stream.read(length), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def _json_records(port, count):
    """The first `count` records of darknet's JSON stream: '[', then records separated by ','."""
    stream = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30)
    decoder, text, records = json.JSONDecoder(), "", []
    assert stream.read(2) == b"[\n"
    while len(records) < count:
        chunk = stream.read1(65536).decode("utf-8")
        assert chunk, "the stream ended early"
        text += chunk
        while True:
            text = text.lstrip(", \n")
            try:
                rec, end = decoder.raw_decode(text)
            except ValueError:
                break
            records.append(rec)
            text = text[end:]
    stream.close()
    return records[:count]


def test_demo_streams_frames_and_records_to_several_clients_and_a_stalled_one(work):
    mjpeg, jport = _free_port(), _free_port()
    started = time.monotonic()
    proc = _demo(work, "-mjpeg_port", str(mjpeg), "-json_port", str(jport), "-json_file_output", "frames.json")
    _wait_port(mjpeg, proc)
    _wait_port(jport, proc)
    stalled = socket.create_connection(("127.0.0.1", mjpeg))   # asks, then never reads
    stalled.sendall(b"GET / HTTP/1.0\r\n\r\n")
    a, b = [], []
    readers = [threading.Thread(target=_mjpeg_frames, args=(mjpeg, 8, got)) for got in (a, b)]
    for t in readers:
        t.start()
    records = _json_records(jport, 8)
    for t in readers:
        t.join(60)
    _, err = proc.communicate(timeout=120)
    stalled.close()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert time.monotonic() - started < 90
    assert a == [(120, 160, 3)] * 8 and b == [(120, 160, 3)] * 8   # two clients at once, frames decoded
    with open(work / "frames.json") as f:
        written = {rec["frame_id"]: rec for rec in json.load(f)}
    assert len(written) == 500
    ids = [rec["frame_id"] for rec in records]
    assert ids == sorted(ids) and len(set(ids)) == 8
    for rec in records:   # each streamed record is the one -json_file_output wrote for that frame
        assert rec == written[rec["frame_id"]]
    assert any(rec["objects"] for rec in records)


def test_busy_port_is_one_error_before_any_work(work):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = _demo(work, "-mjpeg_port", str(port))
        _, err = proc.communicate(timeout=120)
    lines = [ln for ln in err.decode().splitlines() if ln.strip()]
    assert proc.returncode == 1
    assert lines == [f"pydarknet: error: -mjpeg_port {port}: cannot listen on 127.0.0.1:{port}: Address already in "
                     f"use"], lines


def _train(work, port, iterations):
    text = open(work / "d.cfg").read().replace("max_batches=1200", f"max_batches={iterations}")
    (work / "t.cfg").write_text(text)
    return subprocess.Popen([sys.executable, "-m", "pydarknet", "detector", "train", "shapes.data", "t.cfg",
                             "-dont_show", "-mjpeg_port", str(port), "--backup", "bk"], cwd=work, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return r.status, r.headers.get("Content-Type"), r.read()


def _wait_for(check, proc, seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_training_serves_its_page_log_sample_and_chart(work):
    port = _free_port()
    proc = _train(work, port, 2000)
    try:
        _wait_port(port, proc)
        status, kind, page = _get(port, "/")
        assert status == 200 and kind.startswith("text/html") and b"<canvas" in page
        assert not re.search(rb"(src|href)=\"(https?:)?//", page)   # nothing from elsewhere
        # empty while the network and data load (the server listens first, so a busy port fails at once)
        info = _wait_for(lambda: json.loads(_get(port, "/info.json")[2]), proc)
        assert info == {"title": "t", "max_batches": 2000, "metric": "mAP"}
        _wait_for(lambda: len(json.loads(_get(port, "/log.json?since=0")[2])) >= 25, proc)
        served = json.loads(_get(port, "/log.json?since=10")[2])
        with open(work / "bk" / "t_train.jsonl") as f:
            logged = [json.loads(line) for line in f]
        assert served[0]["iteration"] == 11 and served == logged[10:10 + len(served)]
        sample = cv2.imdecode(np.frombuffer(_get(port, "/sample.jpg")[2], np.uint8), cv2.IMREAD_COLOR)
        assert sample.shape == (64, 4 * 64, 3)   # four 64x64 training images side by side
        cap = cv2.VideoCapture(f"http://127.0.0.1:{port}/chart.mjpg")   # the chart as it is redrawn
        ok, chart = cap.read()
        cap.release()
        assert ok and chart.shape == (600, 1000, 3)
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_training_page_renders_in_a_headless_browser(work, tmp_path):
    """The page in a real browser (headless Chromium): the figures it shows are the log's at the iteration it
    shows, and the loss canvas holds the average-loss curve's colour. Skipped where no Chromium is installed
    (Debian: apt-get install chromium)."""
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium or Chrome on PATH (Debian: apt-get install chromium)")
    port = _free_port()
    proc = _train(work, port, 2000)
    try:
        _wait_port(port, proc)
        _wait_for(lambda: len(json.loads(_get(port, "/log.json?since=0")[2])) >= 30, proc)
        args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,900",
                "--virtual-time-budget=4000"]
        dom = subprocess.run(args + ["--dump-dom", f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                             timeout=120).stdout
        shot = tmp_path / "page.png"
        subprocess.run(args + [f"--screenshot={shot}", f"http://127.0.0.1:{port}/"], capture_output=True,
                       timeout=120)
        with open(work / "bk" / "t_train.jsonl") as f:
            logged = {rec["iteration"]: rec for rec in map(json.loads, f)}
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    shown = dict(re.findall(r'id="f-([a-z-]+)">([^<]*)<', dom))
    it = int(shown["iteration"].split("/")[0])
    assert it >= 30 and shown["iteration"] == f"{it} / 2000"
    rec = logged[it]
    assert shown["loss"] == f"{rec['loss']:.4f}" and shown["avg"] == f"{rec['avg_loss']:.4f}"
    assert shown["ips"] == f"{rec['images_per_s']:.1f}"
    image = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert image is not None
    avg_colour = np.array([0xa0, 0x4f, 0x1f])   # #1f4fa0 in BGR
    close = np.abs(image.astype(int) - avg_colour).sum(axis=2) < 60
    # the average-loss curve in the loss canvas (640 px wide, 576 for the iterations 0..2000): at least a
    # pixel per column it spans
    assert close[:450, :700].sum() >= 576 * it / 2000, (close[:450, :700].sum(), it)


def test_detector_test_streams_each_image_it_is_given(work):
    """detector test reading paths from standard input: each image's annotated picture and JSON record (the
    -out record of that image) reach the clients as it is processed."""
    images = sorted(os.path.relpath(os.path.join(d, f), work) for d, _, fs in os.walk(work) for f in fs
                    if f.endswith(".jpg"))[:3]
    assert len(images) == 3
    mjpeg, jport = _free_port(), _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pydarknet", "detector", "test", "shapes.data", "d.cfg",
                             "d.weights", "-dont_show", "-thresh", "0.01", "-mjpeg_port", str(mjpeg), "-json_port",
                             str(jport), "-out", "result.json"], cwd=work, env=_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_port(mjpeg, proc)
    _wait_port(jport, proc)
    stream = urllib.request.urlopen(f"http://127.0.0.1:{jport}/", timeout=30)
    frames = urllib.request.urlopen(f"http://127.0.0.1:{mjpeg}/", timeout=30)
    assert frames.headers.get("Content-Type") == "multipart/x-mixed-replace; boundary=mjpegstream"
    assert stream.read(2) == b"[\n"
    decoder, text, got, shapes = json.JSONDecoder(), "", [], []
    for path in images:
        proc.stdin.write((path + "\n").encode())
        proc.stdin.flush()
        while len(got) < len(shapes) + 1:
            text += stream.read1(65536).decode("utf-8")
            try:
                rec, end = decoder.raw_decode(text.lstrip(", \n"))
            except ValueError:
                continue
            got.append(rec)
            text = text.lstrip(", \n")[end:]
        shapes.append(_next_jpeg(frames).shape)
    proc.stdin.close()
    proc.wait(timeout=120)
    err = proc.stderr.read()
    stream.close()
    frames.close()
    assert proc.returncode == 0, err.decode()[-2000:]
    with open(work / "result.json") as f:
        written = json.load(f)
    assert [r["filename"] for r in got] == images and [r["frame_id"] for r in got] == [1, 2, 3]
    assert [r["objects"] for r in got] == [r["objects"] for r in written]
    assert shapes == [cv2.imread(str(work / p)).shape for p in images]


def test_log_reader_reads_from_its_marks_and_follows_a_rewritten_log(tmp_path):
    """The page's log reads start at a mark near the iteration asked for (a long run's log is not read whole
    at every poll), and stay right when the log grows, gets a damaged or half-written line, or is rewritten
    shorter (a resumed run)."""
    from pydarknet.watch import LogReader

    path = tmp_path / "x_train.jsonl"
    line = lambda i: json.dumps({"iteration": i, "loss": 1.0 / i}) + "\n"
    path.write_text("".join(line(i) for i in range(1, 3001)))
    reader = LogReader(str(path), every=100)
    assert [r["iteration"] for r in reader.read(0)] == list(range(1, 3001))
    assert len(reader._marks) >= 29
    mark = max(m for m in reader._marks if m[0] <= 2990)
    assert mark[0] >= 2800 and mark[1] > 0   # the next read starts near the end
    assert [r["iteration"] for r in reader.read(2990)] == list(range(2991, 3001))
    with open(path, "a") as f:
        f.write("not json\n" + line(3001) + '{"iteration": 3002, "lo')   # a damaged line, a half-written one
    assert [r["iteration"] for r in reader.read(2995)] == list(range(2996, 3002))
    assert [r["iteration"] for r in reader.read(0, limit=5)] == [1, 2, 3, 4, 5]
    shorter = tmp_path / "new.jsonl"
    shorter.write_text("".join(line(i) for i in range(1, 101)))
    os.replace(shorter, path)   # a resumed run rewrites the log up to its checkpoint
    assert [r["iteration"] for r in reader.read(50)] == list(range(51, 101))
    assert [r["iteration"] for r in reader.read(0)] == list(range(1, 101))
