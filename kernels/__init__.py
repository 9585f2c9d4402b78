"""JIT kernels (installed as ``bcfl_engine.kernels``): Triton for CUDA, numba for the CPU.

One file per op, same stem as its rule in ``bcfl_engine/rules``. Each file holds private
``@triton.jit`` (or ``@numba.njit``) kernels and a plain launcher that does the shape
bookkeeping and one launch. Kernels do not validate: the public op already did.
"""
