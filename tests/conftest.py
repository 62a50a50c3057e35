"""Common fixtures: the project's own model files (cfg/) and photos (data/),
a way to write small cfgs, and seeded random weights."""
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# The layers' measured choices (core/tuning.c) stay off in the tests, which
# compare paths bit for bit and must not write the user's cache; they apply
# the fixed rules, and tests/test_tuning.py turns measuring on in a folder of
# its own. Child processes inherit this.
os.environ["PYDARKNET_TUNING"] = "off"
CFG_DIR = ROOT / "cfg"      # public darknet model files, unchanged (cfg/README.md)
DATA_DIR = ROOT / "data"    # photos and class names

# the public darknet models in cfg/ (AlexeyAB/darknet's cfg folder, unchanged)
PUBLIC_MODELS = (
    "yolov3-tiny", "yolov4-tiny", "yolov7-tiny", "yolov3", "yolov4", "darknet19", "resnet50",
    "csdarknet53-omega", "yolov2", "yolov2-tiny", "yolov4-csp", "yolov3-spp", "yolov4-tiny-3l",
    "yolov3-tiny-prn",
)


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


def model_cfg(name):
    """cfg/<name>.cfg of the checkout; a missing file fails the test."""
    path = CFG_DIR / f"{name}.cfg"
    if not path.is_file():
        pytest.fail(f"model file {path} is missing from the checkout")
    return path


def data_image(name="dog.jpg"):
    """data/<name> of the checkout; a missing file fails the test."""
    path = DATA_DIR / name
    if not path.is_file():
        pytest.fail(f"photo {path} is missing from the checkout")
    return path


@pytest.fixture
def write_cfg(tmp_path):
    """write_cfg(text, name='net.cfg') -> path of a cfg written in tmp_path."""

    def write(text, name="net.cfg"):
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture(params=["blas", "portable"])
def gemm(request, monkeypatch):
    """Runs a test with the BLAS GEMM and with the portable one (a module
    asks for it with pytestmark = pytest.mark.usefixtures("gemm"))."""
    import pydarknet

    if request.param == "portable":
        monkeypatch.setenv("PYDARKNET_GEMM", "portable")
    elif not pydarknet.blas_available():
        pytest.skip("this build has no BLAS")
    return request.param


def random_input(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def small_detector(folder, size=160, seed=1):
    """The bundled yolov4-tiny cfg at size x size with seeded random weights,
    its two head convolutions scaled down so boxes stay near their anchors and
    confidences spread around 0.3; returns (network, cfg path, weights path)."""
    import pydarknet

    text = (CFG_DIR / "yolov4-tiny.cfg").read_text()
    text = "\n".join(f"width={size}" if l.startswith("width=") else f"height={size}" if l.startswith("height=")
                     else l for l in text.splitlines())
    cfg = Path(folder) / f"yolov4-tiny-{size}.cfg"
    cfg.write_text(text + "\n")
    net = pydarknet.load(cfg, names=DATA_DIR / "coco.names")
    randomize(net, seed)
    for layer in net.layers[:-1]:
        if net.layers[layer.index + 1].type == "yolo":
            for name in ("weights", "biases"):
                layer.params[name][:] *= 0.1
    weights = Path(folder) / f"yolov4-tiny-{size}.weights"
    net.save_weights(weights)
    return net, cfg, weights


@pytest.fixture
def restore_kernel():
    """Gives the CPU kernel in use back after a test that sets another (pydarknet.set_cpu_kernel)."""
    import pydarknet

    before = pydarknet.cpu_kernel()
    yield
    pydarknet.set_cpu_kernel(before)
