"""LoRaDAdapter (ComfyUI weight adapter) against lorad.functional: bit-exact, in place, offsets."""

from __future__ import annotations

import math

import comfy_env
import pytest
import torch
from wadi_lorad.lorad import functional

comfy_env.comfy_for_tests()
from wadi_lorad.nodes import adapter  # noqa: E402


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
    ad = adapter.LoRaDAdapter(set(), (a, b))
    target = w.clone()
    out = ad.calculate_weight(target, "k", strength, 1.0, None, ident)
    assert out is target  # in place: ComfyUI keeps the outer tensor for fused (offset) weights
    want = functional.rotate(w, functional.angles(a, b), strength)
    assert torch.equal(out, want)
    if strength == 0:
        assert torch.equal(out, w)
    rn = functional.row_norms(out) / functional.row_norms(w)
    assert torch.allclose(rn, torch.ones_like(rn), atol=1e-5)  # a rotation keeps every row norm


def test_fp16_weight_rotated_in_fp32_like_the_trainer():
    w = torch.randn(12, 8).half()
    a, b = factors(12, 4)
    out = adapter.LoRaDAdapter(set(), (a, b)).calculate_weight(w.clone(), "k", 0.7, 1.0, None, ident)
    assert out.dtype == torch.float16
    assert torch.equal(out, functional.rotate(w, functional.angles(a, b), 0.7))


def test_dense_theta_and_sign_of_rotation():
    w = torch.tensor([[1.0, 0.0, 0.0, 2.0]])
    theta = torch.tensor([[math.pi / 2, math.pi / 2]])
    out = adapter.LoRaDAdapter(set(), (theta,)).calculate_weight(w.clone(), "k", 1.0, 1.0, None, ident)
    # pair (a, b) -> (cos a - sin b, sin a + cos b): (1, 0) -> (0, 1); (0, 2) -> (-2, 0)
    assert torch.allclose(out, torch.tensor([[0.0, 1.0, -2.0, 0.0]]), atol=1e-6)


def test_offset_rows_rotate_in_place_and_nothing_else():
    """PixArt's fused qkv: ComfyUI narrows to the rows and keeps the OUTER tensor."""
    hidden = 6
    qkv = torch.randn(3 * hidden, 8)
    a, b = factors(hidden, 4)
    ad = adapter.LoRaDAdapter(set(), (a, b))
    outer = qkv.clone()
    view = outer.narrow(0, hidden, hidden)  # "to_k": (dim 0, start hidden, length hidden)
    ad.calculate_weight(view, "qkv", 1.0, 1.0, (0, hidden, hidden), ident)
    assert torch.equal(outer[:hidden], qkv[:hidden]) and torch.equal(outer[2 * hidden:], qkv[2 * hidden:])
    assert torch.equal(outer[hidden:2 * hidden], functional.rotate(qkv[hidden:2 * hidden], functional.angles(a, b)))


def test_function_is_applied_to_the_update():
    w = torch.randn(4, 6)
    a, b = factors(4, 3)
    out = adapter.LoRaDAdapter(set(), (a, b)).calculate_weight(w.clone(), "k", 1.0, 1.0, None, lambda d: 0.5 * d)
    want = w + 0.5 * (functional.rotate(w, functional.angles(a, b)) - w)
    assert torch.allclose(out, want, atol=1e-6)


def test_shape_mismatch_is_logged_and_weight_kept(caplog):
    w = torch.randn(4, 6)
    a, b = factors(5, 3)
    out = adapter.LoRaDAdapter(set(), (a, b)).calculate_weight(w.clone(), "diffusion_model.x.weight", 1.0, 1.0, None, ident)
    assert torch.equal(out, w)
    assert "diffusion_model.x.weight" in caplog.text


def _file_dict(tmp_path, monkeypatch):
    """A valid two-layer .lorad file (factored + dense), the dict ComfyUI's loader reads from it,
    and the guard pointed at its folder (what models/loras is for the stock loader)."""
    from safetensors.torch import load_file
    from wadi_lorad.lorad.io import build_metadata, save_lorad
    from wadi_lorad.nodes import stock_guard

    x = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q"
    y = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_k"
    a, b = factors(320, 160)
    path = save_lorad(tmp_path / "two.lorad.safetensors", {x: {"A": a, "B": b}, y: {"theta": torch.zeros(320, 160)}},
                      build_metadata(arch="sd15", rank=None, target_preset="custom", title="two"))
    monkeypatch.setattr(stock_guard, "_candidates", lambda: [str(path)])
    return x, y, load_file(str(path))


def test_load_claims_only_lorad_keys_of_a_valid_file(tmp_path, monkeypatch):
    x, y, sd = _file_dict(tmp_path, monkeypatch)
    keys: set[str] = set()
    ax = adapter.LoRaDAdapter.load(x, sd, None, None, keys)
    ay = adapter.LoRaDAdapter.load(y, sd, None, None, keys)
    assert ax is not None and len(ax.weights) == 2 and ay is not None and len(ay.weights) == 1
    assert adapter.LoRaDAdapter.load("diffusion_model.out.2", sd, None, None, keys) is None  # not in the file
    assert keys == {x + ".lorad_A", x + ".lorad_B", y + ".lorad_theta"}


def test_a_refused_dict_gets_no_adapter_and_one_error(tmp_path, monkeypatch, caplog):
    x, y, sd = _file_dict(tmp_path, monkeypatch)
    bad = {**sd, x + ".lorad_A": sd[x + ".lorad_A"].clone()}
    bad[x + ".lorad_A"][0, 0] = float("nan")  # NaN angle: the file's hash no longer matches either
    del bad[y + ".lorad_theta"]  # and the tensor table is not the file's: no source is found
    keys: set[str] = set()
    assert adapter.LoRaDAdapter.load(x, bad, None, None, keys) is None
    assert adapter.LoRaDAdapter.load(y, bad, None, None, keys) is None
    assert keys == {x + ".lorad_A", x + ".lorad_B"}  # claimed, so ComfyUI does not warn per key again
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and x in errors[0].getMessage() and "Nothing of this file" in errors[0].getMessage()


def test_register_is_idempotent():
    from comfy import weight_adapter

    adapter.register()
    before = list(weight_adapter.adapters)
    assert adapter.register() is False
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
    patches = [(1.0, ("diff", (diff,)), 1.0, None, None), (0.8, adapter.LoRaDAdapter(set(), (a, b)), 1.0, (0, 4, 4), None)]
    out = comfy.lora.calculate_weight(patches, qkv.clone(), "qkv")
    want = qkv + diff
    want[4:8] = functional.rotate(want[4:8], functional.angles(a, b), 0.8)
    assert torch.equal(out, want)


def test_dense_theta_beyond_pi_is_wrapped_before_strength():
    """theta = 4.0 at strength 0.5 rotates by 0.5 * wrap(4.0) = -1.1416 rad (the trainer's angle), not 2.0."""
    w = torch.tensor([[1.0, 2.0]])
    out = adapter.LoRaDAdapter(set(), (torch.tensor([[4.0]]),)).calculate_weight(w.clone(), "k", 0.5, 1.0, None, ident)
    t = 0.5 * (4.0 - 2 * math.pi)
    want = torch.tensor([[math.cos(t) * 1 - math.sin(t) * 2, math.sin(t) * 1 + math.cos(t) * 2]])
    assert torch.allclose(out, want, atol=1e-6)
    assert float(adapter.LoRaDAdapter(set(), (torch.tensor([[4.0]]),)).angles("cpu", 0.5)) == pytest.approx(t)
