"""ScaleCrafter re-dilation: which convolutions, and that a dilated kernel sees the training scale."""

from __future__ import annotations

import torch
from torch import nn
from wadi_lorad.nodes.redilate import ReDilatedConv, Switch, block_levels, dilation_factor, select_convs


def sd15_like_convs():
    """ldm names of SD1.5's UNet convolutions (channel_mult [1,2,4,4], 2 res blocks per level)."""
    names = ["input_blocks.0.0"]
    for i in [1, 2, 4, 5, 7, 8, 10, 11]:
        names += [f"input_blocks.{i}.0.in_layers.2", f"input_blocks.{i}.0.out_layers.3"]
    names += ["input_blocks.3.0.op", "input_blocks.6.0.op", "input_blocks.9.0.op"]
    names += ["middle_block.0.in_layers.2", "middle_block.2.out_layers.3"]
    for j in range(12):
        names += [f"output_blocks.{j}.0.in_layers.2", f"output_blocks.{j}.0.skip_connection"]
    names += ["output_blocks.2.1.conv", "output_blocks.5.2.conv", "output_blocks.8.2.conv", "input_blocks.1.1.proj_in"]
    convs = []
    for n in names:
        k = 1 if n.endswith(("skip_connection", "proj_in")) else 3
        s = 2 if n.endswith(".op") else 1
        convs.append((n, nn.Conv2d(4, 4, k, stride=s, padding=k // 2)))
    return convs


def test_levels_follow_the_ldm_layout():
    inp, out = block_levels([1, 2, 4, 4], 2)
    assert [inp[i] for i in range(12)] == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3]
    assert [out[j] for j in range(12)] == [3, 3, 3, 2, 2, 2, 1, 1, 1, 0, 0, 0]


def test_selection_skips_outer_level_strided_and_1x1():
    chosen = set(select_convs(sd15_like_convs(), [1, 2, 4, 4], 2, min_level=1))
    assert "input_blocks.1.0.in_layers.2" not in chosen and "input_blocks.0.0" not in chosen  # level 0
    assert "input_blocks.4.0.in_layers.2" in chosen and "middle_block.0.in_layers.2" in chosen
    assert not any(n.endswith((".op", "skip_connection", "proj_in")) for n in chosen)
    assert "output_blocks.8.2.conv" not in chosen  # upsampler into level 0 runs at full size
    assert "output_blocks.5.2.conv" in chosen and "output_blocks.9.0.in_layers.2" not in chosen
    assert len(select_convs(sd15_like_convs(), [1, 2, 4, 4], 2, min_level=0)) > len(chosen)


@torch.no_grad()
def test_dilated_kernel_on_upsampled_input_equals_original_kernel():
    """On a 2x nearest-upsampled map, dilation 2 samples exactly the pixels the 1x kernel saw."""
    conv = nn.Conv2d(3, 5, 3, padding=1)
    x = torch.randn(1, 3, 10, 12)
    up = x.repeat_interleave(2, -1).repeat_interleave(2, -2)
    fwd = ReDilatedConv(conv, conv._conv_forward, 2.0, Switch(0.0))
    out = fwd(up, conv.weight, conv.bias)
    assert out.shape == up.shape[:1] + (5,) + up.shape[2:]
    assert torch.allclose(out[..., 2:-2:2, 2:-2:2], conv(x)[..., 1:-1, 1:-1], atol=1e-5)


@torch.no_grad()
def test_switch_and_fractional_factor():
    conv = nn.Conv2d(2, 2, 3, padding=1)
    x = torch.randn(1, 2, 9, 9)
    sw = Switch(above_t=700.0)
    fwd = ReDilatedConv(conv, conv._conv_forward, 1.5, sw)
    sw.update(torch.tensor([500.0]))
    assert torch.equal(fwd(x, conv.weight, conv.bias), conv(x))  # below above_t: the original conv
    sw.update(torch.tensor([999.0]))
    y = fwd(x, conv.weight, conv.bias)
    assert y.shape == conv(x).shape and not torch.allclose(y, conv(x))
    assert dilation_factor(1024, 1024, 512) == 2.0 and dilation_factor(768, 768, 512) == 1.5
