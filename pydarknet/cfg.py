"""Darknet ``.cfg`` parsing and option resolution.

A cfg file is read into sections (``[name]`` headers followed by ``key=value``
lines) and every section is resolved against one schema table, ``SCHEMA``,
which lists each option darknet (AlexeyAB) reads for that section with its type
and default.  The result is a :class:`NetSpec` whose ``options`` hold the
resolved ``[net]`` options and whose ``layers`` hold one :class:`LayerSpec` per
layer section, each with every option typed and defaulted, so the C builder
never has to look at cfg text.  Shapes are not computed here.

Line syntax follows darknet's ``read_cfg``: all whitespace inside a line is
removed, lines starting with ``#`` or ``;`` are comments, and the first ``=``
separates key from value.  In addition a trailing ``# comment`` after a value
is dropped.  Problems are reported as :class:`CfgError` (fatal) or
:class:`CfgWarning` (ignored input), both naming file and line.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field

from .fileio import not_text

__all__ = [
    "CfgError", "CfgWarning", "LayerSpec", "NetSpec", "parse_cfg", "parse_cfg_text",
    "ACTIVATIONS", "SECTION_ALIASES", "SUPPORTED_LAYERS", "KNOWN_SECTIONS", "SCHEMA", "HEAD_TYPES",
    "POLICIES", "COST_TYPES",
]


# ----------------------------------------------------------------------------- errors

class CfgError(ValueError):
    """A cfg problem darknet could not build from; carries file and line."""

    def __init__(self, path, line, message):
        self.path, self.line, self.message = str(path), line, message
        super().__init__(f"{self.path}: {message}" if line is None else f"{self.path}:{line}: {message}")

    def __reduce__(self):
        return (type(self), (self.path, self.line, self.message))


class CfgWarning(UserWarning):
    """Input that darknet would also ignore (unknown or duplicate keys)."""


# ----------------------------------------------------------------------------- names

ACTIVATIONS = (
    "logistic", "loggy", "relu", "relu6", "elu", "selu", "gelu", "relie", "plse", "hardtan", "lhtan",
    "linear", "ramp", "leaky", "revleaky", "tanh", "stair", "swish", "mish", "hard_mish",
    "normalize_channels", "normalize_channels_softmax", "normalize_channels_softmax_maxval",
)

# darknet's get_policy / get_cost_type names (compared case-sensitively, as strcmp does)
POLICIES = ("constant", "step", "steps", "exp", "poly", "sigmoid", "random", "sgdr")
COST_TYPES = ("sse", "masked", "smooth", "L1", "l1", "l2", "smooth_l1", "huber")
SHORTCUT_WEIGHTS_TYPES = ("none", "per_feature", "per_layer", "per_channel")
SHORTCUT_WEIGHTS_NORMALIZATIONS = ("none", "relu", "avg_relu", "softmax")
IOU_LOSSES = ("mse", "iou", "giou", "diou", "ciou")
IOU_THRESH_KINDS = ("iou", "giou", "diou", "ciou")
NMS_KINDS = ("default", "greedynms", "diounms")

SECTION_ALIASES = {
    "network": "net", "conv": "convolutional", "conn": "connected", "max": "maxpool",
    "avg": "avgpool", "local_avg": "local_avgpool", "soft": "softmax", "normalization": "lrn",
    "silence": "empty",
}

# layer types of pydarknet's own, which darknet does not have (no darknet fixture can cover them)
OWN_LAYERS = ("reshape", "scale", "reduction", "groupnorm", "deformable", "fcos")

# the detection heads: the layers a detector's boxes come from
HEAD_TYPES = ("yolo", "region", "fcos")

# ----------------------------------------------------------------------------- schema

INT, FLOAT, STR, INTS, FLOATS, REFS = "int", "float", "str", "int list", "float list", "layer list"
REQUIRED = object()              # no default: the key must be given
FLT_MAX = 3.4028234663852886e38  # C's FLT_MAX, darknet's default for max_delta


def _same_as(key):
    return lambda a: a[key]


def _choice(*names):
    """A string option that must be one of `names` (case-sensitive, like darknet's strcmp)."""
    return tuple(names)


ACT = _choice(*ACTIVATIONS)

# read by parse_network_cfg_custom for every layer section
_COMMON = (
    ("clip", FLOAT, 0.0), ("onlyforward", INT, 0), ("dont_update", INT, 0), ("burnin_update", INT, 0),
    ("stopbackward", INT, 0), ("train_only_bn", INT, 0), ("dontload", INT, 0), ("dontloadscales", INT, 0),
    ("learning_rate", FLOAT, 1.0),
)

_POOL = (
    ("stride", INT, 1), ("stride_x", INT, _same_as("stride")), ("stride_y", INT, _same_as("stride")),
    ("size", INT, _same_as("stride")), ("padding", INT, lambda a: a["size"] - 1),
)

# section -> ((key, type, default), ...).  A type is a tag above or a tuple of allowed strings.
# A callable default is computed from the options resolved before it (table order).
SCHEMA = {
    "net": (
        ("max_batches", INT, 0), ("batch", INT, 1), ("learning_rate", FLOAT, 0.001),
        ("learning_rate_min", FLOAT, 0.00001), ("sgdr_cycle", INT, _same_as("max_batches")),
        ("sgdr_mult", INT, 2), ("momentum", FLOAT, 0.9), ("decay", FLOAT, 0.0001), ("subdivisions", INT, 1),
        ("time_steps", INT, 1), ("track", INT, 0), ("augment_speed", INT, 2),
        ("sequential_subdivisions", INT, _same_as("subdivisions")), ("try_fix_nan", INT, 0),
        ("weights_reject_freq", INT, 0), ("equidistant_point", INT, 0),
        ("badlabels_rejection_percentage", FLOAT, 0.0), ("num_sigmas_reject_badlabels", FLOAT, 0.0),
        ("ema_alpha", FLOAT, 0.0), ("use_cuda_graph", INT, 0), ("loss_scale", FLOAT, 1.0),
        ("dynamic_minibatch", INT, 0), ("optimized_memory", INT, 0), ("workspace_size_limit_MB", FLOAT, 1024.0),
        ("adam", INT, 0), ("B1", FLOAT, 0.9), ("B2", FLOAT, 0.999), ("eps", FLOAT, 0.000001),
        ("height", INT, 0), ("width", INT, 0), ("channels", INT, 0),
        ("inputs", INT, lambda a: a["height"] * a["width"] * a["channels"]),
        ("max_crop", INT, lambda a: a["width"] * 2), ("min_crop", INT, _same_as("width")),
        ("flip", INT, 1), ("blur", INT, 0), ("gaussian_noise", INT, 0), ("mixup", INT, 0), ("cutmix", INT, 0),
        ("mosaic", INT, 0), ("letter_box", INT, 0), ("mosaic_bound", INT, 0), ("contrastive", INT, 0),
        ("contrastive_jit_flip", INT, 0), ("contrastive_color", INT, 0), ("unsupervised", INT, 0),
        ("label_smooth_eps", FLOAT, 0.0), ("resize_step", FLOAT, 32.0), ("attention", INT, 0),
        ("adversarial_lr", FLOAT, 0.0), ("max_chart_loss", FLOAT, 20.0), ("angle", FLOAT, 0.0),
        ("aspect", FLOAT, 1.0), ("saturation", FLOAT, 1.0), ("exposure", FLOAT, 1.0), ("hue", FLOAT, 0.0),
        ("power", FLOAT, 4.0), ("policy", _choice(*POLICIES), "constant"), ("burn_in", INT, 0),
        ("step", INT, 1), ("scale", FLOAT, 1.0), ("steps", INTS, []), ("scales", FLOATS, None),
        ("seq_scales", FLOATS, None), ("gamma", FLOAT, 1.0), ("show_receptive_field", FLOAT, 0.0),
        # pydarknet's: synchronized batch norm under MPI (the batch statistics of every rank's mini-batch)
        ("sync_bn", INT, 0),
    ),
    "convolutional": (
        ("filters", INT, 1), ("groups", INT, 1), ("size", INT, 1), ("stride", INT, 1), ("stride_x", INT, -1),
        ("stride_y", INT, -1), ("dilation", INT, 1), ("antialiasing", INT, 0), ("pad", INT, 0),
        ("padding", INT, 0), ("activation", ACT, "logistic"), ("assisted_excitation", FLOAT, 0.0),
        ("share_index", INT, -1000000000), ("batch_normalize", INT, 0), ("cbn", INT, 0), ("binary", INT, 0),
        ("xnor", INT, 0), ("bin_output", INT, 0), ("sway", INT, 0), ("rotate", INT, 0), ("stretch", INT, 0),
        ("stretch_sway", INT, 0), ("flipped", INT, 0), ("dot", FLOAT, 0.0), ("angle", FLOAT, 15.0),
        ("grad_centr", INT, 0), ("reverse", FLOAT, 0.0), ("coordconv", INT, 0), ("stream", INT, -1),
        ("wait_stream", INT, -1),
        ("sync_bn", INT, -1),   # pydarknet's: 1 / 0 for this layer, -1 as [net] sync_bn says
    ) + _COMMON,
    "connected": (("output", INT, 1), ("activation", ACT, "logistic"), ("batch_normalize", INT, 0)) + _COMMON,
    "maxpool": _POOL + (
        ("maxpool_depth", INT, 0), ("out_channels", INT, 1), ("antialiasing", INT, 0),
        ("maxpool_zero_nonmax", INT, 0),
    ) + _COMMON,
    "local_avgpool": _POOL + _COMMON,
    "avgpool": _COMMON,
    "route": (
        ("layers", REFS, REQUIRED), ("groups", INT, 1), ("group_id", INT, 0), ("stream", INT, -1),
        ("wait_stream", INT, -1),
    ) + _COMMON,
    "shortcut": (
        ("from", REFS, REQUIRED), ("activation", ACT, "linear"),
        ("weights_type", _choice(*SHORTCUT_WEIGHTS_TYPES), "none"),
        ("weights_normalization", _choice(*SHORTCUT_WEIGHTS_NORMALIZATIONS), "none"),
    ) + _COMMON,
    "scale_channels": (("from", REFS, REQUIRED), ("scale_wh", INT, 0), ("activation", ACT, "linear")) + _COMMON,
    "sam": (("from", REFS, REQUIRED), ("activation", ACT, "linear")) + _COMMON,
    "upsample": (("stride", INT, 2), ("scale", FLOAT, 1.0)) + _COMMON,
    "reorg": (("stride", INT, 1), ("reverse", INT, 0)) + _COMMON,
    "reorg3d": (("stride", INT, 1), ("reverse", INT, 0)) + _COMMON,
    "dropout": (
        ("probability", FLOAT, 0.2), ("dropblock", INT, 0), ("dropblock_size_rel", FLOAT, 0.0),
        ("dropblock_size_abs", FLOAT, 0.0),
    ) + _COMMON,
    "softmax": (
        ("groups", INT, 1), ("temperature", FLOAT, 1.0), ("tree", STR, ""), ("spatial", FLOAT, 0.0),
        ("noloss", INT, 0),
        ("focal_gamma", FLOAT, 0.0), ("focal_alpha", FLOAT, 1.0),   # pydarknet's: focal loss for classifiers
    ) + _COMMON,
    "cost": (("type", _choice(*COST_TYPES), "sse"), ("scale", FLOAT, 1.0), ("ratio", FLOAT, 0.0),
             ("sigma", FLOAT, 1.0), ("delta", FLOAT, 1.0)) + _COMMON,   # sigma: smooth_l1's, delta: huber's
    "batchnorm": _COMMON,
    "activation": (("activation", ACT, "linear"),) + _COMMON,
    "empty": _COMMON,
    # pydarknet's (Caffe's Reshape): the values per image read as c,h,w (0: the input's, one -1: inferred)
    "reshape": (("shape", INTS, REQUIRED),) + _COMMON,
    # pydarknet's (Caffe's Scale): per channel y = gamma * x + beta (beta with bias_term)
    "scale": (("bias_term", INT, 1),) + _COMMON,
    # pydarknet's (Caffe's Reduction): every axis from `axis` (1 C, 2 H, 3 W) on reduced, times coeff
    "reduction": (("operation", _choice("sum", "asum", "sumsq", "mean"), "sum"), ("axis", INT, 1),
                  ("coeff", FLOAT, 1.0)) + _COMMON,
    # pydarknet's (GroupNorm): per image and group of channels, mean and biased variance, then gamma, beta
    "groupnorm": (("groups", INT, 32), ("eps", FLOAT, 0.00001)) + _COMMON,
    # pydarknet's (DCNv2): a convolution sampling at learned offsets (an internal convolution, zero at first)
    "deformable": (
        ("filters", INT, 1), ("size", INT, 1), ("stride", INT, 1), ("stride_x", INT, -1), ("stride_y", INT, -1),
        ("dilation", INT, 1), ("pad", INT, 0), ("padding", INT, 0), ("activation", ACT, "logistic"),
        ("batch_normalize", INT, 0), ("deformable_groups", INT, 1), ("modulated", INT, 1),
    ) + _COMMON,
    "yolo": (
        ("classes", INT, 20), ("num", INT, 1), ("mask", INTS, lambda a: list(range(a["num"]))),
        ("max", INT, 200), ("show_details", INT, 1), ("max_delta", FLOAT, FLT_MAX),
        ("counters_per_class", INTS, []), ("label_smooth_eps", FLOAT, 0.0), ("scale_x_y", FLOAT, 1.0),
        ("objectness_smooth", INT, 0), ("new_coords", INT, 0), ("iou_normalizer", FLOAT, 0.75),
        ("obj_normalizer", FLOAT, 1.0), ("cls_normalizer", FLOAT, 1.0), ("delta_normalizer", FLOAT, 1.0),
        ("iou_loss", _choice(*IOU_LOSSES), "mse"), ("iou_thresh_kind", _choice(*IOU_THRESH_KINDS), "iou"),
        ("beta_nms", FLOAT, 0.6), ("nms_kind", _choice(*NMS_KINDS), "default"), ("jitter", FLOAT, 0.2),
        ("resize", FLOAT, 1.0), ("focal_loss", INT, 0), ("ignore_thresh", FLOAT, 0.5),
        ("truth_thresh", FLOAT, 1.0), ("iou_thresh", FLOAT, 1.0), ("random", FLOAT, 0.0),
        ("track_history_size", INT, 5), ("sim_thresh", FLOAT, 0.8), ("dets_for_track", INT, 1),
        ("dets_for_show", INT, 1), ("track_ciou_norm", FLOAT, 0.01), ("embedding_layer", INT, 999999),
        ("map", STR, ""), ("anchors", FLOATS, lambda a: [0.5] * (2 * a["num"])),
    ) + _COMMON,
    # pydarknet's (FCOS): anchor-free, per position 4 distances (in strides), centerness and class scores
    "fcos": (
        ("classes", INT, 20), ("object_sizes", FLOATS, [0.0, -1.0]), ("center_sampling", FLOAT, 0.0),
        ("alpha", FLOAT, 0.25), ("gamma", FLOAT, 2.0), ("iou_loss", _choice("giou", "iou"), "giou"),
        ("distance", _choice("exp", "relu"), "exp"), ("iou_normalizer", FLOAT, 1.0), ("max", INT, 200),
        ("jitter", FLOAT, 0.2), ("resize", FLOAT, 1.0), ("random", FLOAT, 0.0), ("beta_nms", FLOAT, 0.6),
        ("nms_kind", _choice(*NMS_KINDS), "default"),
    ) + _COMMON,
    "region": (
        ("coords", INT, 4), ("classes", INT, 20), ("num", INT, 1), ("max", INT, 200), ("log", INT, 0),
        ("sqrt", INT, 0), ("softmax", INT, 0), ("focal_loss", INT, 0), ("jitter", FLOAT, 0.2),
        ("resize", FLOAT, 1.0), ("rescore", INT, 0), ("thresh", FLOAT, 0.5), ("classfix", INT, 0),
        ("absolute", INT, 0), ("random", FLOAT, 0.0), ("coord_scale", FLOAT, 1.0), ("object_scale", FLOAT, 1.0),
        ("noobject_scale", FLOAT, 1.0), ("mask_scale", FLOAT, 1.0), ("class_scale", FLOAT, 1.0),
        ("bias_match", INT, 0), ("tree", STR, ""), ("map", STR, ""),
        ("anchors", FLOATS, lambda a: [0.5] * (2 * a["num"])),
    ) + _COMMON,
}

# the layer sections pydarknet builds: those of the schema
SUPPORTED_LAYERS = tuple(name for name in SCHEMA if name != "net")

# every canonical section name darknet's string_to_layer_type recognises ([reorg3d] is a
# different layer from [reorg] in darknet, so it is its own name, not an alias: [reorg] is
# darknet's old reorg of yolov2, [reorg3d] the true space-to-depth; layers/reorg.c)
KNOWN_SECTIONS = ("net",) + SUPPORTED_LAYERS + (
    "crop", "detection", "Gaussian_yolo", "local", "lrn", "implicit", "contrastive",
    "rnn", "gru", "lstm", "conv_lstm", "crnn", "history",
)


# ----------------------------------------------------------------------------- specs

@dataclass
class LayerSpec:
    index: int   # 0-based, [net] excluded (darknet's numbering)
    type: str    # canonical section name
    line: int    # line of the section header
    path: str
    attrs: dict = field(default_factory=dict)


@dataclass
class NetSpec:
    path: str
    options: dict
    layers: list

    width = property(lambda self: self.options["width"])
    height = property(lambda self: self.options["height"])
    channels = property(lambda self: self.options["channels"])
    batch = property(lambda self: self.options["batch"])
    subdivisions = property(lambda self: self.options["subdivisions"])


# ----------------------------------------------------------------------------- reading

@dataclass
class _Section:
    name: str       # as written
    line: int
    options: dict   # key -> (raw value, line); first occurrence only


def _read_sections(text, path):
    sections = []
    for num, raw in enumerate(text.split("\n"), 1):
        line = "".join(raw.split())            # darknet strips every whitespace character
        if num == 1 and line.startswith("\ufeff"):
            line = line[1:]
        if not line or line[0] in "#;":
            continue
        line = line.split("#", 1)[0]           # trailing comment after a value
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise CfgError(path, num, f"malformed section header {raw.strip()!r}")
            sections.append(_Section(line[1:-1], num, {}))
            continue
        if not sections:
            raise CfgError(path, num, f"text before the first section: {raw.strip()!r}")
        key, eq, value = line.partition("=")
        if not eq or not key or not value:
            raise CfgError(path, num, f"expected key=value, got {raw.strip()!r}")
        sec = sections[-1]
        if key in sec.options:
            first = sec.options[key][1]
            warnings.warn(CfgWarning(f"{path}:{num}: duplicate key '{key}' in [{sec.name}]; "
                                     f"the first value (line {first}) is used"), stacklevel=3)
            continue
        sec.options[key] = (value, num)
    return sections


# ----------------------------------------------------------------------------- values

_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INT32 = (-2**31, 2**31 - 1)


def _to_int(s):
    if _INT_RE.fullmatch(s):
        v = int(s)
    elif _FLOAT_RE.fullmatch(s) and float(s).is_integer():   # darknet's atoi reads "1.0" as 1
        v = int(float(s))
    else:
        raise ValueError(f"{s!r} is not an integer")
    if not _INT32[0] <= v <= _INT32[1]:
        raise ValueError(f"{s!r} does not fit a 32-bit int")
    return v


def _to_float(s):
    if not _FLOAT_RE.fullmatch(s):
        raise ValueError(f"{s!r} is not a number")
    return float(s)


def _to_list(conv):
    def parse(s):
        items = s.split(",")
        if any(not it for it in items):
            raise ValueError(f"{s!r} has an empty list entry")
        return [conv(it) for it in items]
    return parse


_CONVERTERS = {INT: _to_int, FLOAT: _to_float, STR: str, INTS: _to_list(_to_int), FLOATS: _to_list(_to_float),
               REFS: _to_list(_to_int)}


class _Ctx:
    """Resolution state of one section: errors name its file and the key's line."""

    def __init__(self, path, sec, index, kind):
        self.path, self.sec, self.index, self.kind = path, sec, index, kind
        self.given = {}   # keys present in the cfg

    def line(self, key=None):
        return self.sec.options[key][1] if key in self.sec.options else self.sec.line

    def fail(self, message, key=None):
        raise CfgError(self.path, self.line(key), message)

    def check(self, cond, key, message):
        if not cond:
            self.fail(message, key)


def _resolve(ctx, schema):
    attrs = {}
    for key, typ, default in schema:
        if key in ctx.sec.options:
            raw, _ = ctx.sec.options[key]
            ctx.given[key] = raw
            if isinstance(typ, tuple):
                ctx.check(raw in typ, key, f"[{ctx.kind}] {key}={raw!r} is not one of: {', '.join(typ)}")
                value = raw
            else:
                try:
                    value, problem = _CONVERTERS[typ](raw), None
                except ValueError as e:
                    value, problem = None, str(e)
                if problem:
                    ctx.fail(f"[{ctx.kind}] {key}: expected {typ}, {problem}", key)
        elif default is REQUIRED:
            ctx.fail(f"[{ctx.kind}] needs '{key}='")
        else:
            value = default(attrs) if callable(default) else default
            if isinstance(value, list):
                value = list(value)
        attrs[key] = value
    names = {k for k, _, _ in schema}
    for key, (_, num) in ctx.sec.options.items():
        if key not in names:
            warnings.warn(CfgWarning(f"{ctx.path}:{num}: unknown key '{key}' in [{ctx.sec.name}] is ignored"),
                          stacklevel=3)
    return attrs


# ----------------------------------------------------------------------------- per-section rules

def _positive(ctx, a, *keys):
    for k in keys:
        ctx.check(a[k] > 0, k, f"[{ctx.kind}] {k} must be > 0, got {a[k]}")


def _refs(ctx, a, key):
    out = []
    for v in a[key]:
        j = ctx.index + v if v < 0 else v
        if not 0 <= j < ctx.index:
            where = f" (layer {j})" if v < 0 else ""
            ctx.fail(f"{ctx.kind} index {v}{where} out of range at layer {ctx.index}", key)
        out.append(j)
    a[key] = out


def _net(ctx, a):
    _positive(ctx, a, "batch", "subdivisions", "time_steps")
    a["sequential_subdivisions"] = min(a["sequential_subdivisions"], a["subdivisions"])
    if a["width"] == 0 and a["height"] == 0 and "inputs" in ctx.given and a["inputs"] > 0:
        a["width"], a["height"], a["channels"] = 1, 1, a["inputs"]   # a net of connected layers only
    for k in ("width", "height", "channels"):
        ctx.check(a[k] > 0, k, f"[net] {k} must be > 0, got {a[k]} (set width, height, channels or inputs)")
    ctx.check(a["inputs"] > 0, "inputs", f"[net] inputs must be > 0, got {a['inputs']}")
    n = len(a["steps"])
    if a["policy"] == "steps":
        ctx.check(n > 0 and a["scales"] is not None, "policy", "[net] policy=steps needs steps= and scales=")
    for k in ("scales", "seq_scales"):
        if a[k] is None:
            a[k] = [1.0] * n
        ctx.check(len(a[k]) >= n, k, f"[net] {k} has {len(a[k])} values, steps has {n}")
        a[k] = a[k][:n]


# Options darknet implements that change what a layer computes or how its
# weights are read, which pydarknet does not implement: refused when set, so a
# cfg is never run as something other than what darknet would run.
NOT_IMPLEMENTED = {
    "convolutional": ("antialiasing", "binary", "xnor", "bin_output", "sway", "rotate", "stretch", "stretch_sway",
                      "coordconv", "flipped", "assisted_excitation"),
    "maxpool": ("antialiasing", "maxpool_zero_nonmax"),
}


def _not_implemented(ctx, a):
    for key in NOT_IMPLEMENTED.get(ctx.kind, ()):
        ctx.check(not a[key], key, f"[{ctx.kind}] {key}={a[key]} is not supported by pydarknet (darknet would "
                                   f"compute something else than the plain layer); remove it or set it to 0")


def _convolutional(ctx, a):
    if a["stride_x"] < 1:
        a["stride_x"] = a["stride"]
    if a["stride_y"] < 1:
        a["stride_y"] = a["stride"]
    if a["size"] == 1:
        a["dilation"] = 1
    if a["pad"]:
        a["padding"] = a["size"] // 2
    if a["cbn"]:
        a["batch_normalize"] = 2
    _positive(ctx, a, "filters", "size", "stride", "stride_x", "stride_y", "groups", "dilation")
    ctx.check(a["padding"] >= 0, "padding", f"[convolutional] padding must be >= 0, got {a['padding']}")
    _not_implemented(ctx, a)
    ctx.check(a["share_index"] == -1000000000, "share_index",
              "[convolutional] share_index (weights shared with another layer) is not supported by pydarknet")


def _deformable(ctx, a):
    if a["stride_x"] < 1:
        a["stride_x"] = a["stride"]
    if a["stride_y"] < 1:
        a["stride_y"] = a["stride"]
    if a["pad"]:
        a["padding"] = a["size"] // 2
    _positive(ctx, a, "filters", "size", "stride", "stride_x", "stride_y", "dilation", "deformable_groups")
    ctx.check(a["padding"] >= 0, "padding", f"[deformable] padding must be >= 0, got {a['padding']}")


def _fcos(ctx, a):
    _positive(ctx, a, "classes")
    sizes = a["object_sizes"]
    ctx.check(len(sizes) == 2 and sizes[0] >= 0 and (sizes[1] < 0 or sizes[1] > sizes[0]), "object_sizes",
              f"[fcos] object_sizes must be lo,hi with 0 <= lo < hi (hi = -1: no bound), got {sizes}")
    ctx.check(a["center_sampling"] >= 0, "center_sampling",
              f"[fcos] center_sampling must be >= 0, got {a['center_sampling']}")
    ctx.check(0 <= a["alpha"] <= 1 and a["gamma"] >= 0, "alpha",
              f"[fcos] alpha must be in 0..1 and gamma >= 0, got {a['alpha']}, {a['gamma']}")


def _connected(ctx, a):
    _positive(ctx, a, "output")


def _pool(ctx, a):
    _positive(ctx, a, "size", "stride", "stride_x", "stride_y")
    _not_implemented(ctx, a)
    ctx.check(a["padding"] >= 0, "padding", f"[{ctx.kind}] padding must be >= 0, got {a['padding']}")


def _route(ctx, a):
    _refs(ctx, a, "layers")
    _positive(ctx, a, "groups")
    ctx.check(0 <= a["group_id"] < a["groups"], "group_id",
              f"[route] group_id must be in [0, groups={a['groups']}), got {a['group_id']}")


def _shortcut(ctx, a):
    _refs(ctx, a, "from")
    # darknet's synonyms, reduced to the names the builder takes
    a["weights_type"] = {"per_layer": "per_feature"}.get(a["weights_type"], a["weights_type"])
    a["weights_normalization"] = {"avg_relu": "relu"}.get(a["weights_normalization"], a["weights_normalization"])


def _single_from(ctx, a):
    ctx.check(len(a["from"]) == 1, "from", f"[{ctx.kind}] from= takes one layer, got {len(a['from'])}")
    _refs(ctx, a, "from")


def _upsample(ctx, a):
    ctx.check(a["stride"] != 0, "stride", "[upsample] stride must not be 0")


def _reorg(ctx, a):
    _positive(ctx, a, "stride")


def _dropout(ctx, a):
    p = a["probability"]
    ctx.check(0 <= p < 1, "probability", f"[dropout] probability must be in [0, 1), got {p}")


def _softmax(ctx, a):
    _positive(ctx, a, "groups")


def _anchors(ctx, a):
    _positive(ctx, a, "num")
    ctx.check(a["classes"] >= 0, "classes", f"[{ctx.kind}] classes must be >= 0, got {a['classes']}")
    want = 2 * a["num"]
    ctx.check(len(a["anchors"]) == want, "anchors",
              f"[{ctx.kind}] anchors has {len(a['anchors'])} values, num={a['num']} needs {want}")


def _yolo(ctx, a):
    _anchors(ctx, a)
    for m in a["mask"]:
        ctx.check(0 <= m < a["num"], "mask", f"[yolo] mask entry {m} out of range for num={a['num']}")
    cpc = a["counters_per_class"]
    ctx.check(not cpc or len(cpc) == a["classes"], "counters_per_class",
              f"[yolo] counters_per_class has {len(cpc)} values, classes={a['classes']}")
    a["n"] = len(a["mask"])


def _region(ctx, a):
    _anchors(ctx, a)
    _positive(ctx, a, "coords")


_RULES = {
    "net": _net, "convolutional": _convolutional, "deformable": _deformable, "connected": _connected,
    "maxpool": _pool,
    "local_avgpool": _pool, "route": _route, "shortcut": _shortcut, "scale_channels": _single_from,
    "sam": _single_from, "upsample": _upsample, "reorg": _reorg, "reorg3d": _reorg,
    "dropout": _dropout, "softmax": _softmax,
    "yolo": _yolo, "region": _region, "fcos": _fcos,
}


# ----------------------------------------------------------------------------- entry points

def parse_cfg_text(text: str, path: str = "<string>") -> NetSpec:
    """Parse cfg `text`; `path` is only used in messages and recorded in the specs."""
    path = str(path)
    sections = _read_sections(text, path)
    if not sections:
        raise CfgError(path, None, "no sections found (expected [net] first)")
    kinds = []
    for sec in sections:
        kind = SECTION_ALIASES.get(sec.name, sec.name)
        if kind not in KNOWN_SECTIONS:
            raise CfgError(path, sec.line, f"unknown section [{sec.name}]")
        kinds.append(kind)
    if kinds[0] != "net":
        raise CfgError(path, sections[0].line, f"first section must be [net] or [network], got [{sections[0].name}]")
    net_ctx = _Ctx(path, sections[0], -1, "net")
    options = _resolve(net_ctx, SCHEMA["net"])
    _net(net_ctx, options)
    layers = []
    for index, (sec, kind) in enumerate(zip(sections[1:], kinds[1:])):
        if kind == "net":
            raise CfgError(path, sec.line, f"[{sec.name}] may only be the first section")
        if kind not in SUPPORTED_LAYERS:
            raise CfgError(path, sec.line, f"layer type '{kind}' is not supported")
        ctx = _Ctx(path, sec, index, kind)
        attrs = _resolve(ctx, SCHEMA[kind])
        if kind in _RULES:
            _RULES[kind](ctx, attrs)
        layers.append(LayerSpec(index, kind, sec.line, path, attrs))
    return NetSpec(path, options, layers)


def parse_cfg(path) -> NetSpec:
    """Read and parse the cfg file at `path`."""
    name = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CfgError(name, None, f"cannot read cfg file: {e.strerror or e}") from None
    problem = not_text(data)
    if problem:
        raise CfgError(name, None, f"cfg file: {problem}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return parse_cfg_text(text, name)
