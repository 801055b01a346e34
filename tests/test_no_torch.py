"""`import tinygrad_gpt` and every module under it work without torch and never import it (SPEC section 6).

A fresh interpreter installs, before anything else, a sys.meta_path finder that records and refuses any import of
`torch` (or a submodule), as if torch were not installed. It then imports the package and every module pkgutil finds
under it. The test fails if any module tried to import torch (even inside a try/except), if any module failed to
import for another reason (optional GPU dependencies aside), or if `torch` ended up in sys.modules.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from no_torch import BLOCK_TORCH

ROOT = Path(__file__).resolve().parents[1]

# Optional extras a module may need only on a GPU machine ([gpu] in setup.cfg): their absence is not a failure here.
OPTIONAL = ("cupy", "numba", "cuda")

PROBE = BLOCK_TORCH + r"""
import importlib, json, pkgutil, sys
attempts = _TorchBlocker.attempts

import tinygrad_gpt
imported, failed = ["tinygrad_gpt"], {}
for info in pkgutil.walk_packages(tinygrad_gpt.__path__, "tinygrad_gpt."):
    if info.name.rsplit(".", 1)[-1] == "__main__":  # importing it would run the command line
        continue
    try:
        importlib.import_module(info.name)
        imported.append(info.name)
    except ImportError as e:
        failed[info.name] = [getattr(e, "name", None) or "", repr(e)]
print(json.dumps({"imported": imported, "failed": failed, "attempts": attempts,
                  "torch_loaded": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))}))
"""


@pytest.mark.slow  # a subprocess importing every module
def test_import_tinygrad_gpt_does_not_import_torch():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"importing tinygrad_gpt without torch failed:\n{proc.stderr}"
    report = json.loads(proc.stdout.strip().splitlines()[-1])

    assert not report["attempts"], "these imports of torch were attempted:\n" + "\n".join(
        f"{name} from\n{stack}" for name, stack in report["attempts"])
    assert report["torch_loaded"] == []
    bad = {m: err for m, (name, err) in report["failed"].items() if name.split(".")[0] not in OPTIONAL}
    assert not bad, f"modules that failed to import: {bad}"
    assert "tinygrad_gpt.tensor" in report["imported"] and "tinygrad_gpt.gradcheck" in report["imported"]
