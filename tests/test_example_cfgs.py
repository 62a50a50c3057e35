"""The project's example model files (cfg/): VGG-16, DenseNet-121, a ResNet
of bottlenecks with group norm (classifiers), and the shapes detector with a
deformable convolution. Each parses without warnings, builds with the
layers and output its layout gives, runs, and trains a step that moves its
parameters and lowers the loss on that batch. At a small input size: a copy
with only [net] width/height changed, as the other tests do, and the first
steps at a small constant rate (burn_in=0, learning_rate=0.001: the cfgs'
warm-up exists because their full rates overshoot from random weights)."""
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import pydarknet
from pydarknet.cfg import parse_cfg
from conftest import randomize

ROOT = Path(__file__).resolve().parent.parent

# (cfg, input size, layer count, {section: count}, output shape of one image)
MODELS = [
    ("vgg16", 64, 24, {"convolutional": 13, "maxpool": 5, "connected": 3, "dropout": 2, "softmax": 1}, (1000, 1, 1)),
    ("densenet121", 64, 185, {"convolutional": 1 + 2 * 58 + 3 + 1, "route": 58, "local_avgpool": 3, "avgpool": 1},
     (1000, 1, 1)),
    ("resnet26-gn", 64, 95, {"convolutional": 8 * 3 + 4 + 1 + 1, "groupnorm": 8 * 3 + 4 + 1, "shortcut": 8},
     (1000, 1, 1)),
    ("shapes-dcn", 64, 13, {"deformable": 1, "convolutional": 7, "yolo": 1}, (24, 4, 4)),
]


def _small_copy(tmp_path, name, size):
    text = (ROOT / "cfg" / f"{name}.cfg").read_text()
    text = re.sub(r"(?m)^width=\d+", f"width={size}", text)
    text = re.sub(r"(?m)^height=\d+", f"height={size}", text)
    text = re.sub(r"(?m)^burn_in=\d+", "burn_in=0", text)
    text = re.sub(r"(?m)^learning_rate=[\d.]+", "learning_rate=0.001", text)
    path = tmp_path / f"{name}.cfg"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name,size,count,sections,out", MODELS, ids=[m[0] for m in MODELS])
def test_example_cfg_parses_builds_runs_and_trains_a_step(tmp_path, name, size, count, sections, out):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = parse_cfg(ROOT / "cfg" / f"{name}.cfg")
    types = [layer.type for layer in spec.layers]
    assert len(types) == count
    assert {t: types.count(t) for t in sections} == sections
    net = pydarknet.load(_small_copy(tmp_path, name, size), batch=2)
    randomize(net, 1)
    rng = np.random.default_rng(2)
    x = rng.random((2, 3, size, size), dtype=np.float32)
    head = net.predict(x)[0]
    assert head.shape[1:] == out and np.isfinite(head).all()
    if "yolo" in sections:
        truths = np.zeros((2, 4, 5), np.float32)
        truths[:, 0] = [0.5, 0.5, 0.3, 0.4, 1]
        truths[1, 1] = [0.25, 0.3, 0.2, 0.2, 2]
    else:
        assert np.allclose(head.reshape(2, -1).sum(axis=1), 1, atol=1e-5)   # the softmax
        truths = np.zeros((2, out[0]), np.float32)
        truths[0, 3] = truths[1, 7] = 1
    # batch 2 in mini-batches of 2, a plain rate: the loss of the same batch falls after one step
    net.spec.options["subdivisions"] = 1
    before = {(l.index, k): v.copy() for l in net.layers for k, v in l.params.items()}
    first = net.train_batch(x, truths)
    moved = [key for key, v in before.items() if not np.array_equal(v, net.layers[key[0]].params[key[1]])]
    assert np.isfinite(first) and len(moved) > len(before) // 2
    losses = [net.train_batch(x, truths) for _ in range(3)]
    assert all(np.isfinite(losses)) and min(losses) < first, (first, losses)
