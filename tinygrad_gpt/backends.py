"""torch.backends: `mps` (Apple's GPU: never available here), and the cuda/cudnn switches scripts set (accepted;
they change nothing in this engine)."""
import types

from .errors import unsupported_getattr

__getattr__ = unsupported_getattr("torch.backends")

mps = types.SimpleNamespace(is_available=lambda: False, is_built=lambda: False)
cudnn = types.SimpleNamespace(benchmark=False, deterministic=False, enabled=True, allow_tf32=True,
                              is_available=lambda: False)
cuda = types.SimpleNamespace(matmul=types.SimpleNamespace(allow_tf32=False), is_built=lambda: False)
