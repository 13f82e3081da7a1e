"""LoRaD layers and injection: adapters over one base, switching, merge/unmerge/remove, presets."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from wadi_lorad.lorad import functional, inject
from wadi_lorad.lorad.layer import LoRaDLayer
from wadi_lorad.lorad.presets import Targets, family_of


def tiny_unet(linear_proj: bool = False):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
        use_linear_projection=linear_proj,
    ).eval()


def unet_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([999, 10]), torch.randn(2, 5, 32, generator=g)


def _randomize(model: nn.Module, adapter: str, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(42)
    with torch.no_grad():
        for p in inject.adapter_parameters(model, adapter):
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def test_presets_on_sd_unet():
    unet = tiny_unet(linear_proj=True)
    assert family_of(unet) == "unet"
    student = inject.inject(unet, "student", "paper-student", rank=4)
    fake = inject.inject(unet, "fake", "paper-fake", rank=2)
    linears_in_blocks = [
        n
        for n, m in tiny_unet(True).named_modules()
        if isinstance(m, nn.Linear) and n.split(".")[0] in ("down_blocks", "mid_block", "up_blocks")
    ]
    assert sorted(student) == sorted(linears_in_blocks)
    assert any(n.endswith("proj_in") for n in student) and any(n.endswith("time_emb_proj") for n in student)
    excluded = [n for n in student if n.endswith(("proj_in", "proj_out", "time_emb_proj"))]
    assert sorted(fake) == sorted(set(student) - set(excluded))
    # time_embedding / add_embedding Linears outside the blocks are never adapted
    assert not any(n.startswith("time_embedding") for n in student)
    # parameter count = sum r * (out + in/2)
    expected = sum(4 * (m.out_features + m.in_features // 2) for n, m in tiny_unet(True).named_modules() if n in student)
    assert inject.count_parameters(unet, "student") == expected


def test_teacher_view_is_base_and_adapters_share_one_base():
    base = tiny_unet()
    ref = base(*unet_inputs()).sample
    unet = tiny_unet()
    weights_before = {n: p.data_ptr() for n, p in unet.named_parameters()}
    inject.inject(unet, "student", "paper-student", rank=4)
    inject.inject(unet, "fake", "paper-fake", rank=2)
    _randomize(unet, "student")
    _randomize(unet, "fake")
    # the base parameters are the same tensors as before injection (one copy)
    after = {n: p.data_ptr() for n, p in unet.named_parameters() if ".lorad." not in n}
    assert after == weights_before
    assert all(not p.requires_grad for n, p in unet.named_parameters() if ".lorad." not in n)
    with torch.no_grad():
        inject.set_active(unet, None)
        assert torch.equal(unet(*unet_inputs()).sample, ref)
        with inject.active_adapters(unet, "student"):
            s = unet(*unet_inputs()).sample
        with inject.active_adapters(unet, "fake"):
            f = unet(*unet_inputs()).sample
        assert inject.get_active(unet) == ()
    assert not torch.allclose(s, ref, atol=1e-4) and not torch.allclose(f, ref, atol=1e-4)
    assert not torch.allclose(s, f, atol=1e-4)


def test_active_adapter_equals_rotated_weights_model():
    unet = tiny_unet()
    inject.inject(unet, "student", "paper-student", rank=4)
    _randomize(unet, "student", 0.2)
    state = inject.adapter_state(unet, "student")
    # independent construction: rotate a copy's weights with the functional API
    ref = tiny_unet()
    with torch.no_grad():
        for name, t in state.items():
            m = ref.get_submodule(name)
            m.weight.copy_(functional.rotate(m.weight, functional.angles(t["A"], t["B"])))
        y_ref = ref(*unet_inputs()).sample
        with inject.active_adapters(unet, "student"):
            y = unet(*unet_inputs()).sample
    assert torch.allclose(y, y_ref, atol=1e-5)


def test_composition_of_two_adapters_adds_angles():
    lin = nn.Linear(16, 8)
    inject.inject(lin_model := nn.Sequential(lin), "a", Targets(), rank=2)
    inject.inject(lin_model, "b", Targets(), rank=3)
    _randomize(lin_model, "a", 0.5)
    _randomize(lin_model, "b", 0.5)
    inject.set_strength(lin_model, "b", 0.4)
    layer = lin_model[0]
    x = torch.randn(3, 16)
    with torch.no_grad(), inject.active_adapters(lin_model, ["a", "b"]):
        y = lin_model(x)
    ta, tb = layer.lorad["a"].angles(), layer.lorad["b"].angles()
    w = functional.rotate(functional.rotate(layer.weight, ta), tb, 0.4)
    assert torch.allclose(y, x @ w.t() + layer.bias, atol=1e-5)


def test_merge_unmerge_exact_and_remove_restores_modules():
    unet = tiny_unet()
    keys_before = set(unet.state_dict())
    base_sd = {k: v.clone() for k, v in unet.state_dict().items()}
    inject.inject(unet, "student", "paper-student", rank=4)
    _randomize(unet, "student", 0.2)
    with torch.no_grad():
        inject.set_active(unet, "student")
        y_active = unet(*unet_inputs()).sample
        inject.merge(unet)  # merged weights, adapter no longer applied on the fly
        y_merged = unet(*unet_inputs()).sample
        assert torch.allclose(y_active, y_merged, atol=1e-5)
        inject.unmerge(unet)
        for name, layer in inject.lorad_layers(unet):
            assert torch.equal(layer.weight, base_sd[name + ".weight"])  # bit-exact with the kept copy
        # unmerge by inverse rotation (no kept copy) is exact to fp32 rounding
        inject.merge(unet, keep_original=False)
        inject.unmerge(unet)
        for name, layer in inject.lorad_layers(unet):
            assert (layer.weight - base_sd[name + ".weight"]).abs().max() < 1e-5
        inject.remove(unet)
    assert not list(inject.lorad_layers(unet))
    assert set(unet.state_dict()) == keys_before
    assert all(type(m) is not LoRaDLayer for m in unet.modules())


def test_merge_non_finite_is_refused_without_writing():
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 4))
    inject.inject(model, "x", Targets(), rank=2)
    with torch.no_grad():
        model[1].lorad["x"].A.fill_(float("nan"))
    before = [m.weight.clone() for m in model]
    inject.set_active(model, "x")
    with pytest.raises(ValueError, match="non-finite"):
        inject.merge(model)
    assert all(torch.equal(m.weight, b) for m, b in zip(model, before))


def test_inject_validates_before_changing_anything():
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(7, 4))  # second layer has an odd width
    with pytest.raises(functional.LoRaDShapeError, match="1"):
        inject.inject(model, "x", Targets(), rank=2)
    assert not list(inject.lorad_layers(model))
    with pytest.raises(KeyError, match="unknown target preset"):
        inject.inject(model, "x", "no-such-preset", rank=2)
    with pytest.raises(KeyError, match="no adapter named"):
        inject.set_active(model, "ghost")


def test_adapter_state_round_trip_and_strict_errors():
    unet = tiny_unet()
    inject.inject(unet, "student", "paper-student", rank=4, dense="auto")
    _randomize(unet, "student", 0.2)
    state = inject.adapter_state(unet, "student")
    fresh = tiny_unet()
    loaded = inject.load_adapter_state(fresh, "student", state)
    assert sorted(loaded) == sorted(state)
    with torch.no_grad():
        for m in (unet, fresh):
            inject.set_active(m, "student")
        assert torch.equal(unet(*unet_inputs()).sample, fresh(*unet_inputs()).sample)
    bad = dict(state)
    name = next(iter(bad))
    bad[name] = {"A": state[name]["A"] if "A" in state[name] else state[name]["theta"], "B": torch.zeros(4, 3)}
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        inject.load_adapter_state(tiny_unet(), "student", bad)
    with pytest.raises(ValueError, match="no such module"):
        inject.load_adapter_state(tiny_unet(), "student", {"nope.layer": state[name]})


def test_dense_auto_picks_smaller_form():
    model = nn.Sequential(nn.Linear(64, 4), nn.Linear(64, 64))
    inject.inject(model, "x", Targets(), rank=8, dense="auto")
    assert model[0].lorad["x"].dense  # 8*(4+32)=288 > 4*32=128
    assert not model[1].lorad["x"].dense  # 8*(64+32)=768 < 64*32


def test_conv_layers_can_be_adapted():
    model = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1))
    inject.inject(model, "x", Targets(types=(nn.Conv2d,)), rank=2)
    _randomize(model, "x", 0.5)
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad(), inject.active_adapters(model, "x"):
        y = model(x)
    layer = model[0]
    w = functional.rotate(layer.weight, layer.lorad["x"].angles())
    assert torch.allclose(y, torch.nn.functional.conv2d(x, w, layer.bias, padding=1), atol=1e-5)


def test_training_updates_only_the_active_adapter():
    unet = tiny_unet()
    inject.inject(unet, "student", "paper-student", rank=4)
    inject.inject(unet, "fake", "paper-fake", rank=2)
    fake_before = [p.clone() for p in inject.adapter_parameters(unet, "fake")]
    inject.set_active(unet, "student")
    unet(*unet_inputs()).sample.square().mean().backward()
    assert all(p.grad is None for p in inject.adapter_parameters(unet, "fake"))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in inject.adapter_parameters(unet, "student"))
    assert all(torch.equal(a, b) for a, b in zip(fake_before, inject.adapter_parameters(unet, "fake")))


def test_merge_then_bake_gives_a_plain_rotated_model():
    unet = tiny_unet()
    inject.inject(unet, "student", "paper-student", rank=4)
    _randomize(unet, "student", 0.2)
    with torch.no_grad():
        inject.set_active(unet, "student")
        y = unet(*unet_inputs()).sample
        inject.merge(unet)
        with pytest.raises(RuntimeError, match="merged"):
            inject.remove(unet, "student")  # refusing keeps the model intact
        assert len(list(inject.lorad_layers(unet))) > 0
        inject.remove(unet, "student", bake=True)
        assert not list(inject.lorad_layers(unet))
        assert torch.allclose(unet(*unet_inputs()).sample, y, atol=1e-5)
