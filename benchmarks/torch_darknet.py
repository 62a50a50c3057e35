"""A PyTorch version of a darknet cfg, for the benchmarks only (bench_gpu.py).

The network is built from pydarknet's own parser (``pydarknet.cfg.parse_cfg``:
every option resolved, defaults included), so both systems read the cfg the
same way, and :meth:`DarknetTorch.load_from` copies the parameters of a
pydarknet :class:`~pydarknet.Network` so both compute the same function.

Layer types: the ones yolov3-tiny and yolov4-tiny use (and yolov4, which adds
[shortcut] and mish):

* [convolutional]: ``nn.Conv2d`` (groups, stride_x/stride_y, padding as
  resolved: ``pad=1`` means size/2, dilation pads by padding*dilation) with
  ``nn.BatchNorm2d`` (eps 1e-5, momentum 0.1: darknet's .9/.1 rolling
  update) when batch_normalize=1 (darknet's ``biases`` are then the batch
  norm's shift, ``scales`` its weight), else a conv bias; activation leaky
  (slope 0.1), linear, mish, logistic, relu.
* [maxpool]: darknet's window rule: output (H + padding - size) / stride + 1,
  windows starting padding/2 before the image, pixels outside it ignored (the
  input is padded with -inf where a window reaches past it).
* [route] (groups/group_id: each source's group_id-th slice of channels),
  [upsample] (nearest, times scale), [shortcut] (sum with the previous
  layer, then the activation; unweighted, same shapes).
* [yolo]: the layer's output as pydarknet gives it, not decoded: the
  logistic of x, y, objectness and the classes (not with new_coords), then
  x, y scaled by scale_x_y about 0.5.

One difference in training: ``nn.BatchNorm2d`` normalizes with the biased
variance of the batch, darknet (and pydarknet) with the unbiased one; over the
N = batch * H * W values of a channel that changes the normalized values by a
factor sqrt((N - 1) / N) (1.5e-3 relative at 13x13 and batch 2), and their
gradients more. ``DarknetTorch(cfg, unbiased_bn=True)`` computes darknet's
(``UnbiasedBatchNorm2d``): the float64 reference of bench_gpu.py's check.

Anything else (other layer types, binary or deformable convolutions,
maxpool_depth, weighted shortcuts, reverse upsample) raises a CfgError
naming the cfg file and the layer's line.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from pydarknet.cfg import CfgError, parse_cfg

ACTIVATIONS = {
    "linear": lambda x: x,
    "leaky": lambda x: F.leaky_relu(x, 0.1),
    "mish": F.mish,
    "logistic": torch.sigmoid,
    "relu": F.relu,
}

SUPPORTED = ("convolutional", "maxpool", "route", "upsample", "shortcut", "yolo")


def _fail(spec, message):
    raise CfgError(spec.path, spec.line, f"layer {spec.index} [{spec.type}]: {message}")


def _activation(spec):
    name = spec.attrs["activation"]
    if name not in ACTIVATIONS:
        _fail(spec, f"activation={name} is not in the PyTorch model (it has {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def _refuse_options(spec, keys):
    """Fails on the first option of `keys` that is set (non-zero)."""
    for key in keys:
        if spec.attrs.get(key):
            _fail(spec, f"{key}={spec.attrs[key]} is not in the PyTorch model")


class UnbiasedBatchNorm2d(nn.BatchNorm2d):
    """Batch norm as darknet computes it in training: normalized with the
    unbiased variance of the batch (nn.BatchNorm2d uses the biased one), the
    rolling statistics moved by .9/.1 with the unbiased variance as both do."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=True)
        with torch.no_grad():
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * var)
        shape = (1, -1, 1, 1)
        return (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps) * self.weight.view(shape) + \
            self.bias.view(shape)


class Conv(nn.Module):
    def __init__(self, spec, in_channels, unbiased_bn=False):
        super().__init__()
        a = spec.attrs
        _refuse_options(spec, ("binary", "xnor", "antialiasing", "sway", "rotate", "stretch", "stretch_sway",
                               "coordconv", "assisted_excitation"))
        if a["batch_normalize"] not in (0, 1):
            _fail(spec, "cbn (batch_normalize=2) is not in the PyTorch model")
        if a["share_index"] != -1000000000:
            _fail(spec, "share_index is not in the PyTorch model")
        if in_channels % a["groups"] or a["filters"] % a["groups"]:
            _fail(spec, f"groups={a['groups']} must divide the input channels ({in_channels}) "
                        f"and filters ({a['filters']})")
        bn = UnbiasedBatchNorm2d if unbiased_bn else nn.BatchNorm2d
        self.bn = bn(a["filters"], eps=1e-5, momentum=0.1) if a["batch_normalize"] else None
        d = a["dilation"]
        self.conv = nn.Conv2d(in_channels, a["filters"], a["size"], stride=(a["stride_y"], a["stride_x"]),
                              padding=a["padding"] * d, dilation=d, groups=a["groups"], bias=self.bn is None)
        self.act = _activation(spec)

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)

    def load(self, params):
        """Copies pydarknet's parameters (name -> flat float32 array)."""
        def put(tensor, name):
            value = torch.from_numpy(params[name].copy()).view_as(tensor)
            tensor.data.copy_(value)

        put(self.conv.weight, "weights")
        if self.bn is None:
            put(self.conv.bias, "biases")
        else:
            put(self.bn.bias, "biases")
            put(self.bn.weight, "scales")
            put(self.bn.running_mean, "rolling_mean")
            put(self.bn.running_var, "rolling_variance")


class MaxPool(nn.Module):
    def __init__(self, spec):
        super().__init__()
        a = spec.attrs
        _refuse_options(spec, ("maxpool_depth", "antialiasing", "maxpool_zero_nonmax"))
        self.size, self.sx, self.sy, self.padding = a["size"], a["stride_x"], a["stride_y"], a["padding"]

    def forward(self, x):
        h, w = x.shape[2:]
        before = self.padding // 2
        out_h = (h + self.padding - self.size) // self.sy + 1
        out_w = (w + self.padding - self.size) // self.sx + 1
        # the input rows and columns the last window reaches, past the image
        after_h = max(0, (out_h - 1) * self.sy + self.size - h - before)
        after_w = max(0, (out_w - 1) * self.sx + self.size - w - before)
        if before or after_h or after_w:
            x = F.pad(x, (before, after_w, before, after_h), value=float("-inf"))
        return F.max_pool2d(x, self.size, (self.sy, self.sx))


class Yolo(nn.Module):
    def __init__(self, spec):
        super().__init__()
        a = spec.attrs
        self.n, self.classes, self.new_coords = a["n"], a["classes"], a["new_coords"]
        self.scale, self.shift = a["scale_x_y"], -0.5 * (a["scale_x_y"] - 1.0)

    def forward(self, x):
        b, c, h, w = x.shape
        v = x.view(b, self.n, c // self.n, h, w)
        p = v if self.new_coords else torch.sigmoid(v)
        xy = p[:, :, :2] * self.scale + self.shift
        return torch.cat((xy, v[:, :, 2:4], p[:, :, 4:]), 2).view(b, c, h, w)


class DarknetTorch(nn.Module):
    """The network of a darknet cfg; forward returns the [yolo] layers' outputs
    (or the last layer's when there is none), [B, C, H, W] each, in cfg order."""

    def __init__(self, cfg, unbiased_bn=False):
        super().__init__()
        self.spec = parse_cfg(cfg) if isinstance(cfg, str) else cfg
        self.specs = self.spec.layers
        channels = []  # output channels of every layer so far
        modules = []
        for s in self.specs:
            c_in = channels[-1] if channels else self.spec.channels
            if s.type not in SUPPORTED:
                _fail(s, f"layer type not in the PyTorch model (it has {', '.join(SUPPORTED)})")
            if s.type == "convolutional":
                modules.append(Conv(s, c_in, unbiased_bn))
                channels.append(s.attrs["filters"])
                continue
            if s.type == "maxpool":
                modules.append(MaxPool(s))
            elif s.type == "yolo":
                if c_in != s.attrs["n"] * (s.attrs["classes"] + 5):
                    _fail(s, f"{c_in} input channels, mask and classes need {s.attrs['n'] * (s.attrs['classes'] + 5)}")
                modules.append(Yolo(s))
            else:
                modules.append(nn.Identity())  # route, upsample and shortcut are handled in forward
            if s.type == "route":
                c_in = sum(channels[j] // s.attrs["groups"] for j in s.attrs["layers"])
            elif s.type == "upsample" and s.attrs["stride"] < 0:
                _fail(s, "reverse upsample (stride < 0) is not in the PyTorch model")
            elif s.type == "shortcut":
                if s.attrs["weights_type"] != "none":
                    _fail(s, f"weights_type={s.attrs['weights_type']} is not in the PyTorch model")
                _activation(s)
            channels.append(c_in)
        self.layers = nn.ModuleList(modules)
        self.heads = [s.index for s in self.specs if s.type == "yolo"] or [len(self.specs) - 1]
        self._kept = self._needed_later()

    def _needed_later(self):
        """The layers whose outputs a later route or shortcut reads."""
        kept = set()
        for s in self.specs:
            kept.update(s.attrs.get("layers", []) if s.type == "route" else [])
            kept.update(s.attrs.get("from", []) if s.type == "shortcut" else [])
        return kept | set(self.heads)

    def forward(self, x):
        saved = {}
        for s, module in zip(self.specs, self.layers):
            a = s.attrs
            if s.type == "route":
                parts = []
                for j in a["layers"]:
                    y = saved[j]
                    step = y.shape[1] // a["groups"]
                    parts.append(y[:, a["group_id"] * step:(a["group_id"] + 1) * step] if a["groups"] > 1 else y)
                x = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
            elif s.type == "upsample":
                x = F.interpolate(x, scale_factor=a["stride"], mode="nearest")
                if a["scale"] != 1.0:
                    x = x * a["scale"]
            elif s.type == "shortcut":
                for j in a["from"]:
                    if saved[j].shape != x.shape:
                        _fail(s, f"from layer {j} has shape {tuple(saved[j].shape)}, the input "
                                 f"{tuple(x.shape)}: only equal shapes are in the PyTorch model")
                    x = x + saved[j]
                x = ACTIVATIONS[a["activation"]](x)
            else:
                x = module(x)
            if s.index in self._kept:
                saved[s.index] = x
        return [saved[i] for i in self.heads]

    @torch.no_grad()
    def load_from(self, net):
        """Copies every convolution's parameters from the pydarknet Network `net`
        (built from the same cfg)."""
        if len(net.layers) != len(self.specs):
            raise ValueError(f"the pydarknet network has {len(net.layers)} layers, the cfg {len(self.specs)}")
        for s, module, layer in zip(self.specs, self.layers, net.layers):
            if layer.type != s.type:
                raise ValueError(f"layer {s.index}: pydarknet has [{layer.type}], the cfg [{s.type}]")
            if isinstance(module, Conv):
                module.load(layer.params)

    def param_pairs(self):
        """(layer index, pydarknet parameter name, torch parameter) of every trained parameter."""
        out = []
        for s, module in zip(self.specs, self.layers):
            if isinstance(module, Conv):
                out.append((s.index, "weights", module.conv.weight))
                if module.bn is None:
                    out.append((s.index, "biases", module.conv.bias))
                else:
                    out += [(s.index, "biases", module.bn.bias), (s.index, "scales", module.bn.weight)]
        return out
