"""LoRaD: rotate each weight row's input-column pairs by low-rank angles.

Layers (bottom up): ``functional`` (pure math) -> ``autograd`` (memory-lean
fused op) -> ``layer`` (modules) -> ``inject`` (apply to model trees) ->
file format, key maps, converters and analysis.  Torch (and safetensors for
files) only: nothing here imports ComfyUI or Gradio.
"""

from . import functional, inject  # modules (``lorad.inject.inject(...)`` adds an adapter)
from .functional import angles, rotate, wrap_angles
from .inject import (
    active_adapters,
    adapter_state,
    count_parameters,
    load_adapter_state,
    merge,
    remove,
    set_active,
    unmerge,
)
from .layer import LoRaDAngles, LoRaDLayer
from .presets import PRESETS, Targets

__all__ = [
    "functional",
    "angles",
    "rotate",
    "wrap_angles",
    "inject",
    "set_active",
    "active_adapters",
    "merge",
    "unmerge",
    "remove",
    "adapter_state",
    "load_adapter_state",
    "count_parameters",
    "LoRaDLayer",
    "LoRaDAngles",
    "PRESETS",
    "Targets",
]
