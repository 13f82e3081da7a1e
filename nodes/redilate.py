"""ScaleCrafter-style re-dilation (training-free high resolution), pure torch.

Above its training resolution a UNet's 3x3 convolutions see too small a part of
the image, which repeats objects.  ScaleCrafter (He et al., ICLR 2024) dilates the
kernels of the deeper blocks by the resolution ratio during the early, high-noise
timesteps; a one-step student is evaluated at t=999 only, so it is dilated
throughout.  A fractional ratio d uses dilation ceil(d) on the feature map resized
by ceil(d)/d and resizes back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn


def block_levels(channel_mult: Sequence[int], num_res_blocks: Sequence[int] | int) -> tuple[dict[int, int], dict[int, int]]:
    """Resolution level (0 = full latent size) of every ldm ``input_blocks``/``output_blocks`` index.

    Mirrors the ldm UNet layout: input block 0 is conv_in; each level has
    ``num_res_blocks`` blocks then a downsampler (not after the last level); the
    output side has ``num_res_blocks + 1`` blocks per level, deepest first.
    """
    levels = len(channel_mult)
    nrb = [num_res_blocks] * levels if isinstance(num_res_blocks, int) else list(num_res_blocks)
    inp, out = {0: 0}, {}
    i = 1
    for lvl in range(levels):
        for _ in range(nrb[lvl]):
            inp[i] = lvl
            i += 1
        if lvl != levels - 1:
            inp[i] = lvl  # downsampler: its input is at this level (stride-2 convs are never dilated)
            i += 1
    j = 0
    for lvl in reversed(range(levels)):
        for _ in range(nrb[lvl] + 1):
            out[j] = lvl
            j += 1
    return inp, out


def _level(name: str, inp: dict[int, int], out: dict[int, int], deepest: int) -> int | None:
    parts = name.split(".")
    if parts[0] == "middle_block":
        return deepest
    if parts[0] in ("input_blocks", "output_blocks") and len(parts) > 1 and parts[1].isdigit():
        lvl = (inp if parts[0] == "input_blocks" else out).get(int(parts[1]))
        if lvl and parts[0] == "output_blocks" and parts[-1] == "conv" and len(parts) == 4 and parts[2] != "0":
            return lvl - 1  # an Upsample's conv runs after the 2x upsampling: one level shallower
        return lvl
    return None


def select_convs(
    convs: Iterable[tuple[str, nn.Conv2d]], channel_mult: Sequence[int], num_res_blocks: Sequence[int] | int,
    min_level: int = 1,
) -> list[str]:
    """Names of the stride-1 kxk (k > 1) convolutions at resolution level >= ``min_level``."""
    inp, out = block_levels(channel_mult, num_res_blocks)
    deepest = len(channel_mult) - 1
    chosen = []
    for name, m in convs:
        k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 2
        s = m.stride if isinstance(m.stride, tuple) else (m.stride,) * 2
        if max(k) < 2 or max(s) != 1 or m.groups != 1:
            continue
        lvl = _level(name, inp, out, deepest)
        if lvl is not None and lvl >= min_level:
            chosen.append(name)
    return chosen


def dilation_factor(width: int, height: int, train_resolution: int) -> float:
    """Side-length ratio of the target to the training resolution (ScaleCrafter's dilation)."""
    return math.sqrt(width * height) / float(train_resolution)


@dataclass
class Switch:
    """Shared on/off flag: set per UNet call from the timestep."""

    above_t: float
    active: bool = True

    def update(self, timesteps: Tensor) -> None:
        self.active = bool((timesteps.float() >= self.above_t).all())


class ReDilatedConv:
    """Replacement for a Conv2d's ``_conv_forward(input, weight, bias)`` (weights stay ComfyUI's)."""

    def __init__(self, conv: nn.Conv2d, original, factor: float, switch: Switch):
        self.kernel = conv.kernel_size
        self.groups = conv.groups
        self.original = original
        self.factor = factor
        self.switch = switch
        self.whole = max(1, math.ceil(factor - 1e-6))

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None, d: int) -> Tensor:
        pad = tuple(d * (k - 1) // 2 for k in self.kernel)
        return F.conv2d(x, weight, bias, 1, pad, d, self.groups)

    def __call__(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if not self.switch.active or self.factor <= 1.0:
            return self.original(x, weight, bias)
        if abs(self.factor - round(self.factor)) < 1e-6:
            return self._conv(x, weight, bias, int(round(self.factor)))
        h, w = x.shape[-2:]
        scale = self.whole / self.factor
        up = F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="bilinear", align_corners=False)
        y = self._conv(up, weight, bias, self.whole)
        return F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)


def redilate_module(root: nn.Module, names: Sequence[str], factor: float, switch: Switch) -> dict[str, ReDilatedConv]:
    """``{module name: replacement _conv_forward}`` for the chosen convs (nothing is modified here)."""
    out = {}
    for n in names:
        conv = root.get_submodule(n)
        out[n] = ReDilatedConv(conv, conv._conv_forward, factor, switch)
    return out
