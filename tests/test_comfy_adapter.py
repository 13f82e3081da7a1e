"""LoRaDAdapter (ComfyUI weight adapter) against lorad.functional: bit-exact, in place, offsets."""

from __future__ import annotations

import math

import comfy_env
import pytest
import torch
from wadi_lorad.lorad import functional as LF

comfy_env.comfy_for_tests()
from wadi_lorad.nodes import adapter as AD  # noqa: E402


def factors(out, pairs, r=3, seed=0, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, r, generator=g) * scale, torch.randn(r, pairs, generator=g) * scale


def ident(a):
    return a


@pytest.mark.parametrize("shape", [(16, 10), (8, 4, 3, 3), (6, 2, 1, 1)])
@pytest.mark.parametrize("strength", [1.0, 0.5, -1.3, 0.0])
def test_calculate_weight_is_lorad_rotate_bit_exact(shape, strength):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    a, b = factors(shape[0], math.prod(shape[1:]) // 2)
    ad = AD.LoRaDAdapter(set(), (a, b))
    target = w.clone()
    out = ad.calculate_weight(target, "k", strength, 1.0, None, ident)
    assert out is target  # in place: ComfyUI keeps the outer tensor for fused (offset) weights
    want = LF.rotate(w, LF.angles(a, b), strength)
    assert torch.equal(out, want)
    if strength == 0:
        assert torch.equal(out, w)
    rn = LF.row_norms(out) / LF.row_norms(w)
    assert torch.allclose(rn, torch.ones_like(rn), atol=1e-5)  # a rotation keeps every row norm


def test_fp16_weight_rotated_in_fp32_like_the_trainer():
    w = torch.randn(12, 8).half()
    a, b = factors(12, 4)
    out = AD.LoRaDAdapter(set(), (a, b)).calculate_weight(w.clone(), "k", 0.7, 1.0, None, ident)
    assert out.dtype == torch.float16
    assert torch.equal(out, LF.rotate(w, LF.angles(a, b), 0.7))


def test_dense_theta_and_sign_of_rotation():
    w = torch.tensor([[1.0, 0.0, 0.0, 2.0]])
    theta = torch.tensor([[math.pi / 2, math.pi / 2]])
    out = AD.LoRaDAdapter(set(), (theta,)).calculate_weight(w.clone(), "k", 1.0, 1.0, None, ident)
    # pair (a, b) -> (cos a - sin b, sin a + cos b): (1, 0) -> (0, 1); (0, 2) -> (-2, 0)
    assert torch.allclose(out, torch.tensor([[0.0, 1.0, -2.0, 0.0]]), atol=1e-6)


def test_offset_rows_rotate_in_place_and_nothing_else():
    """PixArt's fused qkv: ComfyUI narrows to the rows and keeps the OUTER tensor."""
    hidden = 6
    qkv = torch.randn(3 * hidden, 8)
    a, b = factors(hidden, 4)
    ad = AD.LoRaDAdapter(set(), (a, b))
    outer = qkv.clone()
    view = outer.narrow(0, hidden, hidden)  # "to_k": (dim 0, start hidden, length hidden)
    ad.calculate_weight(view, "qkv", 1.0, 1.0, (0, hidden, hidden), ident)
    assert torch.equal(outer[:hidden], qkv[:hidden]) and torch.equal(outer[2 * hidden:], qkv[2 * hidden:])
    assert torch.equal(outer[hidden:2 * hidden], LF.rotate(qkv[hidden:2 * hidden], LF.angles(a, b)))


def test_function_is_applied_to_the_update():
    w = torch.randn(4, 6)
    a, b = factors(4, 3)
    out = AD.LoRaDAdapter(set(), (a, b)).calculate_weight(w.clone(), "k", 1.0, 1.0, None, lambda d: 0.5 * d)
    want = w + 0.5 * (LF.rotate(w, LF.angles(a, b)) - w)
    assert torch.allclose(out, want, atol=1e-6)


def test_shape_mismatch_is_logged_and_weight_kept(caplog):
    w = torch.randn(4, 6)
    a, b = factors(5, 3)
    out = AD.LoRaDAdapter(set(), (a, b)).calculate_weight(w.clone(), "diffusion_model.x.weight", 1.0, 1.0, None, ident)
    assert torch.equal(out, w)
    assert "diffusion_model.x.weight" in caplog.text


def test_load_claims_only_lorad_keys():
    sd = {"x.lorad_A": torch.zeros(4, 2), "x.lorad_B": torch.zeros(2, 3), "y.lorad_theta": torch.zeros(4, 3),
          "z.lora_up.weight": torch.zeros(4, 2), "z.lora_down.weight": torch.zeros(2, 6), "w.lorad_A": torch.zeros(4, 2)}
    keys: set[str] = set()
    x = AD.LoRaDAdapter.load("x", sd, None, None, keys)
    y = AD.LoRaDAdapter.load("y", sd, None, None, keys)
    assert x is not None and len(x.weights) == 2 and y is not None and len(y.weights) == 1
    assert AD.LoRaDAdapter.load("z", sd, None, None, keys) is None  # a LoRA is not ours
    assert AD.LoRaDAdapter.load("w", sd, None, None, keys) is None  # A without B is incomplete
    assert keys == {"x.lorad_A", "x.lorad_B", "y.lorad_theta"}


def test_register_is_idempotent():
    from comfy import weight_adapter

    AD.register()
    before = list(weight_adapter.adapters)
    assert AD.register() is False
    assert weight_adapter.adapters == before
    assert sum(getattr(c, "name", "") == "lorad" for c in weight_adapter.adapters) == 1
    assert "lorad" not in {c.name for c in weight_adapter.adapter_maps.values()}  # not in the Train LoRA node


@pytest.mark.comfyui
@pytest.mark.skipif(comfy_env.MODE != "real", reason="needs a real ComfyUI (COMFYUI_DIR) for comfy.lora.calculate_weight")
def test_through_comfy_calculate_weight_with_lora_stacked_before():
    """ComfyUI's own patch loop: a LoRA diff first, then the LoRaD rotation, on a fused offset."""
    import comfy.lora

    qkv = torch.randn(12, 8)
    a, b = factors(4, 4)
    diff = torch.randn(12, 8) * 0.1
    patches = [(1.0, ("diff", (diff,)), 1.0, None, None), (0.8, AD.LoRaDAdapter(set(), (a, b)), 1.0, (0, 4, 4), None)]
    out = comfy.lora.calculate_weight(patches, qkv.clone(), "qkv")
    want = qkv + diff
    want[4:8] = LF.rotate(want[4:8], LF.angles(a, b), 0.8)
    assert torch.equal(out, want)
