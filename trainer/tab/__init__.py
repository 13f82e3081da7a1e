"""The Gradio trainer tab: a thin view over the trainers' typed configs and the job runner.

Importing this package is cheap and never imports Gradio; :func:`build_app` imports
Gradio when called.  Jobs (store, runner, progress) live in :mod:`trainer.jobs`, which the
ComfyUI routes read without this package.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_app"]


def build_app(*args: Any, **kwargs: Any):
    """``gr.Blocks`` of the whole trainer (see :func:`.layout.build_app`)."""
    from .layout import build_app as _build

    return _build(*args, **kwargs)
