"""ONNX export: a pydarknet network as an ONNX graph computing what
``net.predict`` computes.

``export_onnx(net, path)`` (and ``pydarknet export cfg weights -o model.onnx``)
writes one graph: input ``input`` float32 [batch, C, H, W] (0..1, as
``net.predict`` takes it), outputs the tensors ``net.predict`` returns, in its
order and layout (the [yolo] heads [B, C, H, W] with the logistic and
scale_x_y applied as darknet applies them; [region] heads [B, H, W, num,
5 + classes]; [fcos] heads [B, 5 + classes, H, W] with the distances through
exp or relu and the logistic on the rest; a network without heads: its last
layer). Every layer is
written with darknet's semantics as pydarknet's C core computes them (the
tests compare onnxruntime's outputs with ``net.predict``):

* [convolutional]: one Conv, batch norm folded into its weights and bias
  (w * scale / sqrt(var + .00001), bias - mean * that), groups, strides per
  axis, dilation, darknet's output size (asymmetric end padding where it
  needs it); the activation after it.
* [maxpool]: darknet's padding (padding // 2 before, the rest after, -inf
  values), strides per axis; maxpool_depth across the channels. [local_avgpool], [avgpool] (global).
* [route]: Concat of its sources, each the slice of its `groups`/`group_id`.
* [shortcut]: the input plus its sources (a source of another size sampled
  as pjreddie's darknet does), or their weighted sum (per_feature,
  per_channel; none, relu or softmax normalization), then the activation. [sam]: Mul. [scale_channels]: Mul broadcast per
  channel (or per pixel with scale_wh). [upsample]: nearest Resize times
  `scale` (stride > 0), block sums (stride < 0). [reorg]/[reorg3d]: the exact
  permutation of the C core as one Gather. [connected]: Gemm with its batch
  norm folded. [softmax]: groups and temperature. [dropout], [cost],
  [empty]: the identity. [reshape]: Reshape. [scale]: Mul and Add per channel.
  [reduction]: one ReduceSum over each output value's run. [groupnorm]: composed.
  [deformable]: DeformConv (opset 19, the default opset then). [batchnorm], [activation].
* activations: linear, logistic, leaky, relu, relu6, relie, ramp, elu, selu,
  gelu, tanh, loggy, plse, hardtan, lhtan, swish, mish, hard_mish, revleaky,
  stair, and across the channels normalize_channels(_softmax(_maxval));
  darknet's formulas composed from ONNX operators.

With ``decode=True`` (``--decode``) the graph ends in one output
``detections`` instead: every head's boxes decoded as ``net.detect`` decodes
them, in network-input pixels, anchor by anchor and cell by cell, head after
head; ``layout="yolov5"`` [B, N, 5 + classes] (cx, cy, w, h, objectness,
class probabilities) or ``"yolov8"`` [B, 4 + classes, N] (cx, cy, w, h, then
objectness x class probability; an [fcos] head's rows have objectness
sqrt(centerness) and class columns sqrt(class score), so that the product is
its score sqrt(class x centerness)). ``nms=(iou, score, max_per_class)``
(``--nms``) adds ONNX NonMaxSuppression: output ``selected`` [K, 3] (batch,
class, row) per class, greedy IoU as ``net.detect`` suppresses.
``half=True`` (``--half``): float16 weights and arithmetic, float32 input and
outputs (casts at the edges).

Anything else (a [region] with coords other than 4, a tree softmax, ...) raises
OnnxExportError naming the layer and the option. ``onnx`` is needed (the
``pydarknet[onnx]`` extra, with onnxruntime to run the result); it is
imported here only.
"""
from __future__ import annotations

import numpy as np

from .cfg import HEAD_TYPES

DEFAULT_OPSET = 17
BN_EPS = .00001


class OnnxExportError(ValueError):
    """A layer or option that the ONNX graph cannot express (the message names it)."""


def _onnx():
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise OnnxExportError("ONNX export needs the onnx package: pip install 'pydarknet[onnx]' "
                              "(or pip install onnx onnxruntime)") from None
    return onnx, TensorProto, helper, numpy_helper


class _Graph:
    """Nodes and constants being written, with unique names."""

    def __init__(self, helper, numpy_helper, opset=DEFAULT_OPSET):
        self.h, self.nh, self.opset = helper, numpy_helper, int(opset)
        self.nodes, self.inits = [], []
        self._n = 0

    def name(self, base):
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, value, base="c", dtype=np.float32):
        name = self.name(base)
        self.inits.append(self.nh.from_array(np.ascontiguousarray(np.asarray(value, dtype=dtype)), name))
        return name

    def reduce(self, op_type, x, axis, keepdims):
        """ReduceMax / ReduceMean over one axis (their axes an attribute before opset 18, an input since)."""
        if self.opset >= 18:
            return self.op(op_type, [x, self.const([axis], dtype=np.int64)], keepdims=keepdims)
        return self.op(op_type, [x], axes=[axis], keepdims=keepdims)

    def op(self, op_type, inputs, base="t", **attrs):
        out = self.name(base)
        self.nodes.append(self.h.make_node(op_type, list(inputs), [out], name=self.name(op_type), **attrs))
        return out


# ----------------------------------------------------------------------------- activations

def _activation(g, x, act, where):
    c = lambda v: g.const(np.float32(v))  # noqa: E731
    if act == "linear":
        return x
    if act == "logistic":
        return g.op("Sigmoid", [x])
    if act == "loggy":
        return g.op("Sub", [g.op("Mul", [g.op("Sigmoid", [x]), c(2)]), c(1)])
    if act in ("leaky", "revleaky"):
        return g.op("LeakyRelu", [x], alpha=0.1)
    if act == "relie":
        return g.op("LeakyRelu", [x], alpha=0.01)
    if act == "relu":
        return g.op("Relu", [x])
    if act == "relu6":
        return g.op("Clip", [x, c(0), c(6)])
    if act == "ramp":
        return g.op("Add", [g.op("Relu", [x]), g.op("Mul", [x, c(.1)])])
    if act == "elu":
        return g.op("Elu", [x], alpha=1.0)
    if act == "selu":
        return g.op("Selu", [x], alpha=1.6732, gamma=1.0507)
    if act == "gelu":   # 0.5 x (1 + tanh(0.797885 x + 0.035677 x^3))
        x3 = g.op("Mul", [g.op("Mul", [x, x]), x])
        inner = g.op("Add", [g.op("Mul", [x, c(0.797885)]), g.op("Mul", [x3, c(0.035677)])])
        return g.op("Mul", [g.op("Mul", [x, c(.5)]), g.op("Add", [c(1), g.op("Tanh", [inner])])])
    if act == "tanh":
        return g.op("Tanh", [x])
    if act == "hardtan":
        return g.op("Clip", [x, c(-1), c(1)])
    if act == "plse":   # x < -4: .01 (x + 4); x > 4: .01 (x - 4) + 1; else .125 x + .5
        low = g.op("Mul", [g.op("Add", [x, c(4)]), c(.01)])
        high = g.op("Add", [g.op("Mul", [g.op("Sub", [x, c(4)]), c(.01)]), c(1)])
        mid = g.op("Add", [g.op("Mul", [x, c(.125)]), c(.5)])
        return g.op("Where", [g.op("Less", [x, c(-4)]), low,
                              g.op("Where", [g.op("Greater", [x, c(4)]), high, mid])])
    if act == "lhtan":   # x < 0: .001 x; x > 1: .001 (x - 1) + 1; else x
        low = g.op("Mul", [x, c(.001)])
        high = g.op("Add", [g.op("Mul", [g.op("Sub", [x, c(1)]), c(.001)]), c(1)])
        return g.op("Where", [g.op("Less", [x, c(0)]), low, g.op("Where", [g.op("Greater", [x, c(1)]), high, x])])
    if act == "swish":
        return g.op("Mul", [x, g.op("Sigmoid", [x])])
    if act == "mish":
        return g.op("Mul", [x, g.op("Tanh", [g.op("Softplus", [x])])])
    if act == "hard_mish":   # x > 0: x; x > -2: x^2 / 2 + x; else 0
        mid = g.op("Add", [g.op("Mul", [g.op("Mul", [x, x]), c(.5)]), x])
        return g.op("Where", [g.op("Greater", [x, c(0)]), x,
                              g.op("Where", [g.op("Greater", [x, c(-2)]), mid, c(0)])])
    if act == "stair":   # n = floor(x): n even: floor(x / 2); odd: x - n + floor(x / 2)
        n = g.op("Floor", [x])
        half = g.op("Floor", [g.op("Mul", [x, c(.5)])])
        parity = g.op("Sub", [n, g.op("Mul", [g.op("Floor", [g.op("Mul", [n, c(.5)])]), c(2)])])
        return g.op("Where", [g.op("Equal", [parity, c(0)]), half, g.op("Add", [g.op("Sub", [x, n]), half])])
    if act in ("normalize_channels", "normalize_channels_softmax", "normalize_channels_softmax_maxval"):
        # across the channels (axis 1) at each pixel, with darknet's eps .0001 in the sum
        axes = g.const([1], dtype=np.int64)
        if act == "normalize_channels":
            num = g.op("Relu", [x])
        elif act == "normalize_channels_softmax":
            num = g.op("Exp", [x])
        else:
            num = g.op("Exp", [g.op("Sub", [x, g.reduce("ReduceMax", x, 1, 1)])])
        total = g.op("Add", [g.op("ReduceSum", [num, axes], keepdims=1), c(.0001)])
        return g.op("Div", [num, total])
    raise OnnxExportError(f"{where}: activation={act} has no ONNX export yet")


# ----------------------------------------------------------------------------- layers

def _where(layer):
    return f"layer {layer.index} [{layer.type}]"


def _shape(layer):
    """One image's output shape as net.predict lays it out ([region]: H, W, num, 5 + classes)."""
    return tuple(int(v) for v in layer.output_shape)


def _folded(layer, weights, outputs):
    """(weights, bias) with inference batch norm folded in, as the C core applies it."""
    p = layer.params
    bias = p["biases"].astype(np.float64)
    w = weights.astype(np.float64)
    if layer.spec.attrs.get("batch_normalize"):
        a = p["scales"].astype(np.float64) / np.sqrt(p["rolling_variance"].astype(np.float64) + BN_EPS)
        w = w * a.reshape((outputs,) + (1,) * (w.ndim - 1))
        bias = bias - p["rolling_mean"].astype(np.float64) * a
    return w.astype(np.float32), bias.astype(np.float32)


def _conv(g, layer, x, in_shape):
    a = layer.spec.attrs
    where = _where(layer)
    for key in ("binary", "xnor", "antialiasing", "assisted_excitation", "coordconv", "sway", "rotate", "stretch",
                "stretch_sway"):
        if a.get(key):
            raise OnnxExportError(f"{where}: {key}={a[key]} has no ONNX export")
    c = in_shape[0]
    f, k, groups = a["filters"], a["size"], a["groups"]
    wt, bias = _folded(layer, layer.params["weights"].reshape(f, c // groups, k, k), f)
    y = g.op("Conv", [x, g.const(wt, "w"), g.const(bias, "b")], group=groups, **_conv_geometry(layer, in_shape))
    return _activation(g, y, a["activation"], where)


def _conv_geometry(layer, in_shape):
    """Kernel, strides, dilations and pads of a darknet convolution ([convolutional], [deformable]): the pads
    begin at padding * dilation (the C core's im2col), the end padding gives darknet's output size (ONNX's is
    floor((h + begin + end - dil*(k - 1) - 1) / s) + 1)."""
    a = layer.spec.attrs
    _, h, w = in_shape
    k, dil = a["size"], a["dilation"]
    sy, sx, pad = a["stride_y"], a["stride_x"], a["padding"] * a["dilation"]
    _, oh, ow = _shape(layer)
    end_h = _end_pad(h, pad, dil * (k - 1) + 1, sy, oh)
    end_w = _end_pad(w, pad, dil * (k - 1) + 1, sx, ow)
    if end_h is None or end_w is None:
        raise OnnxExportError(f"{_where(layer)}: darknet's output size {oh}x{ow} (padding {a['padding']}, "
                              f"dilation {dil}) has no ONNX padding")
    return dict(kernel_shape=[k, k], strides=[sy, sx], pads=[pad, pad, end_h, end_w], dilations=[dil, dil])


def _end_pad(n, begin, window, stride, out):
    """The end padding (>= 0) that gives `out` windows of `window` values at `stride` over n values padded by
    `begin` in front (ONNX counts floor((n + begin + end - window) / stride) + 1); None when none does."""
    end = max(0, (out - 1) * stride + window - n - begin)
    return end if (n + begin + end - window) // stride + 1 == out else None


def _deformable(g, layer, x, in_shape):
    """DCNv2 (layers/deformable.c) as ONNX's DeformConv (opset 19): the internal convolution gives the offsets
    (torchvision's layout, ONNX's too) and the mask logits; batch norm folded into the main weights."""
    a = layer.spec.attrs
    where = _where(layer)
    if g.opset < 19:
        raise OnnxExportError(f"{where}: DeformConv needs opset 19 or newer, not {g.opset}")
    c = in_shape[0]
    f, k, dg = a["filters"], a["size"], a["deformable_groups"]
    geometry = _conv_geometry(layer, in_shape)
    n_off = 2 * dg * k * k
    O = (3 if a["modulated"] else 2) * dg * k * k
    p = layer.params
    offsets = g.op("Conv", [x, g.const(p["offset_weights"].reshape(O, c, k, k), "w"),
                            g.const(p["offset_biases"], "b")], **geometry)
    i64 = dict(dtype=np.int64)

    def channels(lo, hi):
        return g.op("Slice", [offsets, g.const([lo], **i64), g.const([hi], **i64), g.const([1], **i64)])

    wt, bias = _folded(layer, p["weights"].reshape(f, c, k, k), f)
    inputs = [x, g.const(wt, "w"), channels(0, n_off), g.const(bias, "b")]
    if a["modulated"]:
        inputs.append(g.op("Sigmoid", [channels(n_off, O)]))
    y = g.op("DeformConv", inputs, offset_group=dg, group=1, **geometry)
    return _activation(g, y, a["activation"], where)


def _pool_pads(layer, in_shape):
    """darknet's pooling window placement: padding // 2 before, the end padding giving its output size (None
    when ONNX has none)."""
    a = layer.spec.attrs
    _, h, w = in_shape
    _, oh, ow = _shape(layer)
    k, sy, sx, p = a["size"], a["stride_y"], a["stride_x"], a["padding"]
    begin = p // 2
    eh, ew = _end_pad(h, begin, k, sy, oh), _end_pad(w, begin, k, sx, ow)
    return None if eh is None or ew is None else [begin, begin, eh, ew]


def _maxpool(g, layer, x, in_shape):
    a = layer.spec.attrs
    if a.get("maxpool_depth"):   # out[g] = max over input channels g, g + G, ... (G = out_channels)
        c, h, w = in_shape
        G = a["out_channels"]
        rows = -(-c // G)
        y = x
        if rows * G != c:
            y = g.op("Pad", [x, g.const([0, 0, 0, 0, 0, rows * G - c, 0, 0], dtype=np.int64),
                             g.const(np.float32(-np.inf))])
        y = g.op("Reshape", [y, g.const([0, rows, G, h, w], dtype=np.int64)])
        return g.reduce("ReduceMax", y, 1, 0)
    pads = _pool_pads(layer, in_shape)
    if pads is None:
        raise OnnxExportError(f"{_where(layer)}: this size/stride/padding has no ONNX pooling window")
    return g.op("MaxPool", [x], kernel_shape=[a["size"]] * 2, strides=[a["stride_y"], a["stride_x"]], pads=pads)


def _local_avgpool(g, layer, x, in_shape):
    a = layer.spec.attrs
    pads = _pool_pads(layer, in_shape)
    if pads is None:
        raise OnnxExportError(f"{_where(layer)}: this size/stride/padding has no ONNX pooling window")
    # darknet divides by the window's pixels inside the image
    return g.op("AveragePool", [x], kernel_shape=[a["size"]] * 2, strides=[a["stride_y"], a["stride_x"]], pads=pads,
                count_include_pad=0)


def _route(g, layer, outs, shapes):
    a = layer.spec.attrs
    parts = []
    for src in a["layers"]:
        t, (c, _, _) = outs[src], shapes[src]
        if a["groups"] > 1:
            per = c // a["groups"]
            t = g.op("Slice", [t, g.const([a["group_id"] * per], dtype=np.int64),
                               g.const([(a["group_id"] + 1) * per], dtype=np.int64), g.const([1], dtype=np.int64)])
        parts.append(t)
    return parts[0] if len(parts) == 1 else g.op("Concat", parts, axis=1)


def _shortcut(g, layer, x, outs, shapes, in_shape):
    a = layer.spec.attrs
    where = _where(layer)
    if a["weights_type"] != "none":
        return _weighted_shortcut(g, layer, x, outs, in_shape)
    y = x
    for src in a["from"]:
        t = outs[src] if shapes[src] == in_shape else _sampled(g, outs[src], shapes[src], in_shape)
        y = g.op("Add", [y, t])
    return _activation(g, y, a["activation"], where)


def _weighted_shortcut(g, layer, x, outs, in_shape):
    """sum over the terms (the input, then each source) of term * its weight, the weights normalized across
    the terms as layer_math.h's dn_shortcut_weights does (relu: relu(w) / (eps + sum); softmax: exp(w - max) /
    (eps + sum); eps .0001), one per term (per_feature) or per term and channel (per_channel)."""
    a = layer.spec.attrs
    terms = len(a["from"]) + 1
    c = in_shape[0]
    per_channel = a["weights_type"] == "per_channel"
    wts = layer.params["weights"].astype(np.float32).reshape(terms, c if per_channel else 1)
    norm = a["weights_normalization"]
    if norm != "none":
        num = np.maximum(wts, 0) if norm == "relu" else np.exp(wts - wts.max(axis=0, keepdims=True))
        wts = (num / (np.float32(.0001) + num.sum(axis=0, keepdims=True, dtype=np.float32))).astype(np.float32)
    y = None
    for t, name in enumerate([x] + [outs[src] for src in a["from"]]):
        wt = wts[t].reshape(1, -1, 1, 1) if per_channel else wts[t].reshape(())
        term = g.op("Mul", [name, g.const(wt)])
        y = term if y is None else g.op("Add", [y, term])
    return _activation(g, y, a["activation"], _where(layer))


def _sampled(g, t, src_shape, in_shape):
    """A source of another size as pjreddie's shortcut adds it (layer_math.h's dn_sample_pair): over the
    overlapping channels, source pixel (j*stride, i*stride) onto input pixel (j*sample, i*sample), the ratios
    taken from the widths; zeros everywhere else."""
    (pc, ph, pw), (c, h, w) = src_shape, in_shape
    stride, sample = max(1, pw // w), max(1, w // pw)
    minc, minh, minw = min(pc, c), min(ph, h), min(pw, w)
    i64 = dict(dtype=np.int64)
    t = g.op("Slice", [t, g.const([0, 0, 0], **i64), g.const([minc, minh * stride, minw * stride], **i64),
                       g.const([1, 2, 3], **i64), g.const([1, stride, stride], **i64)])
    rows, cols = minh, minw
    if sample > 1:   # each value at the top-left of a sample x sample block of zeros
        t = g.op("Reshape", [t, g.const([0, minc, minh, 1, minw, 1], **i64)])
        t = g.op("Pad", [t, g.const([0, 0, 0, 0, 0, 0, 0, 0, 0, sample - 1, 0, sample - 1], **i64)])
        rows, cols = minh * sample, minw * sample
        t = g.op("Reshape", [t, g.const([0, minc, rows, cols], **i64)])
    if rows > h or cols > w:
        t = g.op("Slice", [t, g.const([0, 0], **i64), g.const([h, w], **i64), g.const([2, 3], **i64)])
        rows, cols = min(rows, h), min(cols, w)
    if (minc, rows, cols) != (c, h, w):
        t = g.op("Pad", [t, g.const([0, 0, 0, 0, 0, c - minc, h - rows, w - cols], **i64)])
    return t


def _upsample(g, layer, x, in_shape):
    a = layer.spec.attrs
    s, scale = a["stride"], a["scale"]
    c, h, w = in_shape
    if s > 0:
        y = g.op("Resize", [x, "", g.const([1, 1, s, s])], mode="nearest", nearest_mode="floor",
                 coordinate_transformation_mode="asymmetric")
    else:   # block sums over |s| x |s|, the rows and columns past the last whole block left out
        s = -s
        oh, ow = h // s, w // s
        y = x
        if (oh * s, ow * s) != (h, w):
            y = g.op("Slice", [x, g.const([0, 0], dtype=np.int64), g.const([oh * s, ow * s], dtype=np.int64),
                               g.const([2, 3], dtype=np.int64)])
        y = g.op("Mul", [g.op("AveragePool", [y], kernel_shape=[s, s], strides=[s, s]), g.const(np.float32(s * s))])
    return y if scale == 1 else g.op("Mul", [y, g.const(np.float32(scale))])


def _reorg(g, layer, x, in_shape):
    """The C core's permutation (layers/reorg.c) as one Gather over each image's values."""
    a = layer.spec.attrs
    s, reverse = a["stride"], a["reverse"]
    old = layer.type == "reorg"
    c, h, w = in_shape
    oc, oh, ow = _shape(layer)
    # the index space: the input's shape for [reorg], the output's for [reorg3d]
    C, H, W = (c, h, w) if old else (oc, oh, ow)
    oc2 = C // (s * s)
    k, j, i = np.meshgrid(np.arange(C), np.arange(H), np.arange(W), indexing="ij")
    off = k // oc2
    z = ((k % oc2) * (H * s) + j * s + off // s) * (W * s) + i * s + off % s
    a_idx = (k * H + j) * W + i
    n = c * h * w
    idx = np.empty(n, np.int64)
    if not reverse:   # out[a] = in[z]
        idx[a_idx.reshape(-1)] = z.reshape(-1)
    else:             # out[z] = in[a]
        idx[z.reshape(-1)] = a_idx.reshape(-1)
    flat = g.op("Reshape", [x, g.const([0, n], dtype=np.int64)])
    y = g.op("Gather", [flat, g.const(idx, dtype=np.int64)], axis=1)
    return g.op("Reshape", [y, g.const([0, oc, oh, ow], dtype=np.int64)])


def _connected(g, layer, x, in_shape):
    a = layer.spec.attrs
    n_in = int(np.prod(in_shape))
    n_out = a["output"]
    wt, bias = _folded(layer, layer.params["weights"].reshape(n_out, n_in), n_out)
    flat = g.op("Reshape", [x, g.const([0, n_in], dtype=np.int64)])
    y = g.op("Gemm", [flat, g.const(wt, "w"), g.const(bias, "b")], transB=1)
    y = _activation(g, y, a["activation"], _where(layer))
    return g.op("Reshape", [y, g.const([0, n_out, 1, 1], dtype=np.int64)])


def _softmax(g, layer, x, in_shape):
    a = layer.spec.attrs
    if a.get("tree"):
        raise OnnxExportError(f"{_where(layer)}: tree= has no ONNX export")
    if a.get("spatial"):
        raise OnnxExportError(f"{_where(layer)}: spatial softmax has no ONNX export yet")
    n = int(np.prod(in_shape))
    groups, temp = a["groups"], a["temperature"]
    y = g.op("Reshape", [x, g.const([0, groups, n // groups], dtype=np.int64)])
    if temp != 1:
        y = g.op("Div", [y, g.const(np.float32(temp))])
    y = g.op("Softmax", [y], axis=-1)
    return g.op("Reshape", [y, g.const([0] + list(_shape(layer)), dtype=np.int64)])


def _reduction(g, layer, x, in_shape):
    """Each output value's run of n trailing input values (layers/reduction.c), one ReduceSum."""
    a = layer.spec.attrs
    outs = int(np.prod(_shape(layer)))
    n = int(np.prod(in_shape)) // outs
    i64 = dict(dtype=np.int64)
    y = g.op("Reshape", [x, g.const([0, outs, n], **i64)])
    op = a["operation"]
    if op == "asum":
        y = g.op("Abs", [y])
    elif op == "sumsq":
        y = g.op("Mul", [y, y])
    y = g.op("ReduceSum", [y, g.const([2], **i64)], keepdims=0)
    k = a["coeff"] / n if op == "mean" else a["coeff"]
    if k != 1:
        y = g.op("Mul", [y, g.const(np.float32(k))])
    return g.op("Reshape", [y, g.const([0] + list(_shape(layer)), **i64)])


def _groupnorm(g, layer, x, in_shape):
    """GroupNorm with its biased variance: the groups' values as rows, normalized, then gamma and beta per
    channel (composed: ONNX's GroupNormalization arrived in opset 18 and changed in 21)."""
    a = layer.spec.attrs
    c, h, w = in_shape
    G = a["groups"]
    i64 = dict(dtype=np.int64)
    rows = g.op("Reshape", [x, g.const([0, G, (c // G) * h * w], **i64)])
    centered = g.op("Sub", [rows, g.reduce("ReduceMean", rows, 2, 1)])
    var = g.reduce("ReduceMean", g.op("Mul", [centered, centered]), 2, 1)
    xhat = g.op("Div", [centered, g.op("Sqrt", [g.op("Add", [var, g.const(np.float32(a["eps"]))])])])
    y = g.op("Reshape", [xhat, g.const([0, c, h, w], **i64)])
    y = g.op("Mul", [y, g.const(layer.params["scales"].reshape(1, -1, 1, 1))])
    return g.op("Add", [y, g.const(layer.params["biases"].reshape(1, -1, 1, 1))])


def _batchnorm_layer(g, layer, x):
    p = layer.params
    a = p["scales"].astype(np.float64) / np.sqrt(p["rolling_variance"].astype(np.float64) + BN_EPS)
    b = p["biases"].astype(np.float64) - p["rolling_mean"].astype(np.float64) * a
    shape = (1, -1, 1, 1)
    return g.op("Add", [g.op("Mul", [x, g.const(a.astype(np.float32).reshape(shape))]),
                        g.const(b.astype(np.float32).reshape(shape))])


def _yolo(g, layer, x):
    """net.predict's [yolo] output: the logistic on x, y, objectness and classes (not with new_coords), then
    x, y * scale_x_y - (scale_x_y - 1) / 2."""
    a = layer.spec.attrs
    c, _, _ = _shape(layer)
    per = a["classes"] + 5
    k = np.arange(c) % per
    s = np.float32(a["scale_x_y"])
    if a["new_coords"]:
        sig = x
    else:
        logistic = ((k < 2) | (k >= 4)).reshape(1, c, 1, 1)
        sig = g.op("Where", [g.const(logistic, dtype=np.bool_), g.op("Sigmoid", [x]), x])
    xy = (k < 2).reshape(1, c, 1, 1)
    scaled = g.op("Add", [g.op("Mul", [sig, g.const(s)]), g.const(np.float32(-0.5 * (s - 1)))])
    return g.op("Where", [g.const(xy, dtype=np.bool_), scaled, sig])


def _fcos(g, layer, x):
    """net.predict's [fcos] output: the 4 distances through exp (or relu), the logistic on the rest."""
    i64 = dict(dtype=np.int64)
    dist = g.op("Slice", [x, g.const([0], **i64), g.const([4], **i64), g.const([1], **i64)])
    rest = g.op("Slice", [x, g.const([4], **i64), g.const([5 + layer.spec.attrs["classes"]], **i64),
                          g.const([1], **i64)])
    dist = g.op("Exp" if layer.spec.attrs["distance"] == "exp" else "Relu", [dist])
    return g.op("Concat", [dist, g.op("Sigmoid", [rest])], axis=1)


def _region(g, layer, x):
    """net.predict's [region] output: [B, H, W, num, 5 + classes] with the logistic on objectness and the
    softmax over the classes (with softmax=1), x, y, w, h raw."""
    a = layer.spec.attrs
    h, w, num, per = _shape(layer)
    coords = a["coords"]
    if coords != 4:
        raise OnnxExportError(f"{_where(layer)}: coords={coords} has no ONNX export")
    y = g.op("Reshape", [x, g.const([0, num, per, h, w], dtype=np.int64)])
    y = g.op("Transpose", [y], perm=[0, 3, 4, 1, 2])

    def part(lo, hi):
        return g.op("Slice", [y, g.const([lo], dtype=np.int64), g.const([hi], dtype=np.int64),
                              g.const([4], dtype=np.int64)])

    box, obj, cls = part(0, 4), g.op("Sigmoid", [part(4, 5)]), part(5, per)
    if a["softmax"]:
        cls = g.op("Softmax", [cls], axis=-1)
    return g.op("Concat", [box, obj, cls], axis=4)


# ----------------------------------------------------------------------------- decoding and NMS

LAYOUTS = ("yolov5", "yolov8")


def _decoded_head(g, layer, head, net_w, net_h):
    """One head's boxes as net.detect decodes them (layers/yolo.c and region.c), in network-input pixels:
    [B, n*H*W, 5 + classes] rows (cx, cy, w, h, objectness, class probabilities), anchor by anchor, each
    anchor's cells row by row (darknet's candidate order)."""
    a = layer.spec.attrs
    i64 = dict(dtype=np.int64)
    classes = a["classes"]
    per = classes + 5
    if layer.type == "fcos":
        return _decoded_fcos(g, layer, head, net_w, net_h)
    if layer.type == "yolo":
        c, h, w = (int(v) for v in layer.shape)
        n = c // per
        anchors = np.asarray(a["anchors"], np.float32).reshape(-1, 2)[list(a["mask"])]
        t = g.op("Reshape", [head, g.const([0, n, per, h, w], **i64)])
        t = g.op("Transpose", [t], perm=[0, 1, 3, 4, 2])            # [B, n, H, W, per]
    else:   # [region]: [B, H, W, num, per], x and y raw
        h, w, n, _ = _shape(layer)
        anchors = np.asarray(a["anchors"], np.float32).reshape(-1, 2)[:n] * np.float32([net_w / w, net_h / h])
        t = g.op("Transpose", [head], perm=[0, 3, 1, 2, 4])          # [B, n, H, W, per]

    def part(lo, hi):
        return g.op("Slice", [t, g.const([lo], **i64), g.const([hi], **i64), g.const([4], **i64)])

    col = np.arange(w, dtype=np.float32).reshape(1, 1, 1, w, 1)
    row = np.arange(h, dtype=np.float32).reshape(1, 1, h, 1, 1)
    aw = anchors[:, 0].reshape(1, n, 1, 1, 1)
    ah = anchors[:, 1].reshape(1, n, 1, 1, 1)
    x, y, bw, bh = part(0, 1), part(1, 2), part(2, 3), part(3, 4)
    if layer.type == "region":
        x, y = g.op("Sigmoid", [x]), g.op("Sigmoid", [y])
    cx = g.op("Mul", [g.op("Add", [x, g.const(col)]), g.const(np.float32(net_w / w))])
    cy = g.op("Mul", [g.op("Add", [y, g.const(row)]), g.const(np.float32(net_h / h))])
    if layer.type == "yolo" and a["new_coords"]:   # w^2 * 4 * anchor
        bw = g.op("Mul", [g.op("Mul", [bw, bw]), g.const(4 * aw)])
        bh = g.op("Mul", [g.op("Mul", [bh, bh]), g.const(4 * ah)])
    else:
        bw = g.op("Mul", [g.op("Exp", [bw]), g.const(aw)])
        bh = g.op("Mul", [g.op("Exp", [bh]), g.const(ah)])
    rows = g.op("Concat", [cx, cy, bw, bh, part(4, per)], axis=4)
    return g.op("Reshape", [rows, g.const([0, n * h * w, per], **i64)])


def _decoded_fcos(g, layer, head, net_w, net_h):
    """[fcos] rows as layers/fcos.c decodes them: the box around each position from its distances, objectness
    sqrt(centerness) and class columns sqrt(class score), whose product is the head's score
    sqrt(class x centerness); positions row by row."""
    i64 = dict(dtype=np.int64)
    c, h, w = (int(v) for v in layer.shape)
    t = g.op("Transpose", [g.op("Reshape", [head, g.const([0, c, h * w], **i64)])], perm=[0, 2, 1])   # [B, HW, c]

    def part(lo, hi):
        return g.op("Slice", [t, g.const([lo], **i64), g.const([hi], **i64), g.const([2], **i64)])

    pos = np.arange(h * w)
    px = ((pos % w) + 0.5).astype(np.float32).reshape(1, -1, 1)
    py = ((pos // w) + 0.5).astype(np.float32).reshape(1, -1, 1)
    sx, sy = np.float32(net_w / w), np.float32(net_h / h)
    left, top, right, bottom = part(0, 1), part(1, 2), part(2, 3), part(3, 4)
    half = np.float32(0.5)
    cx = g.op("Mul", [g.op("Add", [g.const(px), g.op("Mul", [g.op("Sub", [right, left]), g.const(half)])]),
                      g.const(sx)])
    cy = g.op("Mul", [g.op("Add", [g.const(py), g.op("Mul", [g.op("Sub", [bottom, top]), g.const(half)])]),
                      g.const(sy)])
    bw = g.op("Mul", [g.op("Add", [left, right]), g.const(sx)])
    bh = g.op("Mul", [g.op("Add", [top, bottom]), g.const(sy)])
    return g.op("Concat", [cx, cy, bw, bh, g.op("Sqrt", [part(4, c)])], axis=2)


def _head_rows(layer, classes):
    """How many decoded rows a head gives."""
    if layer.type == "yolo":
        return int(np.prod(layer.shape[1:])) * (layer.shape[0] // (classes + 5))
    if layer.type == "fcos":
        return int(np.prod(layer.shape[1:]))
    return int(np.prod(_shape(layer)[:3]))


def _decoded(g, net, heads, outs):
    """Every head's decoded rows, one after the other: [B, N, 5 + classes]."""
    if any(net.layers[i].type not in HEAD_TYPES for i in heads):
        raise OnnxExportError("decoding needs [yolo], [region] or [fcos] heads; this network has none")
    classes = {net.layers[i].spec.attrs["classes"] for i in heads}
    if len(classes) != 1:
        raise OnnxExportError(f"decoding needs heads of one number of classes, not {sorted(classes)}")
    parts = [_decoded_head(g, net.layers[i], outs[i], net.width, net.height) for i in heads]
    return (parts[0] if len(parts) == 1 else g.op("Concat", parts, axis=1)), classes.pop()


def _scores(g, rows, classes):
    """[B, N, classes]: objectness x class probability, darknet's confidence of each class."""
    i64 = dict(dtype=np.int64)
    obj = g.op("Slice", [rows, g.const([4], **i64), g.const([5], **i64), g.const([2], **i64)])
    cls = g.op("Slice", [rows, g.const([5], **i64), g.const([5 + classes], **i64), g.const([2], **i64)])
    return g.op("Mul", [obj, cls])


# ----------------------------------------------------------------------------- the graph

def _to_half(model, TensorProto, helper, numpy_helper):
    """The graph in float16: every float constant (except the float32 inputs the operators require: Resize's
    scales, NonMaxSuppression's thresholds), the input cast to float16 on entry, the float outputs cast back to
    float32 and NonMaxSuppression fed float32 boxes and scores (its only type)."""
    g = model.graph
    keep32 = set()
    for node in g.node:
        if node.op_type == "Resize" and len(node.input) > 2:
            keep32.add(node.input[2])
        if node.op_type == "NonMaxSuppression":
            keep32.update(node.input[3:5])
    for i, init in enumerate(g.initializer):
        if init.data_type == TensorProto.FLOAT and init.name not in keep32:
            arr = numpy_helper.to_array(init).astype(np.float16)
            g.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
    nodes = [helper.make_node("Cast", ["input"], ["input_half"], to=TensorProto.FLOAT16, name="input_to_half")]
    for node in g.node:
        for k, name in enumerate(node.input):
            if name == "input":
                node.input[k] = "input_half"
        if node.op_type == "NonMaxSuppression":
            for k in (0, 1):
                cast = node.input[k] + "_float"
                nodes.append(helper.make_node("Cast", [node.input[k]], [cast], to=TensorProto.FLOAT,
                                              name=cast + "_cast"))
                node.input[k] = cast
        if node.op_type == "Identity" and node.output[0] in {o.name for o in g.output} and \
                node.output[0] != "selected":
            half = node.output[0] + "_half"
            nodes.append(node)
            node.output[0] = half
            nodes.append(helper.make_node("Cast", [half], [half[:-5]], to=TensorProto.FLOAT, name=half + "_cast"))
            continue
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    return model


def build_model(net, opset=None, dynamic_batch=False, name=None, decode=False, layout="yolov5",
                nms=None, half=False):
    """The ONNX ModelProto of `net` (see the module docstring). decode: one output `detections` instead of
    the raw heads, in `layout`; nms: (iou_threshold, score_threshold, max_per_class) adds the output
    `selected` of ONNX NonMaxSuppression (needs decode); half: float16 weights and arithmetic (float32 input
    and outputs)."""
    if layout not in LAYOUTS:
        raise OnnxExportError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if nms is not None and not decode:
        raise OnnxExportError("NMS in the graph needs the decoded boxes (decode=True)")
    onnx, TensorProto, helper, numpy_helper = _onnx()
    if opset is None:   # the default, or 19 where a [deformable] needs DeformConv
        opset = 19 if any(l.type == "deformable" for l in net.layers) else DEFAULT_OPSET
    if not 13 <= int(opset) <= onnx.defs.onnx_opset_version():
        raise OnnxExportError(f"opset {opset}: the export writes opsets 13 to {onnx.defs.onnx_opset_version()}")
    g = _Graph(helper, numpy_helper, opset)
    _, c, h, w = net._input_shape()
    outs, shapes = {}, {}
    x, in_shape = "input", (c, h, w)
    for layer in net.layers:
        t, where = layer.type, _where(layer)
        a = layer.spec.attrs
        if t in ("convolutional",):
            y = _conv(g, layer, x, in_shape)
        elif t == "deformable":
            y = _deformable(g, layer, x, in_shape)
        elif t == "maxpool":
            y = _maxpool(g, layer, x, in_shape)
        elif t == "local_avgpool":
            y = _local_avgpool(g, layer, x, in_shape)
        elif t == "avgpool":
            y = g.op("GlobalAveragePool", [x])
        elif t == "route":
            y = _route(g, layer, outs, shapes)
        elif t == "shortcut":
            y = _shortcut(g, layer, x, outs, shapes, in_shape)
        elif t == "sam":
            src = a["from"][0]
            y = _activation(g, g.op("Mul", [x, outs[src]]), a["activation"], where)
        elif t == "scale_channels":
            src = a["from"][0]
            y = _activation(g, g.op("Mul", [outs[src], x]), a["activation"], where)
        elif t == "upsample":
            y = _upsample(g, layer, x, in_shape)
        elif t in ("reorg", "reorg3d"):
            y = _reorg(g, layer, x, in_shape)
        elif t == "connected":
            y = _connected(g, layer, x, in_shape)
        elif t == "softmax":
            y = _softmax(g, layer, x, in_shape)
        elif t in ("dropout", "cost", "empty"):
            y = x
        elif t == "scale":
            y = g.op("Mul", [x, g.const(layer.params["scales"].reshape(1, -1, 1, 1))])
            if "biases" in layer.params:
                y = g.op("Add", [y, g.const(layer.params["biases"].reshape(1, -1, 1, 1))])
        elif t == "groupnorm":
            y = _groupnorm(g, layer, x, in_shape)
        elif t == "reduction":
            y = _reduction(g, layer, x, in_shape)
        elif t == "reshape":
            y = g.op("Reshape", [x, g.const([0] + list(_shape(layer)), dtype=np.int64)])
        elif t == "batchnorm":
            y = _batchnorm_layer(g, layer, x)
        elif t == "activation":
            y = _activation(g, x, a["activation"], where)
        elif t == "yolo":
            y = _yolo(g, layer, x)
        elif t == "region":
            y = _region(g, layer, x)
        elif t == "fcos":
            y = _fcos(g, layer, x)
        else:
            raise OnnxExportError(f"{where}: this layer type has no ONNX export yet")
        outs[layer.index], shapes[layer.index] = y, tuple(int(v) for v in layer.shape)
        x, in_shape = y, shapes[layer.index]

    heads = [l.index for l in net.layers if l.type in HEAD_TYPES] or [len(net.layers) - 1]
    batch = "batch" if dynamic_batch else net.batch
    outputs = []

    def output(tensor, out_name, shape, elem=TensorProto.FLOAT):
        g.nodes.append(helper.make_node("Identity", [tensor], [out_name], name=g.name("output")))
        outputs.append(helper.make_tensor_value_info(out_name, elem, shape))

    if decode:
        rows, classes = _decoded(g, net, heads, outs)
        n_rows = sum(_head_rows(net.layers[i], classes) for i in heads)
        scores = _scores(g, rows, classes)
        if layout == "yolov5":   # [B, N, 5 + C]: cx, cy, w, h, objectness, class probabilities
            output(rows, "detections", [batch, n_rows, 5 + classes])
        else:                    # [B, 4 + C, N]: cx, cy, w, h, then objectness x class probability
            i64 = dict(dtype=np.int64)
            box = g.op("Slice", [rows, g.const([0], **i64), g.const([4], **i64), g.const([2], **i64)])
            output(g.op("Transpose", [g.op("Concat", [box, scores], axis=2)], perm=[0, 2, 1]), "detections",
                   [batch, 4 + classes, n_rows])
        if nms is not None:
            iou, score, max_per_class = nms
            i64 = dict(dtype=np.int64)
            box = g.op("Slice", [rows, g.const([0], **i64), g.const([4], **i64), g.const([2], **i64)])
            sel = g.op("NonMaxSuppression", [box, g.op("Transpose", [scores], perm=[0, 2, 1]),
                                             g.const([int(max_per_class)], **i64), g.const([float(iou)]),
                                             g.const([float(score)])], center_point_box=1)
            output(sel, "selected", ["selected", 3], TensorProto.INT64)
    else:
        for i in heads:
            output(outs[i], f"layer{i}_{net.layers[i].type}", [batch] + list(_shape(net.layers[i])))
    graph = helper.make_graph(g.nodes, name or "pydarknet",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, c, h, w])],
                              outputs, initializer=g.inits)
    model = helper.make_model(graph, producer_name="pydarknet", opset_imports=[helper.make_opsetid("", int(opset))])
    model.ir_version = min(model.ir_version, 9)   # what current onnxruntime releases read
    if half:
        model = _to_half(model, TensorProto, helper, numpy_helper)
    onnx.checker.check_model(model)
    return model


def export_onnx(net, path, opset=None, dynamic_batch=False, decode=False, layout="yolov5", nms=None,
                half=False):
    """Writes `net` as an ONNX model to `path` (see build_model and the module docstring); returns the path."""
    onnx = _onnx()[0]
    model = build_model(net, opset=opset, dynamic_batch=dynamic_batch, decode=decode, layout=layout, nms=nms,
                        half=half)
    onnx.save(model, str(path))
    return path
