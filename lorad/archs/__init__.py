"""Base architectures LoRaD files are made for: ids, configs stored in the repo, meta builds.

Every architecture is identified by a short stable id (``sd15``, ``sd21``,
``sd21-base``, ``sdxl``, ``pixart-alpha``, ``pixart-alpha-512``) that is written
into ``.lorad`` metadata.  Its full-size component configs live next to this
file as JSON (facts from the public model configs) so that shapes and key names
can be checked without any download: :func:`build_meta` instantiates the
diffusers/transformers model on the ``meta`` device (no memory, no weights).

Components use the diffusers pipeline names: ``unet`` or ``transformer`` (the
denoiser), ``text_encoder`` and ``text_encoder_2``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

__all__ = [
    "ArchSpec",
    "ARCHS",
    "UnknownArchError",
    "get_arch",
    "arch_ids",
    "load_config",
    "build_meta",
    "MODELSPEC_LORAD_SUFFIX",
]

HERE = Path(__file__).resolve().parent
MODELSPEC_LORAD_SUFFIX = "/lorad"


class UnknownArchError(KeyError):
    """An architecture id (or ModelSpec string) that this library does not know."""

    def __str__(self) -> str:  # KeyError would print the repr with quotes
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ArchSpec:
    """What a LoRaD file needs to know about a base model family."""

    id: str
    modelspec: str  # ModelSpec base architecture id (sd-scripts spelling); adapters append "/lorad"
    family: str  # "unet" (SD UNets) or "dit" (PixArt)
    denoiser: str  # component name of the denoiser: "unet" or "transformer"
    configs: MappingProxyType  # component -> JSON file name in this folder
    resolution: int  # native image size (ModelSpec "WxH")
    prediction_type: str  # the base model's training target: "epsilon" or "v_prediction"
    overrides: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))  # denoiser config overrides
    description: str = ""

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(self.configs)

    @property
    def modelspec_adapter(self) -> str:
        return self.modelspec + MODELSPEC_LORAD_SUFFIX


def _spec(id: str, modelspec: str, family: str, configs: dict[str, str], resolution: int, pred: str,
          overrides: dict[str, Any] | None = None, description: str = "") -> ArchSpec:
    denoiser = "unet" if family == "unet" else "transformer"
    return ArchSpec(id, modelspec, family, denoiser, MappingProxyType(dict(configs)), resolution, pred,
                    MappingProxyType(dict(overrides or {})), description)


# SD2.1 at 512 (``sd21-base``, epsilon) is what the official WaDi code distils: it
# runs the SD2.1 student on 64x64 latents with the epsilon x0 formula.  The 768-v
# model (``sd21``) has the same UNet keys and shapes, only sample size and target differ.
ARCHS: dict[str, ArchSpec] = {
    a.id: a
    for a in (
        _spec("sd15", "stable-diffusion-v1", "unet",
              {"unet": "sd15_unet.json", "text_encoder": "clip_l.json"}, 512, "epsilon",
              description="Stable Diffusion 1.x"),
        _spec("sd21", "stable-diffusion-v2-768-v", "unet",
              {"unet": "sd21_unet.json", "text_encoder": "clip_h_sd2.json"}, 768, "v_prediction",
              description="Stable Diffusion 2.x, 768-v"),
        _spec("sd21-base", "stable-diffusion-v2-512", "unet",
              {"unet": "sd21_unet.json", "text_encoder": "clip_h_sd2.json"}, 512, "epsilon",
              overrides={"sample_size": 64}, description="Stable Diffusion 2.x base, 512"),
        _spec("sdxl", "stable-diffusion-xl-v1-base", "unet",
              {"unet": "sdxl_unet.json", "text_encoder": "clip_l.json", "text_encoder_2": "clip_g.json"},
              1024, "epsilon", description="Stable Diffusion XL 1.0 base"),
        _spec("pixart-alpha", "pixart-alpha", "dit", {"transformer": "pixart_alpha_256.json"}, 256, "epsilon",
              description="PixArt-alpha XL-2 256x256"),
        _spec("pixart-alpha-512", "pixart-alpha", "dit", {"transformer": "pixart_alpha_512.json"}, 512,
              "epsilon", description="PixArt-alpha XL-2 512x512"),
    )
}


def arch_ids() -> list[str]:
    return list(ARCHS)


def get_arch(arch: str | ArchSpec) -> ArchSpec:
    """Look up an id (``"sd15"``) or a ModelSpec string (``"stable-diffusion-v1/lorad"``)."""
    if isinstance(arch, ArchSpec):
        return arch
    if arch in ARCHS:
        return ARCHS[arch]
    base = arch[: -len(MODELSPEC_LORAD_SUFFIX)] if arch.endswith(MODELSPEC_LORAD_SUFFIX) else arch
    for spec in ARCHS.values():  # first match wins: sd21-base/pixart-alpha-512 need their own id
        if spec.modelspec == base:
            return spec
    raise UnknownArchError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")


@cache
def _read_json(name: str) -> dict[str, Any]:
    with open(HERE / name, encoding="utf-8") as f:
        return json.load(f)


def load_config(arch: str | ArchSpec, component: str | None = None) -> dict[str, Any]:
    """The component's config as a fresh dict (``_class_name`` kept, ``_note`` dropped)."""
    spec = get_arch(arch)
    component = component or spec.denoiser
    if component not in spec.configs:
        raise KeyError(f"architecture {spec.id!r} has no component {component!r}; it has {list(spec.configs)}")
    cfg = {k: v for k, v in _read_json(spec.configs[component]).items() if k != "_note"}
    if component == spec.denoiser:
        cfg.update(spec.overrides)
    return cfg


def build_meta(arch: str | ArchSpec, component: str | None = None) -> nn.Module:
    """Instantiate the full-size component on the ``meta`` device (shapes and names only).

    diffusers/transformers are imported here, lazily: the rest of ``lorad`` does not need them.
    """
    cfg = load_config(arch, component)
    cls_name = cfg.pop("_class_name")
    with torch.device("meta"):
        if cls_name in ("UNet2DConditionModel", "PixArtTransformer2DModel"):
            import diffusers

            return getattr(diffusers, cls_name).from_config(cfg)
        if cls_name in ("CLIPTextModel", "CLIPTextModelWithProjection"):
            import transformers

            cfg.pop("architectures", None)
            config = transformers.CLIPTextConfig(**cfg)
            return getattr(transformers, cls_name)(config)
    raise ValueError(f"{arch}: no builder for model class {cls_name!r}")
