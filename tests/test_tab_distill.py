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


FINETUNES = {  # kind -> (config module, class, non-default values that exercise every widget type)
    "personalize": ("wadi_lorad.trainer.personalize", "PersonalizeConfig", [
        ("model.base", "assets/tinyworld/teacher"), ("model.student", "runs/s/student.lorad.safetensors"),
        ("data.images", "data/sks"), ("data.instance_prompt", "a sks shape"), ("data.captions", "files"),
        ("prior.enabled", "true"), ("prior.weight", "0.5"), ("optim.betas", "0.8,0.99"), ("adapter.rank", "4"),
        ("output.sample_prompts", "a sks shape,a sks shape on the left"), ("objective.kind", "onestep")]),
    "relation": ("wadi_lorad.trainer.relation", "RelationConfig", [
        ("model.base", "assets/tinyworld/teacher"), ("data.images", "data/left_of"), ("token.placeholder", "<L>"),
        ("steer.prepositions", "left,right,of"), ("steer.weight", "0.05"), ("denoise.importance_sampling", "false"),
        ("output.sample_prompts", "a red circle <L> a blue square"), ("train.max_steps", "7")]),
}


@pytest.mark.parametrize("kind", sorted(FINETUNES))
def test_finetune_tabs_are_live_with_generated_forms(kind, tmp_path):
    """Personalize and Relation: registered from their config modules; every field a widget; one-load presets."""
    from wadi_lorad.trainer.config import apply_overrides, leaf_paths
    from wadi_lorad.trainer.jobs.runner import JobRunner
    from wadi_lorad.trainer.jobs.store import JobStore
    from wadi_lorad.trainer.tab.app import Settings, TabApp

    module, cls_name, pairs = FINETUNES[kind]
    mod = importlib.import_module(module)
    k = load_kinds()[kind]
    assert isinstance(k, TrainKind), k
    assert k.config_cls is getattr(mod, cls_name) and k.subcommand == kind and k.version == mod.CONFIG_VERSION
    leaves = leaf_paths(k.config_cls)
    specs = field_specs(k.config_cls)
    assert [s.path for s in specs] == [p for p in leaves if p != "version"]
    assert set(k.path_fields) <= set(leaves) and k.out_dir_field in leaves and k.resume_field in leaves
    by = {s.path: s for s in specs}
    assert by["model.base"].help.startswith("diffusers folder")  # help inherited from the distill sections
    assert by["train.ema_decay"].widget == "float" and by["output.sample_prompts"].widget == "lines"
    cfg = apply_overrides(k.config_cls(), pairs)
    values = config_to_values(cfg, specs)
    assert mod.from_dict(values_to_dict(specs, values, version=k.version)) == cfg
    # Presets through the tab: save, one load restores every value; the shipped preset loads too.
    settings = Settings.create(roots=[tmp_path], default_devices="cpu")
    app = TabApp(settings, kinds=load_kinds(), runner=JobRunner(JobStore(settings.jobs_dir), attach=False))
    assert app.save_preset(kind, "mine", values).parent == settings.presets_dir / kind
    assert app.load_preset(kind, "mine") == values
    shipped = sorted((BUILTIN_PRESETS / kind).glob("*.yaml"))
    assert shipped, f"ship at least one {kind} preset"
    for f in shipped:
        assert yaml.safe_load(f.read_text())["version"] == mod.CONFIG_VERSION
        mod.validate(app.kind(kind).load_yaml(f))
        assert f.stem in app.preset_choices(kind)
    # The page: the tab with every field and its job controls.
    from wadi_lorad.trainer.tab.layout import blocks

    demo = blocks(app)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {s.elem_id for s in specs} <= ids
    assert {f"wadi-tab-{kind}", f"wadi-start-{kind}", f"wadi-stop-{kind}", f"wadi-resume-{kind}"} <= ids
    # A form value the CLI would refuse is refused by the tab with the same message.
    bad = list(values)
    bad[[s.path for s in specs].index("train.max_steps")] = 0
    assert app.preview(kind, bad)[0].startswith("# not valid: train.max_steps: must be >= 1")
