"""Read a ``.lorad.safetensors`` for the nodes: ``lorad.io`` does the reading and validation;
this adapts its result to what the nodes show and pass on (one-step settings, summary text).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from torch import Tensor

from ..lorad import io as lorad_io


class LoRaDReadError(ValueError):
    """A ``.lorad`` file that cannot be used; the message names file, key and expectation."""


@dataclass(frozen=True)
class OneStep:
    """How to sample: evaluate at ``timestep`` with ``alpha_bar`` (None: the schedule's value).

    The WADI_ONESTEP socket carries this; a file without one-step metadata gives the default
    (t = 999 with the model's own schedule).
    """

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
        return {
            "file": os.path.basename(self.path),
            "layers": len(self.layers),
            "dense_layers": sum("theta" in v for v in self.layers.values()),
            "rank": self.rank,
            "arch": self.arch,
            "onestep": self.onestep.as_dict() if self.onestep else None,
            "metadata": dict(self.metadata),
        }


def read_lorad(path: str, header_only: bool = False) -> LoRaDInfo:
    """Read and validate (``lorad.io.load_lorad``); raises :class:`LoRaDReadError`.

    Factors stay in the file's dtype (the adapter casts each to float32 when it rotates), so
    a loaded file costs its own size, not an fp32 copy.  ``header_only``: metadata, names and
    shapes from the safetensors header alone (the info panel), no tensor read or hash.
    """
    try:
        f = lorad_io.load_lorad(path, dtype=None, header_only=header_only)
    except (lorad_io.LoRaDFileError, ValueError) as e:
        raise LoRaDReadError(str(e) if str(path) in str(e) else f"{path}: {e}") from e
    return info_of(f)


def info_of(f: lorad_io.LoRaDFile) -> LoRaDInfo:
    """What the nodes keep of a validated file (also used for files that came in through the stock loader)."""
    path = str(f.path)
    try:
        step = f.one_step  # parses (and checks) the wadi.* keys
    except ValueError as e:
        raise LoRaDReadError(str(e) if path in str(e) else f"{path}: {e}") from e
    onestep = None if step is None else OneStep(float(step.timestep), float(step.alpha_bar_T), step.prediction_type)
    return LoRaDInfo(path, dict(f.layers), dict(f.metadata), f.arch or None, f.rank, onestep)


_SKIP = ("modelspec.hash_sha256", "lorad.rank_pattern", "lorad.layout")


def summary_text(info: LoRaDInfo) -> str:
    """Human-readable metadata block (Info node output, web panel)."""
    s = info.summary()
    lines = [f"file: {s['file']}", f"base arch: {s['arch'] or 'unknown'}",
             f"layers: {s['layers']} ({s['dense_layers']} dense)", f"rank: {s['rank'] if s['rank'] else 'mixed/dense'}"]
    if s["onestep"]:
        o = s["onestep"]
        ab = "schedule" if o["alpha_bar"] is None else f"{o['alpha_bar']:g}"
        lines.append(f"one-step: t={o['timestep']:g}, alpha_bar_T={ab}, prediction={o['prediction_type']}")
    else:
        lines.append("one-step: not a WaDi student (no one-step metadata)")
    for k, v in sorted(s["metadata"].items()):
        if k not in _SKIP:
            lines.append(f"{k}: {v if len(v) < 200 else v[:197] + '...'}")
    return "\n".join(lines)
