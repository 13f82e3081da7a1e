"""Trainer tab: forms generated from the config dataclass, presets, start/stop/resume through TabApp."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import tab_fake_config as fc  # noqa: E402
from wadi_lorad.trainer.jobs.runner import JobRunner  # noqa: E402
from wadi_lorad.trainer.jobs.store import JobStore  # noqa: E402
from wadi_lorad.trainer.tab.app import Settings, TabApp  # noqa: E402
from wadi_lorad.trainer.tab.forms import config_to_values, field_specs, values_to_dict  # noqa: E402
from wadi_lorad.trainer.tab.kinds import load_kinds  # noqa: E402

FAKE = Path(__file__).with_name("tab_fake_trainer.py")
SOURCES = {"distill": ("Distill (test)", "tab_fake_config", "FakeConfig",
                       {"path_fields": ("model.base", "output.dir")})}


def leaves(obj, prefix=""):
    """Dotted paths of every leaf field, walked independently of forms.field_specs."""
    out = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out += leaves(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [prefix + f.name]
    return out


@pytest.fixture
def app(tmp_path):
    # The fake config's default model.base, as a (tiny) diffusers folder: submit checks its kind.
    (tmp_path / "models" / "teacher").mkdir(parents=True)
    (tmp_path / "models" / "teacher" / "model_index.json").write_text("{}")
    settings = Settings.create(roots=[tmp_path], default_devices="cpu")
    runner = JobRunner(JobStore(settings.jobs_dir), command=lambda sub, args, devs, py: [py, str(FAKE), *args])
    return TabApp(settings, kinds=load_kinds(SOURCES), runner=runner)


def test_every_field_becomes_a_widget_of_its_type():
    specs = field_specs(fc.FakeConfig)
    assert [s.path for s in specs] == [p for p in leaves(fc.FakeConfig()) if p != "version"]
    widgets = {s.path: s.widget for s in specs}
    assert widgets == {
        "model.base": "text", "model.dtype": "dropdown", "train.max_steps": "int", "train.sleep": "float",
        "train.betas": "csv", "train.ranks": "csv", "train.honour_stop": "checkbox", "train.note": "text",
        "output.dir": "text", "output.sample_every": "int", "output.sample_prompts": "lines", "resume": "text",
    }
    by = {s.path: s for s in specs}
    assert by["model.dtype"].choices == ("auto", "fp32", "bf16")
    assert by["train.note"].optional and not by["train.sleep"].optional
    # help: metadata first, else the trailing comment, else the comment block above the field
    assert by["train.sleep"].help == "seconds per fake step"
    assert by["model.base"].help == "diffusers folder of the teacher"
    assert by["model.dtype"].help == "precision of the frozen weights (two comment lines above the field)"
    assert by["train.max_steps"].help == ""


def test_round_trip_config_form_yaml_form():
    cfg = fc.FakeConfig()
    cfg.train.max_steps, cfg.train.betas, cfg.train.note = 7, (0.5, 0.25), "hello, world"
    cfg.output.sample_prompts = ["a, b", "c"]
    specs = field_specs(fc.FakeConfig)
    values = config_to_values(cfg, specs)
    assert values[specs.index(next(s for s in specs if s.path == "train.betas"))] == "0.5, 0.25"
    back = fc.from_dict(values_to_dict(specs, values, version=fc.CONFIG_VERSION))
    assert back == cfg
    again = fc.from_dict(yaml.safe_load(yaml.safe_dump(fc.to_dict(back))))
    assert config_to_values(again, specs) == values
    # An emptied optional field is None, not "".
    values[[s.path for s in specs].index("train.note")] = ""
    assert fc.from_dict(values_to_dict(specs, values)).train.note is None


def test_blocks_contain_every_field(app):
    import gradio as gr
    from wadi_lorad.trainer.tab.layout import blocks

    demo = blocks(app)
    assert isinstance(demo, gr.Blocks)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {s.elem_id for s in field_specs(fc.FakeConfig)} <= ids
    assert {"wadi-start-distill", "wadi-stop-distill", "wadi-resume-distill", "wadi-progress-distill",
            "wadi-sample-distill", "wadi-plot-distill", "wadi-log-distill"} <= ids
    labels = {getattr(b, "label", None) for b in demo.blocks.values()}
    assert {"model", "train", "output"} <= labels  # one accordion per section


def test_preset_save_then_one_load_restores_every_value(app, tmp_path):
    specs = app.specs("distill")
    cfg = fc.FakeConfig()
    cfg.train.max_steps, cfg.model.dtype, cfg.output.sample_prompts = 3, "bf16", ["x"]
    values = config_to_values(cfg, specs)
    path = app.save_preset("distill", "quick", values)
    assert path == app.settings.presets_dir / "distill" / "quick.yaml"
    assert yaml.safe_load(path.read_text())["version"] == fc.CONFIG_VERSION
    assert "quick" in app.preset_choices("distill")
    assert app.load_preset("distill", "quick") == values
    with pytest.raises(FileExistsError, match="overwrite"):
        app.save_preset("distill", "quick", values)
    with pytest.raises(ValueError, match="preset name"):
        app.save_preset("distill", "../escape", values)


def test_old_preset_versions_are_migrated_and_bad_ones_named(app, tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({"version": 1, "out": {"dir": "runs/old"}}))
    values = app.load_uploaded("distill", str(old))
    assert values[[s.path for s in app.specs("distill")].index("output.dir")] == "runs/old"
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_steps: many\n")
    with pytest.raises(ValueError, match=r"bad.yaml: train.max_steps: expected int"):
        app.load_uploaded("distill", str(bad))
    big = tmp_path / "big.yaml"
    big.write_text("# pad\n" * 300_000)
    with pytest.raises(ValueError, match="the limit is 1048576 bytes"):
        app.load_uploaded("distill", str(big))


def _wait(app, job_id, pred, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        app.runner.poll()
        job = app.store.get(job_id)
        if pred(job):
            return job
        time.sleep(0.05)
    raise AssertionError(app.store.get(job_id))


def test_start_stop_resume_finish_through_the_app(app, tmp_path):
    specs = app.specs("distill")
    cfg = fc.FakeConfig()
    cfg.train.max_steps, cfg.train.sleep, cfg.output.sample_every = 60, 0.05, 5
    msg, job_id = app.start("distill", config_to_values(cfg, specs), "cpu")
    assert job_id and msg.startswith(f"Started job {job_id}")
    job_cfg = yaml.safe_load(app.runner.config_path(app.store.get(job_id)).read_text())
    assert job_cfg["output"]["dir"] == str(tmp_path.resolve() / "runs" / "a")  # absolute in the job's config
    assert job_cfg["version"] == fc.CONFIG_VERSION and job_cfg["train"]["max_steps"] == 60
    _wait(app, job_id, lambda j: (app.view(j.id).n_records or 0) > 8)
    v = app.view(job_id)
    assert v.progress.startswith("step ") and "/ 60" in v.progress and v.plot_png[:4] == b"\x89PNG"
    assert v.sample is not None and v.sample.name.startswith("sample_")
    assert "Stopping job" in app.stop(job_id)
    stopped = _wait(app, job_id, lambda j: not j.active)
    assert stopped.status == "stopped"
    at = app.view(job_id)
    step_at_stop = int(at.progress.split()[1])
    assert step_at_stop < 60
    msg, new_id = app.resume(job_id, "cpu")
    assert new_id and "resuming" in msg
    assert app.store.get(new_id).argv[-2:] == ["--resume", "latest"]
    done = _wait(app, new_id, lambda j: not j.active)
    assert done.status == "finished" and done.resume_of == job_id
    fin = app.view(new_id)
    assert fin.progress.startswith("step 60 / 60") and fin.status.startswith("**finished**")
    # One state, in the status line only: the progress line never names one that could contradict it.
    assert not any(word in fin.progress for word in ("done", "stopped", "killed", "finished"))
    # the resumed run continued from the checkpoint: no step was logged twice
    steps = [r["step"] for r in app._tails[new_id].records if r.get("event") == "step"]
    assert steps == list(range(1, 61))


def test_bad_input_starts_nothing(app, tmp_path):
    specs = app.specs("distill")
    paths = [s.path for s in specs]
    values = config_to_values(fc.FakeConfig(), specs)
    outside = list(values)
    outside[paths.index("output.dir")] = "../elsewhere"
    msg, job_id = app.start("distill", outside, "cpu")
    assert job_id is None and "outside the allowed folders" in msg and "output.dir" in msg
    invalid = list(values)
    invalid[paths.index("train.max_steps")] = 0
    msg, job_id = app.start("distill", invalid, "cpu")
    assert job_id is None and "train.max_steps: must be >= 1" in msg
    msg, job_id = app.start("distill", values, "gpu0")
    assert job_id is None and "devices:" in msg
    assert app.jobs() == []


def test_refusal_message_when_not_queueing(app):
    specs = app.specs("distill")
    cfg = fc.FakeConfig()
    cfg.train.max_steps, cfg.train.sleep = 1000, 0.05
    _, first = app.start("distill", config_to_values(cfg, specs), "cpu")
    msg, second = app.start("distill", config_to_values(cfg, specs), "cpu", queue=False)
    assert second is None and f"busy with job {first}" in msg
    msg, third = app.start("distill", config_to_values(cfg, specs), "cpu", queue=True)
    assert third and f"queued behind job {first}" in msg
    app.stop(third)
    app.stop(first)
    _wait(app, first, lambda j: not j.active)


def test_unavailable_kinds_say_why():
    kinds = load_kinds({"relation": ("Relation", "..no_such_module", "RelationConfig", {})})
    assert isinstance(kinds["relation"], str) and "not in this build" in kinds["relation"]


def test_one_app_per_jobs_folder(tmp_path):
    from wadi_lorad.trainer.jobs.runner import RunnerBusy

    settings = Settings.create(roots=[tmp_path], default_devices="cpu")
    first = TabApp(settings, kinds={})
    with pytest.raises(RunnerBusy, match=r"another trainer app \(pid \d+\) manages .*--jobs-dir"):
        TabApp(settings, kinds={})
    first.runner.close()
    TabApp(settings, kinds={}).runner.close()  # free again once the first is gone
