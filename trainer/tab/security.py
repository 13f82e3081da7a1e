"""The tab's safety rails: loopback by default, paths inside configured roots, bounded uploads.

The app can start processes and read/write files, so it is only ever reachable
from this machine unless ``--listen`` is given, and even then a path typed into
a form cannot leave the roots the operator configured (``..`` and symlinks are
resolved before the check, so neither escapes).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

LOOPBACK = "127.0.0.1"
DEFAULT_MAX_UPLOAD_BYTES = 1 << 20  # presets are small YAML files; anything bigger is a mistake or an attack

LISTEN_WARNING = (
    "WARNING: --listen makes the WaDi trainer reachable from other machines on port {port}.\n"
    "  Anyone who can reach it can start training processes and read/write files under the roots:\n"
    "  {roots}\n  Use it only on a trusted network (or put an authenticating proxy in front)."
)


class PathNotAllowed(ValueError):
    """A user-supplied path resolves outside every configured root."""


def bind_host(listen: bool, port: int, roots: Iterable[Path], stream=None) -> str:
    """``127.0.0.1`` unless ``listen``; opting in prints :data:`LISTEN_WARNING` to stderr."""
    if not listen:
        return LOOPBACK
    print(LISTEN_WARNING.format(port=port, roots=", ".join(str(r) for r in roots)), file=stream or sys.stderr)
    return "0.0.0.0"


class Roots:
    """The folders a user may name; relative paths are taken from the first root."""

    def __init__(self, roots: Iterable[str | os.PathLike[str]]):
        self.roots = [Path(r).expanduser().resolve() for r in roots]
        if not self.roots:
            raise ValueError("at least one root folder is needed")

    @property
    def base(self) -> Path:
        return self.roots[0]

    def resolve(self, user_path: str | os.PathLike[str], what: str = "path") -> Path:
        """Absolute, symlink-free path inside a root, or :class:`PathNotAllowed` naming ``what``.

        A relative path is looked up in each root in turn (the first where it exists
        wins: a preset can name ``assets/tinyworld/teacher`` whatever the roots are),
        else it is taken from the first root (an output that does not exist yet).
        """
        raw = str(user_path).strip()
        if not raw:
            raise PathNotAllowed(f"{what}: empty path")
        if "\x00" in raw:
            raise PathNotAllowed(f"{what}: path contains a NUL byte")
        p = Path(raw).expanduser()
        if not p.is_absolute():
            found = [r / p for r in self.roots if (r / p).exists()]
            p = found[0] if found else self.base / p
        # strict=False: the path may not exist yet (an output folder).  resolve() still follows
        # every symlink that does exist along the way, which is what catches link escapes.
        real = p.resolve(strict=False)
        if not any(real.is_relative_to(r) for r in self.roots):
            raise PathNotAllowed(
                f"{what}: {raw!r} resolves to {real}, outside the allowed folders "
                f"({', '.join(map(str, self.roots))}); start the tab with --root to allow more"
            )
        return real

    def __contains__(self, user_path: object) -> bool:
        try:
            self.resolve(str(user_path))
        except PathNotAllowed:
            return False
        return True


def check_upload(path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, what: str = "upload") -> Path:
    """The uploaded temp file, or ValueError if it is larger than ``max_bytes``."""
    p = Path(path)
    size = p.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{what}: {p.name} is {size} bytes; the limit is {max_bytes} bytes")
    return p
