"""torch.nn for the torch-shaped front end (`import tinygrad_gpt.nn as nn`): Module and its containers, the layers,
`functional` (F), `init` and `utils`. Also the fused GPT's building blocks (Init, ShapeOnly). A name torch.nn has and
this package lacks raises UnsupportedError naming it."""
# ruff: noqa: F401 - the imports not in __all__ (Init, ShapeOnly, ...) are the engine's names here: re-exports
from ..errors import unsupported_getattr
from . import functional, init, utils
from .modules import (
    GELU,
    CrossEntropyLoss,
    Dropout,
    Embedding,
    Flatten,
    Identity,
    IncompatibleKeys,
    Init,
    LayerNorm,
    Linear,
    LogSoftmax,
    Module,
    ModuleDict,
    ModuleList,
    MSELoss,
    Parameter,
    ReLU,
    Sequential,
    ShapeOnly,
    Sigmoid,
    Softmax,
    Tanh,
    TorchInit,
    parameter,
)

__all__ = ["CrossEntropyLoss", "Dropout", "Embedding", "Flatten", "GELU", "Identity", "LayerNorm", "Linear",
           "LogSoftmax", "Module", "ModuleDict", "ModuleList", "MSELoss", "Parameter", "ReLU", "Sequential",
           "Sigmoid", "Softmax", "Tanh", "functional", "init", "utils"]

__getattr__ = unsupported_getattr("torch.nn")
