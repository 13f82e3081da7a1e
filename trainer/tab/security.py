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
    """The folders a user may name: read/write roots (the first is the base of relative paths)
    and read-only roots (the pack's shipped ``assets/``), which nothing the tab runs may write into.
    """

    def __init__(self, roots: Iterable[str | os.PathLike[str]], readonly: Iterable[str | os.PathLike[str]] = ()):
        self.readonly = list(dict.fromkeys(Path(r).expanduser().resolve() for r in readonly))
        writable = [Path(r).expanduser().resolve() for r in roots]
        # A --root that is (inside) a read-only folder stays read-only.
        writable = [r for r in dict.fromkeys(writable) if not any(r.is_relative_to(ro) for ro in self.readonly)]
        if not writable:
            raise ValueError("at least one writable root folder is needed")
        self.writable = writable
        self.roots = writable + [r for r in self.readonly if r not in writable]

    @property
    def base(self) -> Path:
        return self.writable[0]

    def describe(self) -> str:
        """One line for --help, the banner and the docs: which folders are readable, which writable."""
        ro = f"; read-only: {', '.join(map(str, self.readonly))}" if self.readonly else ""
        return f"read/write: {', '.join(map(str, self.writable))}{ro}"

    def resolve(self, user_path: str | os.PathLike[str], what: str = "path", write: bool = False) -> Path:
        """Absolute, symlink-free path inside a root, or :class:`PathNotAllowed` naming ``what``.

        A relative path is taken from the base (the first root, where ``wadi tab`` started)
        when it exists there; else from the first other root where it exists - a root's
        own folder name may lead the path, so ``assets/tinyworld/teacher`` names the pack's
        shipped teacher from anywhere; else (an output not yet written) from the base.
        The job gets the absolute result, so the form and the job read the same path.
        With ``write`` the path must not lie in a read-only root.
        """
        raw = str(user_path).strip()
        if not raw:
            raise PathNotAllowed(f"{what}: empty path")
        if "\x00" in raw:
            raise PathNotAllowed(f"{what}: path contains a NUL byte")
        p = Path(raw).expanduser()
        if not p.is_absolute():
            candidates = []
            for r in (self.writable if write else self.roots):
                candidates.append(r / p)
                if len(p.parts) > 1 and p.parts[0] == r.name:
                    candidates.append(r.parent / p)
            found = [c for c in candidates if c.exists()]
            p = found[0] if found else self.base / p
        # strict=False: the path may not exist yet (an output folder).  resolve() still follows
        # every symlink that does exist along the way, which is what catches link escapes.
        real = p.resolve(strict=False)
        if not any(real.is_relative_to(r) for r in self.roots):
            raise PathNotAllowed(
                f"{what}: {raw!r} resolves to {real}, outside the allowed folders "
                f"({', '.join(map(str, self.roots))}); start the tab with --root to allow more"
            )
        if write:
            ro = next((r for r in self.readonly if real.is_relative_to(r)), None)
            if ro is not None:
                raise PathNotAllowed(
                    f"{what}: {real} is inside {ro}, which is read-only for the tab (shipped files); "
                    f"write outputs under {self.base}"
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
