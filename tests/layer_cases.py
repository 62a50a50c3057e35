"""The one table of layer cases. Each case is a cfg body (the sections after a
small [net]), the network's input shape (c, h, w), an id, and the kinds of
test that run it:

* forward: the test of tests/test_layers.py (its name without `test_`) whose
  NumPy reference checks the case's output, with both GEMMs;
* grad: tests/test_grad_layers.py compares the backward pass with central
  differences, on inputs "away" from the kinks at 0 (magnitudes 0.2..1.2) or
  "spaced" (distinct values 0.05 apart, for max pooling); "weights": its
  test_shortcut_weighted, which sets the shortcut's weights away from kinks
  first (the plain check covers layers without weights of their own; the
  layers with parameters are checked in tests/test_grad_params.py);
* train_pass: tests/test_grad_layers.py checks that the training forward pass
  gives the outputs of the inference pass;
* gpu: tests/test_cuda.py runs forward and backward on the GPU against the CPU
  (every layer case; not the speed-path networks, which aim at CPU kernel plans);
* speed: tests/test_speed_paths.py checks the speed paths against the plain
  code, and thread counts against each other;
* out_shape: where given, the forward tests also check the output's (c, h, w).

A case runs in every kind whose test applies to it. Adding a layer case is one
row here; select(...) gives each test its rows as pytest parameters, with the
case's id as the parameter id.
"""
from dataclasses import dataclass

import pytest

NET = "[net]\nwidth={w}\nheight={h}\nchannels={c}\n"
ONE = "[convolutional]\nfilters={f}\nsize=1\nstride=1\nactivation=linear\n"
YOLO = "[yolo]\nmask=0,1\nanchors=10,14, 23,27, 37,58\nclasses=2\nnum=3\n"

# the activations of darknet: element-wise (NumPy references in test_layers.ACT),
# stair, and those normalizing over the channels at each pixel
ELEMENTWISE = ["elu", "gelu", "hard_mish", "hardtan", "leaky", "lhtan", "linear", "loggy", "logistic", "mish", "plse",
               "ramp", "relie", "relu", "relu6", "revleaky", "selu", "swish", "tanh"]
CHANNELWISE = ["normalize_channels", "normalize_channels_softmax", "normalize_channels_softmax_maxval"]
ACTIVATIONS = ELEMENTWISE + ["stair"] + CHANNELWISE
# those whose gradient the finite differences check on inputs away from 0
# (the others have kinks within reach: at 1, 4, 6 or every integer)
SMOOTH_AWAY_FROM_0 = ["leaky", "logistic", "tanh", "mish", "swish", "gelu", "elu", "hard_mish", "normalize_channels",
                      "normalize_channels_softmax"]


@dataclass(frozen=True)
class Case:
    id: str
    body: str
    shape: tuple             # (c, h, w) of the network input
    forward: str = ""        # the test in test_layers.py with its NumPy reference
    grad: str = ""           # "away", "spaced" or "weights" (see above)
    train_pass: bool = False
    gpu: bool = True
    speed: bool = False
    out_shape: tuple = None  # the last layer's (c, h, w), where a forward test checks it

    @property
    def cfg(self):
        c, h, w = self.shape
        return NET.format(c=c, h=h, w=w) + self.body


def tag(opts):
    """'size=2\\nstride_x=2' -> 'size2-stride_x2': an id part that -k can select."""
    return "-".join(o.replace("=", "").replace(",", "_").replace(" ", "") for o in opts.split("\n") if o)


def shape_tag(c, h, w):
    return f"{c}x{h}x{w}"


def layer(section, opts, c, h, w, **kinds):
    """A case of one section with the options `opts` (lines), its id made of them and the shape."""
    body = f"[{section}]\n" + "".join(o + "\n" for o in opts.split("\n") if o)
    parts = [section, tag(opts), shape_tag(c, h, w)]
    return Case("-".join(p for p in parts if p), body, (c, h, w), **kinds)


def conv(filters, size=3, stride=1, bn=1, act="leaky", groups=1, dilation=1, pad=None):
    """A [convolutional] section with every option spelled out (the speed-path networks)."""
    pad = (size // 2) if pad is None else pad
    return ("[convolutional]\nfilters=%d\nsize=%d\nstride=%d\npad=%d\nbatch_normalize=%d\nactivation=%s\n"
            "groups=%d\ndilation=%d\n" % (filters, size, stride, 1 if pad else 0, bn, act, groups, dilation))


# ----------------------------------------------------------------------------- convolutional, connected
# each geometry at the input channels listed (height 9, width 8), without and with batch normalization
CONV_GEOMETRY = [
    ("filters=4\nsize=3\nstride=1\npad=1", (3, 6)),
    ("filters=6\nsize=3\nstride=2\npad=1", (3, 6)),
    ("filters=4\nsize=1\nstride=1\npad=0", (5, 6)),
    ("filters=4\nsize=3\nstride_x=2\nstride_y=1\npadding=1", (3, 6)),
    ("filters=4\nsize=3\nstride=1\npadding=0", (3,)),
    ("filters=6\nsize=3\nstride=1\npad=1\ngroups=3", (6,)),
    ("filters=6\nsize=3\nstride=1\npad=1\ngroups=6", (6,)),
    ("filters=4\nsize=3\nstride=1\npad=1\ndilation=2", (3, 6)),
    ("filters=4\nsize=5\nstride=3\npadding=1", (3, 6)),
]
CASES = [Case(f"conv-{tag(opts)}-bn{bn}-{shape_tag(c, 9, 8)}",
              f"[convolutional]\n{opts}\nbatch_normalize={bn}\nactivation=linear\n", (c, 9, 8), forward="convolutional")
         for opts, channels in CONV_GEOMETRY for c in channels for bn in (0, 1)]
# every activation after a convolution
CASES += [Case(f"conv1x1-{a}", f"[convolutional]\nfilters=4\nsize=1\nstride=1\nactivation={a}\n", (3, 5, 5),
               forward="activation_in_convolutional") for a in ELEMENTWISE]
CASES += [Case(f"conv3x3-bn-{a}", f"[convolutional]\nfilters=4\nsize=3\npad=1\nbatch_normalize=1\nactivation={a}\n",
               (3, 6, 6), forward="activation_in_convolutional") for a in ACTIVATIONS]
CASES += [Case(f"connected-bn{bn}", f"[connected]\noutput=7\nbatch_normalize={bn}\nactivation=leaky\n", (2, 3, 4),
               forward="connected") for bn in (0, 1)]

# ----------------------------------------------------------------------------- [activation]
def activation(a, c, h, w, **kinds):
    if a in CHANNELWISE:
        kinds.setdefault("forward", "channel_normalizing_activations")
    return Case(f"activation-{a}-{shape_tag(c, h, w)}", f"[activation]\nactivation={a}\n", (c, h, w), **kinds)


CASES += [activation(a, 5, 3, 4, grad="away" if a in SMOOTH_AWAY_FROM_0 else "") for a in ACTIVATIONS]
CASES += [activation(a, 4, 3, 4, grad="away") for a in SMOOTH_AWAY_FROM_0]
CASES += [activation("stair", 2, 4, 4, forward="stair_activation")]

# ----------------------------------------------------------------------------- pooling
POOLING = dict(forward="maxpool", grad="spaced")
CASES += [layer("maxpool", opts, 3, h, w, **POOLING) for opts, h, w in [
    ("size=2\nstride=2", 9, 8), ("size=2\nstride=2", 8, 8), ("size=2\nstride=1", 9, 8), ("size=3\nstride=2", 9, 8),
    ("size=3\nstride=1", 7, 7), ("size=3\nstride=1\npadding=2", 9, 8), ("size=5\nstride=1", 9, 8),
    ("size=5\nstride=1", 7, 6), ("size=2\nstride_x=2\nstride_y=1", 9, 8), ("size=2\nstride_x=2\nstride_y=1", 6, 8),
    ("size=3\nstride=2\npadding=0", 9, 9)]]
CASES += [layer("maxpool", "size=3\nstride=2", 3, 7, 7, train_pass=True, **POOLING)]
DEPTH = dict(forward="maxpool_depth", grad="spaced")
CASES += [layer("maxpool", "maxpool_depth=1\nout_channels=2", 6, 4, 4, **DEPTH),
          layer("maxpool", "maxpool_depth=1\nout_channels=2", 6, 4, 5, **DEPTH),
          layer("maxpool", "maxpool_depth=1\nout_channels=2", 4, 7, 7, train_pass=True, **DEPTH)]
CASES += [layer("local_avgpool", opts, 3, h, w, forward="local_avgpool", grad="away") for opts, h, w in [
    ("size=2\nstride=2", 7, 8), ("size=3\nstride=1", 7, 8), ("size=3\nstride=2\npadding=1", 7, 8),
    ("size=2\nstride=2", 8, 8), ("size=3\nstride=1", 6, 7), ("size=3\nstride=2", 7, 7),
    ("size=2\nstride_x=1\nstride_y=2\npadding=0", 6, 5)]]
CASES += [layer("avgpool", "", 4, 5, 3, forward="avgpool", grad="away"),
          Case("logistic-avgpool", "[activation]\nactivation=logistic\n[avgpool]\n", (4, 5, 6), grad="away")]

# ----------------------------------------------------------------------------- route
CASES += [Case("route-concat-and-groups", ONE.format(f=4) + ONE.format(f=6) + "[route]\nlayers=-1,-2\n"
               "[route]\nlayers=1,0\ngroups=2\ngroup_id=1\n", (3, 4, 5), forward="route_concatenates_and_groups")]
CASES += [Case(f"route-{tag(route)}", "[activation]\nactivation=leaky\n[activation]\nactivation=logistic\n"
               f"[activation]\nactivation=tanh\n[route]\n{route}\n", (4, 5, 5), grad="away")
          for route in ["layers=0,1", "layers=1,0,-3", "layers=0,1\ngroups=2\ngroup_id=1",
                        "layers=1\ngroups=4\ngroup_id=2"]]

# ----------------------------------------------------------------------------- shortcut
SUM = "shortcut_several_sources_and_activation"
CASES += [Case("shortcut-from-2_-3-leaky", ONE.format(f=4) * 3 + "[shortcut]\nfrom=-2,-3\nactivation=leaky\n",
               (3, 4, 5), forward=SUM),
          Case("shortcut-from-2-swish", ONE.format(f=4) * 3 + "[shortcut]\nfrom=-2\nactivation=swish\n", (3, 4, 5),
               forward=SUM)]
# the sum tanh(x) + x (+ ...) keeps the sign of x and |sum| >= 0.2
CASES += [Case(f"shortcut-from{tag(frm)}-{act}", "[empty]\n[activation]\nactivation=tanh\n[activation]\n"
               f"activation=linear\n[shortcut]\nfrom={frm}\nactivation={act}\n", (3, 5, 4), forward=SUM, grad="away")
          for act in ["linear", "leaky", "mish"] for frm in ["0", "0,1", "-3,-2,-1"]]
CASES += [Case(f"shortcut-conv-{wtype}-{norm}", ONE.format(f=4) * 2 + f"[shortcut]\nfrom=0\nweights_type={wtype}\n"
               f"weights_normalization={norm}\n", (3, 3, 3), forward="shortcut_weighted")
          for wtype, norm in [("per_feature", "none"), ("per_channel", "none"), ("per_feature", "relu"),
                              ("per_channel", "softmax")]]
CASES += [Case("shortcut-conv-per_channel-none-leaky", ONE.format(f=4) * 2 + "[shortcut]\nfrom=0\n"
               "weights_type=per_channel\nweights_normalization=none\nactivation=leaky\n", (3, 3, 3),
               forward="shortcut_weighted")]
# three different terms: logistic(tanh(x)) (the input), x and tanh(x)
CASES += [Case(f"shortcut-{wtype}-{norm}", "[empty]\n[activation]\nactivation=tanh\n[activation]\nactivation=logistic\n"
               f"[shortcut]\nfrom=0,1\nactivation=logistic\nweights_type={wtype}\nweights_normalization={norm}\n",
               (3, 4, 5), forward="shortcut_weighted", grad="weights")
          for norm in ["none", "relu", "softmax"] for wtype in ["per_feature", "per_channel"]]
CASES += [Case("shortcut-mish-per_channel-softmax-swish", "[empty]\n[activation]\nactivation=mish\n[shortcut]\nfrom=0\n"
               "activation=swish\nweights_type=per_channel\nweights_normalization=softmax\n", (3, 7, 7),
               forward="shortcut_weighted", grad="weights", train_pass=True)]
# pjreddie's resnet joins a 4x4 layer onto a 2x2 one: strided sampling
CASES += [Case("shortcut-of-smaller-conv", ONE.format(f=4) + "[convolutional]\nfilters=6\nsize=1\nstride=2\n"
               "activation=linear\n[shortcut]\nfrom=-2\n", (3, 4, 4), forward="shortcut_of_different_size_samples")]
CASES += [Case(f"shortcut-sampled-{name}", body + "[shortcut]\nfrom=0\nactivation=leaky\n", (c, h, w), grad="away")
          for name, body, c, h, w in [
              ("up", "[empty]\n[upsample]\nstride=2\n", 3, 4, 4),          # the source is smaller: sampled up
              ("down", "[empty]\n[upsample]\nstride=-2\n", 3, 8, 8),       # the source is larger: sampled down
              ("fewer-channels", "[empty]\n[route]\nlayers=0\ngroups=2\n", 4, 6, 6),   # the source has more channels
              ("more-channels", "[empty]\n[route]\nlayers=0,0\n", 2, 6, 6)]]          # the source has fewer

# ----------------------------------------------------------------------------- upsample, reorg
CASES += [layer("upsample", opts, c, h, w, forward="upsample", grad="away") for opts, c, h, w in [
    ("stride=2\nscale=1.0", 2, 4, 6), ("stride=3\nscale=0.5", 2, 4, 6), ("stride=-2\nscale=1.0", 2, 4, 6),
    ("stride=2", 3, 4, 5), ("stride=3\nscale=.5", 3, 3, 4), ("stride=-2", 3, 8, 6),
    ("stride=-2\nscale=.25", 3, 7, 6)]]   # the last row belongs to no block
CASES += [layer("reorg", opts, c, h, w, forward="reorg_is_darknets_old_reorg", grad="away", out_shape=out)
          for opts, c, h, w, out in [
              ("stride=2", 4, 4, 6, (16, 2, 3)), ("stride=2", 12, 2, 2, (48, 1, 1)), ("stride=3", 9, 3, 6, (81, 1, 2)),
              ("stride=2\nreverse=1", 8, 3, 2, (2, 6, 4)), ("stride=2", 4, 8, 6, None), ("stride=3", 9, 6, 9, None),
              ("stride=2\nreverse=1", 4, 3, 2, None)]]
CASES += [layer("reorg3d", opts, c, h, w, forward="reorg3d_is_space_to_depth", grad="away", out_shape=out)
          for opts, c, h, w, out in [("stride=2", 3, 4, 6, (12, 2, 3)), ("stride=2", 3, 8, 6, None),
                                     ("stride=3", 2, 6, 9, None)]]
CASES += [layer("reorg3d", "stride=2\nreverse=1", c, h, w, forward="reorg3d_reverse_is_a_permutation", grad="away",
                out_shape=out) for c, h, w, out in [(16, 2, 2, (4, 4, 4)), (16, 3, 2, None)]]

# ----------------------------------------------------------------------------- scale_channels, sam
CASES += [Case("scale_channels-conv-by-avgpool-logistic", ONE.format(f=4) + "[avgpool]\n[scale_channels]\nfrom=-2\n"
               "activation=logistic\n", (3, 4, 5), forward="scale_channels"),
          Case("scale_channels-conv-wh", ONE.format(f=4) + ONE.format(f=1) + "[scale_channels]\nfrom=-2\nscale_wh=1\n",
               (3, 4, 5), forward="scale_channels")]
CASES += [Case(f"scale_channels-by-avgpool-{act}", "[activation]\nactivation=tanh\n[avgpool]\n[scale_channels]\n"
               f"from=0\nactivation={act}\n", (4, 5, 4), forward="scale_channels", grad="away")
          for act in ["linear", "logistic", "swish"]]
CASES += [Case(f"scale_channels-wh-{act}", "[activation]\nactivation=tanh\n[route]\nlayers=0\ngroups=4\ngroup_id=1\n"
               f"[scale_channels]\nfrom=0\nscale_wh=1\nactivation={act}\n", (4, 5, 4), forward="scale_channels",
               grad="away") for act in ["linear", "mish"]]
CASES += [Case("scale_channels-by-avgpool-mish-7x7", "[activation]\nactivation=tanh\n[avgpool]\n[scale_channels]\n"
               "from=0\nactivation=mish\n", (3, 7, 7), forward="scale_channels", grad="away", train_pass=True)]
CASES += [Case("sam-conv", ONE.format(f=4) * 2 + "[sam]\nfrom=-2\n", (3, 4, 5), forward="sam"),
          Case("sam-conv-swish", ONE.format(f=4) * 2 + "[sam]\nfrom=-2\nactivation=swish\n", (3, 4, 5), forward="sam")]
CASES += [Case(f"sam-{act}", "[activation]\nactivation=logistic\n[activation]\nactivation=tanh\n[sam]\nfrom=0\n"
               f"activation={act}\n", (3, 4, 4), forward="sam", grad="away") for act in ["linear", "leaky", "mish"]]
CASES += [Case("sam-self-gelu", "[activation]\nactivation=logistic\n[sam]\nfrom=0\nactivation=gelu\n", (3, 7, 7),
               forward="sam", grad="away", train_pass=True)]

# ----------------------------------------------------------------------------- softmax, batchnorm, identities
CASES += [layer("softmax", f"groups={g}\ntemperature={t}", 8, 1, 1, forward="softmax")
          for g, t in [(1, 1.0), (4, 1.0), (2, 0.5)]]
CASES += [layer("softmax", "groups=1", 5, 1, 1, forward="softmax"),
          layer("softmax", "groups=4\ntemperature=0.5\nnoloss=1", 8, 1, 1, forward="softmax")]
CASES += [layer("batchnorm", "", 3, 4, 4, forward="batchnorm")]
CASES += [layer(section, opts, 3, 4, 4, forward="identity_at_inference", grad="away")
          for section, opts in [("dropout", "probability=.5"), ("empty", ""), ("cost", "type=sse")]]
# [reshape]: the values in their order under a new shape (0 copies a dimension, -1 is inferred), then a
# convolution that sees the new layout
CASES += [Case(f"reshape-{tag(shape)}-conv", f"[reshape]\nshape={shape}\n" + ONE.format(f=3), (4, 6, 5),
               forward="reshape", grad="away", out_shape=(3,) + out)
          for shape, out in [("0,-1,10", (3, 10)), ("-1,3,2", (20, 3, 2)[1:]), ("24,5,1", (5, 1))]]
# [reduction]: every operation over every axis, with a coeff
CASES += [layer("reduction", f"operation={op}\naxis={axis}\ncoeff={coeff}", 3, 4, 5, forward="reduction", grad="away",
                out_shape=((1, 1, 1), (3, 1, 1), (3, 4, 1))[axis - 1])
          for op, coeff in [("sum", 1), ("asum", 0.5), ("sumsq", 2), ("mean", -1.5)] for axis in (1, 2, 3)]
# [deformable] (DCNv2): deformable groups, strides, modulation, batch norm; the offset convolution's weights are
# random here (zero, the default, samples the plain grid). Its gradients are checked in test_grad_params.py, with
# sample positions kept off the integers (where the bilinear weights have kinks that finite differences cross).
CASES += [Case(f"deformable-{tag(opts)}", f"[deformable]\nfilters=3\nsize=3\npad=1\n{opts}\n",
               (4, 6, 5), forward="deformable")
          for opts in ["deformable_groups=1\nactivation=linear", "deformable_groups=2\nstride=2\nactivation=linear",
                       "modulated=0\nbatch_normalize=1\nactivation=linear",
                       "deformable_groups=4\nstride_x=2\nactivation=logistic"]]
# [groupnorm]: one group (LayerNorm-like), groups of 2 channels, one channel each (InstanceNorm-like). The
# convolution before it is nonlinear: behind a linear one, one channel per group would cancel the convolution's
# bias altogether, a gradient that is zero by construction and that the CPU and GPU only give as rounding noise
CASES += [Case(f"conv-groupnorm-groups{g}", ONE.format(f=6).replace("linear", "logistic") + f"[groupnorm]\ngroups={g}\n",
               (3, 4, 5), forward="groupnorm", grad="away") for g in (1, 3, 6)]
# [scale]: per channel gamma * x (+ beta), after a convolution so the parameters meet varied inputs
CASES += [Case(f"conv-scale-bias_term{bt}", ONE.format(f=4) + f"[scale]\nbias_term={bt}\n", (3, 5, 4),
               forward="scale", grad="away") for bt in (1, 0)]
# the checker reseeds before every pass, so each pass draws the same dropout mask
CASES += [Case("tanh-dropout-logistic", "[activation]\nactivation=tanh\n[dropout]\nprobability=.3\n[activation]\n"
               "activation=logistic\n", (3, 6, 6), grad="away")]
CASES += [Case("conv-maxpool_depth-connected-dropout", ONE.format(f=8) + "[maxpool]\nmaxpool_depth=1\nout_channels=3\n"
               "[connected]\noutput=5\nactivation=logistic\n[dropout]\nprobability=.3\n", (3, 4, 4))]

# ----------------------------------------------------------------------------- heads
CASES += [Case(f"yolo-{tag(extra) or 'plain'}-{shape_tag(14, h, w)}", YOLO + extra, (14, h, w), forward="yolo_forward")
          for extra, h, w in [("\n", 4, 4), ("scale_x_y=1.1\n", 4, 4), ("new_coords=1\nscale_x_y=2.0\n", 4, 4),
                              ("", 3, 4), ("new_coords=1\nscale_x_y=1.1\n", 3, 4)]]
CASES += [Case(f"region-{shape_tag(16, h, w)}", "[region]\nanchors=1,1, 2,2\nclasses=3\nnum=2\ncoords=4\nsoftmax=1\n",
               (16, h, w), forward="region_forward") for h, w in [(3, 3), (3, 4)]]
# [fcos]: its output pass (without truths, its Jacobian); the loss is checked in test_fcos.py
CASES += [Case(f"fcos-{tag(extra) or 'exp'}-{shape_tag(8, h, w)}", "[fcos]\nclasses=3\n" + extra, (8, h, w),
               grad="away", train_pass=True) for extra, h, w in [("", 4, 4), ("distance=relu\n", 3, 5)]]

# ----------------------------------------------------------------------------- networks for the speed paths
# shapes reaching each plan of the tiled convolution (1x1 direct, column tiles
# with private packing, shared packing, groups, stride 2, dilation, filters not
# a multiple of 8, fewer than 32 positions) and Winograd (with and without
# padding, outputs not a multiple of 4, filters in several chunks)
SPEED = dict(speed=True, gpu=False)
CASES += [Case(name, body, (c, h, w), **SPEED) for name, c, h, w, body in [
    ("private-stride1", 3, 48, 48, conv(16) + conv(24, act="logistic")),
    ("private-stride2", 5, 100, 90, conv(13, stride=2) + conv(32, size=1, act="linear")),
    ("shared-deep", 40, 9, 11, conv(70, bn=0, act="relu") + conv(33, size=1) + conv(9, act="mish")),
    ("groups-dilation", 8, 50, 46, conv(16, groups=2) + conv(16, groups=4, dilation=2)),
    ("tiny", 6, 3, 5, conv(10) + conv(3, size=1, bn=0, act="linear")),
    ("winograd-edges", 8, 51, 45, conv(12) + conv(20, pad=0, act="logistic") + conv(9, bn=0, act="linear")),
    # several filter chunks per tile panel (Winograd's shared input transform): 70 filters in chunks of 24
    ("winograd-filter-chunks", 9, 48, 48, conv(70, act="logistic") + conv(64, bn=0, act="linear")),
    # channels in two blocks of 128 + 8, 49 tiles (a panel of 17), 2 filter chunks: tasks of 2 panels
    ("winograd-channel-blocks", 136, 26, 26, conv(40, act="mish") + conv(24, bn=0, act="linear")),
    ("shortcut", 8, 30, 30, conv(8) + conv(8, act="mish") + "[shortcut]\nfrom=-2\nactivation=leaky\n" + conv(8)
     + "[shortcut]\nfrom=-3\nactivation=mish\n"),
    ("spp", 6, 13, 11, conv(8, size=1) + "[maxpool]\nsize=5\nstride=1\n" + "[route]\nlayers=-2\n"
     + "[maxpool]\nsize=9\nstride=1\n" + "[route]\nlayers=-4\n" + "[maxpool]\nsize=13\nstride=1\n"
     + "[route]\nlayers=-1,-3,-5,-6\n" + conv(4, size=1, act="logistic")),
    ("pool-route-up", 4, 40, 40, conv(16) + "[maxpool]\nsize=2\nstride=2\n" + conv(8) + "[route]\nlayers=-1,-2\n"
     + "[upsample]\nstride=2\n" + conv(4, size=1) + "[maxpool]\nsize=3\nstride=1\n"),
]]

_ids = [case.id for case in CASES]
assert len(set(_ids)) == len(_ids), sorted({i for i in _ids if _ids.count(i) > 1})
_bodies = [(case.body, case.shape) for case in CASES]
assert len(set(_bodies)) == len(_bodies), "a case is listed twice"
assert all(case.grad in ("", "away", "spaced", "weights") for case in CASES)


def select(**want):
    """The cases whose fields have the values in `want` (a tuple: any of its
    values), in table order, as pytest parameters with the case's id; `want`
    must match at least one."""
    def keep(case):
        return all(getattr(case, k) in (v if isinstance(v, tuple) else (v,)) for k, v in want.items())

    chosen = [pytest.param(case, id=case.id) for case in CASES if keep(case)]
    assert chosen, f"no layer case has {want}"
    return chosen
