"""Every ``lorad``/``wadi`` command on the files the project writes, tiny world included.

The student file is written by the project's own export (``inject`` + ``bridge.export_adapter``
on the shipped tiny-world teacher UNet), so it records ``lorad.layout`` exactly as a
``wadi distill`` run on the tiny world does.  Each command here failed on such a file before
the commands read that layout (merge: "not a module path", validate --model: "34 key(s)
match no weight", validate: checked against full-size SD1.5, analyze: refused the file,
eval --out: ImportError).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from wadi_lorad.lorad.cli import main as lorad_main
from wadi_lorad.lorad.io import load_lorad
from wadi_lorad.trainer.cli import main as wadi_main
from wadi_lorad.trainer.tinyworld.metrics import DEFAULT_TEACHER

TEACHER = str(DEFAULT_TEACHER)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The teacher UNet with a rank-4 student (random angles, some beyond pi) and its exported file."""
    from diffusers import UNet2DConditionModel
    from wadi_lorad.lorad import inject
    from wadi_lorad.lorad.bridge import export_adapter

    root = tmp_path_factory.mktemp("layouts")
    # The shipped teacher is stored in fp16; keep it so (fp16 -> fp32 -> fp16 is lossless).
    unet = UNet2DConditionModel.from_pretrained(str(DEFAULT_TEACHER / "unet")).to(torch.float16).eval()
    inject.inject(unet, "student", "paper-student", rank=4, seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in inject.adapter_state(unet, "student").values():
            t["A"].normal_(0, 1.0, generator=g)
    path = export_adapter(unet, "student", root / "student.lorad.safetensors", arch="sd15",
                          target_preset="paper-student", title="tiny student")
    with torch.no_grad():
        rotated = {name + ".weight": layer.rotated_weight(["student"])
                   for name, layer in inject.lorad_layers(unet)}
    return {"root": root, "file": str(path), "rotated": rotated}


def test_the_file_records_its_layout(tiny):
    f = load_lorad(tiny["file"])
    assert f.layout is not None and f.layout["block_out_channels"] == [64, 64, 128]
    assert any(k.startswith("diffusion_model.input_blocks.3.") for k in f.layers)  # a tiny-layout index


@pytest.mark.parametrize("out_name", ["merged", "merged.safetensors"])
def test_merge_into_the_tiny_teacher(tiny, out_name, capsys):
    out = tiny["root"] / out_name
    assert lorad_main(["merge", TEACHER, tiny["file"], str(out), "-q"]) == 0, capsys.readouterr().err
    if out_name == "merged":
        state = load_file(str(out / "diffusion_pytorch_model.safetensors"))
        got = {k: state[k] for k in tiny["rotated"]}
    else:  # single file, ldm keys spelled with the tiny layout
        from wadi_lorad.lorad.keymap import to_file_key

        layout = load_lorad(tiny["file"]).layout
        state = load_file(str(out))
        got = {k: state["model." + to_file_key("sd15", k[: -len(".weight")], None, layout) + ".weight"]
               for k in tiny["rotated"]}
    # the merge equals the trainer's own rotated weights (same canonical layer, same bits)
    for k, w in tiny["rotated"].items():
        assert torch.equal(got[k], w), k


def test_validate_against_the_model_and_from_the_file_alone(tiny, capsys):
    assert lorad_main(["validate", tiny["file"], "--model", TEACHER]) == 0
    assert "OK: 81 of 81 layers" in capsys.readouterr().out
    assert lorad_main(["validate", tiny["file"]]) == 0  # no --model: the file's own layout decides the keys
    out = capsys.readouterr().out
    assert "layout recorded in the file" in out and "--model" in out


def test_a_file_for_another_layout_is_refused_naming_both(tiny, tmp_path, capsys):
    from wadi_lorad.lorad import checkpoint

    cfg = json.loads((DEFAULT_TEACHER / "unet" / "config.json").read_text())
    cfg["layers_per_block"] = 2
    state = load_file(str(DEFAULT_TEACHER / "unet" / "diffusion_pytorch_model.safetensors"))
    checkpoint.write_diffusers_folder(state, tmp_path / "other", cfg)
    assert lorad_main(["validate", tiny["file"], "--model", str(tmp_path / "other")]) == 1
    err = capsys.readouterr().err
    assert '"layers_per_block": 1' in err and '"layers_per_block": 2' in err


def test_inspect_reports_wrapped_angles(tiny, capsys):
    assert lorad_main(["inspect", tiny["file"], "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["totals"]["layers"] == 81 and 0 < rep["totals"]["max_abs_angle"] <= math.pi


def test_analyze_takes_the_lorad_file_as_the_student(tiny, capsys):
    out = tiny["root"] / "analysis"
    assert lorad_main(["analyze", tiny["file"], TEACHER, str(out), "-q"]) == 0, capsys.readouterr().err
    summ = json.loads((out / "summary.json").read_text())
    assert summ["layers"] >= 81
    assert summ["norm_mean"] < 1e-4 < summ["dir_mean"]  # a rotation: direction changes, norms do not


def test_extract_from_the_merged_tiny_folder_without_arch(tiny, capsys):
    merged = tiny["root"] / "merged_for_extract"
    assert lorad_main(["merge", TEACHER, tiny["file"], str(merged), "-q"]) == 0
    out = tiny["root"] / "extracted.lorad.safetensors"
    assert lorad_main(["extract", TEACHER, str(merged), str(out), "--rank", "4", "-q"]) == 0, \
        capsys.readouterr().err
    f = load_lorad(out)
    assert f.layout == load_lorad(tiny["file"]).layout and len(f.layers) == 81
    assert lorad_main(["validate", str(out), "--model", TEACHER]) == 0


def test_wadi_eval_writes_its_json(tmp_path, capsys):
    out = tmp_path / "results.json"
    assert wadi_main(["eval", "--mode", "noise", "--n", "4", "--seeds", "0", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert list(res["rows"]) == ["noise"] and res["n_prompts"] == 4


def test_wadi_eval_samples_a_student_at_its_own_timestep(tiny, tmp_path, monkeypatch):
    from safetensors import safe_open
    from safetensors.torch import save_file
    from wadi_lorad.lorad.onestep import alpha_bar_at, scaled_linear_alphas_cumprod
    from wadi_lorad.trainer import evaluate

    with safe_open(tiny["file"], "pt") as f:  # the tiny student, relabelled as trained at t = 800
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    ab = alpha_bar_at(scaled_linear_alphas_cumprod(), 800)
    meta.update({"wadi.timestep": "800", "wadi.alpha_bar_T": repr(ab), "wadi.prediction_type": "epsilon"})
    student = tmp_path / "t800.lorad.safetensors"
    save_file(tensors, str(student), metadata=meta)
    seen = []
    real = evaluate.onestep_generator
    monkeypatch.setattr(evaluate, "onestep_generator",
                        lambda pipe, guidance, timestep, alpha_bar=None: seen.append((timestep, alpha_bar))
                        or real(pipe, guidance, timestep, alpha_bar=alpha_bar))
    out = tmp_path / "t800.json"
    assert wadi_main(["eval", "--mode", "onestep", "--lorad", str(student), "--n", "2", "--seeds", "0",
                      "--out", str(out)]) == 0
    assert seen == [(800, ab)]
    res = json.loads(out.read_text())
    assert res["one_step"] == {"timestep": 800, "alpha_bar_T": ab}
    assert res["model"] == "teacher" and res["lorad"] == "t800.lorad.safetensors"  # names, no local paths


def test_wadi_eval_and_sample_with_the_tiny_student(tiny, tmp_path, capsys):
    out = tmp_path / "student.json"
    assert wadi_main(["eval", "--mode", "onestep", "--lorad", tiny["file"], "--n", "4", "--seeds", "0",
                      "--out", str(out)]) == 0
    assert json.loads(out.read_text())["lorad"] == "student.lorad.safetensors"
    png = tmp_path / "s.png"
    assert wadi_main(["sample", "--base", TEACHER, "--lorad", tiny["file"], "--prompt", "a red circle",
                      "--out", str(png)]) == 0
    assert png.stat().st_size > 0
