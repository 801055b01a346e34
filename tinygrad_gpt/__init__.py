"""tinygrad_gpt: a small reverse-mode autograd engine on NumPy (and CuPy) that trains a char-level GPT."""
from .backend import DeviceError, cuda_available
from .tensor import Tensor, no_grad, tensor

__version__ = "0.1.0"
