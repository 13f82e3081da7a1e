"""Which key layout a full model state dict uses, and how its keys meet ``.lorad`` file keys.

Two layouts occur for SD UNets:

* diffusers: ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight``;
* ldm (original single-file checkpoints): ``model.diffusion_model.input_blocks.1.1...``
  in a full checkpoint, or ``diffusion_model.``/no prefix in a UNet-only file.

A ``.lorad`` file key for a UNet layer is ``diffusion_model.<ldm path>``, so an ldm
state dict matches file keys by prefix alone, while diffusers names go through
:mod:`.keymap` (the one place that knows the diffusers <-> ldm rules).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from torch import Tensor

__all__ = [
    "LDM_PREFIXES",
    "config_layout",
    "state_layout",
    "ldm_prefix",
    "file_key_to_state_key",
    "weight_shapes_from_state",
    "layers_for_state",
    "state_to_ldm",
]

# Longest first: a full checkpoint's UNet sits under ``model.diffusion_model.``.
LDM_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
FILE_UNET_PREFIX = "diffusion_model."
_LDM_ROOTS = ("input_blocks.", "middle_block.", "output_blocks.", "time_embed.")


def ldm_prefix(state: Mapping[str, Tensor]) -> str | None:
    """The ldm prefix of ``state`` (``""`` for a bare ldm UNet), or None for diffusers keys."""
    keys = list(state)
    for p in LDM_PREFIXES:
        if any(k.startswith(p + "input_blocks.") for k in keys):
            return p
    if any(k.startswith(_LDM_ROOTS) for k in keys) and not any(k.startswith("down_blocks.") for k in keys):
        return ""
    return None


def config_layout(arch: str, config: Mapping | None) -> dict | None:
    """The key-deciding layout of a denoiser ``config.json`` when it differs from the full-size one, else None."""
    from .archs import get_arch
    from .keymap import default_layout, layout_of

    spec = get_arch(arch)
    if config is None or spec.family != "unet" or "block_out_channels" not in config:
        return None
    own = layout_of(config, spec.family)
    return None if own == default_layout(spec) else own


def state_layout(arch: str, config: Mapping | None, file_layout: Mapping | None, what: str) -> dict | None:
    """The denoiser layout to spell keys with: the model's own (``config.json``), else the file's.

    A file made for another layout than the model's is refused here, naming both, instead
    of later as a pile of keys that match nothing.
    """
    from .keymap import unet_keymap

    expected = dict(file_layout) if file_layout is not None else None
    if config is None or "block_out_channels" not in config:
        return expected
    own = config_layout(arch, config)
    # Widths do not change key names (a toy-width SD1.5 UNet spells keys like the real one):
    # what must agree is the block table the keys are spelled with.
    if unet_keymap(arch, own).to_ldm != unet_keymap(arch, expected).to_ldm:
        def show(x: Mapping | None) -> str:
            return f"the full-size {arch} one" if x is None else json.dumps(x, sort_keys=True)

        raise ValueError(f"{what}: the LoRaD file was made for the UNet layout {show(expected)} but the model's "
                         f"config.json has {show(own)}; use the base model the file was made for")
    return own


def file_key_to_state_key(
    arch: str, key: str, prefix: str | None, component: str | None = None, layout: Mapping | None = None
) -> str | None:
    """The state-dict ``.weight`` key a file key addresses, or None if it is not in this component.

    ``prefix`` is :func:`ldm_prefix` of the target state (None: diffusers keys); ``layout``
    the denoiser layout when it differs from the architecture's full-size one (``lorad.layout``).
    """
    if prefix is not None:
        if not key.startswith(FILE_UNET_PREFIX):
            return None
        return prefix + key[len(FILE_UNET_PREFIX):] + ".weight"
    from .archs import get_arch
    from .keymap import to_module_name

    spec = get_arch(arch)
    comp, name = to_module_name(spec, key, layout)
    return name + ".weight" if comp == (component or spec.denoiser) else None


def weight_shapes_from_state(
    arch: str, state: Mapping[str, Tensor], component: str | None = None, layout: Mapping | None = None
) -> dict[str, tuple[int, ...]]:
    """File key -> weight shape for every >= 2-D ``.weight`` in a state dict (either layout)."""
    prefix = ldm_prefix(state)
    shapes: dict[str, tuple[int, ...]] = {}
    if prefix is not None:
        for k, v in state.items():
            if k.startswith(prefix) and k.endswith(".weight") and v.dim() >= 2:
                shapes[FILE_UNET_PREFIX + k[len(prefix): -len(".weight")]] = tuple(v.shape)
        return shapes
    from .keymap import KeyMapError, to_file_key

    for k, v in state.items():
        if not k.endswith(".weight") or v.dim() < 2:
            continue
        try:
            shapes[to_file_key(arch, k[: -len(".weight")], component, layout)] = tuple(v.shape)
        except KeyMapError:
            continue  # a weight the layout does not name (it cannot be addressed by a file)
    return shapes


def layers_for_state(
    arch: str,
    layers: Mapping[str, Mapping[str, Tensor]],
    state: Mapping[str, Tensor],
    component: str | None = None,
    layout: Mapping | None = None,
) -> tuple[dict[str, Mapping[str, Tensor]], list[str]]:
    """``(state weight key -> layer tensors, file keys of other components)``."""
    prefix = ldm_prefix(state)
    out: dict[str, Mapping[str, Tensor]] = {}
    elsewhere: list[str] = []
    for key, t in layers.items():
        sk = file_key_to_state_key(arch, key, prefix, component, layout)
        if sk is None:
            elsewhere.append(key)
        else:
            out[sk] = t
    return out, elsewhere


def state_to_ldm(
    arch: str, state: Mapping[str, Tensor], prefix: str = "model.diffusion_model.", layout: Mapping | None = None
) -> dict[str, Tensor]:
    """Rename a diffusers UNet state dict to ldm keys (every key must map, else KeyError naming them)."""
    from .keymap import KeyMapError, to_file_key

    out: dict[str, Tensor] = {}
    bad: list[str] = []
    for k, v in state.items():
        module, _, leaf = k.rpartition(".")
        try:
            fk = to_file_key(arch, module, None, layout)
        except KeyMapError:
            bad.append(k)
            continue
        if not fk.startswith(FILE_UNET_PREFIX):
            bad.append(k)
            continue
        out[prefix + fk[len(FILE_UNET_PREFIX):] + "." + leaf] = v
    if bad:
        more = f" ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise KeyError(f"{len(bad)} key(s) have no ldm name for {arch!r}: {bad[:10]}{more}")
    if len(out) != len(state):
        raise KeyError(f"ldm renaming for {arch!r} is not one-to-one ({len(state)} keys -> {len(out)})")
    return out
