"""examples/lecture.ipynb: the lecture's path in notebook cells, on this engine, without torch.

The fast test reads the stored notebook as JSON: no outputs, no execution counts, its only imports of the engine
the three lines of the torch front end (in the first code cell), no import of torch, and one cell tagged
`parameters` that assigns the names the slow test overrides.

The slow test executes the notebook top to bottom with nbclient in a fresh python3 kernel (ipykernel; the kernel
runs this interpreter), PYTHONPATH pointing at the repository so `import tinygrad_gpt` finds the working tree, the
`parameters` cell's source replaced by small values (papermill's convention, done here without papermill). torch is
kept out the way tests/test_no_torch.py does it: a cell injected before the notebook's own installs a
sys.meta_path finder that records and refuses any import of `torch` or a submodule, as if torch were not installed.
That keeps the kernel's environment otherwise untouched (a stub `torch.py` on PYTHONPATH would also shadow torch,
but a failed import of it would leave no record of who tried). A cell injected after the notebook's own reports, as
one JSON line: the variables the notebook leaves (the bigram's and the GPT's first and last validation losses, the
averaging trick's two allclose results), the refused torch imports, the torch modules in sys.modules, and where
tinygrad_gpt was imported from. nbclient raises on the first cell that errors; every code cell must also carry an
execution count, and the plot cell an image.
"""
import ast
import json
import os
from pathlib import Path

import pytest

from no_torch import BLOCK_TORCH

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "lecture.ipynb"

ENGINE_IMPORTS = [
    "import tinygrad_gpt as torch",
    "import tinygrad_gpt.nn as nn",
    "from tinygrad_gpt.nn import functional as F",
]

# The test's parameters: the same names as the notebook's `parameters` cell, small enough to run in seconds.
SMALL = """\
seed = 1337
data_path = None
batch_size = 8
block_size = 16
bigram_iters = 100
bigram_lr = 1e-2
max_iters = 40
eval_interval = 20
eval_iters = 4
learning_rate = 3e-3
n_embd = 32
n_head = 2
n_layer = 1
dropout = 0.0
sample_chars = 40
"""

REPORT = r"""
import json as _json, sys as _sys
print("REPORT " + _json.dumps({
    "bigram_first": float(bigram_first), "bigram_final": float(bigram_final),
    "first_loss": float(first_loss), "final_loss": float(final_loss),
    "trick_allclose": [bool(v) for v in trick_allclose],
    "attempts": _TorchBlocker.attempts, "preloaded": _TorchBlocker.preloaded,
    "torch_modules": sorted(m for m in _sys.modules if m == "torch" or m.startswith("torch.")),
    "engine_file": _sys.modules["tinygrad_gpt"].__file__,
}))
"""


def _cells(nb, kind="code"):
    return [c for c in nb["cells"] if c["cell_type"] == kind]


def _source(cell):
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def _assigned(source):
    return {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


def _parameters_cell(nb):
    tagged = [c for c in _cells(nb) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{len(tagged)} cells tagged 'parameters'"
    return tagged[0]


def test_stored_notebook_has_no_outputs_and_only_the_three_engine_imports():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4
    code = _cells(nb)
    assert code and _cells(nb, "markdown")
    for i, cell in enumerate(code):
        assert cell["outputs"] == [], f"code cell {i} is stored with outputs"
        assert cell["execution_count"] is None, f"code cell {i} is stored with an execution count"

    imports = []   # (cell index, the import's text) for every import statement of the notebook
    for i, cell in enumerate(code):
        source = _source(cell)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                imports.append((i, ast.get_source_segment(source, node)))
    modules = [text.split()[1] for _, text in imports]
    assert not [m for m in modules if m == "torch" or m.startswith("torch.")], imports
    engine = [(i, text) for (i, text), m in zip(imports, modules, strict=True) if m.split(".")[0] == "tinygrad_gpt"]
    assert engine == [(0, line) for line in ENGINE_IMPORTS]
    assert _source(code[0]).splitlines()[:3] == ENGINE_IMPORTS

    assert _assigned(_source(_parameters_cell(nb))) == _assigned(SMALL)


@pytest.mark.slow  # a kernel, the engine's import, two short trainings (3 to 4 s on 2 cores)
def test_notebook_runs_without_torch(tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    _parameters_cell(nb)["source"] = SMALL
    n_own = len(nb.cells)
    nb.cells.insert(0, nbformat.v4.new_code_cell(BLOCK_TORCH))
    nb.cells.append(nbformat.v4.new_code_cell(REPORT))

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
               MPLBACKEND="module://matplotlib_inline.backend_inline")
    client = NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)   # raises CellExecutionError on the first cell that fails

    assert len(nb.cells) == n_own + 2
    code = [c for c in nb.cells if c.cell_type == "code"]
    counts = [c.execution_count for c in code]
    assert all(isinstance(n, int) for n in counts), counts
    assert counts == sorted(counts)

    plots = [c for c in code if "plt.plot(" in c.source]
    assert len(plots) == 1
    assert any("image/png" in o.get("data", {}) for o in plots[0].outputs), plots[0].outputs

    lines = [line for o in code[-1].outputs if o.output_type == "stream" for line in o.text.splitlines()
             if line.startswith("REPORT ")]
    assert len(lines) == 1, code[-1].outputs
    report = json.loads(lines[0][len("REPORT "):])

    assert report["attempts"] == [] and report["preloaded"] == [] and report["torch_modules"] == []
    assert Path(report["engine_file"]).resolve().is_relative_to(ROOT), report["engine_file"]
    assert report["trick_allclose"] == [True, True]
    assert report["final_loss"] < report["first_loss"], report
    assert report["bigram_final"] < report["bigram_first"], report
