"""Teacher, fake score and student as views of ONE frozen base model.

* ``lorad`` (default): LoRaD adapters "student" and "fake" are injected into the
  base denoiser with :mod:`lorad.inject`; a view is a choice of active adapters.
  Every Linear is computed once per forward (LoRaDLayer, no hooks).
* ``lora`` / ``dora``: the student is a PEFT LoRA/DoRA adapter on the same
  layers (:mod:`.peft_adapters`); the fake stays LoRaD (``fake_kind: lorad``, so an
  ablation changes the student only) or is PEFT too (``fake_kind: same``).
* ``fake_kind: full``: the fake score is a trainable float32 copy of the denoiser (DMD2's fake;
  beyond the paper).
* ``full``: the student is a trainable float32 copy of the denoiser.  This costs a
  second copy of the weights plus their gradients and two Adam moments (about
  16 bytes per parameter: ~14 GB for SD1.5's 860M, against ~1.3 GB for LoRaD's
  84M), which is why the paper's point is that LoRaD does not need it.

A view must stay active through the backward pass: with gradient checkpointing
the forward is recomputed in backward, and it must see the same adapters.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..lorad import inject
from ..lorad.presets import Targets, match_modules, resolve_targets
from . import peft_adapters
from .config import AdapterConfig

__all__ = ["Slot", "ModelViews", "build_views"]


@dataclass
class Slot:
    """One trainable model part (student or fake): its kind and named parameters."""

    kind: str  # lorad | lora | dora | full
    params: dict[str, nn.Parameter]

    def parameters(self) -> list[nn.Parameter]:
        return list(self.params.values())

    def num_params(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def state(self) -> dict[str, Tensor]:
        return {k: p.detach().clone() for k, p in self.params.items()}

    @torch.no_grad()
    def load_state(self, state: dict[str, Tensor], what: str) -> None:
        missing = sorted(set(self.params) - set(state))
        extra = sorted(set(state) - set(self.params))
        if missing or extra:
            raise ValueError(f"{what}: parameter names differ (missing {missing[:3]}, unexpected {extra[:3]})")
        for k, p in self.params.items():
            if tuple(state[k].shape) != tuple(p.shape):
                raise ValueError(f"{what}: {k} has shape {tuple(state[k].shape)}, expected {tuple(p.shape)}")
            p.copy_(state[k])


class _ThroughPeft(Targets):
    """Targets matched on the original layer name when PEFT has wrapped it (``x.base_layer`` -> ``x``)."""

    def matches(self, name: str, module_type: type[nn.Module]) -> bool:
        parts = name.split(".")
        if any(m in parts for m in peft_adapters.PEFT_PARAM_MARKERS):
            return False  # PEFT's own lora_A/lora_B Linears are never LoRaD targets
        if name.endswith(".base_layer"):
            name = name[: -len(".base_layer")]
        return super().matches(name, module_type)


class ModelViews:
    """Context managers that yield the module to call for the teacher, the fake and the student."""

    def __init__(self, base: nn.Module, student_module: nn.Module, student: Slot, fake: Slot,
                 fake_module: nn.Module | None = None) -> None:
        self.base = base
        self.student_module = student_module
        self.fake_module = fake_module if fake_module is not None else base
        self.student = student
        self.fake = fake
        self._trainable = student.parameters() + fake.parameters()
        self._current: tuple[str | None, str | None] = (None, None)
        self._lorad_named_layers = list(inject.lorad_layers(base))
        self._lorad_layers = [layer for _, layer in self._lorad_named_layers]
        self._peft = student.kind in ("lora", "dora") or fake.kind in ("lora", "dora")
        self._tuner_layers = peft_adapters.tuner_layers(base) if self._peft else []

    def student_param_groups(self, conv_lr_scale: float = 1.0) -> list:
        """The student's parameters for its optimizer: one group, or (LoRaD with ``conv_lr_scale`` != 1)
        the adapters of Conv2d layers in a second group at ``conv_lr_scale`` times the lr.

        Why a separate rate: the one-step output x0 = (z - sqrt(1 - abar_T) eps) / sqrt(abar_T)
        amplifies eps errors 14.6x, and the convolutions carry the noise z through the UNet, so a
        rotation step that suits the attention layers (lr 3e-3) wrecks the image when it hits a
        convolution (measured on the tiny world: FD 917 -> 2112 in 3 steps).
        """
        params = self.student.parameters()
        if conv_lr_scale == 1.0 or self.student.kind != "lorad":
            return params
        convs = {name for name, layer in self._lorad_named_layers if issubclass(layer.base_type, nn.Conv2d)}
        is_conv = [k.rsplit(".", 1)[0] in convs for k in self.student.params]
        groups = [{"params": [p for p, c in zip(params, is_conv) if not c], "lr_scale": 1.0},
                  {"params": [p for p, c in zip(params, is_conv) if c], "lr_scale": conv_lr_scale}]
        return [g for g in groups if g["params"]]

    def _set(self, lorad_name: str | None, peft_name: str | None) -> None:
        # Views switch ~6 times per step: use the cached layer list instead of walking the module tree.
        for layer in self._lorad_layers:
            layer.active = (lorad_name,) if lorad_name is not None and lorad_name in layer.lorad else ()
        if self._peft:
            peft_adapters.activate(self._tuner_layers, peft_name, self._trainable)

    @contextlib.contextmanager
    def _view(self, lorad_name: str | None, peft_name: str | None, module: nn.Module) -> Iterator[nn.Module]:
        before = self._current
        self._set(lorad_name, peft_name)
        self._current = (lorad_name, peft_name)
        try:
            yield module
        finally:
            self._set(*before)
            self._current = before

    def teacher(self) -> contextlib.AbstractContextManager[nn.Module]:
        return self._view(None, None, self.base)

    def student_view(self) -> contextlib.AbstractContextManager[nn.Module]:
        if self.student.kind == "full":
            return self._view(None, None, self.student_module)
        if self.student.kind == "lorad":
            return self._view("student", None, self.base)
        return self._view(None, "student", self.base)

    def fake_view(self) -> contextlib.AbstractContextManager[nn.Module]:
        if self.fake.kind == "full":
            return self._view(None, None, self.fake_module)
        if self.fake.kind == "lorad":
            return self._view("fake", None, self.base)
        return self._view(None, "fake", self.base)


def build_views(base: nn.Module, cfg: AdapterConfig) -> ModelViews:
    """Inject the student and fake adapters per ``cfg`` into ``base`` (frozen) and return the views."""
    kind = cfg.kind
    fake_kind = cfg.fake_kind if cfg.fake_kind in ("lorad", "full") else kind
    if cfg.fake_kind == "same" and kind == "full":
        raise ValueError("adapter.fake_kind: 'same' with a full fine-tuned student is ambiguous; "
                         "say fake_kind: full (a second trainable copy) or fake_kind: lorad")
    base.requires_grad_(False)
    # A full fake copies the base before any adapter is injected into it.
    fake_module = copy.deepcopy(base).float().requires_grad_(True) if fake_kind == "full" else None
    student_targets = resolve_targets(base, cfg.student_targets)
    fake_targets = resolve_targets(base, cfg.fake_targets)
    student_module = base
    if kind == "full":
        # The copy is float32: it holds the trained weights (master weights under mixed precision).
        student_module = copy.deepcopy(base).float()
        student_module.requires_grad_(True)
        student = Slot("full", dict(student_module.named_parameters()))
    elif kind == "lorad":
        inject.inject(base, "student", student_targets, rank=cfg.student_rank, seed=cfg.seed, freeze_base=False)
        student = Slot("lorad", inject.named_adapter_parameters(base, "student"))
    elif kind in ("lora", "dora"):
        names = [n for n, _ in match_modules(base, student_targets)]
        peft_adapters.inject_lora(base, "student", names, cfg.student_rank, cfg.lora_alpha, kind == "dora", cfg.seed)
        student = Slot(kind, peft_adapters.named_params(base, "student"))
    else:
        raise ValueError(f"adapter.kind: unknown {kind!r}; expected lorad, lora, dora or full")
    # The student may already have wrapped layers (PEFT): match the fake's targets on original names.
    t = _ThroughPeft(fake_targets.include, fake_targets.exclude, fake_targets.types, fake_targets.description)
    if fake_kind == "full":
        fake = Slot("full", dict(fake_module.named_parameters()))
    elif fake_kind == "lorad":
        inject.inject(base, "fake", t, rank=cfg.fake_rank, seed=cfg.seed + 1, freeze_base=False)
        fake = Slot("lorad", inject.named_adapter_parameters(base, "fake"))
    else:
        names = [n.removesuffix(".base_layer") for n, _ in match_modules(base, t)]
        peft_adapters.inject_lora(base, "fake", names, cfg.fake_rank, 0.0, fake_kind == "dora", cfg.seed + 1)
        fake = Slot(fake_kind, peft_adapters.named_params(base, "fake"))
    for p in student.parameters() + fake.parameters():
        p.requires_grad_(True)
    views = ModelViews(base, student_module, student, fake, fake_module)
    views._set(None, None)
    return views
