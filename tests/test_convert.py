"""Official WaDi training state (theta_a / theta_b) -> .lorad.safetensors, checked against the official formula."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from wadi_lorad.lorad import io as lorad_io
from wadi_lorad.lorad.archs import build_meta
from wadi_lorad.lorad.convert import convert_official, describe, official_adapter_state
from wadi_lorad.lorad.inject import load_adapter_state, lorad_layers

# A few SD1.5 student layers with their real shapes; attn2.to_k (320 x 768) pins the architecture to SD1.5.
SD15_LAYERS = {
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q": (320, 320),
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k": (320, 768),
    "down_blocks.1.resnets.0.time_emb_proj": (640, 1280),
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_v": (1280, 768),
    "up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_out.0": (320, 320),
}


def skeleton(layers: dict[str, tuple[int, int]], seed: int = 0) -> nn.Module:
    """A module tree holding real Linear layers only at the given names (a tiny stand-in for the UNet)."""
    torch.manual_seed(seed)
    root = nn.Module()
    for name, (out, inp) in layers.items():
        parent = root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, nn.Linear(inp, out))
    return root


def official_state(layers: dict[str, tuple[int, int]], rank: int, prefix: str = "", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, (out, inp) in layers.items():
        # Large enough angles that wrapping into [-pi, pi) actually happens.
        sd[f"{prefix}{name}.theta_a"] = torch.randn(out, rank, generator=g)
        sd[f"{prefix}{name}.theta_b"] = torch.randn(rank, inp // 2, generator=g)
    return sd


def official_rotation(w: torch.Tensor, theta_a: torch.Tensor, theta_b: torch.Tensor) -> torch.Tensor:
    """The official code's formula, written out independently of lorad.functional."""
    theta = theta_a.double() @ theta_b.double()
    theta = torch.remainder(theta + math.pi, 2 * math.pi) - math.pi
    odd, even = w.double()[:, 0::2], w.double()[:, 1::2]
    out = torch.empty_like(w, dtype=torch.float64)
    out[:, 0::2] = torch.cos(theta) * odd - torch.sin(theta) * even
    out[:, 1::2] = torch.sin(theta) * odd + torch.cos(theta) * even
    return out


@pytest.mark.parametrize("container", ["flat", "nested", "ddp"])
def test_convert_official_matches_official_formula(tmp_path, container):
    sd = official_state(SD15_LAYERS, rank=8, prefix="module." if container == "ddp" else "")
    obj = {"unet": sd, "step": torch.tensor(5)} if container == "nested" else sd
    src = tmp_path / "official.pt"
    torch.save(obj, src)
    dst = convert_official(src, tmp_path / "wadi.lorad.safetensors")
    f = lorad_io.load_lorad(dst)
    assert f.arch == "sd15" and f.rank == 8
    assert f.one_step.alpha_bar_T == 0.0047 and f.one_step.timestep == 999
    assert f.metadata["lorad.provenance.arch_inferred"] == "true"
    assert f.metadata["lorad.target_preset"] == "custom"  # five layers are not a paper preset
    assert set(f.layers) == set(lorad_io.layers_from_adapter_state("sd15", {n: {} for n in SD15_LAYERS}))

    model = skeleton(SD15_LAYERS)
    base = {n: model.get_submodule(n).weight.detach().clone() for n in SD15_LAYERS}
    loaded = load_adapter_state(model, "student", lorad_io.adapter_state_from_layers("sd15", f.layers))
    assert sorted(loaded) == sorted(SD15_LAYERS)
    flat = official_state(SD15_LAYERS, rank=8)
    worst = 0.0
    for name, layer in lorad_layers(model):
        want = official_rotation(base[name], flat[f"{name}.theta_a"], flat[f"{name}.theta_b"])
        got = layer.rotated_weight(["student"]).double()
        worst = max(worst, (got - want).abs().max().item())
    assert worst <= 1e-6, worst


def test_transposed_or_swapped_factors_do_not_convert(tmp_path):
    sd = official_state(SD15_LAYERS, rank=8)
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"  # (320, 768): out != in/2
    sd[f"{name}.theta_a"], sd[f"{name}.theta_b"] = sd[f"{name}.theta_b"].T.clone(), sd[f"{name}.theta_a"].T.clone()
    src = tmp_path / "swapped.pt"
    torch.save(sd, src)
    with pytest.raises(lorad_io.LoRaDFileError, match="match none of the known architectures"):
        convert_official(src, tmp_path / "x.lorad.safetensors")
    with pytest.raises(lorad_io.LoRaDFileError, match="not a Linear of sd15"):
        convert_official(src, tmp_path / "x.lorad.safetensors", arch="sd15")
    assert not (tmp_path / "x.lorad.safetensors").exists()


def test_full_pixart_student_is_inferred_with_its_preset(tmp_path):
    model = build_meta("pixart-alpha")
    shapes = {n: (m.out_features, m.in_features) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    # The official PixArt code adapts every Linear (adaln_single too); tiny rank keeps the test fast.
    sd = {}
    for n, (o, i) in shapes.items():
        sd[f"{n}.theta_a"] = torch.zeros(o, 1)
        sd[f"{n}.theta_b"] = torch.zeros(1, i // 2)
    torch.save(sd, tmp_path / "pixart.bin")
    arch, state, stripped = official_adapter_state(tmp_path / "pixart.bin")
    assert arch == "pixart-alpha" and stripped == "" and len(state) == len(shapes) == 286
    dst = convert_official(tmp_path / "pixart.bin", tmp_path / "p.lorad.safetensors", dtype=torch.float16)
    f = lorad_io.load_lorad(dst)
    assert f.metadata["lorad.target_preset"] == "all-linear"
    assert f.metadata["modelspec.architecture"] == "pixart-alpha/lorad"
    assert "transformer.adaln_single.linear" in f.layers
    text = describe(dst)
    assert "pixart-alpha" in text and "286 (transformer 286)" in text and "alpha_bar_T=0.0047" in text


def test_convert_refuses_overwrite_and_bad_sources(tmp_path):
    torch.save(official_state(SD15_LAYERS, rank=2), tmp_path / "s.pt")
    dst = convert_official(tmp_path / "s.pt", tmp_path / "o.lorad.safetensors")
    with pytest.raises(FileExistsError, match="force"):
        convert_official(tmp_path / "s.pt", dst)
    assert convert_official(tmp_path / "s.pt", dst, force=True, title="again") == dst
    assert lorad_io.load_lorad(dst).metadata["modelspec.title"] == "again"

    sd = official_state(SD15_LAYERS, rank=2)
    del sd["mid_block.attentions.0.transformer_blocks.0.attn2.to_v.theta_b"]
    torch.save(sd, tmp_path / "half.pt")
    with pytest.raises(lorad_io.LoRaDFileError, match=r"attn2.to_v.theta_a: has no partner"):
        convert_official(tmp_path / "half.pt", tmp_path / "h.lorad.safetensors")
    torch.save({"w": torch.zeros(2)}, tmp_path / "none.pt")
    with pytest.raises(lorad_io.LoRaDFileError, match="no '<module>.theta_a'"):
        convert_official(tmp_path / "none.pt", tmp_path / "n.lorad.safetensors")
    (tmp_path / "bad.pt").write_bytes(b"not a pickle")
    with pytest.raises(lorad_io.LoRaDFileError, match="bad.pt: cannot read"):
        convert_official(tmp_path / "bad.pt", tmp_path / "b.lorad.safetensors")


def test_weights_only_refuses_arbitrary_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x.theta_a": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(lorad_io.LoRaDFileError, match="cannot read"):
        convert_official(tmp_path / "evil.pt", tmp_path / "e.lorad.safetensors")
