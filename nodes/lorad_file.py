"""Read a ``.lorad.safetensors`` for the nodes: layers, metadata, arch, one-step settings.

``lorad.io.load_lorad`` (the format's reader) is used when it exists; until then a
minimal reader of the same layout (``<key>.lorad_A/.lorad_B`` or ``<key>.lorad_theta``)
stands in.  Either way the nodes see one :class:`LoRaDInfo`, so this is the only
module that knows how the file is read.  Torch + safetensors only (no ComfyUI).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import torch
from torch import Tensor

SUFFIXES = (".lorad_A", ".lorad_B", ".lorad_theta")


class LoRaDReadError(ValueError):
    """A ``.lorad`` file that cannot be used; the message names file, key and expectation."""


@dataclass(frozen=True)
class OneStep:
    """How the student was distilled: evaluate at ``timestep`` with ``alpha_bar`` (None: schedule's)."""

    timestep: float = 999.0
    alpha_bar: float | None = None
    prediction_type: str = "epsilon"

    def as_dict(self) -> dict:
        return {"timestep": self.timestep, "alpha_bar": self.alpha_bar, "prediction_type": self.prediction_type}


@dataclass
class LoRaDInfo:
    path: str
    layers: dict[str, dict[str, Tensor]]
    metadata: dict[str, str] = field(default_factory=dict)
    arch: str | None = None
    rank: int | None = None
    onestep: OneStep | None = None

    def summary(self) -> dict:
        """What the Info node and the web panel show (JSON-able)."""
        prov = {k: v for k, v in self.metadata.items() if not k.startswith("modelspec.") or k.endswith("title")}
        return {
            "file": os.path.basename(self.path),
            "layers": len(self.layers),
            "dense_layers": sum("theta" in v for v in self.layers.values()),
            "rank": self.rank,
            "arch": self.arch,
            "onestep": self.onestep.as_dict() if self.onestep else None,
            "metadata": prov,
        }


def _first(meta: dict[str, str], *names: str) -> str | None:
    for n in names:
        if meta.get(n) not in (None, ""):
            return meta[n]
    return None


def _float(meta: dict[str, str], path: str, *names: str) -> float | None:
    raw = _first(meta, *names)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError as e:
        raise LoRaDReadError(f"{path}: metadata {names[0]!r}={raw!r} is not a number") from e
    if not math.isfinite(value):
        raise LoRaDReadError(f"{path}: metadata {names[0]!r}={raw!r} is not finite")
    return value


def onestep_from_metadata(meta: dict[str, str], path: str = "<file>") -> OneStep | None:
    """One-step parameters if the file is a WaDi student (any of the known spellings)."""
    t = _float(meta, path, "wadi.timestep", "lorad.timestep", "onestep.timestep", "timestep")
    ab = _float(meta, path, "wadi.alpha_bar_T", "lorad.alpha_bar_T", "onestep.alpha_bar_T", "alpha_bar_T")
    pt = _first(meta, "wadi.prediction_type", "lorad.prediction_type", "onestep.prediction_type", "prediction_type")
    if t is None and ab is None and pt is None:
        return None
    if ab is not None and not 0.0 < ab < 1.0:
        raise LoRaDReadError(f"{path}: metadata alpha_bar_T={ab} must be in (0, 1)")
    return OneStep(timestep=999.0 if t is None else t, alpha_bar=ab, prediction_type=pt or "epsilon")


def arch_from_metadata(meta: dict[str, str]) -> str | None:
    return _first(meta, "lorad.arch", "lorad.base_arch", "wadi.base_arch", "base_arch", "modelspec.architecture")


def _group(tensors: dict[str, Tensor], path: str) -> dict[str, dict[str, Tensor]]:
    layers: dict[str, dict[str, Tensor]] = {}
    for key, t in tensors.items():
        suffix = next((s for s in SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            raise LoRaDReadError(f"{path}: key {key!r} is not a LoRaD tensor (expected a {'/'.join(SUFFIXES)} suffix)")
        if not t.is_floating_point():
            raise LoRaDReadError(f"{path}: {key} has dtype {t.dtype}, expected a float tensor")
        if t.ndim != 2:
            raise LoRaDReadError(f"{path}: {key} has shape {tuple(t.shape)}, expected a 2-D tensor")
        if not torch.isfinite(t).all():
            raise LoRaDReadError(f"{path}: {key} contains NaN/inf values")
        layers.setdefault(key[: -len(suffix)], {})[suffix[len(".lorad_"):]] = t
    for prefix, parts in layers.items():
        if "theta" in parts and len(parts) > 1:
            raise LoRaDReadError(f"{path}: {prefix} has both dense .lorad_theta and factors")
        if "theta" not in parts:
            if set(parts) != {"A", "B"}:
                missing = ({"A", "B"} - set(parts)).pop()
                raise LoRaDReadError(f"{path}: {prefix}.lorad_{missing} is missing (A and B come in pairs)")
            if parts["A"].shape[1] != parts["B"].shape[0]:
                raise LoRaDReadError(
                    f"{path}: {prefix}: lorad_A {tuple(parts['A'].shape)} and lorad_B {tuple(parts['B'].shape)} "
                    "disagree on the rank"
                )
    if not layers:
        raise LoRaDReadError(f"{path}: no LoRaD tensors in the file")
    return layers


def _read_minimal(path: str) -> LoRaDInfo:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for a damaged header
        raise LoRaDReadError(f"{path}: not a readable safetensors file ({e})") from e
    layers = _group(tensors, path)
    ranks = {p["A"].shape[1] for p in layers.values() if "A" in p}
    rank_meta = _first(meta, "lorad.rank", "rank")
    rank = int(rank_meta) if rank_meta and rank_meta.isdigit() else (max(ranks) if ranks else None)
    return LoRaDInfo(path, layers, meta, arch_from_metadata(meta), rank, onestep_from_metadata(meta, path))


def _from_format(path: str) -> LoRaDInfo | None:
    """Use ``lorad.io`` when the format module exists (returns None while it does not)."""
    try:
        from ..lorad import io as lorad_io
    except ImportError:
        return None
    try:
        f = lorad_io.load_lorad(path)
    except lorad_io.LoRaDFileError as e:
        raise LoRaDReadError(str(e)) from e
    meta = dict(getattr(f, "metadata", {}) or {})
    onestep = onestep_from_metadata(meta, path)
    t = getattr(f, "timestep", None)
    if t is not None:
        onestep = OneStep(
            float(t),
            getattr(f, "alpha_bar_T", None),
            getattr(f, "prediction_type", None) or "epsilon",
        )
    layers = {k: dict(v) for k, v in f.layers.items()}
    return LoRaDInfo(path, layers, meta, getattr(f, "arch", None) or arch_from_metadata(meta), getattr(f, "rank", None), onestep)


def read_lorad(path: str) -> LoRaDInfo:
    """Read and sanity-check a ``.lorad.safetensors``; raises :class:`LoRaDReadError`."""
    if not os.path.isfile(path):
        raise LoRaDReadError(f"{path}: file not found")
    info = _from_format(path)
    return info if info is not None else _read_minimal(path)


def summary_text(info: LoRaDInfo) -> str:
    """Human-readable metadata block (Info node output, web panel)."""
    s = info.summary()
    lines = [f"file: {s['file']}", f"base arch: {s['arch'] or 'unknown'}", f"layers: {s['layers']} ({s['dense_layers']} dense)",
             f"rank: {s['rank']}"]
    if s["onestep"]:
        o = s["onestep"]
        ab = "schedule" if o["alpha_bar"] is None else f"{o['alpha_bar']:g}"
        lines.append(f"one-step: t={o['timestep']:g}, alpha_bar_T={ab}, prediction={o['prediction_type']}")
    else:
        lines.append("one-step: not a WaDi student (no one-step metadata)")
    for k, v in sorted(s["metadata"].items()):
        lines.append(f"{k}: {v if len(v) < 200 else v[:197] + '...'}")
    return "\n".join(lines)


def summary_json(info: LoRaDInfo) -> str:
    return json.dumps(info.summary(), sort_keys=True)
