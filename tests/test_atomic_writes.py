"""Nothing lost (issue 18): files edgeinfer writes are replaced whole or not at all."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from edgeinfer.fsutil import atomic_write_bytes, atomic_write_text


def test_atomic_write_replaces_whole(tmp_path):
    p = tmp_path / "chat.json"
    atomic_write_text(p, "old")
    atomic_write_text(p, "new é")
    assert p.read_text(encoding="utf-8") == "new é"
    assert [f.name for f in tmp_path.iterdir()] == ["chat.json"]


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "chat.json"
    atomic_write_text(p, "old")

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(p, b"new" * 1000)
    assert p.read_text() == "old" and [f.name for f in tmp_path.iterdir()] == ["chat.json"]


def test_a_crash_mid_write_leaves_the_old_file(tmp_path):
    """A process killed (SIGKILL) while it writes: the old file is intact."""
    p = tmp_path / "chat.json"
    atomic_write_text(p, "old")
    code = textwrap.dedent(f"""
        import os, edgeinfer.fsutil as fs
        real = os.fsync
        def die(fd):
            os.kill(os.getpid(), 9)   # the crash: after the data is written, before the rename
        os.fsync = die
        fs.atomic_write_text({str(p)!r}, "new" * 100000)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode == -9
    assert p.read_text() == "old"


def test_saved_chats_are_written_atomically(tmp_path, monkeypatch):
    conversation = pytest.importorskip("tui.conversation")
    src = open(conversation.__file__, encoding="utf-8").read()
    assert "atomic_write_text" in src and ".write_text(" not in src
