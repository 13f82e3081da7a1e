"""Exact conversion between diffusers module names and ``.lorad`` file keys.

A file key names the adapted layer the way ComfyUI's LoRA key maps resolve it
(see docs/lorad-format.md, "Key spelling"):

* SD UNets (1.x, 2.x, XL): ``diffusion_model.<ldm path>``, e.g. diffusers
  ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`` is
  ``diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q``.  The
  ldm block indices are *derived from the UNet config* (block types,
  ``layers_per_block``, mid block), not read from a table of fixed names.
* PixArt: ``transformer.<diffusers path>``.  ComfyUI resolves this spelling for
  every PixArt weight, including q/k/v, which the native checkpoint fuses into one
  ``attn.qkv`` (and ``cross_attn.kv_linear``) weight: ComfyUI maps each of them to
  ``(fused key, row offset)``.  The generic ``diffusion_model.<native path>``
  spelling could only address the whole fused weight.
* Text encoders: ``text_encoders.<clip_l|clip_h|clip_g>.transformer.<transformers path>``
  (ComfyUI's generic spelling for every text-encoder weight).

:func:`comfy_target` gives the ComfyUI model state-dict key (and row slice) that a
file key patches; :func:`pixart_native` the native PixArt checkpoint key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from .archs import ArchSpec, get_arch, load_config

__all__ = [
    "KeyMapError",
    "UNetKeyMap",
    "unet_keymap",
    "layout_of",
    "default_layout",
    "file_prefix",
    "to_file_key",
    "to_module_name",
    "component_of",
    "pixart_native",
    "comfy_target",
    "comfy_weight_shapes",
    "text_name_in",
    "COMFY_CLIP_NAMES",
]


class KeyMapError(KeyError):
    """A name or key that does not exist in the architecture's layout."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# ComfyUI's CLIP attribute per (architecture family, diffusers text-encoder component).
COMFY_CLIP_NAMES: dict[tuple[str, str], str] = {
    ("sd15", "text_encoder"): "clip_l",
    ("sd21", "text_encoder"): "clip_h",
    ("sd21-base", "text_encoder"): "clip_h",
    ("sdxl", "text_encoder"): "clip_l",
    ("sdxl", "text_encoder_2"): "clip_g",
}

# ResBlock children: diffusers name -> ldm name (ldm's ResBlock keeps them in Sequentials).
_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_RESNET_INV = {v: k for k, v in _RESNET.items()}


def _per_level(value: Any, n: int, what: str) -> list[int]:
    vals = [int(value)] * n if isinstance(value, int) else [int(v) for v in value]
    if len(vals) != n:
        raise KeyMapError(f"UNet config: {what} has {len(vals)} entries for {n} levels")
    return vals


def _has_attn(block_type: str) -> bool:
    if block_type.startswith("CrossAttn"):
        return True
    if block_type in ("DownBlock2D", "UpBlock2D"):
        return False
    raise KeyMapError(f"UNet config: block type {block_type!r} has no ldm layout here (SD-style blocks only)")


@dataclass(frozen=True)
class UNetKeyMap:
    """Block-level prefix table ``diffusers prefix -> (ldm prefix, kind)`` built from a UNet config.

    ``kind`` is ``"resnet"`` (children renamed by the ResBlock table) or ``"plain"``
    (children keep their names: attention blocks, convs, embeddings).
    """

    to_ldm: Mapping[str, tuple[str, str]]
    to_diffusers: Mapping[str, tuple[str, str]]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> UNetKeyMap:
        rows: list[tuple[str, str, str]] = [
            ("conv_in", "input_blocks.0.0", "plain"),
            ("time_embedding.linear_1", "time_embed.0", "plain"),
            ("time_embedding.linear_2", "time_embed.2", "plain"),
            ("conv_norm_out", "out.0", "plain"),
            ("conv_out", "out.2", "plain"),
        ]
        # SDXL's micro-conditioning MLP and class embeddings are ldm's ``label_emb``.
        if cfg.get("addition_embed_type") == "text_time":
            rows += [("add_embedding.linear_1", "label_emb.0.0", "plain"),
                     ("add_embedding.linear_2", "label_emb.0.2", "plain")]
        elif cfg.get("class_embed_type") in ("projection", "timestep"):
            rows += [("class_embedding.linear_1", "label_emb.0.0", "plain"),
                     ("class_embedding.linear_2", "label_emb.0.2", "plain")]
        down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
        levels = len(cfg["block_out_channels"])
        if len(down) != levels or len(up) != levels:
            raise KeyMapError("UNet config: down/up block types do not match block_out_channels")
        layers = _per_level(cfg.get("layers_per_block", 2), levels, "layers_per_block")

        # Encoder: ldm numbers every resnet(+attention) and every downsampler as one
        # input block; input_blocks.0 is conv_in.
        n = 1
        for b, btype in enumerate(down):
            attn = _has_attn(btype)
            for i in range(layers[b]):
                rows.append((f"down_blocks.{b}.resnets.{i}", f"input_blocks.{n}.0", "resnet"))
                if attn:
                    rows.append((f"down_blocks.{b}.attentions.{i}", f"input_blocks.{n}.1", "plain"))
                n += 1
            if b < levels - 1:  # diffusers adds a downsampler to every block but the last
                rows.append((f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{n}.0.op", "plain"))
                n += 1

        mid = cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn")
        if mid == "UNetMidBlock2DCrossAttn":
            rows += [("mid_block.resnets.0", "middle_block.0", "resnet"),
                     ("mid_block.attentions.0", "middle_block.1", "plain"),
                     ("mid_block.resnets.1", "middle_block.2", "resnet")]
        elif mid is not None:
            raise KeyMapError(f"UNet config: mid block type {mid!r} has no ldm layout here")

        # Decoder: one more resnet per level than the encoder (skip from the downsampler);
        # the upsampler sits in the level's last output block, after the attention if any.
        n = 0
        for b, btype in enumerate(up):
            attn = _has_attn(btype)
            count = layers[levels - 1 - b] + 1
            for i in range(count):
                rows.append((f"up_blocks.{b}.resnets.{i}", f"output_blocks.{n}.0", "resnet"))
                if attn:
                    rows.append((f"up_blocks.{b}.attentions.{i}", f"output_blocks.{n}.1", "plain"))
                if i == count - 1 and b < levels - 1:
                    slot = 2 if attn else 1
                    rows.append((f"up_blocks.{b}.upsamplers.0.conv", f"output_blocks.{n}.{slot}.conv", "plain"))
                n += 1
        to_ldm = {d: (ld, kind) for d, ld, kind in rows}
        to_diff = {ld: (d, kind) for d, ld, kind in rows}
        if len(to_ldm) != len(rows) or len(to_diff) != len(rows):
            raise KeyMapError("UNet config produced a non-bijective block table")  # pragma: no cover
        return cls(to_ldm, to_diff)

    @staticmethod
    def _convert(name: str, table: Mapping[str, tuple[str, str]], rename: Mapping[str, str], what: str) -> str:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):  # longest block prefix on whole dotted components
            hit = table.get(".".join(parts[:i]))
            if hit is None:
                continue
            target, kind = hit
            rest = parts[i:]
            if kind == "resnet" and rest:
                for width in (2, 1):  # ldm children span two components ("in_layers.0")
                    child = ".".join(rest[:width])
                    if child in rename:
                        rest = rename[child].split(".") + rest[width:]
                        break
                else:
                    raise KeyMapError(f"{name!r}: unknown ResBlock child {rest[0]!r} in {what} naming")
            return ".".join([target, *rest])
        raise KeyMapError(f"{name!r} is not a module path of this UNet in {what} naming")

    def ldm(self, diffusers_name: str) -> str:
        """diffusers module/parameter name -> ldm name (without ``diffusion_model.``)."""
        return self._convert(diffusers_name, self.to_ldm, _RESNET, "diffusers")

    def diffusers(self, ldm_name: str) -> str:
        """ldm module/parameter name -> diffusers name."""
        return self._convert(ldm_name, self.to_diffusers, _RESNET_INV, "ldm")


@cache
def _unet_keymap_for(arch_id: str) -> UNetKeyMap:
    return UNetKeyMap.from_config(load_config(arch_id, "unet"))


def unet_keymap(arch: str | ArchSpec | Mapping[str, Any], layout: Mapping[str, Any] | None = None) -> UNetKeyMap:
    """The UNet key map of an architecture id, or built from a UNet config/layout dict.

    ``layout`` (see :func:`layout_of`) overrides the architecture's stored config:
    a shrunk SD-style UNet (fewer levels or resnets) gets its own ldm indices, the
    ones ComfyUI derives from that model.
    """
    if layout is not None:
        return UNetKeyMap.from_config(layout)
    if isinstance(arch, Mapping):
        return UNetKeyMap.from_config(arch)
    return _unet_keymap_for(get_arch(arch).id)


# Config fields that decide key names (and nothing else): what ``lorad.layout`` records.
_LAYOUT_FIELDS = {
    "unet": ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block", "mid_block_type",
             "addition_embed_type", "class_embed_type"),
    "dit": ("num_layers", "num_attention_heads", "attention_head_dim"),
}
_LAYOUT_DEFAULTS = {"layers_per_block": 2, "mid_block_type": "UNetMidBlock2DCrossAttn",
                    "addition_embed_type": None, "class_embed_type": None}


def layout_of(config: Mapping[str, Any], family: str) -> dict[str, Any]:
    """The key-deciding part of a denoiser config (JSON-able; lists, not tuples)."""
    out = {}
    for k in _LAYOUT_FIELDS[family]:
        v = config.get(k, _LAYOUT_DEFAULTS.get(k))
        out[k] = list(v) if isinstance(v, (list, tuple)) else v
    return out


def default_layout(arch: str | ArchSpec) -> dict[str, Any]:
    spec = get_arch(arch)
    return layout_of(load_config(spec), spec.family)


def file_prefix(arch: str | ArchSpec, component: str | None = None) -> str:
    """The key prefix of a component in ``.lorad`` files (ComfyUI's generic spellings)."""
    spec = get_arch(arch)
    component = component or spec.denoiser
    if component == "unet" and spec.family == "unet":
        return "diffusion_model."
    if component == "transformer" and spec.family == "dit":
        return "transformer."
    clip = COMFY_CLIP_NAMES.get((spec.id, component))
    if clip is None:
        raise KeyMapError(f"architecture {spec.id!r} has no LoRaD key spelling for component {component!r}")
    return f"text_encoders.{clip}.transformer."


def _check_dit_name(spec: ArchSpec, name: str, layout: Mapping[str, Any] | None = None) -> None:
    parts = name.split(".")
    if parts[0] == "transformer_blocks":
        depth = int((layout or load_config(spec, "transformer"))["num_layers"])
        if len(parts) < 3 or not parts[1].isdigit() or int(parts[1]) >= depth:
            raise KeyMapError(f"{name!r}: not a transformer block of {spec.id} (depth {depth})")
    elif parts[0] not in ("caption_projection", "proj_out", "adaln_single", "pos_embed", "scale_shift_table"):
        raise KeyMapError(f"{name!r} is not a module path of the {spec.id} transformer")


# transformers >= 5 builds CLIPTextModel without the ``text_model`` wrapper (its
# children sit at the top), CLIPTextModelWithProjection and ComfyUI keep it.  File
# keys and :func:`to_module_name` always use the wrapped spelling.
_TEXT_ROOTS = ("embeddings", "encoder", "final_layer_norm")


def _text_canonical(name: str) -> str:
    return "text_model." + name if name.split(".")[0] in _TEXT_ROOTS else name


def text_name_in(model: Any, name: str) -> str:
    """The wrapped text-model name as ``model`` spells it (drops ``text_model.`` if it has no such child)."""
    if name.startswith("text_model.") and not hasattr(model, "text_model"):
        return name[len("text_model."):]
    return name


def _check_text_name(name: str) -> None:
    if not (name.startswith("text_model.") or name == "text_projection"):
        raise KeyMapError(f"{name!r} is not a module path of a CLIP text model")


def to_file_key(
    arch: str | ArchSpec, name: str, component: str | None = None, layout: Mapping[str, Any] | None = None
) -> str:
    """diffusers/transformers module name of ``component`` (default: the denoiser) -> file key.

    ``layout`` describes a denoiser that differs from the architecture's full-size config.
    """
    spec = get_arch(arch)
    component = component or spec.denoiser
    prefix = file_prefix(spec, component)
    if component == "unet":
        return prefix + unet_keymap(spec, layout).ldm(name)
    if component == "transformer":
        _check_dit_name(spec, name, layout)
    else:
        name = _text_canonical(name)
        _check_text_name(name)
    return prefix + name


def component_of(arch: str | ArchSpec, key: str) -> str:
    """Which component a file key belongs to."""
    spec = get_arch(arch)
    for comp in spec.components:
        try:
            if key.startswith(file_prefix(spec, comp)):
                return comp
        except KeyMapError:
            continue
    raise KeyMapError(
        f"{key!r} has no known prefix for {spec.id} "
        f"(expected one of {[file_prefix(spec, c) for c in spec.components if _spelled(spec, c)]})"
    )


def _spelled(spec: ArchSpec, comp: str) -> bool:
    try:
        file_prefix(spec, comp)
        return True
    except KeyMapError:
        return False


def to_module_name(arch: str | ArchSpec, key: str, layout: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """File key -> ``(component, module name)``; raises :class:`KeyMapError` if it cannot exist."""
    spec = get_arch(arch)
    comp = component_of(spec, key)
    rest = key[len(file_prefix(spec, comp)):]
    if comp == "unet":
        return comp, unet_keymap(spec, layout).diffusers(rest)
    if comp == "transformer":
        _check_dit_name(spec, rest, layout)
    else:
        _check_text_name(rest)
    return comp, rest


# -- PixArt native names ------------------------------------------------------------
_PIXART_BLOCK = {
    "attn1.to_out.0": "attn.proj",
    "attn2.to_q": "cross_attn.q_linear",
    "attn2.to_out.0": "cross_attn.proj",
    "ff.net.0.proj": "mlp.fc1",
    "ff.net.2": "mlp.fc2",
    "scale_shift_table": "scale_shift_table",
}
_PIXART_FUSED = {  # diffusers child -> (native fused child, slot in the fused rows)
    "attn1.to_q": ("attn.qkv", 0), "attn1.to_k": ("attn.qkv", 1), "attn1.to_v": ("attn.qkv", 2),
    "attn2.to_k": ("cross_attn.kv_linear", 0), "attn2.to_v": ("cross_attn.kv_linear", 1),
}
_PIXART_TOP = {
    "pos_embed.proj": "x_embedder.proj",
    "caption_projection.linear_1": "y_embedder.y_proj.fc1",
    "caption_projection.linear_2": "y_embedder.y_proj.fc2",
    "caption_projection.y_embedding": "y_embedder.y_embedding",
    "adaln_single.linear": "t_block.1",
    "adaln_single.emb.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "adaln_single.emb.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "adaln_single.emb.resolution_embedder.linear_1": "csize_embedder.mlp.0",
    "adaln_single.emb.resolution_embedder.linear_2": "csize_embedder.mlp.2",
    "adaln_single.emb.aspect_ratio_embedder.linear_1": "ar_embedder.mlp.0",
    "adaln_single.emb.aspect_ratio_embedder.linear_2": "ar_embedder.mlp.2",
    "proj_out": "final_layer.linear",
    "scale_shift_table": "final_layer.scale_shift_table",
}


def pixart_native(name: str, hidden: int = 1152) -> tuple[str, tuple[int, int, int] | None]:
    """diffusers PixArt module/parameter name -> (native checkpoint name, row slice or None).

    The slice is ``(dim, start, length)`` into the fused native weight (rows of
    ``attn.qkv`` / ``cross_attn.kv_linear``), as ComfyUI's patch offsets spell it.
    A trailing ``.weight``/``.bias`` is carried over.
    """
    base, leaf = name, ""
    for end in (".weight", ".bias"):
        if name.endswith(end):
            base, leaf = name[: -len(end)], end
    parts = base.split(".")
    if parts[0] == "transformer_blocks" and len(parts) > 2:
        child = ".".join(parts[2:])
        block = f"blocks.{parts[1]}"
        if child in _PIXART_FUSED:
            fused, slot = _PIXART_FUSED[child]
            return f"{block}.{fused}{leaf}", (0, slot * hidden, hidden)
        if child in _PIXART_BLOCK:
            return f"{block}.{_PIXART_BLOCK[child]}{leaf}", None
    elif base in _PIXART_TOP:
        return _PIXART_TOP[base] + leaf, None
    raise KeyMapError(f"{name!r}: no native PixArt name known")


def comfy_target(
    arch: str | ArchSpec, key: str, layout: Mapping[str, Any] | None = None
) -> tuple[str, tuple[int, int, int] | None]:
    """The ComfyUI model state-dict weight a file key patches: ``(key, row slice or None)``.

    UNet and PixArt weights live under ``diffusion_model.`` in ComfyUI's MODEL;
    text-encoder weights under ``<clip_x>.transformer.`` in its CLIP model.
    """
    spec = get_arch(arch)
    comp, name = to_module_name(spec, key, layout)
    if comp == "unet":
        return key + ".weight", None
    if comp == "transformer":
        cfg = layout or load_config(spec, "transformer")
        hidden = int(cfg["num_attention_heads"]) * int(cfg["attention_head_dim"])
        native, offset = pixart_native(name, hidden)
        return f"diffusion_model.{native}.weight", offset
    return key[len("text_encoders."):] + ".weight", None


def comfy_weight_shapes(
    arch: str | ArchSpec,
    keys: Any,
    comfy_shapes: Mapping[str, tuple[int, ...]],
    layout: Mapping[str, Any] | None = None,
) -> dict[str, tuple[int, ...]]:
    """File key -> shape of the weight (or fused-weight row slice) it patches in a ComfyUI model.

    ``comfy_shapes`` maps ComfyUI state-dict keys to shapes (MODEL: ``diffusion_model.…``,
    CLIP: ``clip_l.transformer.…``).  Keys without a target are left out, so the result
    can be passed to ``io.validate_layers`` directly (it reports them as unmatched).
    """
    out: dict[str, tuple[int, ...]] = {}
    for key in keys:
        try:
            target, offset = comfy_target(arch, key, layout)
        except KeyMapError:
            continue
        shape = comfy_shapes.get(target)
        if shape is None:
            continue
        shape = list(shape)
        if offset is not None:
            shape[offset[0]] = offset[2]
        out[key] = tuple(shape)
    return out
