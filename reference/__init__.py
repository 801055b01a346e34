"""The same GPT in plain torch (the test oracle); see reference/model.py. Never imported by tinygrad_gpt."""
from .model import (
    GPT,
    MLP,
    Block,
    CausalSelfAttention,
    Dropout,
    GPTConfig,
    as_config,
    count_parameters,
    from_numpy_state_dict,
    load_safetensors,
    make_adamw,
    numpy_state_dict,
)

__all__ = ["GPT", "GPTConfig", "Block", "CausalSelfAttention", "MLP", "Dropout", "as_config", "count_parameters",
           "from_numpy_state_dict", "load_safetensors", "make_adamw", "numpy_state_dict"]
