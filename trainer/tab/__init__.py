"""The Gradio trainer tab: a thin view over the trainers' typed configs and the job runner.

Importing this package is cheap and never imports Gradio (the ComfyUI routes read
the job store through it); :func:`build_app` imports Gradio when called.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_app"]


def build_app(*args: Any, **kwargs: Any):
    """``gr.Blocks`` of the whole trainer (see :func:`.app.build_app`)."""
    from .app import build_app as _build

    return _build(*args, **kwargs)
