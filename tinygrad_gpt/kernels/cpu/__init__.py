"""numba CPU kernels (`@njit`, compiled on first use and cached on disk), one module per group of twins; see the table
in kernels/__init__.py. _jit.py says how they are compiled (serial and parallel), _math.py supplies exp and tanh,
setup.py makes the process-wide settings on first use.
"""
