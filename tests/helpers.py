"""Scaffolding shared by the training tests (test_training.py,
test_learning.py, test_train_cli.py, and test_cuda.py's training comparison):
cfg text written section by section, the small yolo networks they train on
the synthetic shapes (pydarknet.synthetic: 3 classes), and the loops and
snapshots around training."""
import pydarknet
from pydarknet.synthetic import shapes_batch
from conftest import randomize


# ----------------------------------------------------------------------------- cfg text

def section(name, **options):
    """[name] and its options one a line, in the order given."""
    return f"[{name}]\n" + "".join(f"{key}={value}\n" for key, value in options.items())


def conv(filters, size=3, stride=1, bn=False, activation="leaky"):
    """A [convolutional] section, padded when size > 1, batch-normalized when bn."""
    options = dict(batch_normalize=1) if bn else {}
    options.update(filters=filters, size=size, stride=stride)
    if size > 1:
        options["pad"] = 1
    return section("convolutional", **options, activation=activation)


def maxpool(size=2, stride=2):
    return section("maxpool", size=size, stride=stride)


def shapes_head(anchors, **yolo):
    """A detection head for the 3 shape classes: a 1x1 convolution to
    3 x (5 + 3) channels and a [yolo] of 3 anchors ("w,h, w,h, w,h") and
    the further [yolo] options given."""
    return conv(24, size=1, activation="linear") + section("yolo", mask="0,1,2", anchors=anchors, classes=3, num=3,
                                                           **yolo)


def small_yolo_cfg(subdivisions=1, extra=""):
    """A 32x32 yolo network of two strided convolutions, batch 8 in
    `subdivisions` mini-batches, SGD with momentum and decay; `extra`: more
    [net] lines ("adam=1\\nburn_in=3")."""
    net = section("net", width=32, height=32, channels=3, batch=8, subdivisions=subdivisions, learning_rate=0.01,
                  momentum=0.9, decay=0.0005)
    return (net + (extra + "\n" if extra else "") + conv(8, stride=2) + conv(16, stride=2)
            + shapes_head("4,4, 8,8, 12,12"))


def small_yolo(write_cfg, subdivisions=1, extra="", seed=None, name="net.cfg"):
    """The network of small_yolo_cfg written as `name`, its weights random
    from `seed` (None: as loaded)."""
    net = pydarknet.load(write_cfg(small_yolo_cfg(subdivisions, extra), name))
    if seed is not None:
        randomize(net, seed)
    return net


# ----------------------------------------------------------------------------- training

def trained(write_cfg, sub, iterations=1, extra="", name="net.cfg", device=None):
    """small_yolo(sub, extra) with weights from seed 3 (on the GPU `device`
    when given) after `iterations` steps on the same 8 images of shapes;
    the network and its losses."""
    net = small_yolo(write_cfg, sub, extra, seed=3, name=name)
    if device is not None:
        net.set_device(device)
    x, t = shapes_batch(8, 32, seed=4)
    losses = [net.train_batch(x, t) for _ in range(iterations)]
    return net, losses


def train_cycling(net, x, t, iterations, batch):
    """`iterations` training steps on consecutive slices of `batch` images
    of (x, t), starting over at the end; the losses."""
    losses = []
    for it in range(iterations):
        k = (it * batch) % len(x)
        losses.append(net.train_batch(x[k:k + batch], t[k:k + batch]))
    return losses


def params(net):
    """A copy of every parameter, by (layer index, name)."""
    return {(l.index, k): v.copy() for l in net.layers for k, v in l.params.items()}
