"""Watching from a browser: darknet's ``-mjpeg_port`` and ``-json_port``, and
the live training page.

* :class:`Latest` holds the newest item (a JPEG, a JSON record) and a count;
  the producer replaces it and never waits for anyone.
* :class:`WatchServer` is the standard library's threading HTTP server bound
  at construction (so a busy port is one clear :class:`WatchError` before any
  work starts), serving in a daemon thread until :meth:`WatchServer.close`.
  Each client has its own thread that sends the newest item whenever there is
  a newer one than it sent last: a slow client skips items (latest wins for
  it) and never slows the producer; a vanished one ends its thread.
* Routes: ``mjpeg_route(latest)`` streams JPEGs as ``multipart/x-mixed-replace``
  (as darknet's -mjpeg_port, which browsers and OpenCV's VideoCapture read),
  ``json_route(latest)`` streams JSON records as darknet's -json_port does (one
  endless JSON array, a record per frame), ``bytes_route`` and ``file_route``
  serve one body, ``log_route`` the lines of a JSON-lines log from an
  iteration on.

Bound to 127.0.0.1 unless another host is given (0.0.0.0: every interface).
"""
from __future__ import annotations

import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, Optional
from urllib.parse import parse_qs, urlparse

__all__ = ["Latest", "WatchServer", "WatchError", "DetectionWatch", "TrainingWatch", "mjpeg_route", "json_route",
           "bytes_route", "file_route", "log_route"]

BOUNDARY = "mjpegstream"
SEND_TIMEOUT = 10.0   # seconds a client's socket may block a send before its thread gives up on it


class WatchError(OSError):
    """A port that cannot be served (busy, not allowed)."""


class Latest:
    """The newest item and how many there have been; readers wait for a newer one."""

    def __init__(self):
        self._cond = threading.Condition()
        self._item = None
        self._count = 0
        self._closed = False

    def publish(self, item):
        with self._cond:
            self._item = item
            self._count += 1
            self._cond.notify_all()

    def get(self):
        with self._cond:
            return self._count, self._item

    def newer(self, count, timeout=1.0):
        """(count, item) of an item newer than `count`, or None on timeout or when closed."""
        with self._cond:
            if self._count <= count and not self._closed:
                self._cond.wait(timeout)
            if self._closed or self._count <= count:
                return None
            return self._count, self._item

    def close(self):
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self):
        return self._closed


class _Handler(BaseHTTPRequestHandler):
    server_version = "pydarknet"
    protocol_version = "HTTP/1.0"

    def do_GET(self):   # noqa: N802 - the standard library's name
        url = urlparse(self.path)
        route = self.server.routes.get(url.path) or self.server.routes.get("*")
        if route is None:
            self.send_error(404, "not found")
            return
        self.connection.settimeout(SEND_TIMEOUT)
        try:
            route(self, parse_qs(url.query))
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout):
            pass   # the client went away or stopped reading: its thread ends, nobody else notices

    def log_message(self, format, *args):   # noqa: A002 - quiet: the command's output is its own
        pass

    def head(self, content_type, length=None, extra=()):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache, no-store")
        self.send_header("Access-Control-Allow-Origin", "*")
        if length is not None:
            self.send_header("Content-Length", str(length))
        for key, value in extra:
            self.send_header(key, value)
        self.end_headers()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class WatchServer:
    """An HTTP server on host:port for `routes` ({path: route(handler, query)}, "*" for any path), bound
    now, serving from start() until close(). `what` names it in errors ("-mjpeg_port")."""

    def __init__(self, port: int, routes: Dict[str, Callable], host: str = "127.0.0.1", what: str = "port"):
        self.host, self.port, self.what = host, int(port), what
        try:
            self._server = _Server((host, self.port), _Handler)
        except OSError as e:
            raise WatchError(f"{what} {port}: cannot listen on {host}:{port}: {e.strerror or e}") from None
        self._server.routes = routes
        self._server.stopping = threading.Event()
        self._thread = None
        self.latests = []   # closed with the server, so that waiting clients end

    @property
    def address(self):
        return self._server.server_address[:2]

    def start(self):
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"pydarknet-watch-{self.port}", daemon=True)
        self._thread.start()
        return self

    def close(self):
        self._server.stopping.set()
        for latest in self.latests:
            latest.close()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


def _items(h, latest: Latest):
    """The newest item of `latest` each time there is one newer than the last given (a slow client skips the
    ones in between), until the server stops or `latest` closes."""
    sent = 0
    while not h.server.stopping.is_set():
        got = latest.newer(sent)
        if got is None:
            if latest.closed:
                return
            continue
        sent, item = got
        yield item


def mjpeg_route(latest: Latest):
    """JPEG bytes published to `latest`, streamed as multipart/x-mixed-replace."""
    def route(h, query):
        h.head(f"multipart/x-mixed-replace; boundary={BOUNDARY}", extra=(("Connection", "close"),))
        for item in _items(h, latest):
            h.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(item)}\r\n\r\n"
                          .encode("ascii") + item + b"\r\n")
            h.wfile.flush()
    return route


def json_route(latest: Latest):
    """JSON records published to `latest` (dicts), streamed as darknet's -json_port: one JSON array that
    grows by a record per item ("[", then records separated by ",")."""
    def route(h, query):
        h.head("application/json", extra=(("Connection", "close"),))
        h.wfile.write(b"[\n")
        h.wfile.flush()
        separator = b""
        for item in _items(h, latest):
            h.wfile.write(separator + json.dumps(item).encode("utf-8"))
            h.wfile.flush()
            separator = b", \n"
        h.wfile.write(b"\n]\n")
    return route


def bytes_route(get: Callable[[], Optional[bytes]], content_type: str):
    """One body from get() (None: 404)."""
    def route(h, query):
        body = get()
        if body is None:
            h.send_error(404, "nothing yet")
            return
        h.head(content_type, len(body))
        h.wfile.write(body)
    return route


def file_route(path: str, content_type: str):
    """The file at `path` as it is now (404 until it exists)."""
    def read():
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError:
            return None
    return bytes_route(read, content_type)


class LogReader:
    """The records of a JSON-lines training log after an iteration, without reading the whole file each time:
    while it scans, it notes (iteration, byte offset) marks every `every` lines, and a later read starts at the
    last mark at or before the iteration asked for. A file that shrank (a resumed run rewrites the log up to
    its checkpoint) or was replaced drops the marks. A long run's log (a quarter of a kilobyte an iteration)
    is then read once, not at every poll of the page."""

    def __init__(self, path, every=256):
        self.path, self.every = path, every
        self._marks = [(0, 0)]   # (iteration before the line, offset of the line), ascending
        self._key = None         # (device, inode) of the file the marks belong to
        self._size = 0
        self._lock = threading.Lock()

    def read(self, since, limit=5000):
        where = self.path() if callable(self.path) else self.path
        out = []
        try:
            with open(where, "rb") as f:
                st = os.fstat(f.fileno())
                with self._lock:
                    if (st.st_dev, st.st_ino) != self._key or st.st_size < self._size:
                        self._marks, self._key = [(0, 0)], (st.st_dev, st.st_ino)
                    self._size = st.st_size
                    start = max((m for m in self._marks if m[0] <= since), default=(0, 0))
                f.seek(start[1])
                last, offset, lines = start[0], start[1], 0
                for line in f:
                    if not line.endswith(b"\n"):
                        break   # a line still being written
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        rec = None
                    if isinstance(rec, dict) and type(rec.get("iteration")) is int:
                        if rec["iteration"] > since:
                            out.append(rec)
                        lines += 1
                        if lines % self.every == 0:
                            with self._lock:
                                if offset > self._marks[-1][1] and last >= self._marks[-1][0]:
                                    self._marks.append((last, offset))
                        last = max(last, rec["iteration"])
                    offset += len(line)
                    if len(out) >= limit:
                        break
        except (OSError, TypeError):
            return []
        return out


def log_route(path, limit: int = 5000):
    """The records of a JSON-lines log after iteration `since` (query ?since=N), at most `limit` of them (the
    page asks again for the rest), as a JSON array. `path`: the log's path, or a callable giving it (LogReader
    reads it)."""
    reader = LogReader(path)

    def route(h, query):
        try:
            since = int(query.get("since", ["0"])[0])
        except ValueError:
            since = 0
        body = json.dumps(reader.read(since, limit)).encode("utf-8")
        h.head("application/json", len(body))
        h.wfile.write(body)
    return route


def _jpeg(image, quality):
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return buf.tobytes() if ok else None


class DetectionWatch:
    """detector demo's (and detector test's) -mjpeg_port and -json_port: the annotated frames as MJPEG and the
    frames' JSON records (as -json_file_output writes them) as darknet's JSON stream, on any path."""

    def __init__(self, mjpeg_port=None, json_port=None, host="127.0.0.1", quality=80):
        self.quality = quality
        self.frames, self.records = Latest(), Latest()
        self.servers = []
        try:
            if mjpeg_port is not None:
                self.servers.append(WatchServer(mjpeg_port, {"*": mjpeg_route(self.frames)}, host, "-mjpeg_port"))
            if json_port is not None:
                self.servers.append(WatchServer(json_port, {"*": json_route(self.records)}, host, "-json_port"))
        except WatchError:
            self.close()
            raise
        for server in self.servers:
            server.latests += [self.frames, self.records]
            server.start()
        self.mjpeg, self.json = mjpeg_port is not None, json_port is not None

    def publish(self, annotated, record):
        if self.mjpeg:
            data = _jpeg(annotated, self.quality)
            if data is not None:
                self.frames.publish(data)
        if self.json:
            self.records.publish(record)

    def close(self):
        for server in self.servers:
            server.close()
        self.servers = []


class TrainingWatch:
    """A training's -mjpeg_port: the live page at /, the chart as MJPEG at /chart.mjpg (each drawing, as
    darknet streams it) and as one JPEG at /chart.jpg, the latest sample of augmented training images with
    their boxes at /sample.jpg, the JSON-lines log's records at /log.json?since=N and the run's facts at
    /info.json."""

    def __init__(self, port, host="127.0.0.1", quality=80):
        from .watch_page import PAGE

        self.quality = quality
        self.chart, self.sample = Latest(), Latest()
        self.info = {}
        self.log_path = None
        page = bytes_route(lambda: PAGE.encode("utf-8"), "text/html; charset=utf-8")
        routes = {"/": page, "/index.html": page, "/chart.mjpg": mjpeg_route(self.chart),
                  "/chart.jpg": bytes_route(lambda: self.chart.get()[1], "image/jpeg"),
                  "/sample.jpg": bytes_route(lambda: self.sample.get()[1], "image/jpeg"),
                  "/log.json": log_route(lambda: self.log_path),
                  "/info.json": bytes_route(lambda: json.dumps(self.info).encode("utf-8"), "application/json")}
        self.server = WatchServer(port, routes, host, "-mjpeg_port")
        self.server.latests += [self.chart, self.sample]
        self.server.start()

    def begin(self, log_path, **info):
        self.log_path = log_path
        self.info = dict(info)

    def publish_chart(self, png_path):
        """The chart file just drawn, as a JPEG to the stream."""
        import cv2

        image = cv2.imread(os.fspath(png_path), cv2.IMREAD_COLOR)
        data = _jpeg(image, self.quality) if image is not None else None
        if data is not None:
            self.chart.publish(data)

    def publish_sample(self, x, truths, count=4):
        """The first `count` images of a training batch (float [B, C, H, W] in 0..1) side by side, each with
        its truth boxes (rows x y w h class, normalized; zero rows skipped)."""
        import cv2
        import numpy as np

        t = np.asarray(truths)
        boxes = t.ndim == 3 and t.shape[2] == 5   # a detector's truths; a classifier's have no boxes
        tiles = []
        for b in range(min(count, x.shape[0])):
            img = np.ascontiguousarray((np.clip(x[b], 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0))
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.shape[2] == 1 else img[:, :, ::-1].copy()
            h, w = img.shape[:2]
            for cx, cy, bw, bh, k in (t[b] if boxes else ()):
                if bw <= 0 or bh <= 0:
                    continue
                p0 = (int((cx - bw / 2) * w), int((cy - bh / 2) * h))
                p1 = (int((cx + bw / 2) * w), int((cy + bh / 2) * h))
                color = [(0, 200, 255), (255, 120, 0), (80, 220, 80), (220, 60, 220)][int(k) % 4]
                cv2.rectangle(img, p0, p1, color, 1)
            tiles.append(img)
        if tiles:
            data = _jpeg(np.concatenate(tiles, axis=1), self.quality)
            if data is not None:
                self.sample.publish(data)

    def close(self):
        self.server.close()
