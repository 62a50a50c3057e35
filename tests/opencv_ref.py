"""Independent reference outputs for parity tests, computed by OpenCV's darknet importer.

OpenCV 4.x (``cv2.dnn.readNetFromDarknet``; OpenCV 5 dropped the darknet importer) turns a
darknet ``.cfg`` + ``.weights`` pair into its own graph.  This module runs that graph and
returns the output of every darknet layer OpenCV exposes, keyed by the darknet layer index
(0-based, cfg order, ``[net]`` excluded), so that pydarknet's layer outputs can be compared
with an implementation that shares no code with it.

Public API
----------
``opencv_available()``                      -> (bool, reason)
``opencv_mapping(cfg, yolo="skip")``        -> {darknet index: OpenCV layer name}
``opencv_layer_outputs(cfg, weights, x, layers=None, threads=1)``
                                            -> {darknet index: float32 array}
``opencv_detections(cfg, weights, x, threads=1, thresh=0.0, nms_threshold=0.0)``
                                            -> {darknet [yolo] index: float32 [B, N, 5+classes]}
``opencv_yolo_layers(cfg)``                 -> {[yolo] index: {"region", "input", "input_index"}}
``opencv_weights_layout(cfg)``              -> per-layer weight counts, as OpenCV reads them
``cfg_with_size(cfg, width, height, out_dir)``  -> path of a copy with [net] width/height changed
``cfg_prefix(cfg, n_layers, out_dir)``      -> path of a copy keeping only the first n layers

How OpenCV names the layers of a darknet cfg (found by experiment with OpenCV 4.14)
----------------------------------------------------------------------------------
Darknet layer ``i`` becomes one or more OpenCV layers.  Its *primary* layers carry the
suffix ``_i``; a post-processing layer that belongs to it carries the suffix ``_{i+1}``
(OpenCV adds it after bumping its layer counter):

* ``[convolutional]``   ``conv_i`` (+ ``bn_i`` when batch_normalize=1)
* ``[connected]``       ``fullyConnected_i`` (+ ``bn_i``)
* ``[maxpool]``         ``pool_i``            ``[avgpool]``  ``avgpool_i``
* ``[softmax]``         ``softmax_i``         ``[upsample]`` ``upsample_i``
* ``[route]``           ``identity_i`` (one input), ``concat_i`` (several), ``slice_i`` (groups=)
* ``[shortcut]``        ``shortcut_i`` (Eltwise sum)   ``[scale_channels]`` ``scale_channels_i``
* ``[sam]``             ``sam_i``             ``[reorg]``    ``reorg_i``
* ``[dropout]``/``[cost]`` ``identity_i``
* ``[crop]``            ``crop_i`` then ``adjust_crop_{i+1}``; OpenCV also counts the latter as
  a layer, so every later layer is misnumbered and gets the wrong weights: a cfg with a layer
  after [crop] is refused here (RuntimeError).
* ``[yolo]``            ``permute_i`` (NCHW->NHWC) then ``yolo_i`` (a Region layer)
* ``[region]``          ``permute_i`` then ``detection_out``
* ``activation=A`` (not linear) appends ``A_{i+1}``: ``leaky_{i+1}`` (ReLU, slope 0.1),
  ``relu_{i+1}``, ``mish_{i+1}``, ``swish_{i+1}``, ``logistic_{i+1}`` (Sigmoid), ``tanh_{i+1}``.
  Other darknet activations (relu6, elu, selu, gelu, hard_mish, relie, ramp, ...) are refused
  at load time: "Unsupported activation: <name>".

The darknet layer's output is that of the *last* OpenCV layer of its group, e.g. in
yolov4-tiny: 0 -> ``leaky_1`` (conv_0, bn_0, leaky_1), 3 -> ``slice_3``, 6 -> ``concat_6``,
9 -> ``pool_9``, 29 -> ``conv_29`` (linear conv), 33 -> ``upsample_33``.

Layers with no equal OpenCV output are left out of the mapping: ``[yolo]``/``[region]``
(OpenCV's Region layer outputs decoded boxes, see below; the raw conv output that feeds a
[yolo] layer is in the mapping under the feeding layer's own index, and ``yolo="input"``
maps the [yolo] index to that name too), and ``[cost]`` (darknet's cost layer output is not
its input at inference; OpenCV makes it an Identity).

Checked to equal darknet's semantics (NumPy, fp32 rounding): convolution (groups, stride,
pad), batch norm (with the epsilon fix below), leaky 0.1 / relu / logistic / tanh, mish and
swish (abs error ~1e-6), maxpool including darknet's default padding = size-1 (window starts
at -padding/2, padded cells ignored), nearest upsample, route concat and groups/group_id,
shortcut with fewer channels in `from` (added into the first channels, output keeps the
previous layer's channels).  Known differences: [softmax] is taken over channels at each
position (darknet: over all C*H*W; identical after a global avgpool), [upsample] ignores
darknet's ``scale=`` option, and shortcuts between different spatial sizes are refused.

Fusion, Winograd and batch-norm epsilon
---------------------------------------
* With OpenCV's default layer fusion, batch norm and activations are folded into the
  convolution.  Asking ``net.forward`` for a fused-away name (e.g. ``bn_0`` alone) then returns
  stale memory (relative error ~1 or 1e37) or raises ``inputs[0].data != outputs[0].data``;
  folding also moves results by ~1e-6 relative.  Requesting every name in one call happens
  to avoid it, but this module simply calls ``net.enableFusion(False)``, after which every
  name, requested alone or together, gives the unfused value.
* OpenCV's default Winograd 3x3 convolution differs from direct convolution by ~1e-5
  relative; it is switched off (``winograd=False``) so that the reference is a plain fp32
  direct convolution.
* OpenCV's BatchNorm uses ``(x - mean) / sqrt(var + 1e-6)``; darknet (AlexeyAB) uses
  ``sqrt(var + .00001)``.  Unless ``darknet_bn_eps=False``, the weights handed to OpenCV have
  every rolling variance raised by 9e-6 (in memory, the file is not touched), so that OpenCV
  computes darknet's formula.  Scale and bias are applied after normalisation, as in darknet.

OpenCV's decoded [yolo] output (``opencv_detections``)
------------------------------------------------------
For a [yolo] layer fed by a raw tensor ``t`` of shape [B, A*(5+C), h, w] (A = len(mask)
anchors, C classes) on a network input of W x H pixels, OpenCV returns ``[B, h*w*A, 5+C]``
(this module always adds the batch axis; OpenCV drops it when B == 1):

* rows: cell-major, anchor fastest: ``row = (cy * w + cx) * A + a`` with ``a`` in mask order
  (the same order as darknet's ``get_yolo_detections`` loops); every cell/anchor appears.
* col 0, 1: box centre, normalised to 0..1 by the grid size:
  ``(cx + sig(tx) * s - (s - 1) / 2) / w`` and ``(cy + sig(ty) * s - (s - 1) / 2) / h``
  with ``s = scale_x_y`` (default 1).
* col 2, 3: box size normalised by the *network input* size:
  ``exp(tw) * anchor_w / W`` and ``exp(th) * anchor_h / H``.
* col 4: objectness ``sig(to)`` (never thresholded).
* col 5..: class score *multiplied by objectness*: ``sig(tc) * sig(to)``, set to 0 unless it is
  ``> thresh``.
* ``new_coords=1`` (yolov7-tiny): no sigmoid is applied by the Region layer (the feeding conv
  already has activation=logistic): centre ``(cx + t * s - (s - 1) / 2) / w``, size
  ``(2 t)^2 * anchor / W``, objectness ``t``, class ``t_c * t_o``.
* OpenCV reads ``thresh`` (default 0.2) and ``nms_threshold`` (default 0, meaning no NMS)
  from the [yolo] section; with nms_threshold > 0 it runs per-class greedy NMS inside the
  layer, zeroing suppressed class scores.  ``opencv_detections`` overrides both (defaults
  0.0: every class score kept, no NMS) in an in-memory copy of the cfg.
  Boxes are relative to the network input (no letterbox correction to an image size).
* ``[region]`` (yolov2, yolov2-tiny) differs: sizes are ``exp(t) * anchor / grid`` (anchors
  in grid units; OpenCV divides the width by the grid's rows and the height by its columns,
  the same on a square grid), the centre is ``(cx + sig(tx)) / w`` (no scale_x_y), classes are
  ``softmax * objectness``, zeroed unless ``> thresh`` (OpenCV's default for [region] is 0.001;
  the yolov2 cfgs say .6, which ``opencv_detections`` overrides), and OpenCV always runs its
  per-class NMS at 0.4 (the cfg cannot switch it off), so suppressed class scores read 0.
  darknet's own [region] layer output is not decoded: cell-major ``[B][h*w][num][5+C]`` with
  x, y, w, h raw, the logistic on objectness and a softmax over the classes.

The public cfgs in the project's cfg/ with OpenCV 4.14.0
--------------------------------------------------------
yolov3-tiny, yolov4-tiny, yolov3, yolov4, yolov7-tiny, darknet19, csdarknet53-omega, yolov2,
yolov2-tiny (darknet's old [reorg] included), yolov4-csp, yolov3-spp, yolov4-tiny-3l and
yolov3-tiny-prn (shortcuts from a layer with more channels) load and run.  resnet50 loads but every forward fails in shape inference at ``shortcut_17`` (a
shortcut joining 512x20x20 with 256x40x40 at 160x160 input, which darknet allows):
``OpenCV(4.14.0) .../eltwise_layer.cpp:258: error: (-215:Assertion failed)
inputs[vecIdx][j] == inputs[i][j] in function 'getMemoryShapes'`` -- ``cfg_prefix(cfg, 17,
...)`` gives a network OpenCV can run, covering darknet layers 0..16.

Other behaviour worth knowing: ``readNetFromDarknet(cfg)`` without weights builds the graph
(names are available) but layers have no blobs: a forward fails (``!blobs.empty()`` in the
convolution) and ``getLayer`` of a BatchNorm fails.  A weights file that is too short is
read silently (missing values become garbage/zeros); ``opencv_net`` checks the size.
"""

from __future__ import annotations

import os
import re

import numpy as np

try:  # pragma: no cover - exercised implicitly
    import cv2
except ImportError:  # pragma: no cover
    cv2 = None

__all__ = [
    "opencv_available",
    "opencv_mapping",
    "opencv_yolo_layers",
    "opencv_layer_outputs",
    "opencv_detections",
    "opencv_net",
    "opencv_weights_layout",
    "cfg_with_size",
    "cfg_prefix",
    "read_cfg_sections",
]

# Darknet's batch-norm epsilon (AlexeyAB: sqrt(variance + .00001f)) and OpenCV's.
DARKNET_BN_EPS = 1e-5
OPENCV_BN_EPS = 1e-6

# Names of OpenCV layers appended *after* a darknet layer's primary layers; they carry the
# suffix of the next darknet index but belong to the current one.
_POST_PREFIXES = frozenset(
    ["leaky", "relu", "mish", "swish", "logistic", "tanh", "adjust_crop"]
)

# Darknet section type -> prefixes its primary OpenCV layers may have (used to validate).
_PRIMARY_PREFIXES = {
    "convolutional": {"conv", "bn"},
    "conv": {"conv", "bn"},
    "connected": {"fullyConnected", "bn"},
    "conn": {"fullyConnected", "bn"},
    "maxpool": {"pool"},
    "max": {"pool"},
    "avgpool": {"avgpool"},
    "avg": {"avgpool"},
    "softmax": {"softmax"},
    "soft": {"softmax"},
    "route": {"identity", "concat", "slice"},
    "shortcut": {"shortcut"},
    "upsample": {"upsample"},
    "dropout": {"identity"},
    "cost": {"identity"},
    "reorg": {"reorg"},
    "scale_channels": {"scale_channels"},
    "sam": {"sam"},
    "crop": {"crop"},
    "yolo": {"permute", "yolo"},
    "region": {"permute", "detection_out"},
}

# Section types whose output OpenCV does not reproduce (see the module docstring).
_DETECTION_TYPES = frozenset(["yolo", "region"])
_NOT_MAPPED_TYPES = frozenset(["cost"])

_HEADER_BYTES_NEW = 20  # int32 major, minor, revision + uint64 seen
_HEADER_BYTES_OLD = 16  # ... + uint32 seen (major*10+minor < 2)


# --------------------------------------------------------------------------- availability


def opencv_available():
    """(True, "") when cv2 with a darknet importer (OpenCV 4.x) is usable, else (False, why)."""
    if cv2 is None:
        return False, "cv2 (opencv-python) is not installed"
    version = getattr(cv2, "__version__", "0")
    try:
        major = int(version.split(".")[0])
    except ValueError:
        return False, "cannot parse cv2 version %r" % version
    if major >= 5:
        return False, "OpenCV %s has no darknet importer (removed in 5.x)" % version
    if major < 4 or not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromDarknet"):
        return False, "OpenCV %s lacks cv2.dnn.readNetFromDarknet" % version
    return True, ""


def _require_cv2():
    ok, why = opencv_available()
    if not ok:
        raise RuntimeError(why)


# --------------------------------------------------------------------------- cfg helpers


def read_cfg_sections(cfg_path):
    """Minimal cfg reader: list of (section_type, {key: value}) including [net].

    Comment handling follows darknet/OpenCV: lines starting with '#' or ';' are skipped;
    whitespace inside lines is removed.
    """
    sections = []
    with open(cfg_path, "r", encoding="utf-8", errors="replace") as fh:
        for raw in fh:
            line = "".join(raw.split())
            if not line or line[0] in "#;":
                continue
            if line[0] == "[":
                end = line.find("]")
                if end < 0:
                    raise ValueError("bad section header in %s: %r" % (cfg_path, raw))
                sections.append((line[1:end], {}))
            elif "=" in line:
                if not sections:
                    raise ValueError("option before any section in %s: %r" % (cfg_path, raw))
                key, value = line.split("=", 1)
                sections[-1][1][key] = value
    if not sections or sections[0][0] not in ("net", "network"):
        raise ValueError("%s does not start with a [net] section" % cfg_path)
    return sections


def _layer_sections(cfg_path):
    return read_cfg_sections(cfg_path)[1:]


def _rewrite_cfg_text(text, net_values=None, section_values=None, keep_layers=None):
    """Rewrite cfg text line by line.

    net_values: {key: value} set in [net] (replacing existing lines, else appended to it).
    section_values: {section_type: {key: value}} set in every section of that type.
    keep_layers: if not None, drop layer sections with index >= keep_layers.
    Everything else (comments, order, spacing) is kept as is.
    """
    net_values = dict(net_values or {})
    section_values = {k: dict(v) for k, v in (section_values or {}).items()}
    out = []
    current = None  # section type of the lines being copied
    layer_index = -1
    pending = {}  # values still to append at the end of the current section
    dropping = False

    def flush():
        if pending and out and not out[-1].endswith("\n"):
            out[-1] += "\n"
        for key, value in pending.items():
            out.append("%s=%s\n" % (key, value))
        pending.clear()

    for raw in text.splitlines(keepends=True):
        stripped = "".join(raw.split())
        if stripped.startswith("["):
            flush()
            current = stripped[1 : stripped.find("]")]
            if current in ("net", "network"):
                pending = dict(net_values)
            else:
                layer_index += 1
                pending = dict(section_values.get(current, {}))
            dropping = keep_layers is not None and current not in ("net", "network") and (
                layer_index >= keep_layers
            )
            if dropping:
                pending = {}
                continue
            if out and not out[-1].endswith("\n"):
                out[-1] += "\n"
            out.append(raw)
            continue
        if dropping:
            continue
        if stripped and stripped[0] not in "#;" and "=" in stripped and current is not None:
            key = stripped.split("=", 1)[0]
            if key in pending:
                out.append("%s=%s\n" % (key, pending.pop(key)))
                continue
        out.append(raw)
    flush()
    return "".join(out)


def _read_text(cfg_path):
    with open(cfg_path, "r", encoding="utf-8", errors="replace") as fh:
        return fh.read()


def cfg_with_size(cfg_path, width, height, out_dir):
    """Write a copy of cfg_path with only [net] width/height changed; return its path.

    For detectors the size should be a multiple of the total stride (32 for the public cfgs).
    """
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise ValueError("width and height must be positive")
    text = _rewrite_cfg_text(_read_text(cfg_path), net_values={"width": width, "height": height})
    stem = os.path.splitext(os.path.basename(cfg_path))[0]
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "%s_%dx%d.cfg" % (stem, width, height))
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def cfg_prefix(cfg_path, n_layers, out_dir):
    """Write a copy of cfg_path keeping [net] and the first n_layers layers; return its path.

    The original .weights file can be used with it (the trailing weights are ignored), which
    lets OpenCV run the part of a network before a layer it refuses (e.g. resnet50: 17).
    """
    n_layers = int(n_layers)
    if n_layers <= 0:
        raise ValueError("n_layers must be positive")
    text = _rewrite_cfg_text(_read_text(cfg_path), keep_layers=n_layers)
    stem = os.path.splitext(os.path.basename(cfg_path))[0]
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "%s_first%d.cfg" % (stem, n_layers))
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


# --------------------------------------------------------------------------- mapping


_NAME_RE = re.compile(r"^(.*)_(\d+)$")


def _split_name(name):
    m = _NAME_RE.match(name)
    if m is None:
        return name, None
    return m.group(1), int(m.group(2))


def _opencv_groups(cfg_path):
    """{darknet index: [OpenCV layer names, in graph order]} from a cfg-only load."""
    _require_cv2()
    sections = _layer_sections(cfg_path)
    crops = [i for i, (stype, _) in enumerate(sections) if stype == "crop"]
    if crops and crops[0] != len(sections) - 1:
        # OpenCV bumps its layer counter twice for [crop] (crop_i, adjust_crop_{i+1}): every
        # later layer is misnumbered and its weights are handed to the wrong OpenCV layer.
        raise RuntimeError(
            "%s: OpenCV misnumbers the layers after [crop] (layer %d); no reference possible"
            % (cfg_path, crops[0])
        )
    net = cv2.dnn.readNetFromDarknet(cfg_path)
    names = list(net.getLayerNames())
    groups = {}
    current = -1
    for name in names:
        prefix, suffix = _split_name(name)
        if prefix in _POST_PREFIXES and current >= 0 and suffix == current + 1:
            groups[current].append(name)  # activation / crop adjustment of layer `current`
            continue
        if suffix is None:  # e.g. "detection_out" of a [region] layer: follows its permute
            if current < 0:
                raise RuntimeError("unexpected OpenCV layer %r at start of %s" % (name, cfg_path))
            groups[current].append(name)
            continue
        if suffix < current:
            raise RuntimeError(
                "OpenCV layer %r out of order (darknet index %d seen) in %s" % (name, current, cfg_path)
            )
        current = suffix
        groups.setdefault(current, []).append(name)

    if sorted(groups) != list(range(len(sections))):
        missing = sorted(set(range(len(sections))) - set(groups))
        extra = sorted(set(groups) - set(range(len(sections))))
        raise RuntimeError(
            "OpenCV layer names do not cover darknet layers of %s (missing %s, extra %s)"
            % (cfg_path, missing, extra)
        )
    for i, (stype, opts) in enumerate(sections):
        allowed = _PRIMARY_PREFIXES.get(stype)
        members = groups[i]
        primaries = [n for n in members if _split_name(n)[1] == i or _split_name(n)[1] is None]
        post = [n for n in members if n not in primaries]
        if allowed is not None:
            bad = [n for n in primaries if _split_name(n)[0] not in allowed]
            if bad or not primaries:
                raise RuntimeError(
                    "darknet layer %d [%s] of %s maps to unexpected OpenCV layers %s"
                    % (i, stype, cfg_path, members)
                )
        act = opts.get("activation", "linear")
        expected_post = (["adjust_crop_%d" % (i + 1)] if stype == "crop" else []) + (
            ["%s_%d" % (act, i + 1)] if act != "linear" and stype not in _DETECTION_TYPES else []
        )
        if post != expected_post:
            raise RuntimeError(
                "darknet layer %d [%s activation=%s] of %s: OpenCV post layers %s, expected %s"
                % (i, stype, act, cfg_path, post, expected_post)
            )
    return groups


def opencv_mapping(cfg_path, yolo="skip"):
    """{darknet layer index: OpenCV layer name whose output equals that layer's output}.

    [yolo]/[region] and [cost] layers are left out (no OpenCV output equals darknet's);
    with yolo="input" a [yolo]/[region] index maps to the name of the layer feeding it
    (its output is the yolo layer's *input*, not darknet's activated yolo output).
    Only the cfg is read (no weights needed).
    """
    if yolo not in ("skip", "input"):
        raise ValueError("yolo must be 'skip' or 'input'")
    sections = _layer_sections(cfg_path)
    groups = _opencv_groups(cfg_path)
    mapping = {}
    for i, (stype, _) in enumerate(sections):
        if stype in _DETECTION_TYPES:
            if yolo == "input" and i > 0:
                mapping[i] = groups[i - 1][-1]
            continue
        if stype in _NOT_MAPPED_TYPES:
            continue
        mapping[i] = groups[i][-1]
    return mapping


def opencv_yolo_layers(cfg_path):
    """{[yolo]/[region] index: {"region": OpenCV Region name, "input": name of its input,
    "input_index": darknet index producing that input}}."""
    sections = _layer_sections(cfg_path)
    groups = _opencv_groups(cfg_path)
    out = {}
    for i, (stype, _) in enumerate(sections):
        if stype in _DETECTION_TYPES:
            out[i] = {
                "region": groups[i][-1],
                "input": groups[i - 1][-1] if i > 0 else None,
                "input_index": i - 1,
            }
    return out


# --------------------------------------------------------------------------- weights


def _header_bytes(major, minor):
    return _HEADER_BYTES_NEW if major * 10 + minor >= 2 else _HEADER_BYTES_OLD


def opencv_weights_layout(cfg_path):
    """What OpenCV reads from a .weights file for this cfg, in file order.

    Returns a list of dicts {"index": darknet index, "name": OpenCV layer name, "type":
    "Convolution" | "InnerProduct", "filters": n, "batch_normalize": bool, "weights": count,
    "shape": OpenCV weight blob shape},
    where each entry occupies (filters [* 4 with batch norm] + weights) float32 values after
    the header.  Shapes come from OpenCV itself (cfg plus a header-only weights buffer).
    """
    _require_cv2()
    cfg_buf = np.frombuffer(_read_text(cfg_path).encode("utf-8"), np.uint8)
    header = np.array([0, 2, 5, 0, 0], np.int32).view(np.uint8)
    net = cv2.dnn.readNetFromDarknet(cfg_buf, header)
    names = list(net.getLayerNames())
    name_set = set(names)
    layout = []
    for name in names:
        prefix, index = _split_name(name)
        if prefix not in ("conv", "fullyConnected"):
            continue
        lid = net.getLayerId(name)
        w = net.getParam(lid, 0)
        bn = ("bn_%d" % index) in name_set
        layout.append(
            {
                "index": index,
                "name": name,
                "type": "Convolution" if prefix == "conv" else "InnerProduct",
                "filters": int(w.shape[0]),
                "batch_normalize": bn,
                "weights": int(w.size),
                "shape": tuple(int(s) for s in w.shape),
            }
        )
    return layout


def _weights_floats(layout):
    return sum(e["filters"] * (4 if e["batch_normalize"] else 1) + e["weights"] for e in layout)


def _load_weights_for_opencv(cfg_path, weights_path, darknet_bn_eps):
    """Check the weights file size against the cfg; return what readNetFromDarknet takes.

    Returns the file path when it can be used as is, else a uint8 array holding the file
    with every batch-norm rolling variance raised by DARKNET_BN_EPS - OPENCV_BN_EPS.
    """
    size = os.path.getsize(weights_path)
    if size < 12:
        raise ValueError("%s is too short for a darknet weights header" % weights_path)
    major, minor, _revision = (int(v) for v in np.fromfile(weights_path, np.int32, count=3))
    if major > 1000 or minor > 1000:
        raise ValueError("%s: transposed weights (major/minor > 1000) are not supported" % weights_path)
    header = _header_bytes(major, minor)
    layout = opencv_weights_layout(cfg_path)
    need = header + 4 * _weights_floats(layout)
    if size < need:
        raise ValueError(
            "%s has %d bytes but %s needs %d (OpenCV would silently read garbage)"
            % (weights_path, size, cfg_path, need)
        )
    if not (darknet_bn_eps and any(e["batch_normalize"] for e in layout)):
        return weights_path
    data = np.fromfile(weights_path, np.uint8)
    values = data[header:need].view(np.float32)  # writes go through to `data`
    delta = np.float32(DARKNET_BN_EPS - OPENCV_BN_EPS)
    pos = 0
    for e in layout:
        f = e["filters"]
        pos += f  # biases
        if e["batch_normalize"]:
            values[pos + 2 * f : pos + 3 * f] += delta  # rolling variance (after scales, mean)
            pos += 3 * f
        pos += e["weights"]
    return data


def opencv_net(cfg_path, weights_path, darknet_bn_eps=True, winograd=False, cfg_text=None):
    """Load a cv2.dnn.Net for the cfg/weights, set up for reference use.

    Backend OPENCV, target CPU, layer fusion off, Winograd off unless asked; with
    darknet_bn_eps the batch-norm variances are shifted (in memory) so that OpenCV computes
    darknet's epsilon.  cfg_text, when given, replaces the cfg file's content (it must
    describe the same weights layout).
    """
    _require_cv2()
    weights = _load_weights_for_opencv(cfg_path, weights_path, darknet_bn_eps)
    if cfg_text is None and isinstance(weights, str):
        net = cv2.dnn.readNetFromDarknet(cfg_path, weights)
    else:
        if isinstance(weights, str):
            weights = np.fromfile(weights, np.uint8)
        text = _read_text(cfg_path) if cfg_text is None else cfg_text
        net = cv2.dnn.readNetFromDarknet(np.frombuffer(text.encode("utf-8"), np.uint8), weights)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.enableFusion(False)
    if hasattr(net, "enableWinograd"):
        net.enableWinograd(bool(winograd))
    return net


def _check_input(cfg_path, x):
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError("x must be [B, C, H, W], got shape %s" % (x.shape,))
    net_opts = read_cfg_sections(cfg_path)[0][1]
    want = (int(net_opts.get("channels", 3)), int(net_opts.get("height", 416)), int(net_opts.get("width", 416)))
    if tuple(x.shape[1:]) != want:
        raise ValueError(
            "x has shape %s but %s expects [B, %d, %d, %d] (use cfg_with_size to change the size)"
            % (x.shape, cfg_path, want[0], want[1], want[2])
        )
    return x


def _forward(net, x, names, threads):
    previous = cv2.getNumThreads()
    cv2.setNumThreads(int(threads))
    try:
        net.setInput(x)
        outs = net.forward(list(names))
    finally:
        cv2.setNumThreads(previous)
    return [np.array(o, dtype=np.float32, copy=True) for o in outs]


# --------------------------------------------------------------------------- outputs


def opencv_layer_outputs(
    cfg_path,
    weights_path,
    x,
    layers=None,
    threads=1,
    *,
    yolo="skip",
    darknet_bn_eps=True,
    winograd=False,
):
    """{darknet index: float32 output} for every layer OpenCV exposes (or those in `layers`).

    x: float32 [B, C, H, W], values 0..1, sized to the cfg's [net] width/height/channels.
    Outputs are [B, C, H, W] (or [B, N] for [connected]).  All names are fetched in one
    forward call.  Asking for an index absent from opencv_mapping(cfg, yolo) raises KeyError.
    """
    _require_cv2()
    x = _check_input(cfg_path, x)
    mapping = opencv_mapping(cfg_path, yolo=yolo)
    if layers is None:
        indices = sorted(mapping)
    else:
        indices = sorted(set(int(i) for i in layers))
        absent = [i for i in indices if i not in mapping]
        if absent:
            sections = _layer_sections(cfg_path)
            what = ", ".join(
                "%d [%s]" % (i, sections[i][0]) if 0 <= i < len(sections) else str(i) for i in absent
            )
            raise KeyError("no OpenCV output for darknet layer(s) %s of %s" % (what, cfg_path))
    if not indices:
        return {}
    net = opencv_net(cfg_path, weights_path, darknet_bn_eps=darknet_bn_eps, winograd=winograd)
    names = [mapping[i] for i in indices]
    unique = list(dict.fromkeys(names))
    outs = dict(zip(unique, _forward(net, x, unique, threads)))
    return {i: outs[mapping[i]].copy() for i in indices}


def opencv_detections(
    cfg_path,
    weights_path,
    x,
    threads=1,
    thresh=0.0,
    nms_threshold=0.0,
    *,
    darknet_bn_eps=True,
    winograd=False,
):
    """{[yolo]/[region] index: float32 [B, h*w*A, 5+classes]}: OpenCV's decoded detections.

    Layout in the module docstring.  thresh / nms_threshold override the values OpenCV would
    read from each [yolo] section (None keeps the cfg's: OpenCV defaults 0.2 and 0 = no NMS).
    """
    _require_cv2()
    x = _check_input(cfg_path, x)
    yolos = opencv_yolo_layers(cfg_path)
    if not yolos:
        return {}
    overrides = {}
    if thresh is not None:
        overrides["thresh"] = repr(float(thresh))
    if nms_threshold is not None:
        overrides["nms_threshold"] = repr(float(nms_threshold))
    text = _rewrite_cfg_text(
        _read_text(cfg_path), section_values={"yolo": overrides, "region": overrides}
    )
    net = opencv_net(cfg_path, weights_path, darknet_bn_eps=darknet_bn_eps, winograd=winograd, cfg_text=text)
    indices = sorted(yolos)
    outs = _forward(net, x, [yolos[i]["region"] for i in indices], threads)
    result = {}
    for i, out in zip(indices, outs):
        if out.ndim == 2:  # OpenCV drops the batch axis when B == 1
            out = out.reshape((x.shape[0],) + out.shape)
        result[i] = out
    return result
