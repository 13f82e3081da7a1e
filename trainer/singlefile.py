"""A single-file SD1.x checkpoint of the merged student, the format ComfyUI's CheckpointLoaderSimple reads.

Layout (ldm/CompVis, what SD1.5 ``.safetensors`` checkpoints hold):

* ``model.diffusion_model.<ldm name>`` - the merged UNet, names from :mod:`lorad.keymap`
  (with the UNet's own layout, so a shrunk UNet gets the indices ComfyUI derives);
* ``cond_stage_model.transformer.<HF CLIP name>`` - CLIP-L as transformers names it
  (ldm wrapped the same HF model, so the names are identical);
* ``first_stage_model.<diffusers VAE name>`` - the VAE in diffusers naming: ComfyUI's
  VAE loader recognises diffusers keys and converts them itself.

Only SD1.x bases (``sd15`` key spelling) of the widths ComfyUI recognises; other architectures, and
SD1.x-shaped UNets of other widths (the tiny world), are refused before training (:func:`comfyui_refusal`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ..lorad import keymap
from ..lorad.bridge import model_layout
from ..lorad.fsutil import atomic_save

__all__ = ["SINGLE_FILE_ARCHS", "comfyui_refusal", "single_file_state", "export_single_file"]

SINGLE_FILE_ARCHS = ("sd15",)
# ComfyUI finds a checkpoint's model type from its UNet's shapes; SD1.x is context_dim 768 and model_channels
# 320 with conv (not linear) transformer projections (comfy/supported_models.py, SD15.unet_config).  Any other
# width gives "Could not detect model type" at load, so such a file is refused instead of written.
COMFYUI_SD1 = {"cross_attention_dim": 768, "model_channels": 320}


def comfyui_refusal(unet_config: Mapping) -> str | None:
    """Why ComfyUI would not load a single-file checkpoint of this diffusers UNet config (None: it would)."""
    found = {"cross_attention_dim": unet_config.get("cross_attention_dim"),
             "model_channels": (unet_config.get("block_out_channels") or [None])[0]}
    wrong = [f"{k} {found[k]} (SD1.x: {want})" for k, want in COMFYUI_SD1.items() if found[k] != want]
    if unet_config.get("use_linear_projection"):
        wrong.append("linear transformer projections (SD2.x; SD1.x: convolutions)")
    if not wrong:
        return None
    return ("ComfyUI detects an SD1.x checkpoint by its UNet's shapes and would refuse this one with 'Could not "
            f"detect model type': {', '.join(wrong)}. Use the .lorad file with its base, or output.export_merged "
            "(a diffusers folder), instead")


def _component_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if files:
        out = {}
        for f in files:
            out.update(load_file(str(f)))
        return out
    bins = sorted(folder.glob("*.bin"))
    out = {}
    for f in bins:
        out.update(torch.load(f, map_location="cpu", weights_only=True))
    return out


def single_file_state(unet: torch.nn.Module, base: Path, arch: str = "sd15") -> dict[str, torch.Tensor]:
    """ldm-keyed state dict: merged ``unet`` + the base folder's text encoder and VAE."""
    if arch not in SINGLE_FILE_ARCHS:
        raise ValueError(f"single-file export supports {SINGLE_FILE_ARCHS}, not {arch!r}")
    km = keymap.unet_keymap(arch, model_layout(arch, unet))
    sd: dict[str, torch.Tensor] = {}
    for name, t in unet.state_dict().items():
        sd["model.diffusion_model." + km.ldm(name)] = t.detach().contiguous()
    for name, t in _component_weights(base / "text_encoder").items():
        # Older transformers save "text_model.<...>", v5 drops the wrapper; checkpoints use the former.
        name = name if name.startswith("text_model.") else "text_model." + name
        sd["cond_stage_model.transformer." + name] = t.contiguous()
    for name, t in _component_weights(base / "vae").items():
        sd["first_stage_model." + name] = t.contiguous()
    return sd


def export_single_file(unet: torch.nn.Module, base: Path, path: Path, arch: str, title: str, timestep: int,
                       alpha_bar_T: float) -> Path:
    """Write the merged ``unet`` with ``base``'s text encoder and VAE to ``path`` (atomic).

    ``timestep`` and ``alpha_bar_T`` are the one-step settings the student was distilled with.
    """
    from safetensors.torch import save_file

    sd = single_file_state(unet, Path(base), arch)
    md = {"modelspec.architecture": "stable-diffusion-v1", "modelspec.title": title,
          "wadi.timestep": str(timestep), "wadi.alpha_bar_T": repr(float(alpha_bar_T))}
    atomic_save(path, lambda tmp: save_file(sd, str(tmp), metadata=md))
    return path
