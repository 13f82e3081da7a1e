"""The trainer tab over the real WaDi distillation config and CLI (skips until trainer/config.py exists)."""

from __future__ import annotations

import importlib

import pytest
import yaml

config = pytest.importorskip("wadi_lorad.trainer.config", reason="the distill trainer (trainer/config.py) is not here")

from wadi_lorad.trainer.tab.forms import config_to_values, field_specs, values_to_dict  # noqa: E402
from wadi_lorad.trainer.tab.kinds import BUILTIN_PRESETS, TrainKind, load_kinds  # noqa: E402


def test_form_has_every_distill_field_and_round_trips(tmp_path):
    specs = field_specs(config.DistillConfig)
    assert [s.path for s in specs] == [p for p in config.leaf_paths() if p != "version"]
    cfg = config.apply_overrides(config.DistillConfig(), [
        ("model.base", "assets/tinyworld/teacher"), ("adapter.kind", "dora"), ("optim.betas", "0.8,0.99"),
        ("output.sample_prompts", "a,b"), ("train.max_steps", "7"), ("vsd.guidance_scale", "2.5"),
        ("optim.adam_8bit", "true"),
    ])
    values = config_to_values(cfg, specs)
    back = config.from_dict(values_to_dict(specs, values, version=config.CONFIG_VERSION))
    assert back == cfg
    config.save_yaml(back, tmp_path / "c.yaml")  # the trainer's own YAML writer ...
    assert config_to_values(config.load_yaml(tmp_path / "c.yaml"), specs) == values  # ... and reader


def test_distill_kind_is_registered_with_real_path_fields():
    k = load_kinds()["distill"]
    assert isinstance(k, TrainKind) and k.config_cls is config.DistillConfig and k.subcommand == "distill"
    leaves = config.leaf_paths()
    assert set(k.path_fields) <= set(leaves) and k.out_dir_field in leaves and k.resume_field in leaves


def test_shipped_presets_load_through_the_trainer_config():
    files = sorted((BUILTIN_PRESETS / "distill").glob("*.yaml"))
    assert files, "ship at least one distill preset"
    for f in files:
        data = yaml.safe_load(f.read_text())
        assert data["version"] == config.CONFIG_VERSION, f
        config.from_dict(data)


def test_training_samples_use_the_shared_one_step_function():
    """The grids the tab shows are made by lorad.onestep.generate, the function the ComfyUI nodes use."""
    onestep = importlib.import_module("wadi_lorad.lorad.onestep")
    sampling = importlib.import_module("wadi_lorad.trainer.sampling")
    assert sampling.generate is onestep.generate
