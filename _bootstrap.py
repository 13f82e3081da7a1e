"""Register this checkout as the importable package ``wadi_lorad``.

The pack's folder can have any name (ComfyUI clones it as ``ComfyUI-WaDi``) and
its sub-packages are called ``nodes`` and ``trainer``, names that ComfyUI and PyPI
already use at top level.  So code inside the pack only ever imports relatively,
and callers outside ComfyUI reach it under one unique top-level name.  This file
is self-contained (no package imports) so a plain script can load it by path.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PACKAGE = "wadi_lorad"
ROOT = Path(__file__).resolve().parent


def register(name: str = PACKAGE, root: Path = ROOT) -> ModuleType:
    """Import ``root/__init__.py`` as package ``name`` (no-op if it already is)."""
    mod = sys.modules.get(name)
    if mod is not None and Path(getattr(mod, "__file__", "")).resolve().parent == root:
        return mod
    spec = importlib.util.spec_from_file_location(
        name, root / "__init__.py", submodule_search_locations=[str(root)]
    )
    if spec is None or spec.loader is None:  # pragma: no cover - file missing means a broken checkout
        raise ImportError(f"cannot load {root / '__init__.py'} as package {name!r}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
