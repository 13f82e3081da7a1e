"""Fast, stable fingerprints of model folders (for cache keys, resume checks and provenance).

Hashing every byte of a 5 GB checkpoint on each start is too slow, so large
files contribute their size, their first and last MiB and (for safetensors) the
header that lists every tensor's name, dtype, shape and offset; files up to
8 MiB are hashed in full.  A changed tensor value in the middle of a large file
can go unnoticed; any change of architecture, dtype or file does not.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_FULL = 8 << 20
_EDGE = 1 << 20
_SKIP_DIRS = {".git", "__pycache__", ".cache"}


def file_fingerprint(path: Path, h: hashlib._Hash | None = None) -> str:
    h = h or hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as f:
        if size <= _FULL:
            h.update(f.read())
        else:
            h.update(f.read(_EDGE))
            f.seek(size - _EDGE)
            h.update(f.read(_EDGE))
            if path.suffix == ".safetensors":
                f.seek(0)
                n = int.from_bytes(f.read(8), "little")
                if 0 < n < (100 << 20):
                    h.update(f.read(n))
    return h.hexdigest()


def folder_fingerprint(folder: str | Path) -> str:
    """sha256 (20 hex) over relative paths and file fingerprints, in sorted order."""
    folder = Path(folder)
    h = hashlib.sha256()
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        files += [Path(root) / n for n in names]
    for p in sorted(files):
        h.update(str(p.relative_to(folder)).encode())
        h.update(file_fingerprint(p).encode())
    return h.hexdigest()[:20]


def base_fingerprint(folder: str | Path, components: tuple[str, ...]) -> str:
    """Fingerprint of a diffusers folder's ``model_index.json`` and the given components."""
    folder = Path(folder)
    h = hashlib.sha256()
    idx = folder / "model_index.json"
    if idx.is_file():
        h.update(file_fingerprint(idx).encode())
    for name in components:
        if (folder / name).is_dir():
            h.update(name.encode())
            h.update(folder_fingerprint(folder / name).encode())
    return h.hexdigest()[:20]
