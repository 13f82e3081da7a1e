"""Map a ``.lorad`` file's layer keys onto a ComfyUI model's weights, all-or-nothing.

Pure functions (no ComfyUI import): the caller passes ComfyUI's own key map
(``comfy.lora.model_lora_keys_unet/_clip``: file prefix -> model key or
``(model key, (dim, start, length))`` for fused weights such as PixArt's qkv) and
the model's weight shapes.  Everything is checked before anything is patched, so a
bad file never leaves a half-patched model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor

from ..lorad.layer_spec import LayerSpec, LayerSpecError

PatchKey = str | tuple  # what ModelPatcher.add_patches accepts


class LoRaDMatchError(ValueError):
    """The file does not fit the model (keys, shapes or architecture)."""


# Canonical families; every spelling we meet (file metadata, modelspec ids, ComfyUI
# model-config class names such as SD15, SD21UnclipL, SDXL, PixArtAlpha) maps to one.
_SD1 = re.compile(r"^(sd[-_]?1|stable-diffusion-v1|(sd)?v?1([.-]?[45x])?$)")
_SD2 = re.compile(r"^(sd[-_]?2|stable-diffusion-v2|(sd)?v?2([.-]?[01x])?$)")


def arch_family(name: str | None) -> str | None:
    """``"stable-diffusion-v1/lorad"``, ``"sd15"``, ``"SD15"`` -> ``"sd1"``; unknown -> None."""
    if not name:
        return None
    n = name.strip().lower()
    if "pixart" in n:
        return "pixart"
    if "xl" in n:
        return "sdxl"
    tokens = [n, *re.split(r"[/\s_]+", n)]
    if any(_SD2.match(t) for t in tokens):
        return "sd2"
    if any(_SD1.match(t) for t in tokens):
        return "sd1"
    return None


def check_arch(file_arch: str | None, model_arch: str | None, path: str) -> None:
    """Refuse a file made for another architecture, naming both."""
    f = arch_family(file_arch)
    m = arch_family(model_arch) or (model_arch.lower() if model_arch else None)
    if f is not None and m is not None and f != m:
        raise LoRaDMatchError(
            f"{path}: this LoRaD was made for {file_arch!r} ({f}) but the model is {model_arch!r} ({m})"
        )


@dataclass(frozen=True)
class Resolved:
    prefix: str  # the layer key in the file
    patch_key: PatchKey  # what add_patches gets
    model_key: str
    rows: int  # output rows the adapter rotates (narrowed for fused weights)


def _target_shape(shape: Sequence[int], offset: tuple | None) -> tuple[int, ...]:
    shape = list(shape)
    if offset is not None:
        dim, _start, length = offset
        shape[dim] = length
    return tuple(shape)


def check_shapes(prefix: str, parts: Mapping[str, Tensor], shape: Sequence[int], path: str) -> None:
    """The layer fits the (possibly row-narrowed) weight: :meth:`LayerSpec.check_fit`, naming the file."""
    try:
        LayerSpec.from_parts(parts, prefix).check_fit(shape)
    except LayerSpecError as e:
        raise LoRaDMatchError(f"{path}: {e}") from None


def resolve(
    layers: Mapping[str, Mapping[str, Tensor]],
    key_map: Mapping[str, PatchKey],
    shapes: Mapping[str, Sequence[int]],
    path: str,
) -> tuple[list[Resolved], list[str]]:
    """Resolve the layers this key map knows; returns (resolved, prefixes it does not know)."""
    done: list[Resolved] = []
    unknown: list[str] = []
    for prefix in sorted(layers):
        target = key_map.get(prefix)
        if target is None:
            unknown.append(prefix)
            continue
        model_key, offset = (target, None) if isinstance(target, str) else (target[0], target[1])
        if model_key not in shapes:
            unknown.append(prefix)
            continue
        shape = _target_shape(shapes[model_key], offset)
        check_shapes(prefix, layers[prefix], shape, path)
        # add_patches keys must be hashable: (key, offset tuple[, function]) as ComfyUI builds them
        patch_key = model_key if offset is None else (model_key, tuple(offset), *target[2:])
        done.append(Resolved(prefix, patch_key, model_key, shape[0]))
    return done, unknown


def check_unique(resolved: Sequence[Resolved], path: str) -> None:
    """Two file keys must not rotate the same rows (sequential patches would double-rotate)."""
    seen: dict[PatchKey, str] = {}
    for r in resolved:
        if r.patch_key in seen:
            raise LoRaDMatchError(f"{path}: {r.prefix} and {seen[r.patch_key]} both target {r.patch_key}")
        seen[r.patch_key] = r.prefix


def report_unmatched(unmatched: Sequence[str], total: int, path: str, targets: str) -> None:
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (f" ... (+{len(unmatched) - 5} more)" if len(unmatched) > 5 else "")
        raise LoRaDMatchError(
            f"{path}: {len(unmatched)} of {total} LoRaD layers match no weight of the {targets}: {shown}. "
            "Nothing was applied (wrong base model, or a file for another architecture?)"
        )
