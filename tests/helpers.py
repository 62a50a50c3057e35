"""Scaffolding shared by the training tests (test_training.py,
test_learning.py, test_train_cli.py, and test_cuda.py's training comparison):
cfg text written section by section, the small yolo networks they train on
the synthetic shapes (pydarknet.synthetic: 3 classes), and the loops and
snapshots around training, and the environment of the tests' child processes."""
import os

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

def trained(write_cfg, sub, iterations=1, extra="", name="net.cfg", device=None, precision=None):
    """small_yolo(sub, extra) with weights from seed 3 (on the GPU `device`
    when given, its products in `precision` when given) after `iterations`
    steps on the same 8 images of shapes; the network and its losses."""
    net = small_yolo(write_cfg, sub, extra, seed=3, name=name)
    if device is not None:
        net.set_device(device)
    if precision is not None:
        net.gpu_precision = precision
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


def shapes_found(net, x, t, size, thresh=0.3):
    """(found, total): the shapes of a shapes_batch (x, t) of `size` x `size` images that net.detect finds,
    with the right class and an IoU above .5."""
    def iou(a, b):
        ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
        bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
        w, h = min(ax1, bx1) - max(ax0, bx0), min(ay1, by1) - max(ay0, by0)
        inter = max(w, 0) * max(h, 0)
        return inter / (a[2] * a[3] + b[2] * b[3] - inter)

    found = total = 0
    for i in range(len(x)):
        img = (x[i].transpose(1, 2, 0)[:, :, ::-1] * 255).round().astype("uint8")
        dets = net.detect(img, thresh=thresh)
        for row in t[i]:
            if row[2] == 0:
                continue
            total += 1
            truth = row[:4] * size
            found += any(d.class_id == int(row[4]) and iou((d.x, d.y, d.w, d.h), truth) > 0.5 for d in dets)
    return found, total


# a small detector's [net] and backbone for 64 x 64 shapes images (16 images a batch, Adam): a head completes it
SHAPES_BACKBONE = (section("net", width=64, height=64, channels=3, batch=16, subdivisions=1, learning_rate=0.002,
                           adam=1, burn_in=20, policy="constant", decay=0.0005)
                   + conv(16, bn=True) + maxpool() + conv(32, bn=True) + maxpool() + conv(32, bn=True) + maxpool()
                   + conv(64, bn=True))


def learn_shapes(write_cfg, cfg_text, iterations=300):
    """Trains the network of cfg_text (seeded) on 64 shapes images for `iterations` batches of 16; returns
    (mean loss of the first 10 batches, of the last 10, shapes found in the first 16 images, shapes there)."""
    net = pydarknet.load(write_cfg(cfg_text))
    randomize(net, 0)
    x, t = shapes_batch(64, 64, per_image=(1, 2), seed=7)
    losses = train_cycling(net, x, t, iterations, batch=16)
    found, total = shapes_found(net, x[:16], t[:16], 64)
    return sum(losses[:10]) / 10, sum(losses[-10:]) / 10, found, total


def child_env(**extra):
    """The environment for a child Python running pydarknet: the pydarknet these tests import first on its path
    (never a source tree in the child's working folder), OMP_NUM_THREADS=1, and `extra`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(pydarknet.__file__))] +
                                        [p for p in [env.get("PYTHONPATH")] if p])
    env["OMP_NUM_THREADS"] = "1"
    env.update(extra)
    return env
