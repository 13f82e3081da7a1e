"""Named target sets: which layers of a backbone get LoRaD.

The paper's sets (see docs/lorad-format.md), as its released code selects them:

* ``paper-student`` - SD UNets (1.5, 2.x, XL): every Linear whose path contains
  ``down_blocks``/``mid_block``/``up_blocks`` except ``conv_shortcut``.  PixArt:
  every Linear except under ``adaln_single`` (this reproduces the paper's 81.22M;
  the released code's every-Linear gives 82.56M).
* ``paper-fake`` - SD: the same minus ``proj_in``/``proj_out``/``time_emb_proj``.
  PixArt: Linear layers inside ``transformer_blocks``.
* ``all-linear`` - every Linear.
* ``blocks-linear-conv`` / ``all-linear-conv`` - beyond the paper: the student set plus the
  blocks' Conv2d layers / every Linear and Conv2d (conv_in, conv_out and the time embedding too).

A user preset is a :class:`Targets` made of regular expressions matched against
full module names (``re.search``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch import nn

__all__ = ["Targets", "PRESETS", "family_of", "resolve_targets", "match_modules"]


@dataclass(frozen=True)
class Targets:
    """Layers to adapt: module types plus include/exclude regexes on the full name."""

    include: tuple[str, ...] = (r".",)
    exclude: tuple[str, ...] = ()
    types: tuple[type[nn.Module], ...] = (nn.Linear,)
    description: str = ""

    def matches(self, name: str, module_type: type[nn.Module]) -> bool:
        if not issubclass(module_type, self.types):
            return False
        if not any(re.search(p, name) for p in self.include):
            return False
        return not any(re.search(p, name) for p in self.exclude)


_SD_BLOCKS = r"(^|\.)(down_blocks|mid_block|up_blocks)\."
_SD_STUDENT = Targets(include=(_SD_BLOCKS,), exclude=(r"conv_shortcut",), description="SD: Linear in down/mid/up blocks")
_SD_FAKE = Targets(
    include=(_SD_BLOCKS,),
    exclude=(r"conv_shortcut", r"\.proj_in$", r"\.proj_out$", r"\.time_emb_proj$"),
    description="SD: Linear in blocks minus proj_in/proj_out/time_emb_proj",
)
_DIT_STUDENT = Targets(exclude=(r"(^|\.)adaln_single\.",), description="DiT: every Linear except adaln_single")
_DIT_FAKE = Targets(include=(r"(^|\.)transformer_blocks\.",), description="DiT: Linear inside transformer_blocks")
_ALL = Targets(description="every Linear")
# Beyond the paper (which adapts Linear layers only): convolutions too.  In SD1.5 the block Linears
# hold most of the UNet's weights; in small UNets (the tiny world's) the convolutions dominate.
_SD_STUDENT_CONV = Targets(include=(_SD_BLOCKS,), exclude=(r"conv_shortcut",), types=(nn.Linear, nn.Conv2d),
                           description="SD: Linear and Conv2d in down/mid/up blocks")
_ALL_CONV = Targets(types=(nn.Linear, nn.Conv2d), description="every Linear and Conv2d")

# preset name -> family -> targets
PRESETS: dict[str, dict[str, Targets]] = {
    "paper-student": {"unet": _SD_STUDENT, "dit": _DIT_STUDENT},
    "paper-fake": {"unet": _SD_FAKE, "dit": _DIT_FAKE},
    "all-linear": {"unet": _ALL, "dit": _ALL},
    "blocks-linear-conv": {"unet": _SD_STUDENT_CONV, "dit": _ALL_CONV},
    "all-linear-conv": {"unet": _ALL_CONV, "dit": _ALL_CONV},
}


def family_of(model: nn.Module) -> str:
    """``"unet"`` for SD-style UNets, ``"dit"`` for PixArt-style transformers."""
    names = {n.split(".")[0] for n, _ in model.named_children()}
    if {"down_blocks", "up_blocks"} <= names:
        return "unet"
    if "transformer_blocks" in names:
        return "dit"
    raise ValueError(
        f"cannot tell the backbone family of {type(model).__name__} (children {sorted(names)}); "
        "pass explicit Targets"
    )


def resolve_targets(model: nn.Module, targets: str | Targets | Sequence[str]) -> Targets:
    """A preset name, a Targets, or a list of include regexes -> Targets."""
    if isinstance(targets, Targets):
        return targets
    if isinstance(targets, str):
        if targets not in PRESETS:
            raise KeyError(f"unknown target preset {targets!r}; presets: {sorted(PRESETS)}")
        return PRESETS[targets][family_of(model)]
    return Targets(include=tuple(targets), description="user patterns")


def match_modules(model: nn.Module, targets: Targets) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if name and targets.matches(name, type(module)):
            yield name, module

