"""The cuda device on a machine without a GPU, and what `import tinygrad_gpt` loads.

- Asking for "cuda" without a usable GPU raises DeviceError with one clear line (never an ImportError or a CuPy
  traceback), from get_device, from GPT(device="cuda"), from Tensor(..., device="cuda") and from Module.to("cuda");
  with CuPy missing the message says how to install it. (The command line turns DeviceError into exit code 2:
  tests/test_cli*.)
- `import tinygrad_gpt` (and its engine modules) never imports numba or CuPy; the kernels load on first cuda use.
- TINYGRAD_GPT_KERNELS=0 turns the kernels off without importing numba.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinygrad_gpt import GPT, DeviceError, GPTConfig, Tensor, backend, cuda_available

ROOT = Path(__file__).resolve().parents[1]

needs_no_gpu = pytest.mark.skipif(cuda_available(), reason="a CUDA GPU is present: the error cases do not apply")
TINY = GPTConfig(vocab_size=5, block_size=4, n_embd=8, n_head=2, n_layer=1)


def _assert_one_clear_line(err):
    msg = str(err)
    assert "\n" not in msg and "cuda" in msg.lower() and ("CuPy" in msg or "GPU" in msg), msg


@needs_no_gpu
@pytest.mark.parametrize("make", [
    lambda: backend.get_device("cuda"),
    lambda: GPT(TINY, device="cuda"),
    lambda: Tensor(np.ones(3, np.float32), device="cuda"),
    lambda: GPT(TINY).to("cuda"),
    lambda: Tensor(np.ones(3, np.float32)).to("cuda"),
], ids=["get_device", "GPT", "Tensor", "Module.to", "Tensor.to"])
def test_cuda_without_a_gpu_raises_device_error(make):
    with pytest.raises(DeviceError) as e:
        make()
    _assert_one_clear_line(e.value)
    assert backend._cuda is None, "a failed cuda request must not be cached as a device"


@needs_no_gpu
def test_cuda_without_cupy_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)           # makes `import cupy` raise ImportError
    with pytest.raises(DeviceError) as e:
        backend.get_device("cuda")
    _assert_one_clear_line(e.value)
    assert "pip install" in str(e.value) and "[gpu]" in str(e.value)


def _python(code, **env):
    proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT), **env),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_import_loads_neither_numba_nor_cupy():
    out = _python("import sys, json\n"
                  "import tinygrad_gpt, tinygrad_gpt.fused, tinygrad_gpt.optim, tinygrad_gpt.model, "
                  "tinygrad_gpt.kernels\n"
                  "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
                  "('numba', 'cupy', 'cupy_backends', 'llvmlite'))))")
    assert json.loads(out) == []


def test_kernels_off_by_environment_variable():
    out = _python("import sys\nfrom tinygrad_gpt import kernels\n"
                  "print(kernels.enabled(), 'numba' in sys.modules)", TINYGRAD_GPT_KERNELS="0")
    assert out.split() == ["False", "False"]
