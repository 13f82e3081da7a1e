"""``LoRaDAdapter``: ComfyUI ``WeightAdapterBase`` that rotates a weight by strength * wrap(theta).

This is the one module that knows ComfyUI's (internal, unversioned) weight-adapter
API.  ``comfy.lora.calculate_weight`` calls :meth:`calculate_weight` with the
weight as float32 copy (normal patching) or in the compute dtype (lowvram's
``LowVramPatch`` on every forward); fused weights arrive narrowed to the adapter's
rows (``offset``) and the result must be written IN PLACE because ComfyUI then
keeps the outer tensor.  What a layer means is ``lorad.layer_spec.LayerSpec`` (what
the trainer and ``lorad merge`` use), so patched weights are bit-identical to theirs.
"""

from __future__ import annotations

import logging

import torch
from comfy import weight_adapter as _wa
from comfy.weight_adapter import WeightAdapterBase

from ..lorad import functional
from ..lorad.layer_spec import LayerSpec
from . import stock_guard

log = logging.getLogger("wadi")

NAME = "lorad"


_IDENTITY_CODE = (lambda a: a).__code__


def _is_identity(function) -> bool:
    """True for no function, or one whose body is ``return a`` (ComfyUI's ``lambda a: a``).

    ComfyUI builds that lambda anew on every ``calculate_weight`` call, so identity of the
    object says nothing; its bytecode does.  Compared without calling it, so no probe tensor
    is made per weight.
    """
    if function is None:
        return True
    code = getattr(function, "__code__", None)
    return (code is not None and code.co_code == _IDENTITY_CODE.co_code and code.co_argcount == 1
            and not code.co_kwonlyargcount and not getattr(function, "__closure__", None))


def rotate_into(weight: torch.Tensor, spec: LayerSpec, strength: float, function=None) -> torch.Tensor:
    """Rotate ``weight`` by ``strength * wrap(theta)`` in place (fp32 math); returns ``weight``.

    With a ComfyUI ``function`` (a transform of the update) the update
    ``function(W_rot - W)`` is added instead, as other adapters do.
    """
    if strength == 0:
        return weight
    with torch.no_grad():
        if _is_identity(function):
            spec.rotate_(weight, strength)
        else:
            rotated = spec.rotated(weight, strength)
            weight += function(functional.up(rotated) - functional.up(weight)).to(weight.dtype)
    return weight


class LoRaDAdapter(WeightAdapterBase):
    """Weights: ``(A, B)`` (theta = wrap(A @ B)) or ``(theta,)`` dense."""

    name = NAME

    def __init__(self, loaded_keys: set[str], weights: tuple[torch.Tensor, ...], key: str = "layer"):
        self.loaded_keys = loaded_keys
        self.weights = weights
        # Structure checked here (complete pair, 2-D, one rank, float dtype); the whole
        # file was validated before any adapter is built (Load LoRaD and the stock loader).
        parts = {"theta": weights[0]} if len(weights) == 1 else {"A": weights[0], "B": weights[1]}
        self.spec = LayerSpec.from_parts(parts, key)

    @classmethod
    def load(cls, x: str, lora: dict, alpha=None, dora_scale=None, loaded_keys: set[str] | None = None):
        """Claim ``{x}.lorad_A`` + ``{x}.lorad_B`` or ``{x}.lorad_theta`` (None if absent).

        The stock loader asks this for every key of the model; the first question per
        ``load_lora`` call validates the whole file (``stock_guard``).  A refused file gets
        no adapter that changes a weight (its keys are claimed so ComfyUI does not list them
        once more).
        """
        loaded_keys = set() if loaded_keys is None else loaded_keys
        names = [n for n in (f"{x}.lorad_A", f"{x}.lorad_B", f"{x}.lorad_theta") if n in lora]
        check = stock_guard.verdict(lora, loaded_keys)
        if check is not None and not check.ok:
            loaded_keys.update(names)
            # ComfyUI keeps the last adapter that claims a key, and this one is asked last: a
            # no-op here stops a LoRA part of a refused file from being applied either.
            return _Refused(loaded_keys) if x in check.others else None
        if not names:
            return None
        t_name = f"{x}.lorad_theta"
        if t_name in lora:
            loaded_keys.add(t_name)
            return cls(loaded_keys, (lora[t_name],), x)
        if len(names) == 2:
            loaded_keys.update(names)
            return cls(loaded_keys, (lora[names[0]], lora[names[1]]), x)
        return None

    def angles(self, device: torch.device, strength: float = 1.0) -> torch.Tensor:
        """``strength * wrap(theta)`` in float32 on ``device`` (:meth:`LayerSpec.angles`)."""
        return self.spec.angles(strength, device)

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
            rotate_into(weight, self.spec.to(weight.device), float(strength), function)
        except Exception as e:  # ComfyUI's adapters log and keep the weight rather than kill the prompt
            log.error("LoRaD: cannot rotate %s: %s", key, e)
        return weight

    def to_train(self):
        raise NotImplementedError("LoRaD trains with the WaDi trainer (wadi distill), not ComfyUI's Train LoRA node")


class _Refused(WeightAdapterBase):
    """Stands in for any patch of a refused file: leaves the weight as it is."""

    name = NAME + "_refused"

    def __init__(self, loaded_keys: set[str]):
        self.loaded_keys = loaded_keys
        self.weights = ()

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        return weight


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
