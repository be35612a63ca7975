"""Builds the optional C extension edgeinfer._native (native/*.c) with `pip install .` or `-e .`.

optional=True: where there is no C compiler the install still succeeds and edgeinfer runs on its Numba
backend (get_backend("auto") picks the native one only when it was built).
"""

import sys

from setuptools import Extension, setup

compile_args = []
if sys.platform != "win32":
    # -ffp-contract=off: no fused multiply-adds the code did not ask for (the float sums of every
    # (row, token) output must be the same whatever its tile); AVX2 code is chosen per function
    # (target attributes) at run time, so no -march here: the wheel runs on any CPU of its arch
    compile_args = ["-O3", "-std=c11", "-ffp-contract=off", "-fno-math-errno", "-Wall", "-Wno-unknown-pragmas"]

native = Extension(
    "edgeinfer._native",
    sources=[
        "native/edgeinfer_native.c",
        "native/kernels_scalar.c",
        "native/kernels_avx2.c",
        "native/kernels_neon.c",
        "native/threadpool.c",
        "native/attention.c",
        "native/x8.c",
        "native/x8_avx2.c",
        "native/x8_avx512.c",
        "native/x8_avxvnni.c",
        "native/x8_neon.c",
        "native/x8_neon_dotprod.c",
        "native/x8_neon_i8mm.c",
        "native/lowbit_scalar.c",
        "native/lowbit_avx2.c",
    ],
    depends=["native/edgeinfer_native.h", "native/threadpool.h", "native/x8.h", "native/x8_tiles.h", "native/x8_vnni.h",
             "native/x8_tiles_neon.h", "native/transpose_avx2.h", "native/iq_grids.h", "native/lowbit.h"],
    include_dirs=["native"],
    extra_compile_args=compile_args,
    extra_link_args=[] if sys.platform == "win32" else ["-pthread"],
    optional=True,
)

setup(ext_modules=[native])
