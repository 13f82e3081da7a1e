"""Models <-> ``.lorad`` files: export an injected adapter, load a file into a model.

The trainer exports with one call (:func:`export_adapter`); :func:`load_adapter`
validates a file against a diffusers/transformers component and adds it as a
named adapter through ``inject.load_adapter_state`` (all or nothing).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from . import keymap
from .archs import get_arch
from .inject import adapter_state, load_adapter_state
from .io import (
    LoRaDFile,
    LoRaDFileError,
    adapter_state_from_layers,
    build_metadata,
    layers_from_adapter_state,
    load_lorad,
    save_lorad,
    validate_layers,
)
from .metadata import K_LAYOUT, OneStep

__all__ = ["model_layout", "weight_shapes_of", "export_adapter", "load_adapter"]


def model_layout(arch: str, model: nn.Module, component: str | None = None) -> dict | None:
    """The denoiser layout of ``model`` if it differs from the architecture's full-size one, else None.

    Tiny or shrunk SD-style UNets (the test world, depth-pruned models) get their
    own ldm indices, exactly as ComfyUI derives them from such a model.
    """
    spec = get_arch(arch)
    if (component or spec.denoiser) != spec.denoiser:
        return None
    config = getattr(model, "config", None)
    if not isinstance(config, Mapping):
        return None
    layout = keymap.layout_of(config, spec.family)
    return None if layout == keymap.default_layout(spec) else layout


def weight_shapes_of(
    arch: str, model: nn.Module, component: str | None = None, layout: Mapping | None = None
) -> dict[str, tuple[int, ...]]:
    """File key -> weight shape for every >= 2-D weight of a diffusers/transformers component."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if not name or not isinstance(w, Tensor) or w.dim() < 2:
            continue
        try:
            shapes[keymap.to_file_key(arch, name, component, layout)] = tuple(w.shape)
        except keymap.KeyMapError:
            continue
    return shapes


def export_adapter(
    model: nn.Module | Mapping[str, nn.Module],
    adapter: str,
    path: str | os.PathLike,
    *,
    arch: str,
    target_preset: str,
    title: str,
    component: str | None = None,
    one_step: OneStep | Mapping | None = None,
    provenance: Mapping | None = None,
    force: bool = False,
    dtype: torch.dtype = torch.float32,
    **extra,
) -> Path:
    """One call for the trainer: adapter ``adapter`` of ``model`` -> ``path``.

    ``model`` is one diffusers/transformers component (``component`` names it; default
    the denoiser) or a mapping ``{component: module}`` to write e.g. UNet and text
    encoder layers into one file.
    """
    spec = get_arch(arch)
    parts = dict(model) if isinstance(model, Mapping) else {component or spec.denoiser: model}
    layers: dict = {}
    layout = None
    for comp, module in parts.items():
        lay = model_layout(arch, module, comp)
        layout = lay if comp == spec.denoiser else layout
        layers.update(layers_from_adapter_state(arch, adapter_state(module, adapter), comp, lay))
    if not layers:
        raise ValueError(f"model has no adapter named {adapter!r}")
    rank = LoRaDFile(None, layers, {}).rank
    md = build_metadata(arch=arch, rank=rank, target_preset=target_preset, title=title,
                        one_step=one_step, provenance=provenance, **extra)
    if layout is not None:
        md[K_LAYOUT] = json.dumps(layout, sort_keys=True)
    return save_lorad(path, layers, md, force=force, dtype=dtype)


def load_adapter(
    model: nn.Module,
    adapter: str,
    src: str | os.PathLike | LoRaDFile,
    *,
    component: str | None = None,
    allow_partial: bool = False,
) -> list[str]:
    """Validate ``src`` against ``model`` and add it as adapter ``adapter``; return loaded module names.

    Keys are resolved with the model's own layout (what ComfyUI does too), so a
    file only loads into a model whose weights it fits.  Nothing is added unless
    every key fits (or ``allow_partial``, which skips keys with no target).
    """
    f = src if isinstance(src, LoRaDFile) else load_lorad(src)
    spec = get_arch(f.arch)
    component = component or spec.denoiser
    prefix = keymap.file_prefix(spec, component)  # unknown component for this arch: KeyMapError
    layout = model_layout(spec.id, model, component)
    own = {k: t for k, t in f.layers.items() if keymap.component_of(spec, k) == component}
    if not own:
        raise LoRaDFileError(f.path, None, f"no layers for component {component!r}", f"keys starting with {prefix!r}")
    sub = LoRaDFile(f.path, own, f.metadata, f.storage_dtype)
    matched = validate_layers(sub, weight_shapes_of(spec.id, model, component, layout), allow_partial=allow_partial)
    state = adapter_state_from_layers(spec.id, {k: own[k] for k in matched}, component, layout)
    if component != spec.denoiser:
        state = {keymap.text_name_in(model, n): t for n, t in state.items()}
    return load_adapter_state(model, adapter, state, strict=True)
