"""Code that makes torch unimportable in a fresh interpreter or kernel, as if it were not installed, for the tests that
prove the engine runs without it (test_no_torch, test_serialization, test_import_torch, test_lecture_code,
test_notebook). BLOCK_TORCH, run before anything else, installs a sys.meta_path finder that refuses every import of
`torch` (or a submodule) with an ImportError and records each attempt, with a few frames of where it came from, in
`_TorchBlocker.attempts`, so an attempt that a try/except swallows is still seen; `_TorchBlocker.preloaded` names
torch modules that were loaded before it (there should be none). TORCH_LOADED is an expression: the torch modules in
sys.modules."""

BLOCK_TORCH = r'''
import importlib.abc as _abc, sys as _sys, traceback as _tb

class _TorchBlocker(_abc.MetaPathFinder):
    attempts = []
    preloaded = sorted(m for m in _sys.modules if m == "torch" or m.startswith("torch."))

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            frames = [f for f in _tb.extract_stack() if not f.filename.startswith("<frozen")]
            self.attempts.append((name, "".join(_tb.format_list(frames[-6:-1]))))
            raise ImportError(f"torch is blocked in this test (import of {name!r})", name=name)
        return None

_sys.meta_path.insert(0, _TorchBlocker())
'''

TORCH_LOADED = 'sorted(m for m in __import__("sys").modules if m == "torch" or m.startswith("torch."))'
