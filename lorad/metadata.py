"""``.lorad.safetensors`` metadata: key names, builder and parsers (all values are strings).

Three groups (docs/lorad-format.md, "Metadata"):

* ``lorad.*`` - the format itself: version, architecture id, rank(s), pairing,
  target preset, counts, and free-form ``lorad.provenance.<name>`` entries.
* ``wadi.*`` - present on a WaDi one-step student: the timestep, the
  ``alpha_bar_T`` used by its x0 formula, and the prediction type.
* ``modelspec.*`` (Stability ModelSpec 1.0.1) and a minimal ``ss_network_*`` pair
  so model browsers and indexers (A1111, Civitai) can list the file.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath, PureWindowsPath
from typing import Any

from .archs import get_arch

__all__ = [
    "FORMAT_VERSION",
    "SUPPORTED_MAJOR",
    "PAIRING",
    "IMPLEMENTATION",
    "K_VERSION",
    "K_ARCH",
    "K_RANK",
    "K_RANK_PATTERN",
    "K_PAIRING",
    "K_PRESET",
    "K_NUM_LAYERS",
    "K_NUM_PARAMS",
    "K_TIMESTEP",
    "K_ALPHA_BAR",
    "K_PREDICTION",
    "K_HASH",
    "K_LAYOUT",
    "PROVENANCE_PREFIX",
    "PREDICTION_TYPES",
    "OneStep",
    "parse_one_step",
    "parse_version",
    "build_metadata",
    "stringify",
    "shareable",
]

FORMAT_VERSION = "1.0"
SUPPORTED_MAJOR = 1
# Within each output row, flattened input elements (2k, 2k+1) form the rotated pair.
PAIRING = "adjacent"
IMPLEMENTATION = "https://github.com/comfyui-wadi/ComfyUI-WaDi"

K_VERSION = "lorad.format_version"
K_ARCH = "lorad.architecture"
K_RANK = "lorad.rank"
K_RANK_PATTERN = "lorad.rank_pattern"
K_PAIRING = "lorad.pairing"
K_PRESET = "lorad.target_preset"
K_NUM_LAYERS = "lorad.num_layers"
K_NUM_PARAMS = "lorad.num_params"
K_TIMESTEP = "wadi.timestep"
K_ALPHA_BAR = "wadi.alpha_bar_T"
K_PREDICTION = "wadi.prediction_type"
K_HASH = "modelspec.hash_sha256"
K_LAYOUT = "lorad.layout"  # JSON; only for denoisers shaped unlike the architecture's full-size config
PROVENANCE_PREFIX = "lorad.provenance."

# diffusers scheduler spelling -> ModelSpec spelling
PREDICTION_TYPES = {"epsilon": "epsilon", "v_prediction": "v", "sample": "sample"}

# ModelSpec fields a caller may pass as keyword arguments to build_metadata.
_MODELSPEC_EXTRA = (
    "description", "author", "license", "usage_hint", "tags", "thumbnail", "trigger_phrase",
    "merged_from", "implementation_version", "date", "resolution",
)
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def stringify(value: Any) -> str:
    """Metadata values are strings: str as is, everything else as JSON (floats keep full precision)."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


@dataclass(frozen=True)
class OneStep:
    """How a WaDi student generates: one eps prediction at ``timestep`` mapped to x0 with ``alpha_bar_T``."""

    timestep: int
    alpha_bar_T: float
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        if not 0 <= int(self.timestep) < 10000:
            raise ValueError(f"one_step.timestep must be a training timestep >= 0, got {self.timestep}")
        if not 0.0 < float(self.alpha_bar_T) < 1.0:
            raise ValueError(f"one_step.alpha_bar_T must be in (0, 1), got {self.alpha_bar_T}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"one_step.prediction_type must be one of {sorted(PREDICTION_TYPES)}, got {self.prediction_type!r}"
            )

    def to_metadata(self) -> dict[str, str]:
        return {
            K_TIMESTEP: str(int(self.timestep)),
            K_ALPHA_BAR: repr(float(self.alpha_bar_T)),
            K_PREDICTION: self.prediction_type,
        }


def parse_one_step(md: Mapping[str, str]) -> OneStep | None:
    """The ``wadi.*`` one-step parameters, or None if the file is not a one-step student.

    Raises ValueError naming the key when present but malformed or incomplete.
    """
    keys = (K_TIMESTEP, K_ALPHA_BAR, K_PREDICTION)
    present = [k for k in keys if k in md]
    if not present:
        return None
    missing = [k for k in keys if k not in md]
    if missing:
        raise ValueError(f"one-step metadata incomplete: {missing} missing (have {present})")
    try:
        t = int(md[K_TIMESTEP])
    except ValueError:
        raise ValueError(f"{K_TIMESTEP}={md[K_TIMESTEP]!r} is not an integer") from None
    try:
        ab = float(md[K_ALPHA_BAR])
    except ValueError:
        raise ValueError(f"{K_ALPHA_BAR}={md[K_ALPHA_BAR]!r} is not a number") from None
    return OneStep(t, ab, md[K_PREDICTION])


def parse_version(value: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)\.(\d+)", value.strip())
    if not m:
        raise ValueError(f"format version {value!r} is not 'MAJOR.MINOR'")
    return int(m.group(1)), int(m.group(2))


def _one_step(one_step: OneStep | Mapping[str, Any] | None) -> OneStep | None:
    if one_step is None or isinstance(one_step, OneStep):
        return one_step
    unknown = set(one_step) - {"timestep", "alpha_bar_T", "prediction_type"}
    if unknown:
        raise ValueError(f"one_step: unknown fields {sorted(unknown)} (timestep, alpha_bar_T, prediction_type)")
    if "timestep" not in one_step or "alpha_bar_T" not in one_step:
        raise ValueError("one_step needs 'timestep' and 'alpha_bar_T'")
    return OneStep(int(one_step["timestep"]), float(one_step["alpha_bar_T"]),
                   str(one_step.get("prediction_type", "epsilon")))


def shareable(value: Any) -> Any:
    """A file travels without its author's folders: a path (``Path``, or a string with a folder part that is
    not a URL) becomes its last component, e.g. ``/home/me/models/sd15`` -> ``sd15``; hashes identify it."""
    if isinstance(value, PurePath):
        return value.name
    if isinstance(value, str) and _PATH.match(value) and "://" not in value:
        return PureWindowsPath(value).name if "\\" in value else Path(value).name
    return value


# Absolute (/x, ~/x, C:\x, \\server), explicitly relative (./x, ../x), or a separator without spaces (runs/a.txt);
# prompt texts with a slash ("a cat / a dog") have spaces and stay as they are.
_PATH = re.compile(r"^(?:[/~]|[A-Za-z]:[\\/]|\\\\|\.\.?[\\/])|^[^\s]*[\\/][^\s]*$")


def build_metadata(
    *,
    arch: str,
    rank: int | None,
    target_preset: str,
    title: str,
    one_step: OneStep | Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, str]:
    """Metadata for a new file.  ``rank=None`` means mixed ranks or dense angles.

    ``provenance`` entries (``steps``, ``student_lr``, ``fake_lr``, ``teacher_cfg``,
    ``seed``, ``base_model_sha256``, ...) become ``lorad.provenance.<name>``.
    Keyword arguments named like ModelSpec fields (``description``, ``author``,
    ``license``, ``usage_hint``, ``tags``, ``thumbnail``, ``trigger_phrase``, ...)
    become ``modelspec.<name>``; any other becomes ``lorad.<name>``.
    ``save_lorad`` adds the counts, the rank pattern and ``modelspec.hash_sha256``.
    """
    spec = get_arch(arch)
    if not title or not str(title).strip():
        raise ValueError("title must be a non-empty string (ModelSpec requires modelspec.title)")
    if rank is not None and (not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a positive int or None (mixed/dense), got {rank!r}")
    step = _one_step(one_step)
    pred = step.prediction_type if step else spec.prediction_type
    md: dict[str, str] = {
        K_VERSION: FORMAT_VERSION,
        K_ARCH: spec.id,
        K_RANK: str(rank) if rank is not None else "mixed",
        K_PAIRING: PAIRING,
        K_PRESET: str(target_preset),
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": spec.modelspec_adapter,
        "modelspec.implementation": IMPLEMENTATION,
        "modelspec.title": str(title),
        "modelspec.date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "modelspec.resolution": f"{spec.resolution}x{spec.resolution}",
        "modelspec.prediction_type": PREDICTION_TYPES[pred],
        "ss_network_module": "lorad",
        "ss_network_dim": str(rank) if rank is not None else "0",
    }
    if step is not None:
        md.update(step.to_metadata())
        md["modelspec.timestep_range"] = f"{step.timestep},{step.timestep}"
        md.setdefault("modelspec.usage_hint", f"one-step student: 1 step at t={step.timestep}, CFG 1")
    for name, value in (provenance or {}).items():
        if not _NAME.match(str(name)):
            raise ValueError(f"provenance name {name!r} must be letters, digits, '_', '.', '-'")
        md[PROVENANCE_PREFIX + str(name)] = stringify(shareable(value))
    for name, value in extra.items():
        if value is None:
            continue
        key = f"modelspec.{name}" if name in _MODELSPEC_EXTRA else f"lorad.{name}"
        md[key] = stringify(value)
    return md
