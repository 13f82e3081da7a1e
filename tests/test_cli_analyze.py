"""``lorad analyze`` and the CLI's generic behaviour, run in-process."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from wadi_lorad.lorad import analysis, checkpoint
from wadi_lorad.lorad.cli import main


def _pair(tmp_path):
    g = torch.Generator().manual_seed(0)
    te = {
        "down_blocks.0.attn.to_q.weight": torch.randn(16, 24, generator=g),
        "down_blocks.0.conv.weight": torch.randn(8, 4, 3, 3, generator=g),
        "down_blocks.0.conv.bias": torch.randn(8, generator=g),
    }
    st = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in te.items()}
    save_file(te, tmp_path / "teacher.safetensors")
    save_file(st, tmp_path / "student.safetensors")
    return st, te


def test_help_everywhere(capsys):
    assert main(["--help"]) == 0
    for cmd in ("inspect", "validate", "merge", "extract", "convert", "analyze"):
        assert main([cmd, "--help"]) == 0
        assert cmd in capsys.readouterr().out
    assert main([]) == 2
    assert main(["analyze"]) == 2  # missing arguments: argparse usage error


def test_analyze_writes_csv_pngs_and_swaps(tmp_path, capsys):
    st, te = _pair(tmp_path)
    out = tmp_path / "fig1"
    args = ["analyze", str(tmp_path / "student.safetensors"), str(tmp_path / "teacher.safetensors"), str(out), "-q"]
    assert main(args + ["--write-swaps"]) == 0
    rows = list(csv.DictReader(open(out / "layers.csv")))
    assert [r["name"] for r in rows] == ["down_blocks.0.attn.to_q.weight", "down_blocks.0.conv.weight"]
    ref = analysis.analyze(st, te)
    for r, s in zip(rows, ref.layers):
        assert float(r["dir_mean_pct"]) == pytest.approx(100 * s.dir_mean, rel=1e-9)
        assert float(r["norm_std_pct"]) == pytest.approx(100 * s.norm_std, rel=1e-9)
    summ = json.loads((out / "summary.json").read_text())
    assert summ["layers"] == 2 and summ["energy_mean"] == pytest.approx(ref.summary()["energy_mean"])
    for png in ("norm_direction.png", "svd_energy.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    ns = load_file(out / "norm_swapped.safetensors")
    ds = load_file(out / "direction_swapped.safetensors")
    w = "down_blocks.0.attn.to_q.weight"
    assert torch.allclose(ns[w].norm(dim=1), te[w].norm(dim=1), rtol=1e-5)
    assert torch.allclose(ds[w].norm(dim=1), st[w].norm(dim=1), rtol=1e-5)
    assert torch.equal(ns["down_blocks.0.conv.bias"], st["down_blocks.0.conv.bias"])
    # refuses to overwrite, then --force works
    assert main(args) == 1
    assert "--force" in capsys.readouterr().err
    assert main(args + ["--force", "--include", "attn"]) == 0
    assert len(list(csv.DictReader(open(out / "layers.csv")))) == 1


def test_analyze_diffusers_folder_swaps_are_folders(tmp_path):
    st, te = _pair(tmp_path)
    checkpoint.write_diffusers_folder(st, tmp_path / "s", {"x": 1})
    checkpoint.write_diffusers_folder(te, tmp_path / "t", {"x": 1})
    assert main(["analyze", str(tmp_path / "s"), str(tmp_path / "t"), str(tmp_path / "o"), "--write-swaps", "-q"]) == 0
    ck = checkpoint.load_state_dict(tmp_path / "o" / "direction_swapped")
    assert ck.config == {"x": 1} and set(ck.state) == set(st)


def test_analyze_errors(tmp_path, capsys):
    _pair(tmp_path)
    assert main(["analyze", str(tmp_path / "nope.safetensors"), str(tmp_path / "teacher.safetensors"),
                 str(tmp_path / "o")]) == 1
    assert "nope.safetensors: no such file" in capsys.readouterr().err
    save_file({"other.weight": torch.zeros(3, 3)}, tmp_path / "other.safetensors")
    assert main(["analyze", str(tmp_path / "other.safetensors"), str(tmp_path / "teacher.safetensors"),
                 str(tmp_path / "o")]) == 1
    assert "no weight matrices" in capsys.readouterr().err
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(3, 3)}, tmp_path / "ldm.safetensors")
    assert main(["analyze", str(tmp_path / "ldm.safetensors"), str(tmp_path / "teacher.safetensors"),
                 str(tmp_path / "o")]) == 1
    assert "ldm keys" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "student.safetensors"), str(tmp_path / "teacher.safetensors"),
                 str(tmp_path / "o"), "--frac", "1.5"]) == 1
    assert "--frac" in capsys.readouterr().err
    assert not (tmp_path / "o" / "layers.csv").exists()
