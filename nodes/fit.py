"""Does a ``.lorad`` file fit a ComfyUI MODEL (and CLIP)?  One plan for both loaders.

Load LoRaD and the stock LoraLoader path (``stock_guard``) both call :func:`plan`: every
layer is resolved through ComfyUI's own key maps and shape-checked against the model (and
CLIP, where the file has text-encoder keys), and the architecture is compared, before
either loader builds a single patch.
"""

from __future__ import annotations

import comfy.lora

from .lorad_file import LoRaDInfo
from .resolve import Resolved, check_arch, check_unique, report_unmatched, resolve

__all__ = ["model_arch", "plan"]


def model_arch(patcher) -> str | None:
    """ComfyUI's model-config class name (SD15, SD21UnclipL, SDXL, PixArtAlpha, ...)."""
    cfg = getattr(getattr(patcher, "model", None), "model_config", None)
    return type(cfg).__name__ if cfg is not None else None


def _shapes(patcher) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in patcher.model_state_dict().items()}


def plan(info: LoRaDInfo, model, clip) -> tuple[list[Resolved], list[Resolved]]:
    """Resolve every layer onto the UNet/transformer or the text encoder; raise on any mismatch."""
    check_arch(info.arch, model_arch(model), info.path)
    unet, left = resolve(info.layers, comfy.lora.model_lora_keys_unet(model.model, {}), _shapes(model), info.path)
    te: list[Resolved] = []
    if left and clip is not None:
        te, left = resolve(
            {k: info.layers[k] for k in left},
            comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {}),
            _shapes(clip.patcher),
            info.path,
        )
    targets = "model" if clip is None else "model or CLIP"
    if left and clip is None and any(k.startswith(("text_encoders.", "lora_te", "text_encoder")) for k in left):
        targets = "model (the file also has text-encoder layers: connect a CLIP)"
    report_unmatched(left, len(info.layers), info.path, targets)
    check_unique(unet, info.path)
    check_unique(te, info.path)
    return unet, te
