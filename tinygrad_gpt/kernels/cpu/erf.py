"""The error function on the CPU (the exact GELU's Phi): a ufunc that numba compiles from the C library's erf
(math.erf; erff in float32), for float32 and float64 arrays. NumPy twin: tensor.erf (math.erf per element, in
float64, rounded to the input's dtype).
"""
import math

import numba

from ._jit import cached


def _erf(v):
    return math.erf(v)


erf_ufunc = cached(numba.vectorize, _erf, ["float32(float32)", "float64(float64)"])


def erf(x):
    """Twin of tensor.erf: erf elementwise, in x's dtype (float32 or float64)."""
    return erf_ufunc(x)
