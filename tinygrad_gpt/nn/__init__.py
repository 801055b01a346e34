"""torch.nn for the torch-shaped front end (`import tinygrad_gpt.nn as nn`): Module and its containers, the layers,
`functional` (F), `init` and `utils`. Also the fused GPT's building blocks (Init, ShapeOnly). A name torch.nn has and
this package lacks raises UnsupportedError naming it."""
from ..errors import ModuleError, unsupported_getattr
from . import functional, init, utils
from .modules import (CrossEntropyLoss, Dropout, Embedding, Flatten, GELU, Identity, IncompatibleKeys, Init,
                      LayerNorm, Linear, LogSoftmax, Module, ModuleDict, ModuleList, MSELoss, Parameter, ReLU,
                      Sequential, ShapeOnly, Sigmoid, Softmax, Tanh, TorchInit, parameter)

__all__ = ["CrossEntropyLoss", "Dropout", "Embedding", "Flatten", "GELU", "Identity", "LayerNorm", "Linear",
           "LogSoftmax", "Module", "ModuleDict", "ModuleList", "MSELoss", "Parameter", "ReLU", "Sequential",
           "Sigmoid", "Softmax", "Tanh", "functional", "init", "utils"]

__getattr__ = unsupported_getattr("torch.nn")
