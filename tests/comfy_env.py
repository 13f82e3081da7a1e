"""Which ComfyUI the pack tests import: the real one (COMFYUI_DIR, importable here) or the fake."""

from __future__ import annotations

import comfy_live

MODE: str | None = None


def comfy_for_tests() -> str:
    """Make the pack's ComfyUI imports resolvable; returns ``"real"`` or ``"fake"`` (idempotent)."""
    global MODE
    if MODE is None:
        if comfy_live.comfy_importable() is None:
            comfy_live.import_comfy()
            MODE = "real"
        else:
            import fake_comfy

            fake_comfy.install()
            MODE = "fake"
    return MODE


def nodes_pkg():
    comfy_for_tests()
    import wadi_lorad.nodes as nodes

    return nodes
