"""``wadi demo`` plumbing on a tiny random-init base (the tiny world's API stubbed), and the real demo (slow)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from distill_helpers import tiny_bases_fixture  # noqa: F401  (fixture)
from tiny_models import WORDS
from wadi_lorad.lorad.io import load_lorad
from wadi_lorad.trainer import demo


def _stub_world():
    """Stand-ins with the tiny world's signatures; metrics are simple image statistics."""
    def captions(n, seed=0):
        rng = random.Random(seed)
        return [" ".join(rng.sample(WORDS, 3)) for _ in range(n)]

    def evaluate_images(images, prompts):
        assert images.shape[0] == len(prompts) and images.min() >= 0 and images.max() <= 1
        return {"alignment": float(images.mean()), "fd": float(images.std()), "n": float(len(prompts))}

    def summarize(runs):
        out = {}
        for k in runs[0]:
            vals = [r[k] for r in runs]
            m = sum(vals) / len(vals)
            out[f"{k}_mean"] = m
            out[f"{k}_std"] = math.sqrt(sum((v - m) ** 2 for v in vals) / max(1, len(vals) - 1))
        return out

    domain = SimpleNamespace(sample_captions=captions)
    metrics = SimpleNamespace(fixed_eval_prompts=lambda n=256: captions(n, 99), evaluate_images=evaluate_images,
                              summarize=summarize,
                              eval_noise=lambda n, seed, shape: torch.randn(n, *shape,
                                                                            generator=torch.Generator().manual_seed(seed)))
    return domain, metrics


def test_demo_writes_every_output(tiny_bases, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "_tinyworld", _stub_world)
    s = demo.DemoSettings(out=tmp_path / "demo", base=tiny_bases("sd"), steps=2, num_prompts=20, eval_prompts=6,
                       eval_seeds=(0, 1), teacher_steps=2,
                       overrides=[("adapter.student_rank", "4"), ("adapter.fake_rank", "2"),
                                  ("train.batch_size", "2"), ("output.checkpoint_every", "1"),
                                  ("output.sample_every", "1")])
    m = demo.run_demo(s)
    out = tmp_path / "demo"
    assert (out / "grid.png").stat().st_size > 0 and (out / "prompts.txt").is_file()
    f = load_lorad(out / "student.lorad.safetensors")
    assert f.one_step is not None and f.metadata["lorad.provenance.steps"] == "2"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["methods"].keys() == m["methods"].keys() and len(saved["methods"]) == 3
    assert all(len(v) == 2 for v in saved["per_seed"].values())  # two evaluation seeds per method
    assert saved["settings"]["steps"] == 2 and saved["wall_time_s"]["total"] > 0
    assert saved["settings"]["schedule_steps"] == 4  # the demo's cosine spans twice its steps
    printed = capsys.readouterr().out
    assert "WaDi demo - what happened" in printed and "Wall time" in printed
    assert "cosine learning rates over 4 steps, stopped at step 2" in printed
    kinds = [json.loads(x)["event"] for x in (out / "run" / "events.jsonl").read_text().splitlines()]
    assert kinds[0] == "start" and kinds[-1] == "done" and "checkpoint" in kinds and "sample" in kinds


def test_demo_fourth_row_is_the_shipped_quality_student(tiny_bases, tmp_path, monkeypatch):
    """The quality row loads a .lorad onto its own teacher copy: given the demo's own student it must
    reproduce the demo's WaDi row from the same noise (independent path: file -> fresh base)."""
    monkeypatch.setattr(demo, "_tinyworld", _stub_world)
    base = tiny_bases("sd")
    over = [("adapter.student_rank", "4"), ("adapter.fake_rank", "2"), ("train.batch_size", "2")]
    first = demo.DemoSettings(out=tmp_path / "a", base=base, steps=2, num_prompts=20, eval_prompts=6, quality_student=None,
                           eval_seeds=(0,), teacher_steps=2, overrides=over)
    demo.run_demo(first)
    student = tmp_path / "a" / "student.lorad.safetensors"
    monkeypatch.setattr(demo, "TEACHER", base)  # the quality row is shown for the shipped teacher only
    again = demo.DemoSettings(out=tmp_path / "b", base=base, steps=2, num_prompts=20, eval_prompts=6, eval_seeds=(0,),
                           teacher_steps=2, overrides=over, quality_student=student)
    m = demo.run_demo(again)
    assert list(m["methods"])[-1] == "wadi_1step_quality" and len(m["methods"]) == 4
    got, want = m["methods"]["wadi_1step_quality"], demo.run_demo(first)["methods"]["wadi_1step"]
    assert got["alignment_mean"] == pytest.approx(want["alignment_mean"], abs=2e-3)
    assert got["fd_mean"] == pytest.approx(want["fd_mean"], abs=2e-3)
    assert m["files"]["quality_student"] == str(student)
    # another base: the row is left out (the student was distilled from the shipped teacher)
    monkeypatch.setattr(demo, "TEACHER", tmp_path / "elsewhere")
    assert len(demo.run_demo(again)["methods"]) == 3


@pytest.mark.slow
def test_real_demo_on_the_shipped_teacher(tmp_path):
    teacher = Path(demo.TEACHER)
    if not (teacher / "model_index.json").is_file():
        pytest.skip("the tiny-world teacher is not in this checkout")
    m = demo.run_demo(demo.DemoSettings(out=tmp_path / "demo"))
    wadi, t1 = m["methods"]["wadi_1step"], m["methods"]["teacher_1step"]
    # The one-step student beats the teacher's own one step on both metrics.
    assert wadi["fd_mean"] < t1["fd_mean"] and wadi["alignment_mean"] > t1["alignment_mean"]
    # The shipped quality student is the fourth row, and the demo's sampler scores it as `wadi eval`
    # (the diffusers pipeline, another path through the same file) did in its metrics.json.
    shipped = Path(demo.QUALITY_STUDENT)
    if shipped.is_file():
        import json

        q = m["methods"]["wadi_1step_quality"]
        ref = json.loads((shipped.parent / "metrics.json").read_text())["rows"]["onestep"]["summary"]
        assert abs(q["alignment_mean"] - ref["alignment_mean"]) <= 0.01, (q, ref)
        assert abs(q["fd_mean"] - ref["fd_mean"]) <= 2.0, (q, ref)
        assert q["alignment_mean"] > t1["alignment_mean"] and q["fd_mean"] < t1["fd_mean"]
