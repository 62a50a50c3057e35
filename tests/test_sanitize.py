"""The C core under AddressSanitizer + UndefinedBehaviorSanitizer
(scripts/sanitize.sh: a copy of the checkout built with -fsanitize=address,
undefined, the sanitizer runtimes preloaded into Python) on the tests that
drive the core hardest: every layer forward and backward, the loss heads,
the gradient checks, the weights and model-file readers, the data pipeline,
the speed paths, the measured choices (and their file) and the fuzzed readers. Any report fails it. The whole suite under the
sanitizers: bash scripts/sanitize.sh (far longer than CI's budget)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = ["tests/test_layers.py", "tests/test_grad_layers.py", "tests/test_grad_params.py", "tests/test_losses.py",
         "tests/test_fcos.py", "tests/test_weights.py", "tests/test_modelfile.py", "tests/test_data.py",
         "tests/test_speed_paths.py", "tests/test_tuning.py",
         "tests/test_fuzz.py"]


def _runtime(name):
    try:
        path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return None
    return path if os.path.isabs(path) and os.path.exists(path) else None


def test_core_under_address_and_undefined_behaviour_sanitizers():
    if not (ROOT / ".git").exists():
        pytest.skip("scripts/sanitize.sh copies the checkout's files as git lists them: not a git checkout")
    missing = [lib for lib in ("libasan.so", "libubsan.so") if _runtime(lib) is None]
    if missing:
        pytest.skip(f"gcc has no {' or '.join(missing)} here (Debian: part of gcc's libgcc-dev)")
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("PYTEST_XDIST_WORKER", None)
    r = subprocess.run(["bash", "scripts/sanitize.sh", *FILES], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=1800)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "passed" in out and "ERROR: AddressSanitizer" not in out and "runtime error:" not in out, out[-3000:]
