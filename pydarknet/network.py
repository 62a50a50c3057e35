"""The Python face of a network built in the C core.

``load`` parses a cfg (pydarknet.cfg), hands every resolved layer to the C
builder (errors come back naming the cfg file and line), optionally reads a
weights file, and returns a :class:`Network`. Inputs go to C without copies
when they are float32 and C-contiguous; outputs come back as NumPy arrays.
"""
from __future__ import annotations

import functools
import logging
import math
import os
import threading
from typing import List, Optional, Sequence

import numpy as np

from . import weights as _weights
from ._native import DarknetError, check, ffi, lib, last_error
from .cfg import HEAD_TYPES, CfgError, LayerSpec, NetSpec, parse_cfg
from .classification import Classification, classify_output, require_classifier
from .datafiles import read_names
from .detection import Detection
from .state import load_state, save_state
from .train_checks import check_inputs, clean_truths

log = logging.getLogger("pydarknet")

_LEVELS = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR}


@ffi.def_extern()
def _pydarknet_log(level, message, user):
    log.log(_LEVELS.get(level, logging.INFO), ffi.string(message).decode("utf-8", "replace"))


def _locked(method):
    """Runs a Network method under the network's own lock (see Network)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return run


def default_threads():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class Layer:
    """One layer of a built network (darknet's numbering: 0-based, cfg order)."""

    def __init__(self, net: "Network", index: int, spec: Optional[LayerSpec]):
        self._net = net
        self.index = index
        self.spec = spec
        t = ffi.new("const char **")
        check(lib.dn_layer_type(net._ptr, index, t))
        self.type = ffi.string(t[0]).decode()

    @property
    def shape(self):
        """Output shape (channels, height, width) for one image."""
        c, h, w = ffi.new("int *"), ffi.new("int *"), ffi.new("int *")
        with self._net._lock:
            check(lib.dn_layer_shape(self._net._ptr, self.index, c, h, w))
        return (c[0], h[0], w[0])

    @property
    def output_shape(self):
        """The shape of one image's output as darknet lays it out in memory:
        (C, H, W), except [region]: (H, W, num, 5 + classes), cell-major as
        darknet's region layer writes it."""
        if self.type == "region":
            c, h, w = self.shape
            num = self.spec.attrs["num"]
            return (h, w, num, c // num)
        return self.shape

    @property
    def output(self) -> np.ndarray:
        """A copy of this layer's output from the last forward pass,
        [B] + output_shape: [B, C, H, W] ([region]: [B, H, W, num, 5 + classes])."""
        data, count = ffi.new("const float **"), ffi.new("size_t *")
        with self._net._lock:  # copied before another thread's call can overwrite it
            check(lib.dn_layer_output(self._net._ptr, self.index, data, count))
            arr = np.frombuffer(ffi.buffer(data[0], count[0] * 4), dtype=np.float32)
            return arr.reshape((self._net.batch,) + self.output_shape).copy()

    @property
    def algorithm(self) -> Optional[str]:
        """How this layer's last inference pass on the CPU computed it, where a
        layer type has several ways ("winograd", "packed", "blas" or "direct"
        for a convolution; measured on this machine when tuning is on, see
        pydarknet.tuning_file); None otherwise."""
        with self._net._lock:
            a = lib.dn_layer_algorithm(self._net._ptr, self.index)
        return ffi.string(a).decode() if a != ffi.NULL else None

    @property
    def params(self) -> dict:
        """Name -> float32 array viewing the C tensor (valid while the network
        lives; a view, so not guarded by the network's lock: read or write it
        while no other thread trains or loads weights into this network)."""
        out = {}
        with self._net._lock:
            for j in range(lib.dn_layer_num_params(self._net._ptr, self.index)):
                name, data, count = ffi.new("const char **"), ffi.new("float **"), ffi.new("size_t *")
                check(lib.dn_layer_param(self._net._ptr, self.index, j, name, data, count))
                out[ffi.string(name[0]).decode()] = np.frombuffer(ffi.buffer(data[0], count[0] * 4),
                                                                  dtype=np.float32)
        return out

    def __repr__(self):
        c, h, w = self.shape
        return f"<Layer {self.index} {self.type} -> {c}x{h}x{w}>"


_LAYER_SETTERS = (lib.dn_net_set_ints, lib.dn_net_set_floats, lib.dn_net_set_string)
_TRAIN_SETTERS = (lib.dn_net_set_train_ints, lib.dn_net_set_train_floats, lib.dn_net_set_train_string)


def option_kind(value):
    """(kind, value) of a resolved option as the C builder takes it: kind
    'int', 'float', 'str', 'ints' or 'floats' (model files store the same)."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return "int", value
    if isinstance(value, float):
        return "float", value
    if isinstance(value, str):
        return "str", value
    values = list(value)
    if all(isinstance(v, int) for v in values):
        return "ints", [int(v) for v in values]
    return "floats", [float(v) for v in values]


def _set_attr(ptr, key, value, setters=_LAYER_SETTERS):
    """Hands one resolved option to the C builder (a layer's, or with
    _TRAIN_SETTERS the network's training options)."""
    set_ints, set_floats, set_string = setters
    k = key.encode()
    kind, value = option_kind(value)
    if kind == "int":
        return set_ints(ptr, k, ffi.new("int[1]", [value]), 1)
    if kind == "float":
        return set_floats(ptr, k, ffi.new("float[1]", [value]), 1)
    if kind == "str":
        return set_string(ptr, k, value.encode())
    if kind == "ints":
        return set_ints(ptr, k, ffi.new("int[]", value or [0]), len(value))
    return set_floats(ptr, k, ffi.new("float[]", value), len(value))


class Network:
    """A network built from a parsed cfg. Use :func:`load` to make one.

    Threads: every method and property that enters the C core or reads the
    network's buffers takes the network's own lock (an RLock), so one
    Network shared by several threads runs their calls one at a time, each
    returning its own results (outputs are copied before the lock is let
    go). Distinct networks share no state and run in parallel (the C calls
    release the GIL). The arrays of Layer.params are views, outside the lock."""

    def __init__(self, spec: NetSpec, batch: Optional[int] = None, threads: Optional[int] = None, names=None,
                 seed: int = 0, handle=None):
        """`batch`: the full training batch (default: the cfg's); the network
        runs mini-batches of batch / subdivisions images, as darknet does.
        `handle`: a finalized C network already built from `spec` with its
        parameters and [net] options set (a model file's), taken over."""
        self._lock = threading.RLock()
        self.spec = spec
        subdivisions = max(1, int(spec.options.get("subdivisions", 1) or 1))
        self.full_batch = int(batch if batch is not None else max(1, spec.batch))
        if self.full_batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        self.subdivisions = subdivisions if self.full_batch % subdivisions == 0 else 1
        self.mini_batch = self.full_batch // self.subdivisions
        self._training = False
        self.names = list(names) if names is not None else None
        self.weights_header = None
        if handle is not None:
            self._ptr = ffi.gc(handle, lib.dn_net_free)
            lib.dn_net_set_log(self._ptr, lib._pydarknet_log, ffi.NULL)
        else:
            self._build(spec, seed)
        self.set_threads(threads or default_threads())
        if os.environ.get("PYDARKNET_GEMM", "").lower() == "portable":
            check(lib.dn_net_set_blas(self._ptr, 0))
        self.layers: List[Layer] = [Layer(self, i, s) for i, s in enumerate(spec.layers)]
        self._outputs = self._output_indices()
        self._det_cap = 0
        self._det_buf = None

    def _build(self, spec: NetSpec, seed: int):
        c, h, w = spec.channels, spec.height, spec.width
        out = ffi.new("dn_net **")
        # activations for one image until a call needs more (training sizes it to the mini-batch)
        check(lib.dn_net_create(1, c, h, w, out), f"{spec.path}: [net]")
        self._ptr = ffi.gc(out[0], lib.dn_net_free)
        lib.dn_net_set_log(self._ptr, lib._pydarknet_log, ffi.NULL)
        for layer in spec.layers:
            self._add(layer)
        check(lib.dn_net_finalize(self._ptr), spec.path)
        # darknet's initial weights, so a cfg trains from scratch; a weights file replaces them
        check(lib.dn_net_init_params(self._ptr, seed))
        for key, value in spec.options.items():
            check(_set_attr(self._ptr, key, value, _TRAIN_SETTERS), f"{spec.path}: [net] {key}")

    def _add(self, layer: LayerSpec):
        ptr = self._ptr
        status = lib.dn_net_add_layer(ptr, layer.type.encode())
        for key, value in layer.attrs.items():
            if status:
                break
            status = _set_attr(ptr, key, value)
        if not status:
            status = lib.dn_net_end_layer(ptr)
        if status:
            msg = last_error()
            prefix = f"layer {layer.index} [{layer.type}]: "
            if msg.startswith(prefix):
                msg = msg[len(prefix):]
            raise CfgError(layer.path, layer.line, f"layer {layer.index} [{layer.type}]: {msg}")

    def _output_indices(self):
        heads = [l.index for l in self.layers if l.type in HEAD_TYPES]
        if heads:
            return heads
        last = len(self.layers) - 1
        while last > 0 and self.layers[last].type == "cost":
            last -= 1
        return [last]

    # ---- properties
    @_locked
    def _input_shape(self):
        b, c, h, w = (ffi.new("int *") for _ in range(4))
        check(lib.dn_net_input_shape(self._ptr, b, c, h, w))
        return b[0], c[0], h[0], w[0]

    @property
    def batch(self):
        return self._input_shape()[0]

    @property
    def channels(self):
        return self._input_shape()[1]

    @property
    def height(self):
        return self._input_shape()[2]

    @property
    def width(self):
        return self._input_shape()[3]

    @property
    def output_layers(self) -> List[Layer]:
        return [self.layers[i] for i in self._outputs]

    @property
    @_locked
    def gpu(self) -> Optional[int]:
        """The CUDA device the network runs on, or None for the CPU."""
        d = lib.dn_net_device(self._ptr)
        return None if d < 0 else int(d)

    @property
    @_locked
    def device_name(self) -> str:
        """'CPU', or the CUDA device's name as nvidia-smi gives it, with its index."""
        gpu = self.gpu
        if gpu is None:
            return "CPU"
        buf = ffi.new("char[256]")
        check(lib.dn_cuda_device_name(gpu, buf, 256))
        return f"GPU {gpu} ({ffi.string(buf).decode('utf-8', 'replace')})"

    @_locked
    def set_device(self, gpu: Optional[int]):
        """Runs the network on CUDA device `gpu` (darknet's -i / -gpus) or,
        with None, on the CPU. Raises DarknetError when the build has no CUDA
        (rebuild with PYDARKNET_CUDA=1) or the device does not exist. On a
        device, read `Layer.params` again after passes that change them; the
        arrays are host copies brought up to date when they are handed out."""
        check(lib.dn_net_set_device(self._ptr, -1 if gpu is None else int(gpu)),
              "CPU" if gpu is None else f"GPU {gpu}")

    @property
    @_locked
    def cudnn(self) -> bool:
        """Whether the convolutions run on cuDNN (a CUDA build with
        PYDARKNET_CUDNN=1, on a device; on by default there, off with
        PYDARKNET_CUDNN=0 in the environment). Set it to switch between cuDNN
        and the im2col + cuBLAS path."""
        return bool(lib.dn_net_cudnn(self._ptr))

    @cudnn.setter
    @_locked
    def cudnn(self, on: bool):
        check(lib.dn_net_set_cudnn(self._ptr, int(bool(on))))

    @property
    @_locked
    def cuda_graphs(self) -> bool:
        """Whether inference passes on a device run their layers as one CUDA
        graph (made on the second pass at a size, then launched whole: no
        per-kernel launch cost). Off by default; on with
        PYDARKNET_CUDA_GRAPHS=1 in the environment when the network went to
        the device, or set it here (on a device)."""
        return bool(lib.dn_net_cuda_graphs(self._ptr))

    @cuda_graphs.setter
    @_locked
    def cuda_graphs(self, on: bool):
        check(lib.dn_net_set_cuda_graphs(self._ptr, int(bool(on))))

    PRECISIONS = ("float32", "float16", "bfloat16")

    @property
    @_locked
    def gpu_precision(self) -> str:
        """The precision of the matrix products on a device: "float32" (the
        default), or "float16"/"bfloat16" (mixed precision, darknet's
        CUDNN_HALF: the convolution, [connected] and [deformable] products on
        tensor cores with their operands rounded to that type, float32 sums,
        weights, activations and everything else; float16 with dynamic loss
        scaling, see loss_scale). PYDARKNET_CUDA_PRECISION sets it when the
        network goes to a device; set it here on a device."""
        return self.PRECISIONS[lib.dn_net_gpu_precision(self._ptr)]

    @gpu_precision.setter
    @_locked
    def gpu_precision(self, precision: str):
        if precision not in self.PRECISIONS:
            raise ValueError(f"precision {precision!r}: give one of {', '.join(self.PRECISIONS)}")
        check(lib.dn_net_set_gpu_precision(self._ptr, self.PRECISIONS.index(precision)))

    @property
    @_locked
    def loss_scale(self) -> float:
        """float16's loss scale (1 otherwise): a power of two that the gradient
        operand of every backward product is multiplied by before it is
        rounded (the product divided by it after), halved when an iteration's
        gradients are not all finite (that iteration updates nothing) and
        doubled after 2000 updates in a row; it starts at 65536."""
        scale, skipped = ffi.new("float *"), ffi.new("long long *")
        check(lib.dn_net_loss_scale(self._ptr, scale, skipped))
        return float(scale[0])

    @loss_scale.setter
    @_locked
    def loss_scale(self, scale: float):
        check(lib.dn_net_set_loss_scale(self._ptr, float(scale)))

    @property
    @_locked
    def skipped_updates(self) -> int:
        """Iterations whose update float16's loss scaling skipped (a gradient not finite)."""
        scale, skipped = ffi.new("float *"), ffi.new("long long *")
        check(lib.dn_net_loss_scale(self._ptr, scale, skipped))
        return int(skipped[0])

    @property
    @_locked
    def cuda_graph_launches(self) -> int:
        """How many passes a CUDA graph ran since the network went to the device."""
        return int(lib.dn_net_cuda_graph_launches(self._ptr))

    @property
    @_locked
    def uses_blas(self):
        return bool(lib.dn_net_uses_blas(self._ptr))

    @_locked
    def set_threads(self, threads: int):
        check(lib.dn_net_set_threads(self._ptr, int(threads)))
        self.threads = int(threads)

    @_locked
    def resize(self, batch=None, height=None, width=None):
        """Changes the batch size or the input size (every layer's shape follows)."""
        b, _, h, w = self._input_shape()
        check(lib.dn_net_resize(self._ptr, batch or b, height or h, width or w))

    # ---- training
    @property
    @_locked
    def iteration(self) -> int:
        """Updates made so far (darknet's batch number)."""
        return int(lib.dn_net_iteration(self._ptr))

    @property
    @_locked
    def seen(self) -> int:
        """Images trained on."""
        return int(lib.dn_net_seen(self._ptr))

    @_locked
    def learning_rate(self, iteration: Optional[int] = None) -> float:
        """The schedule's learning rate for an iteration (default: the next update's)."""
        rate = ffi.new("float *")
        it = self.iteration + 1 if iteration is None else int(iteration)
        check(lib.dn_net_learning_rate(self._ptr, it, rate), f"{self.spec.path}: [net]")
        return float(rate[0])

    @_locked
    def enable_training(self):
        """Allocates gradients and optimizer state (done by the first train_batch)."""
        if not self._training:
            if self.batch != self.mini_batch:
                self.resize(batch=self.mini_batch)
            check(lib.dn_net_enable_training(self._ptr), self.spec.path)
            self._training = True

    @_locked
    def train_batch(self, x: np.ndarray, truths: np.ndarray) -> float:
        """One training iteration on a full batch: x float32 [B, C, H, W] in
        0..1, truths float32 [B, max_boxes, 5] (rows x y w h class, normalized;
        zero rows are padding) for detectors, or [B, classes] (one-hot) for
        classifiers. Runs B / mini_batch mini-batches, accumulates gradients,
        updates once, and returns the loss per image. Truth rows that are not
        usable (class out of range, box outside 0..1, NaN) are reported with
        their image and row and left out."""
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1:] != (self.channels, self.height, self.width):
            raise ValueError(f"input of shape {x.shape} does not fit the network's "
                             f"[B, {self.channels}, {self.height}, {self.width}]")
        if x.shape[0] % self.mini_batch:
            raise ValueError(f"{x.shape[0]} images do not split into mini-batches of {self.mini_batch}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        check_inputs(self, x)
        t = clean_truths(self, truths, x.shape[0])
        self.enable_training()
        if self.batch != self.mini_batch:
            self.resize(batch=self.mini_batch)
        loss = ffi.new("float *")
        check(lib.dn_net_train_batch(self._ptr, ffi.from_buffer("float[]", x), x.size,
                                     ffi.from_buffer("float[]", t), t.size, loss))
        return float(loss[0])

    # ---- weights
    @_locked
    def load_weights(self, path, max_layers=None, clear=False):
        """Reads a darknet weights file. Its `seen` count sets where training
        resumes (iteration = seen / batch, as darknet counts), unless `clear`
        (darknet's -clear) starts the count from zero."""
        header = _weights.load_weights(self, path, max_layers=max_layers)
        self.weights_header = header
        seen = 0 if clear else header.seen
        check(lib.dn_net_set_iteration(self._ptr, seen // self.full_batch, seen))
        return header

    @_locked
    def save_weights(self, path, max_layers=None):
        """Writes a darknet weights file (header as read, with the images seen so far)."""
        header = self.weights_header or _weights.WeightsHeader()
        header = _weights.WeightsHeader(header.major, header.minor, header.revision, self.seen)
        _weights.save_weights(self, path, header=header, max_layers=max_layers)

    @_locked
    def save_training_state(self, path):
        """Writes what resuming needs besides the weights: iteration, images
        seen, the random generator, and the optimizer's buffers."""
        save_state(self, path)

    @_locked
    def load_training_state(self, path):
        load_state(self, path)

    # ---- running
    @_locked
    def forward(self, x: np.ndarray):
        """Runs the network on x, float32 [B, C, H, W] (or [C, H, W]) in 0..1."""
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[None]
        _, c, h, w = self._input_shape()
        if x.ndim != 4 or x.shape[1:] != (c, h, w):
            raise ValueError(f"input of shape {x.shape} does not fit the network's [B, {c}, {h}, {w}]")
        if x.shape[0] != self.batch:
            self.resize(batch=x.shape[0])
        x = np.ascontiguousarray(x, dtype=np.float32)
        check(lib.dn_net_forward(self._ptr, ffi.from_buffer("float[]", x), x.size))

    @_locked
    def predict(self, x: np.ndarray) -> List[np.ndarray]:
        """Forward pass; returns one array per output layer ([yolo]/[region]
        heads, or the last layer), each in darknet's layout: [B, C, H, W]
        ([region]: [B, H, W, num, 5 + classes], see Layer.output_shape)."""
        self.forward(x)
        return [self.layers[i].output for i in self._outputs]

    def detect(self, image, thresh: float = 0.25, nms: float = 0.45, letterbox: Optional[bool] = None
               ) -> List[Detection]:
        """Detects objects in one image (a BGR uint8 array as OpenCV reads it,
        or a path). The image is letterboxed or stretched as the cfg's
        [net] letter_box says (or `letterbox`), every [yolo]/[region] head is
        decoded, and greedy NMS runs per class. Boxes are in image pixels.
        A network of one channel takes the image grey, as darknet does: a
        path is read with OpenCV's IMREAD_GRAYSCALE, a colour array made grey
        as cvtColor(BGR2GRAY) makes it."""
        return self.detect_batch([image], thresh=thresh, nms=nms, letterbox=letterbox)[0]

    def detect_batch(self, images: Sequence, thresh: float = 0.25, nms: float = 0.45,
                     letterbox: Optional[bool] = None) -> List[List[Detection]]:
        """:meth:`detect` for several images (arrays or paths, of any sizes)
        in one forward pass: the network is sized to a batch of len(images),
        each image is resized into its own batch entry, and each entry's
        boxes are mapped back to its own image. Returns one list per image."""
        thresh, nms = _fraction("thresh", thresh), _fraction("nms", nms)
        imgs = [_read_image(image, self.channels) for image in images]
        if not imgs:
            return []
        if letterbox is None:
            letterbox = bool(self.spec.options.get("letter_box", 0))
        with self._lock:
            return self._detect_images(imgs, thresh, nms, letterbox)

    def _detect_images(self, imgs, thresh, nms, letterbox):
        if self.batch != len(imgs):
            self.resize(batch=len(imgs))
        for b, img in enumerate(imgs):
            h, w = img.shape[:2]
            ch = 1 if img.ndim == 2 else img.shape[2]
            check(lib.dn_net_set_input_image(self._ptr, b, ffi.from_buffer("uint8_t[]", img), w, h, ch,
                                             img.strides[0], 1, int(letterbox)))
        check(lib.dn_net_forward_input(self._ptr))
        return [self._detections(b, img.shape[1], img.shape[0], thresh, nms, letterbox)
                for b, img in enumerate(imgs)]

    @_locked
    def classify(self, image, top: int = 5) -> List[Classification]:
        """The `top` most probable classes of one image (a BGR uint8 array as
        OpenCV reads it, or a path) as pydarknet.classification.Classification
        (class_id, name, probability), most probable first. The image is
        prepared as darknet's classifier predict and valid prepare it: resized
        (darknet's bilinear) so its shorter side is the network width, then
        the centred network-size crop. The probabilities are the output of
        the last layer before any [cost] (a [softmax] in darknet's classifier
        cfgs). A network of one channel takes the image grey, as :meth:`detect`."""
        require_classifier(self.spec)
        img = _read_image(image, self.channels)
        if self.batch != 1:
            self.resize(batch=1)
        h, w = img.shape[:2]
        ch = 1 if img.ndim == 2 else img.shape[2]
        check(lib.dn_net_set_input_image_crop(self._ptr, 0, ffi.from_buffer("uint8_t[]", img), w, h, ch,
                                              img.strides[0], 1))
        check(lib.dn_net_forward_input(self._ptr))
        return classify_output(self.output_layers[0].output.reshape(-1), top, self.names)

    def _detections(self, b, w, h, thresh, nms, letterbox):
        found = ffi.new("int *")
        while True:
            if self._det_buf is None:
                self._det_cap = max(self._det_cap, 256)
                self._det_buf = ffi.new("dn_detection[]", self._det_cap)
            check(lib.dn_net_detections(self._ptr, b, w, h, float(thresh), float(nms), int(letterbox),
                                        self._det_buf, self._det_cap, found))
            if found[0] <= self._det_cap:
                break
            self._det_cap = found[0]
            self._det_buf = None
        names = self.names
        out = []
        for i in range(found[0]):
            d = self._det_buf[i]
            name = names[d.class_id] if names and d.class_id < len(names) else None
            out.append(Detection(d.class_id, d.confidence, d.x, d.y, d.w, d.h, d.objectness, name))
        return out


def _fraction(name, value) -> float:
    """A threshold as a float from 0 to 1; ValueError otherwise (NaN included,
    which would silently drop every detection)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be a number from 0 to 1, got {value!r}")
    return v


def _read_image(image, channels=3):
    """A uint8 image from an array or a path; a path is read grey for a
    network of one channel (darknet's load_image with c = 1)."""
    if isinstance(image, (str, bytes, os.PathLike)):
        path = os.fsdecode(image)
        if not os.path.isfile(path):
            reason = "Is a directory" if os.path.isdir(path) else "No such file or directory"
            raise DarknetError(f"{path}: cannot read image: {reason}")
        from .data.lists import imread  # OpenCV (~25 MiB, ~80 ms) only when used: `import pydarknet` stays light

        img = imread(path, channels)
        if img is None:
            raise DarknetError(f"{path}: cannot read image (missing, unreadable or not an image)")
        return img
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3)):
        raise ValueError(f"expected a uint8 image [H, W] or [H, W, 3], got {img.dtype} {img.shape}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if not img.flags.c_contiguous:
        img = np.ascontiguousarray(img)
    return img


def load(cfg_path, weights_path=None, batch: Optional[int] = None, threads: Optional[int] = None, names=None,
         max_layers: Optional[int] = None, seed: int = 0, gpu: Optional[int] = None) -> Network:
    """Builds the network of a darknet cfg and, when given, loads its weights
    (only the first `max_layers` layers' when given). `batch`: the full
    training batch (default: the cfg's; mini-batches are batch / subdivisions;
    predict and detect size the network to what they are given). `names`:
    class names, a list or the path of a .names file. `seed`: the initial
    weights' generator (darknet's initialization, for training from scratch).
    `gpu`: the CUDA device to run on (None: the CPU); see Network.set_device."""
    spec = parse_cfg(cfg_path)
    if isinstance(names, (str, os.PathLike)):
        names = read_names(names)
    net = Network(spec, batch=batch, threads=threads, names=names, seed=seed)
    if weights_path is not None:
        net.load_weights(weights_path, max_layers=max_layers)
    if gpu is not None:
        net.set_device(gpu)
    return net
