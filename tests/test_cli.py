"""``lorad`` CLI end to end on a tiny SD1.5-layout UNet: inspect, validate, merge, extract, convert."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from wadi_lorad.lorad import checkpoint, functional, inject
from wadi_lorad.lorad.cli import main
from wadi_lorad.lorad.io import (
    adapter_state_from_layers,
    build_metadata,
    layers_from_adapter_state,
    load_lorad,
    save_lorad,
)

ARCH = "sd15"


def _tiny_unet():
    from diffusers import UNet2DConditionModel

    # SD1.5's block layout (so the sd15 key maps apply) at toy widths.
    return UNet2DConditionModel(
        sample_size=8, block_out_channels=(16, 16, 32, 32), layers_per_block=2, cross_attention_dim=16,
        attention_head_dim=4, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Base folder, a rank-4 .lorad file, the in-memory merged state and the true angles."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    unet = _tiny_unet()
    config = dict(unet.config)
    base = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    checkpoint.write_diffusers_folder(base, root / "base", config)
    inject.inject(unet, "s", "paper-student", rank=4, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in inject.lorad_layers(unet):
            layer.lorad["s"].A.normal_(generator=g).mul_(0.3)
    state = inject.adapter_state(unet, "s")
    truth = {n: functional.angles(t["A"], t["B"]).double() for n, t in state.items()}
    md = build_metadata(arch=ARCH, rank=4, target_preset="paper-student", title="tiny")
    save_lorad(root / "tiny.lorad.safetensors", layers_from_adapter_state(ARCH, state), md)
    merged = {n + ".weight": functional.rotate(base[n + ".weight"], th.float()) for n, th in truth.items()}
    merged = {**base, **merged}
    checkpoint.write_diffusers_folder(merged, root / "merged", config)
    return {"root": root, "base": base, "merged": merged, "truth": truth, "config": config, "state": state}


def _close(a: dict, b: dict, atol: float = 1e-6) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=atol) for k in a)


def test_inspect(world, capsys):
    f = world["root"] / "tiny.lorad.safetensors"
    assert main(["inspect", str(f)]) == 0
    out = capsys.readouterr().out
    n = len(world["truth"])
    assert f"totals: {n} layers ({n} factored, 0 dense)" in out
    assert "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q" in out
    assert main(["inspect", str(f), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["params"] == sum(t.numel() for s in world["state"].values() for t in s.values())
    assert main(["inspect", str(world["root"] / "missing.lorad.safetensors")]) == 1
    assert "missing.lorad.safetensors" in capsys.readouterr().err


def test_validate(world, capsys):
    f = str(world["root"] / "tiny.lorad.safetensors")
    assert main(["validate", f, "--model", str(world["root"] / "base")]) == 0
    assert "OK" in capsys.readouterr().out
    # the full-size SD1.5 architecture (meta device) has other shapes: a clear failure
    assert main(["validate", f]) == 1
    assert "do not fit" in capsys.readouterr().err
    # a model lacking a layer: unmatched keys fail unless --allow-partial
    part = dict(world["base"])
    part.pop("down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight")
    save_file(part, world["root"] / "part.safetensors")
    assert main(["validate", f, "--model", str(world["root"] / "part.safetensors")]) == 1
    assert "attn1.to_q" in capsys.readouterr().err
    assert main(["validate", f, "--model", str(world["root"] / "part.safetensors"), "--allow-partial"]) == 0


def test_merge_folder_single_and_strength(world, tmp_path, capsys):
    f = str(world["root"] / "tiny.lorad.safetensors")
    base = str(world["root"] / "base")
    assert main(["merge", base, f, str(tmp_path / "m"), "-q"]) == 0
    ck = checkpoint.load_state_dict(tmp_path / "m")
    assert _close(ck.state, world["merged"]) and ck.config["block_out_channels"] == [16, 16, 32, 32]
    # refuses to overwrite; --force replaces
    assert main(["merge", base, f, str(tmp_path / "m"), "-q"]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["merge", base, f, str(tmp_path / "m"), "-q", "--force", "--strength", "0"]) == 0
    assert _close(checkpoint.load_state_dict(tmp_path / "m").state, world["base"], atol=0)
    # single file in ldm keys
    assert main(["merge", base, f, str(tmp_path / "m.safetensors"), "-q", "--strength", "0.5"]) == 0
    ldm = load_file(tmp_path / "m.safetensors")
    assert len(ldm) == len(world["base"]) and all(k.startswith("model.diffusion_model.") for k in ldm)
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    want = functional.rotate(world["base"][key + ".weight"], world["truth"][key].float(), 0.5)
    got = ldm["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"]
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.equal(ldm["model.diffusion_model.input_blocks.0.0.weight"], world["base"]["conv_in.weight"])
    # an ldm base merges into an ldm single file with the same keys (strength 0.5 more = 1.0 total)
    assert main(["merge", str(tmp_path / "m.safetensors"), f, str(tmp_path / "m2.safetensors"), "-q",
                 "--strength", "0.5"]) == 0
    full = load_file(tmp_path / "m2.safetensors")
    got = full["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"]
    assert torch.allclose(got, world["merged"][key + ".weight"], atol=1e-5)
    assert main(["merge", str(tmp_path / "m.safetensors"), f, str(tmp_path / "x"), "--to", "diffusers"]) == 1


def test_merge_missing_layer_nothing_written(world, tmp_path, capsys):
    part = dict(world["base"])
    part.pop("up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight")
    checkpoint.write_diffusers_folder(part, tmp_path / "part", world["config"])
    f = str(world["root"] / "tiny.lorad.safetensors")
    assert main(["merge", str(tmp_path / "part"), f, str(tmp_path / "out")]) == 1
    assert "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["merge", str(tmp_path / "part"), f, str(tmp_path / "out"), "--allow-partial", "-q"]) == 0
    st = checkpoint.load_state_dict(tmp_path / "out").state
    k = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert torch.allclose(st[k], world["merged"][k], atol=1e-6)


def test_extract_round_trip(world, tmp_path, capsys):
    out = tmp_path / "ex.lorad.safetensors"
    args = ["extract", str(world["root"] / "base"), str(world["root"] / "merged"), str(out), "--arch", ARCH,
            "--rank", "4", "-q"]
    assert main(args) == 0
    f = load_lorad(out)
    got = adapter_state_from_layers(ARCH, f.layers)
    assert set(got) == set(world["truth"])
    for n, t in got.items():
        assert t["A"].shape[1] == 4
        err = functional.wrap_angles(functional.angles(t["A"], t["B"]).double() - world["truth"][n]).abs().max()
        assert err < 1e-5, n
    rows = list(csv.DictReader(open(tmp_path / "ex.extract.csv")))
    assert len(rows) == len(world["truth"]) and all(r["stored"] == "factors" for r in rows)
    rep = json.loads((tmp_path / "ex.extract.json").read_text())
    assert rep["summary"]["dense_fallback"] == 0 and rep["other_differences"] == []
    assert f.metadata["modelspec.title"] == "ex"
    # merging the extracted file back reproduces the merged model
    assert main(["merge", str(world["root"] / "base"), str(out), str(tmp_path / "re"), "-q"]) == 0
    assert _close(checkpoint.load_state_dict(tmp_path / "re").state, world["merged"], atol=1e-5)
    # outputs are not overwritten without --force; with --force and rank 0 everything is dense
    assert main(args) == 1
    assert "--force" in capsys.readouterr().err
    assert main(args[:-3] + ["--rank", "0", "--force", "-q", "--preset", "paper-fake"]) == 0
    f0 = load_lorad(out)
    assert all("theta" in t for t in f0.layers.values())
    # paper-fake leaves out time_emb_proj (ldm emb_layers.1); SD1.5's proj_in/out are convs anyway
    assert not any(k.endswith("emb_layers.1") for k in f0.layers) and len(f0.layers) < len(world["truth"])
    rep = json.loads((tmp_path / "ex.extract.json").read_text())
    others = [o for o in rep["other_differences"] if o["note"] == "not targeted"]
    assert others and all(o["name"].endswith("time_emb_proj.weight") for o in others)
    assert len(f0.layers) + len(others) == len(world["truth"])


def test_extract_nothing_rotated_fails(world, tmp_path, capsys):
    base = str(world["root"] / "base")
    assert main(["extract", base, base, str(tmp_path / "x.lorad.safetensors"), "--arch", ARCH, "-q"]) == 1
    assert "no rotated layer" in capsys.readouterr().err
    assert not (tmp_path / "x.lorad.safetensors").exists()


def test_convert_official_state(tmp_path, capsys):
    from wadi_lorad.lorad.archs import build_meta

    # official training state: <diffusers module>.theta_a (out, r) / .theta_b (r, in/2), full-size shapes
    meta = build_meta(ARCH)
    names = ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
             "mid_block.attentions.0.transformer_blocks.0.ff.net.2", "up_blocks.3.resnets.2.time_emb_proj"]
    g = torch.Generator().manual_seed(0)
    official, state = {}, {}
    for n in names:
        out_f, in_f = meta.get_submodule(n).weight.shape
        a, b = torch.randn(out_f, 2, generator=g), torch.randn(2, in_f // 2, generator=g)
        official[n + ".theta_a"], official[n + ".theta_b"] = a, b
        state[n] = (a, b)
    torch.save(official, tmp_path / "official.pt")
    dst = tmp_path / "conv.lorad.safetensors"
    assert main(["convert", str(tmp_path / "official.pt"), str(dst), "--arch", ARCH, "-q"]) == 0
    f = load_lorad(dst)
    got = adapter_state_from_layers(ARCH, f.layers)
    assert set(got) == set(names)
    assert all(torch.equal(got[n]["A"], state[n][0]) and torch.equal(got[n]["B"], state[n][1]) for n in names)
    assert main(["validate", str(dst)]) == 0  # full-size shapes fit the sd15 architecture on meta
    capsys.readouterr()
    assert main(["convert", str(tmp_path / "official.pt"), str(dst), "--arch", ARCH]) == 1
    assert "exist" in capsys.readouterr().err
