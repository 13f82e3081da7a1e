"""Typed distillation config: paper defaults, YAML round trip, overrides and their errors, hashing."""

from __future__ import annotations

import math
import subprocess

import pytest
import yaml
from distill_helpers import cli
from wadi_lorad.trainer.config import (
    ConfigError,
    DistillConfig,
    apply_overrides,
    config_hash,
    from_dict,
    load_yaml,
    parse_override_args,
    save_yaml,
    to_dict,
)


def test_defaults_are_the_papers_settings():
    c = DistillConfig()
    assert (c.optim.student_lr, c.optim.fake_lr) == (1e-4, 1e-2)
    assert c.optim.betas == (0.9, 0.999) and c.optim.weight_decay == 0.0 and c.optim.grad_clip == 1.0
    assert (c.adapter.student_rank, c.adapter.fake_rank) == (256, 32)
    assert (c.adapter.student_targets, c.adapter.fake_targets) == ("paper-student", "paper-fake")
    assert c.vsd.guidance_scale == 1.5 and c.vsd.fake_guidance_scale == 1.5
    assert (c.vsd.t_min, c.vsd.t_max, c.vsd.fake_t_min, c.vsd.fake_t_max) == (20, 980, 0, 999)
    assert c.vsd.null_prob == 0.1 and c.vsd.timestep == 999 and c.vsd.alpha_bar == "scheduler"
    assert c.version == 1


def test_yaml_round_trip(tmp_path):
    c = apply_overrides(DistillConfig(), [("optim.betas", "0.8,0.95"), ("output.sample_prompts", "a red circle,x"),
                                          ("adapter.kind", "dora"), ("train.mixed_precision", "bf16")])
    save_yaml(c, tmp_path / "c.yaml")
    assert load_yaml(tmp_path / "c.yaml") == c
    assert c.optim.betas == (0.8, 0.95) and c.output.sample_prompts == ["a red circle", "x"]


def test_overrides_by_section_and_by_unique_leaf():
    c = apply_overrides(DistillConfig(), parse_override_args(["--train.max_steps", "7", "--fake_lr=0.5",
                                                              "--gradient_checkpointing", "true"]))
    assert c.train.max_steps == 7 and c.optim.fake_lr == 0.5 and c.train.gradient_checkpointing is True
    assert DistillConfig().train.max_steps == 1000  # the input is not mutated


@pytest.mark.parametrize(("pairs", "needle"), [
    ([("train.max_steps", "ten")], "train.max_steps: expected int"),
    ([("adapter.kind", "lokr")], "adapter.kind: expected one of ['lorad', 'lora', 'dora', 'full']"),
    ([("optim.betas", "0.9")], "optim.betas: expected 2 values"),
    ([("seed", "1")], "ambiguous"),
    ([("train.nope", "1")], "--train.nope: no such config field"),
    ([("gradient_checkpointing", "maybe")], "train.gradient_checkpointing: expected bool"),
])
def test_override_errors_name_the_field(pairs, needle):
    with pytest.raises(ConfigError, match=None) as e:
        apply_overrides(DistillConfig(), pairs)
    assert needle in str(e.value)


def test_override_errors_apply_nothing():
    c = DistillConfig()
    with pytest.raises(ConfigError):
        apply_overrides(c, [("train.max_steps", "5"), ("train.batch_size", "x")])
    assert c.train.max_steps == 1000


def test_yaml_errors_name_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"train": {"max_step": 3}}))
    with pytest.raises(ConfigError, match=r"bad.yaml: train: unknown key\(s\) \['max_step'\]"):
        load_yaml(p)
    p.write_text(yaml.safe_dump({"optim": {"student_lr": "fast"}}))
    with pytest.raises(ConfigError, match="optim.student_lr: expected float"):
        load_yaml(p)
    p.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(p)
    with pytest.raises(ConfigError, match="version"):
        from_dict({"version": 99})
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")


def test_hash_tracks_training_fields_only():
    a = DistillConfig()
    h = config_hash(a)
    moved = apply_overrides(a, [("output.dir", "elsewhere"), ("output.checkpoint_every", "3"),
                                ("train.max_steps", "5"), ("resume", "latest")])
    assert config_hash(moved) == h
    for k, v in [("optim.student_lr", "2e-4"), ("adapter.kind", "lora"), ("vsd.guidance_scale", "2"),
                 ("train.seed", "1"), ("train.batch_size", "8")]:
        assert config_hash(apply_overrides(a, [(k, v)])) != h, k
    cos = apply_overrides(a, [("optim.lr_scheduler", "cosine")])
    assert config_hash(apply_overrides(cos, [("train.max_steps", "5")])) != config_hash(cos)


def test_to_dict_is_plain_yaml():
    d = to_dict(DistillConfig())
    assert yaml.safe_load(yaml.safe_dump(d)) == d


def test_cli_print_config_and_errors(capsys):
    from wadi_lorad.trainer.cli import main

    assert main(["distill", "--print-config", "--max_steps", "3", "--adapter.kind", "lora"]) == 0
    d = yaml.safe_load(capsys.readouterr().out)
    assert d["train"]["max_steps"] == 3 and d["adapter"]["kind"] == "lora"
    assert main(["distill", "--max_steps", "many"]) == 2
    assert "train.max_steps: expected int, got 'many'" in capsys.readouterr().err
    assert main(["distill", "--max_steps", "3"]) == 2
    assert "model.base: is required" in capsys.readouterr().err


def test_cli_entry_point_runs_as_a_script():
    r = subprocess.run(cli("distill", "--help"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--section.key" not in r.stderr and "--print-config" in r.stdout


def test_adam_8bit_falls_back_with_a_note_without_cuda():
    import torch
    from wadi_lorad.trainer.config import OptimConfig
    from wadi_lorad.trainer.optim import make_lr_schedule, make_optimizer

    notes = []
    p = [torch.nn.Parameter(torch.zeros(3))]
    opt = make_optimizer(p, 1e-3, OptimConfig(adam_8bit=True), torch.device("cpu"), notes.append)
    assert type(opt) is torch.optim.AdamW and opt.defaults["betas"] == (0.9, 0.999)
    assert notes and "adam_8bit needs CUDA" in notes[0]
    # Warm-up from 0 over 2 steps, then each schedule's formula over the 4 remaining steps.
    frac = [0.0, 0.25, 0.5, 0.75]
    expected = {"linear": [1 - f for f in frac], "cosine": [0.5 * (1 + math.cos(math.pi * f)) for f in frac],
                "constant": [1.0] * 4}
    for name, rest in expected.items():
        sched = make_lr_schedule(torch.optim.SGD(p, lr=1.0), OptimConfig(lr_scheduler=name, warmup_steps=2), 6)
        lrs = []
        for _ in range(6):
            lrs.append(sched.get_last_lr()[0])
            sched.optimizer.step()
            sched.step()
        assert lrs == pytest.approx([0.0, 0.5, *rest], abs=1e-12), name
    no_warmup = make_lr_schedule(torch.optim.SGD(p, lr=1.0), OptimConfig(lr_scheduler="linear"), 4)
    assert no_warmup.get_last_lr() == [1.0]
