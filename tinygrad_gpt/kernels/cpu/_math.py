"""exp and tanh for the kernels, vectorisable in float32.

numba compiles np.exp and np.tanh on float32 to scalar calls into the C library (no SIMD without Intel's SVML),
which made a softmax pass several times slower than NumPy's own (SIMD) exp. In float32 these functions are written
out instead: exp(x) = 2^k * p(r), with k = round(x / ln 2), r = x - k ln 2 (|r| <= ln 2 / 2, ln 2 split in two
constants so that r is exact to ~1e-10), p the Taylor polynomial of e^r to degree 7 (truncation error
|r|^8 / 8! < 1.2e-9, below float32's 6e-8 unit roundoff), and 2^k built from its bits. Relative error: a few units
of float32 (tests/test_cpu_kernels.py measures it against NumPy's exp over the whole range). float64 keeps the C
library's functions (exact to an ulp; float64 is for exactness checks, not speed).

Edge cases keep their IEEE meaning: exp(-inf) = 0, exp(nan) = nan, results below the smallest normal float32 are
subnormal (rounded once), below half the smallest subnormal 0, and above e^88.72 inf (2^k is applied as two normal
powers of 2, so the ends of the range keep their accuracy). The kernels take exp of values <= 0 in softmax and
cross-entropy, and of 2|u| in tanh.
"""
import math

import numpy as np
from numba.core import types
from numba.extending import intrinsic, overload

_LN2_HI = 0.693145751953125            # ln 2 = _LN2_HI + _LN2_LO; _LN2_HI has 16 significant bits, so k * _LN2_HI
_LN2_LO = 1.428606765330187045e-06     # is exact in float32 for |k| <= 128
_LOG2E = 1.4426950408889634


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the int32 `bits` (an LLVM bitcast: free, and vectorisable)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))
    return types.float32(types.int32), codegen


def exp(x):
    """e^x; see the module docstring."""
    return np.exp(x)


def tanh(x):
    """tanh(x) = sign(x) (1 - 2 / (e^(2|x|) + 1)); absolute error a few units of float32 in float32."""
    return np.tanh(x)


@overload(exp, jit_options={"fastmath": False, "error_model": "numpy"})
def _exp(x):
    if x != types.float32:
        return lambda x: np.exp(x)

    def exp_f32(x):
        ft = np.float32
        k = np.floor(x * ft(_LOG2E) + ft(0.5))                     # nearest integer to x / ln 2
        k = min(max(k, ft(-150)), ft(128))                         # beyond: 0 or inf, below
        r = (x - k * ft(_LN2_HI)) - k * ft(_LN2_LO)                # x - k ln 2
        p = ft(1.0 / 5040)                                         # Horner: sum_{i <= 7} r^i / i!
        p = p * r + ft(1.0 / 720)
        p = p * r + ft(1.0 / 120)
        p = p * r + ft(1.0 / 24)
        p = p * r + ft(1.0 / 6)
        p = p * r + ft(0.5)
        p = p * r + ft(1)
        p = p * r + ft(1)
        k1 = np.floor(k * ft(0.5))                                 # 2^k = 2^k1 2^k2, both normal numbers, so that
        k2 = k - k1                                                # e^x near the ends of the range keeps its digits
        y = p * _float32_from_bits(np.int32(k1 + ft(127)) << np.int32(23))
        y = y * _float32_from_bits(np.int32(k2 + ft(127)) << np.int32(23))   # p * 2^k, subnormal results rounded once
        if x < ft(-103.97208):
            y = ft(0)                                              # below half the smallest subnormal float32
        if x > ft(88.72284):
            y = ft(np.inf)
        if x != x:
            y = x                                                  # nan stays nan
        return y
    return exp_f32


@overload(tanh, jit_options={"fastmath": False, "error_model": "numpy"})
def _tanh(x):
    if x != types.float32:
        return lambda x: np.tanh(x)

    def tanh_f32(x):
        ft = np.float32
        a = abs(x)
        t = ft(1) - ft(2) / (exp(a + a) + ft(1))
        t = a if a < ft(0.0004) else t                             # tanh(a) = a - a^3/3 + ...: a is exact here
        return math.copysign(t, x)
    return tanh_f32
