"""Atomic file and folder writes (temp + ``os.replace``): a crash or a full disk never leaves a torn file.

The one place that knows how (the library, the trainer, the tiny world and the tab all write
through it).  Temp entries live next to the target (same filesystem, so the rename is atomic)
and start with a dot so folder listings skip them.  ``mkstemp``/``mkdtemp`` create owner-only
entries; outputs people share get ordinary permissions (files 0644, folders 0755).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_save", "atomic_write_bytes", "atomic_write_text", "atomic_dir"]

FILE_MODE = 0o644
DIR_MODE = 0o755


def atomic_save(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` (for libraries that write by path), then move the result over ``path``.

    If ``writer`` fails the temp file is removed and whatever was at ``path`` stays intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(Path(tmp))
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it visible

    return atomic_save(path, write)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_dir(final: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
    """Fill a fresh temp folder next to ``final`` with ``writer`` and rename it into place.

    If ``writer`` fails (e.g. ``OSError: No space left on device``) the temp folder is
    removed and whatever was at ``final`` before stays untouched.  An existing folder is
    replaced only once the new one is complete (moved aside, then two renames).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        writer(tmp)
        os.chmod(tmp, DIR_MODE)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
