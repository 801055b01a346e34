"""tinygrad_gpt: a small reverse-mode autograd engine on NumPy (and CuPy) that trains a char-level GPT."""
from .backend import DeviceError, cuda_available
from .tensor import Tensor, TensorError, no_grad, tensor
from .gradcheck import gradcheck
from .model import GPT, GPTConfig
from .optim import AdamW
from .data import CharTokenizer

__version__ = "0.1.0"
