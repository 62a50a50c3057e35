"""Shared fixtures: where the shared model files and photos live, a way to
write small cfgs, and seeded random weights."""
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PYDARKNET_SHARED", ROOT.parent / "shared"))
SHARED_CFG = SHARED / "cfg"
SHARED_IMAGES = SHARED / "images"


def _load_source(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _load_script(name):
    return _load_source(name, ROOT / "scripts" / f"{name}.py")


def build_module():
    """The checkout's build module (pydarknet/_build_ffi.py), whose paths
    point at this source tree even when the tests run an installed package."""
    return _load_source("pydarknet_build_ffi", ROOT / "pydarknet" / "_build_ffi.py")


randomize = _load_script("make_random_weights").randomize


def shared_cfg(name):
    path = SHARED_CFG / f"{name}.cfg"
    if not path.exists():
        pytest.skip(f"shared model file {path} is not present")
    return path


def shared_image(name="dog.jpg"):
    path = SHARED_IMAGES / name
    if not path.exists():
        pytest.skip(f"shared photo {path} is not present")
    return path


@pytest.fixture
def write_cfg(tmp_path):
    """write_cfg(text, name='net.cfg') -> path of a cfg written in tmp_path."""

    def write(text, name="net.cfg"):
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def random_input(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def small_detector(folder, size=160, seed=1):
    """The bundled yolov4-tiny cfg at size x size with seeded random weights,
    its two head convolutions scaled down so boxes stay near their anchors and
    confidences spread around 0.3; returns (network, cfg path, weights path)."""
    import pydarknet

    text = (ROOT / "cfg" / "yolov4-tiny.cfg").read_text()
    text = "\n".join(f"width={size}" if l.startswith("width=") else f"height={size}" if l.startswith("height=")
                     else l for l in text.splitlines())
    cfg = Path(folder) / f"yolov4-tiny-{size}.cfg"
    cfg.write_text(text + "\n")
    net = pydarknet.load(cfg, names=ROOT / "data" / "coco.names")
    randomize(net, seed)
    for layer in net.layers[:-1]:
        if net.layers[layer.index + 1].type == "yolo":
            for name in ("weights", "biases"):
                layer.params[name][:] *= 0.1
    weights = Path(folder) / f"yolov4-tiny-{size}.weights"
    net.save_weights(weights)
    return net, cfg, weights
