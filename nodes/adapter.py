"""``LoRaDAdapter``: ComfyUI ``WeightAdapterBase`` that rotates a weight by strength * theta.

This is the one module that knows ComfyUI's (internal, unversioned) weight-adapter
API.  ``comfy.lora.calculate_weight`` calls :meth:`calculate_weight` with the
weight as float32 copy (normal patching) or in the compute dtype (lowvram's
``LowVramPatch`` on every forward); fused weights arrive narrowed to the adapter's
rows (``offset``) and the result must be written IN PLACE because ComfyUI then
keeps the outer tensor.  The rotation itself is ``lorad.functional.rotate`` (what
the trainer merges with), so patched weights are bit-identical to the trainer's.
"""

from __future__ import annotations

import logging

import torch
from comfy import model_management
from comfy import weight_adapter as _wa
from comfy.weight_adapter import WeightAdapterBase

from ..lorad import functional as LF

log = logging.getLogger("wadi")

NAME = "lorad"


def _is_identity(function) -> bool:
    """ComfyUI passes ``lambda a: a`` when no function is set; probe instead of trusting names."""
    if function is None:
        return True
    probe = torch.zeros(0)
    try:
        return function(probe) is probe
    except Exception:  # a function that cannot take an empty tensor is certainly not the identity
        return False


def rotate_into(weight: torch.Tensor, theta: torch.Tensor, strength: float, function=None, key: str = "weight") -> torch.Tensor:
    """Rotate ``weight`` by ``strength * theta`` in place (fp32 math); returns ``weight``.

    With a ComfyUI ``function`` (a transform of the update) the update
    ``function(W_rot - W)`` is added instead, as other adapters do.
    """
    if strength == 0:
        return weight
    with torch.no_grad():
        rotated = LF.rotate(weight, theta, strength, name=key)
        if _is_identity(function):
            weight.copy_(rotated)
        else:
            weight += function(LF.up(rotated) - LF.up(weight)).to(weight.dtype)
    return weight


class LoRaDAdapter(WeightAdapterBase):
    """Weights: ``(A, B)`` (theta = wrap(A @ B)) or ``(theta,)`` dense."""

    name = NAME

    def __init__(self, loaded_keys: set[str], weights: tuple[torch.Tensor, ...]):
        self.loaded_keys = loaded_keys
        self.weights = weights

    @classmethod
    def load(cls, x: str, lora: dict, alpha=None, dora_scale=None, loaded_keys: set[str] | None = None):
        """Claim ``{x}.lorad_A`` + ``{x}.lorad_B`` or ``{x}.lorad_theta`` (None if absent)."""
        loaded_keys = set() if loaded_keys is None else loaded_keys
        a_name, b_name, t_name = f"{x}.lorad_A", f"{x}.lorad_B", f"{x}.lorad_theta"
        if t_name in lora:
            loaded_keys.add(t_name)
            return cls(loaded_keys, (lora[t_name],))
        if a_name in lora and b_name in lora:
            loaded_keys.update((a_name, b_name))
            return cls(loaded_keys, (lora[a_name], lora[b_name]))
        return None

    def angles(self, device: torch.device) -> torch.Tensor:
        """Unscaled theta in float32 on ``device`` (the factors are cast first, as ComfyUI adapters do)."""
        ts = [model_management.cast_to_device(t, device, torch.float32) for t in self.weights]
        return LF.angles(ts[0], ts[1]) if len(ts) == 2 else ts[0]

    def calculate_weight(
        self,
        weight,
        key,
        strength,
        strength_model,
        offset,
        function,
        intermediate_dtype=torch.float32,
        original_weight=None,
    ):
        try:
            rotate_into(weight, self.angles(weight.device), float(strength), function, key=str(key))
        except Exception as e:  # ComfyUI's adapters log and keep the weight rather than kill the prompt
            log.error("LoRaD: cannot rotate %s: %s", key, e)
        return weight

    def to_train(self):
        raise NotImplementedError("LoRaD trains with the WaDi trainer (wadi distill), not ComfyUI's Train LoRA node")


def register() -> bool:
    """Make the stock LoraLoader load ``.lorad`` files (guarded, idempotent).

    Compared by name too, so a second copy of the pack (another folder name =
    another module) does not add a second class.  Not added to ``adapter_maps``:
    see docs/comfyui.md (Train LoRA node).
    """
    if any(getattr(c, "name", None) == NAME for c in _wa.adapters):
        return False
    _wa.adapters.append(LoRaDAdapter)
    return True
