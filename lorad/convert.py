"""Convert the official WaDi training state to ``.lorad.safetensors``; describe files.

The official code (gudaochangsheng/WaDi, ``train_dkd_*.py``) attaches two fp32
parameters to every adapted ``nn.Linear`` of the diffusers model:
``<module>.theta_a`` ``(out, r)`` and ``<module>.theta_b`` ``(r, in/2)``, with
``theta = wrap(theta_a @ theta_b)`` rotating the pairs ``W[:, 0::2]``,
``W[:, 1::2]``.  That is exactly LoRaD's ``A``/``B`` on the same pairing, so the
conversion is a renaming (diffusers module path -> file key) plus metadata; the
one-step constants of that code (t = 999, alpha_bar_T = 0.0047, epsilon) are
recorded.  The state may be a ``.pt``/``.bin`` torch pickle (read with
``weights_only=True``) or a ``.safetensors`` file, with the tensors at the top
level or nested (``{"unet": {...}}``, ``module.`` prefixes from DDP, ...).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .archs import build_meta, get_arch
from .io import LoRaDFile, LoRaDFileError, layers_from_adapter_state, load_lorad, save_lorad
from .metadata import K_HASH, K_PAIRING, K_RANK, build_metadata
from .onestep import DEFAULT_TIMESTEP, OFFICIAL_ALPHA_BAR_T
from .presets import PRESETS, match_modules

__all__ = ["read_official", "official_adapter_state", "convert_official", "describe"]

SUFFIX_A, SUFFIX_B = ".theta_a", ".theta_b"
# One arch per distinct key/shape layout (sd21 and pixart-alpha-512 share theirs with these).
# SD2.1 resolves to the 512 base model: the official code runs it at 64x64 latents with the eps formula.
INFER_ORDER = ("sd15", "sd21-base", "sdxl", "pixart-alpha")


def _flatten(obj: Any, prefix: str, out: dict[str, Tensor], depth: int = 0) -> None:
    if isinstance(obj, Tensor):
        out[prefix] = obj
    elif isinstance(obj, Mapping) and depth < 6:
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out, depth + 1)


def read_official(src: str | os.PathLike, prefix: str | None = None) -> dict[str, Tensor]:
    """All ``*.theta_a`` / ``*.theta_b`` tensors of a training state, flattened to dotted keys.

    ``prefix`` keeps only keys under it (e.g. ``"unet."`` when a state holds several models).
    """
    path = Path(src)
    if not path.is_file():
        raise LoRaDFileError(path, None, "no such file", "an official WaDi training state (.pt/.bin/.safetensors)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip/safetensors errors all mean "not a readable state"
        raise LoRaDFileError(path, None, f"cannot read: {e}", "a torch state dict saved with torch.save") from None
    flat: dict[str, Tensor] = {}
    _flatten(obj, "", flat)
    theta = {k: v for k, v in flat.items() if k.endswith((SUFFIX_A, SUFFIX_B))}
    if prefix:
        theta = {k: v for k, v in theta.items() if k.startswith(prefix)}
    if not theta:
        raise LoRaDFileError(path, None, f"no '<module>{SUFFIX_A}' / '<module>{SUFFIX_B}' tensors found"
                             + (f" under {prefix!r}" if prefix else ""), "the official LoRaD parameters")
    return theta


def _pairs(raw: Mapping[str, Tensor], path) -> dict[str, dict[str, Tensor]]:
    groups: dict[str, dict[str, Tensor]] = {}
    for k, v in raw.items():
        kind = "A" if k.endswith(SUFFIX_A) else "B"
        groups.setdefault(k[: -len(SUFFIX_A)], {})[kind] = v
    for mod, g in groups.items():
        if set(g) != {"A", "B"}:
            have = SUFFIX_A if "A" in g else SUFFIX_B
            raise LoRaDFileError(path, mod + have, "has no partner", f"both {mod}{SUFFIX_A} and {mod}{SUFFIX_B}")
        a, b = g["A"], g["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
            raise LoRaDFileError(path, mod, f"theta_a {tuple(a.shape)} / theta_b {tuple(b.shape)}",
                                 "theta_a (out, r) and theta_b (r, in/2)")
    return groups


@cache
def _linear_table(arch_id: str) -> dict[str, tuple[int, int]]:
    """Module name -> (out, pairs) for every Linear of the architecture's denoiser (meta build)."""
    model = build_meta(arch_id)
    return {n: (m.out_features, m.in_features // 2) for n, m in model.named_modules() if isinstance(m, nn.Linear)}


@cache
def _preset_sets(arch_id: str) -> dict[str, frozenset[str]]:
    model = build_meta(arch_id)
    fam = get_arch(arch_id).family
    return {name: frozenset(n for n, _ in match_modules(model, fams[fam])) for name, fams in PRESETS.items()}


def _resolve(groups: Mapping[str, Mapping[str, Tensor]], arch_id: str) -> tuple[dict[str, dict], set[str]] | None:
    """Map each module path (possibly prefixed) to a Linear of ``arch_id`` whose shape fits; None if any fails."""
    table = _linear_table(arch_id)
    out: dict[str, dict] = {}
    stripped: set[str] = set()
    for mod, g in groups.items():
        parts = mod.split(".")
        for i in range(len(parts)):  # shortest prefix strip first
            name = ".".join(parts[i:])
            fit = table.get(name)
            if fit and g["A"].shape[0] == fit[0] and g["B"].shape[1] == fit[1]:
                if name in out:
                    raise LoRaDFileError(None, mod, f"two adapters for module {name!r} (prefixes differ)",
                                         "one adapter per state; pass prefix= to choose")
                out[name] = dict(g)
                stripped.add(".".join(parts[:i]))
                break
        else:
            return None
    return out, stripped


def official_adapter_state(
    src: str | os.PathLike, arch: str | None = None, prefix: str | None = None
) -> tuple[str, dict[str, dict[str, Tensor]], str]:
    """``(arch id, inject.adapter_state-style dict, stripped prefix)`` from an official state."""
    path = Path(src)
    groups = _pairs(read_official(path, prefix), path)
    if arch is not None:
        spec = get_arch(arch)
        hit = _resolve(groups, spec.id)
        if hit is None:
            bad = [m for m in groups if _resolve({m: groups[m]}, spec.id) is None][:5]
            raise LoRaDFileError(path, bad[0] if bad else None, f"not a Linear of {spec.id} with matching shape",
                                 f"module paths and shapes of the {spec.id} {spec.denoiser}")
        return spec.id, hit[0], ",".join(sorted(hit[1]))
    found = [(a, hit) for a in INFER_ORDER if (hit := _resolve(groups, a)) is not None]
    if not found:
        raise LoRaDFileError(path, None, "the layers match none of the known architectures",
                             f"modules and shapes of one of {', '.join(INFER_ORDER)}")
    if len(found) > 1:
        raise LoRaDFileError(path, None, f"the layers fit several architectures: {[a for a, _ in found]}",
                             "arch= to choose one")
    a, (state, stripped) = found[0]
    return a, state, ",".join(sorted(stripped))


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def convert_official(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    arch: str | None = None,
    force: bool = False,
    *,
    title: str | None = None,
    prefix: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Official WaDi training state -> ``.lorad.safetensors`` (arch given or inferred from shapes)."""
    src = Path(src)
    dst = Path(dst)
    if dst.exists() and not force:  # fail before reading a large state
        raise FileExistsError(f"{dst}: file exists; pass force=True (--force) to replace it")
    arch_id, state, stripped = official_adapter_state(src, arch, prefix)
    layers = layers_from_adapter_state(arch_id, state)
    names = frozenset(state)
    preset = next((p for p, s in _preset_sets(arch_id).items() if s == names), "custom")
    ranks = {t["A"].shape[1] for t in state.values()}
    md = build_metadata(
        arch=arch_id,
        rank=ranks.pop() if len(ranks) == 1 else None,
        target_preset=preset,
        title=title or src.name.split(".")[0],
        one_step={"timestep": DEFAULT_TIMESTEP, "alpha_bar_T": OFFICIAL_ALPHA_BAR_T, "prediction_type": "epsilon"},
        provenance={
            "source": "official-wadi-training-state",
            "source_file": src.name,
            "source_sha256": _file_sha256(src),
            "arch_inferred": arch is None,
            "stripped_prefix": stripped,
        },
    )
    return save_lorad(dst, layers, md, force=force, dtype=dtype)


def describe(file: LoRaDFile | str | os.PathLike) -> str:
    """Human summary of a ``.lorad`` file for ``lorad inspect``."""
    f = file if isinstance(file, LoRaDFile) else load_lorad(file)
    md = f.metadata
    spec = get_arch(f.arch)
    lines = []
    if f.path is not None and f.path.exists():
        lines.append(f"file:         {f.path} ({f.path.stat().st_size / 2**20:.1f} MiB, "
                     f"stored as {f.storage_dtype or 'mixed dtypes'})")
    lines.append(f"format:       LoRaD {f.format_version}, pairing {md.get(K_PAIRING)}")
    lines.append(f"architecture: {spec.id} ({md.get('modelspec.architecture', spec.modelspec_adapter)}, "
                 f"{spec.description})")
    lines.append(f"title:        {md.get('modelspec.title', '')}")
    comps = ", ".join(f"{c} {n}" for c, n in f.components().items())
    dense = sum("theta" in t for t in f.layers.values())
    lines.append(f"layers:       {len(f.layers)} ({comps}); rank {md.get(K_RANK)}; {dense} dense")
    lines.append(f"parameters:   {f.num_params:,} ({f.num_params / 1e6:.2f}M)")
    lines.append(f"targets:      {md.get('lorad.target_preset', '?')}")
    step = f.one_step
    if step is not None:
        lines.append(f"one-step:     t={step.timestep}, alpha_bar_T={step.alpha_bar_T}, "
                     f"prediction {step.prediction_type}")
    prov = {k[len("lorad.provenance."):]: v for k, v in md.items() if k.startswith("lorad.provenance.")}
    if prov:
        lines.append("provenance:   " + ", ".join(f"{k}={v}" for k, v in sorted(prov.items())))
    if K_HASH in md:
        lines.append(f"sha256:       {md[K_HASH]} (tensor data)")
    return "\n".join(lines)
