"""The one place that knows the PEFT API: LoRA/DoRA baselines for the adapter ablation.

PEFT can hold several named adapters on one model: ``inject_adapter_in_model`` is
called once per name (student, fake) on exact module names, and every tuner
layer's active set is switched with ``set_adapter`` / ``enable_adapters``.  Those
calls also flip ``requires_grad`` of adapter weights as a side effect, so
:func:`activate` restores the trainable flags the trainer set, leaving the
student and fake trainable whichever view is active.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["inject_lora", "tuner_layers", "activate", "named_params", "PEFT_PARAM_MARKERS"]

# Sub-module names PEFT adds inside a wrapped layer (used to keep them out of other target sets).
PEFT_PARAM_MARKERS = ("lora_A", "lora_B", "lora_magnitude_vector", "lora_embedding_A", "lora_embedding_B")


def inject_lora(model: nn.Module, adapter: str, module_names: Sequence[str], rank: int, alpha: float,
                dora: bool, seed: int) -> None:
    """Add LoRA (or DoRA) adapter ``adapter`` to exactly ``module_names``; B = 0 so the model is unchanged."""
    from peft import LoraConfig, inject_adapter_in_model

    if not module_names:
        raise ValueError(f"adapter {adapter!r}: no target modules")
    cfg = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=list(module_names), use_dora=dora,
                     lora_dropout=0.0, bias="none")
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.manual_seed(seed)  # PEFT draws A's Kaiming init from the global generator
        warnings.filterwarnings("ignore", message=".*multiple adapters.*")
        inject_adapter_in_model(cfg, model, adapter_name=adapter)


def tuner_layers(model: nn.Module) -> list[nn.Module]:
    """PEFT's adapter-holding layers of ``model`` (cache the list: it is walked on every view switch)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def activate(layers: Sequence[nn.Module], adapter: str | None, trainable: Sequence[nn.Parameter] = ()) -> None:
    """Make ``adapter`` the only active PEFT adapter of ``layers`` (None: all off = the base model)."""
    for layer in layers:
        if adapter is None:
            layer.enable_adapters(False)
        else:
            layer.enable_adapters(True)
            layer.set_adapter([adapter])
    for p in trainable:
        p.requires_grad_(True)


def named_params(model: nn.Module, adapter: str) -> dict[str, nn.Parameter]:
    """``{parameter name: parameter}`` of one PEFT adapter, in module order."""
    out = {}
    for name, p in model.named_parameters():
        parts = name.split(".")
        if adapter in parts and any(m in parts for m in PEFT_PARAM_MARKERS):
            out[name] = p
    return out
