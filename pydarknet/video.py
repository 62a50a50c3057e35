"""Frames from a video file, a camera or a network stream, and annotated video out.

``video_frames(source)`` yields BGR uint8 frames as OpenCV decodes them and
closes the capture when the loop ends (or the generator is closed). The
source is a file path or stream URL, a camera index (an int, or a string of
digits as darknet's ``-c`` takes it), or an object with OpenCV's
``read()``/``release()`` methods.

Two ways to read:

* every frame (the default): each frame in order; right for files, where
  nothing is lost by taking longer than the video's frame time;
* latest frame (``latest=True``): a reader thread keeps decoding and holds
  only the newest frame; each request takes the newest one and older unread
  frames are dropped (counted in ``dropped``). A model slower than a live
  camera then never falls behind it: what it sees is at most one frame old,
  instead of a queue that grows without end in OpenCV's buffer.
"""
from __future__ import annotations

import os
import threading
from typing import Iterator, Optional, Tuple

import numpy as np

__all__ = ["VideoError", "VideoSource", "video_frames", "open_video_writer", "is_live_source"]

DEFAULT_FPS = 25.0      # darknet's demo writes at 25 frames per second when the source does not say
_MAX_CAMERA = 2**31 - 1  # camera indices reach OpenCV as a C int
_CLOSE_WAIT_S = 5.0     # how long close() waits for the reader thread to finish its current read


class VideoError(ValueError):
    """A video source or output that cannot be used (the message names it)."""


def _camera_index(source) -> Optional[int]:
    if isinstance(source, (int, np.integer)) and not isinstance(source, bool):
        return int(source)
    if isinstance(source, str) and source.strip().isdigit():
        return int(source.strip())
    return None


def is_live_source(source) -> bool:
    """True for a camera index or a network stream URL (``rtsp://`` ...),
    where frames keep coming in real time; False for a file."""
    if _camera_index(source) is not None:
        return True
    return isinstance(source, str) and "://" in source and not source.lower().startswith("file://")


def _open_capture(source):
    import cv2  # OpenCV (~25 MiB, ~80 ms) only when used: `import pydarknet` stays light

    if hasattr(source, "read") and hasattr(source, "release"):
        return source, getattr(source, "name", type(source).__name__)
    index = _camera_index(source)
    if index is not None:
        if not 0 <= index <= _MAX_CAMERA:   # OpenCV crashes on some (-1 with no camera) and overflows on others
            raise VideoError(f"camera {index}: a camera index is a whole number from 0 to {_MAX_CAMERA}")
        cap = cv2.VideoCapture(index)
        if not cap.isOpened():
            cap.release()
            raise VideoError(f"camera {index}: cannot open the camera (is it connected and free?)")
        return cap, f"camera {index}"
    path = os.fspath(source)
    if "://" not in path:
        if not os.path.exists(path):
            raise VideoError(f"{path}: cannot open video file: No such file or directory")
        if os.path.isdir(path):
            raise VideoError(f"{path}: cannot open video file: Is a directory")
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        cap.release()
        raise VideoError(f"{path}: cannot open video (not a format OpenCV reads, corrupt, or an unreachable stream)")
    return cap, path


class _LatestFrame:
    """A thread that reads a capture as fast as it delivers and keeps only
    the newest frame. The thread owns the capture and releases it when it
    stops (end of stream, read error, or close())."""

    def __init__(self, cap):
        self._cap = cap
        self._cond = threading.Condition()
        self._frame = None
        self._done = False
        self._stop = False
        self._error: Optional[BaseException] = None
        self.read = 0        # frames decoded
        self.dropped = 0     # frames replaced before anyone took them
        self._thread = threading.Thread(target=self._run, name="pydarknet-video-reader", daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while not self._stop:
                ok, frame = self._cap.read()
                if not ok or frame is None:
                    break
                with self._cond:
                    if self._frame is not None:
                        self.dropped += 1
                    self._frame = frame
                    self.read += 1
                    self._cond.notify_all()
        except Exception as e:  # handed to the consumer, which raises it
            self._error = e
        finally:
            self._cap.release()
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def get(self):
        """The newest frame not yet taken (waiting for one), or None at the end."""
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None or self._done)
            frame, self._frame = self._frame, None
        if frame is None and self._error is not None:
            raise VideoError(f"reading frames failed: {self._error}")
        return frame

    def close(self):
        self._stop = True
        self._thread.join(_CLOSE_WAIT_S)


class VideoSource:
    """An opened video source; iterate it for frames (see the module notes).
    ``fps`` is the source's frame rate (0 when it does not say), ``frames``
    the frames handed out, ``dropped`` the frames skipped in latest mode."""

    def __init__(self, source, latest: bool = False):
        self.source = source
        self.latest = bool(latest)
        self._cap, self.name = _open_capture(source)
        self.fps = self._property("CAP_PROP_FPS")
        self.frames = 0
        self._reader = _LatestFrame(self._cap) if self.latest else None
        self._closed = False

    def _property(self, name) -> float:
        import cv2  # OpenCV (~25 MiB, ~80 ms) only when used: `import pydarknet` stays light

        try:
            value = float(self._cap.get(getattr(cv2, name)))
        except (AttributeError, TypeError, ValueError, cv2.error):
            return 0.0
        return value if np.isfinite(value) and value > 0 else 0.0

    @property
    def dropped(self) -> int:
        return self._reader.dropped if self._reader is not None else 0

    def read(self):
        """The next frame (the newest one in latest mode), or None at the end."""
        if self._closed:
            return None
        if self._reader is not None:
            frame = self._reader.get()
        else:
            ok, frame = self._cap.read()
            if not ok:
                frame = None
        if frame is not None:
            self.frames += 1
        return frame

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            frame = self.read()
            if frame is None:
                return
            yield frame

    def close(self):
        if self._closed:
            return
        self._closed = True
        if self._reader is not None:
            self._reader.close()
        else:
            self._cap.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def video_frames(source, latest: bool = False) -> Iterator[np.ndarray]:
    """Yields the frames of `source` (see the module notes); the capture is
    closed when the loop ends, breaks, or the generator is closed."""
    with VideoSource(source, latest=latest) as video:
        yield from video


def _fourcc_for(path):
    import cv2  # OpenCV (~25 MiB, ~80 ms) only when used: `import pydarknet` stays light

    ext = os.path.splitext(path)[1].lower()
    codes = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "MJPG", ".avi": "MJPG"}
    return cv2.VideoWriter_fourcc(*codes.get(ext, "MJPG"))


def open_video_writer(path, fps: float, size: Tuple[int, int]):
    """An OpenCV VideoWriter for frames of size (width, height): Motion JPEG
    in .avi/.mkv (darknet writes DIVX, which not every OpenCV build has),
    MPEG-4 in .mp4/.mov. VideoError naming the file when it cannot be opened."""
    import cv2  # OpenCV (~25 MiB, ~80 ms) only when used: `import pydarknet` stays light

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise VideoError(f"{path}: cannot write the video: folder {folder} does not exist")
    writer = cv2.VideoWriter(path, _fourcc_for(path), float(fps or DEFAULT_FPS), (int(size[0]), int(size[1])))
    if not writer.isOpened():
        writer.release()
        raise VideoError(f"{path}: cannot write the video (no encoder for this extension, or not writable); "
                         "try a .avi file")
    return writer
