"""torch's dtype names as NumPy dtypes: `torch.long` is np.dtype("int64"), so `t.dtype == torch.long`,
`torch.tensor(x, dtype=torch.long)` and `t.to(torch.float64)` read as in torch. (This module defines `float`, `int`
and `bool` as dtypes, as the torch namespace does: no code below the definitions uses the builtins.)"""
import numpy as _np

float32 = _np.dtype(_np.float32)
float64 = _np.dtype(_np.float64)
float16 = _np.dtype(_np.float16)
int64 = _np.dtype(_np.int64)
int32 = _np.dtype(_np.int32)
int16 = _np.dtype(_np.int16)
int8 = _np.dtype(_np.int8)
uint8 = _np.dtype(_np.uint8)
bool = _np.dtype(_np.bool_)                        # noqa: A001  (torch.bool)
float = float32                                    # noqa: A001  (torch.float)
double = float64
half = float16
long = int64
int = int32                                        # noqa: A001  (torch.int)
short = int16

DTYPES = ["float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool", "float", "double",
          "half", "long", "int", "short"]
