"""A first run that works: the shipped tiny-world preset, paths resolved once for form and job, and every
path's existence and kind checked at submit (nothing is queued on a bad one)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

pytest.importorskip("wadi_lorad.trainer.config", reason="the distill trainer is not here")
from wadi_lorad.trainer import config  # noqa: E402
from wadi_lorad.trainer.jobs.runner import JobRunner  # noqa: E402
from wadi_lorad.trainer.jobs.store import Job, JobStore  # noqa: E402
from wadi_lorad.trainer.tab import checks  # noqa: E402
from wadi_lorad.trainer.tab.app import ASSETS, Settings, TabApp  # noqa: E402
from wadi_lorad.trainer.tab.forms import config_to_values  # noqa: E402
from wadi_lorad.trainer.tab.kinds import BUILTIN_PRESETS, load_kinds  # noqa: E402

TEACHER = ASSETS / "tinyworld" / "teacher"
PROMPTS = ASSETS / "tinyworld" / "prompts.txt"
needs_assets = pytest.mark.skipif(not (TEACHER / "model_index.json").is_file(), reason="no shipped tiny world")


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # `wadi tab` started in an empty folder
    settings = Settings.create(default_devices="cpu")
    # Jobs run a no-op instead of the trainer: these tests are about what is submitted.
    runner = JobRunner(JobStore(settings.jobs_dir), command=lambda s, a, d, py: [py, "-c", "import time; time.sleep(30)"])
    a = TabApp(settings, kinds=load_kinds(), runner=runner)
    yield a
    for job in a.jobs():
        if job.active:
            a.runner.stop(job.id)
    a.runner.grace_s = 0.0
    end = time.time() + 20
    while any(j.active for j in a.runner.poll()) and time.time() < end:
        time.sleep(0.1)


def test_shipped_prompts_are_the_domains_own_captions():
    from wadi_lorad.trainer.tinyworld.domain import sample_captions

    assert PROMPTS.read_text(encoding="utf-8").splitlines() == sample_captions(2000, seed=0)


def test_tinyworld_preset_is_the_demo_recipe():
    from wadi_lorad.trainer.demo import DEMO_OVERRIDES, DemoSettings, demo_config

    preset = config.from_dict(yaml.safe_load((BUILTIN_PRESETS / "distill" / "tinyworld.yaml").read_text()))
    demo = config.apply_overrides(config.DistillConfig(), list(DEMO_OVERRIDES.items()))
    flat_preset, flat_demo = _flat(config.to_dict(preset)), _flat(config.to_dict(demo))
    for key in DEMO_OVERRIDES:
        assert flat_preset[key] == flat_demo[key], key
    # the demo's cosine spans twice its run, which demo_config sets from the demo's steps
    settings = DemoSettings()
    run = demo_config(settings, PROMPTS)
    assert (preset.train.max_steps, preset.optim.schedule_steps) == (settings.steps, run.optim.schedule_steps)
    assert run.optim.schedule_steps == 2 * settings.steps
    assert preset.model.base == "assets/tinyworld/teacher" and preset.data.prompts == "assets/tinyworld/prompts.txt"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


@needs_assets
def test_tinyworld_is_preselected_and_resolves_the_same_in_form_and_job(app, tmp_path):
    assert app.first_run_preset("distill") == "tinyworld"
    values = app.load_preset("distill", "tinyworld")
    msg, job_id = app.start("distill", values, "cpu")
    assert job_id, msg
    job = app.store.get(job_id)
    sent = yaml.safe_load(Path(app.runner.config_path(job)).read_text())
    # What the form resolved is what the job reads: absolute paths, from any working folder.
    assert sent["model"]["base"] == str(TEACHER.resolve())
    assert sent["data"]["prompts"] == str(PROMPTS.resolve())
    assert sent["output"]["dir"] == str((tmp_path / "outputs" / "tinyworld").resolve())
    assert app.job_row(job)[1] == "WaDi tiny-world student" and app.job_row(job)[4] == sent["output"]["dir"]
    # The user's own preset means they have configured something: nothing is preselected any more.
    app.save_preset("distill", "mine", values)
    assert app.first_run_preset("distill") is None


@needs_assets
def test_bad_paths_are_refused_at_submit_and_nothing_is_queued(app, tmp_path):
    base = app.load_preset("distill", "tinyworld")
    specs = app.specs("distill")
    index = {s.path: i for i, s in enumerate(specs)}
    (tmp_path / "nomodel").mkdir()
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "used" / "checkpoints").mkdir(parents=True)
    (tmp_path / "used" / "events.jsonl").write_text("")
    cases = [
        ({"model.base": "missing"}, "model.base: .* does not exist"),
        ({"model.base": "nomodel"}, "model.base: .* has no model_index.json"),
        ({"model.base": "empty.txt"}, "model.base: .* is a file"),
        ({"data.prompts": "nope.txt"}, "data.prompts: .* does not exist"),
        ({"data.prompts": "nomodel"}, "data.prompts: .* is a folder"),
        ({"data.prompts": "empty.txt"}, "data.prompts: .*no prompts"),
        ({"output.dir": "used"}, "output.dir: .* already holds a run .*Resume"),
        ({"output.dir": str(TEACHER.parent / "run")}, "output.dir: .* read-only"),
    ]
    for change, pattern in cases:
        values = list(base)
        for path, v in change.items():
            values[index[path]] = v
        msg, job_id = app.start("distill", values, "cpu")
        assert job_id is None and msg.startswith("Not started: "), (change, msg)
        assert re.search(pattern, msg), (change, msg)
    assert app.jobs() == []
    values = list(base)
    values[index["output.dir"]], values[index["output.force"]] = "used", True
    assert app.start("distill", values, "cpu")[1]  # force: starting over is what was asked


@needs_assets
def test_resume_refuses_when_an_input_is_gone(app, tmp_path):
    import shutil

    shutil.copytree(TEACHER, tmp_path / "teacher")
    values = app.load_preset("distill", "tinyworld")
    values[[s.path for s in app.specs("distill")].index("model.base")] = "teacher"
    msg, job_id = app.start("distill", values, "cpu")
    assert job_id, msg
    app.runner.grace_s = 0.0  # the stand-in job ignores the stop file
    app.stop(job_id)
    end = time.time() + 30
    while app.store.get(job_id).active and time.time() < end:
        app.runner.poll()
        time.sleep(0.1)
    shutil.rmtree(tmp_path / "teacher")
    msg, new_id = app.resume(job_id, "cpu")
    assert new_id is None and re.search("Not resumed: model.base: .*teacher does not exist", msg), msg


def test_images_folder_needs_readable_images(tmp_path):
    folder = tmp_path / "imgs"
    with pytest.raises(ValueError, match="data.images: .* does not exist"):
        checks.images_folder(folder, "data.images")
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no image"):
        checks.images_folder(folder, "data.images")
    Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / "ok.png")
    checks.images_folder(folder, "data.images")  # one readable image
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read broken.png as an image"):
        checks.images_folder(folder, "data.images")  # the trainer would stop at it
    with pytest.raises(ValueError, match="is a file"):
        checks.images_folder(folder / "ok.png", "data.images")
    (folder / "broken.png").unlink()

    class Data:  # the fine-tunes' data section: captions are checked by the trainer's own rule
        captions, instance_prompt, jsonl_key = "files", "", "text"

    class Cfg:
        data = Data()

    with pytest.raises(ValueError, match="data.images: .*ok.png: image without a caption"):
        checks.images_folder(folder, "data.images", Cfg())
    (folder / "ok.txt").write_text("a red square")
    checks.images_folder(folder, "data.images", Cfg())


def test_personalize_refuses_a_file_as_images_folder(app, tmp_path):
    if "personalize" not in app.kinds or isinstance(app.kinds["personalize"], str):
        pytest.skip("personalize is not in this build")
    k = app.kind("personalize")
    cfg = k.config_cls()
    cfg.model.base = str(TEACHER) if TEACHER.is_dir() else "missing"
    (tmp_path / "one.png").write_bytes(b"x")
    cfg.data.images = "one.png"
    cfg.data.instance_prompt = "a photo of sks dog"
    msg, job_id = app.start("personalize", config_to_values(cfg, app.specs("personalize")), "cpu")
    assert job_id is None and ("data.images" in msg or "model.base" in msg), msg


def test_queued_jobs_are_listed_and_cancellable(app, tmp_path):
    if not (TEACHER / "model_index.json").is_file():
        pytest.skip("no shipped tiny world")
    base = app.load_preset("distill", "tinyworld")
    index = {s.path: i for i, s in enumerate(app.specs("distill"))}
    ids = []
    for name in ("first", "second"):
        values = list(base)
        values[index["output.dir"]] = f"runs/{name}"
        ids.append(app.start("distill", values, "cpu")[1])
    queued = app.store.get(ids[1])
    assert queued.status == "queued" and ids[0] in queued.message
    row = app.job_row(queued)
    assert row[1] == "WaDi tiny-world student" and row[2] == "queued" and row[4].endswith("runs/second")
    assert "cancelled" in app.stop(ids[1])
    assert app.store.get(ids[1]).status == "cancelled"


def test_copy_to_comfy_models_lorad(tmp_path):
    comfy = tmp_path / "models" / "lorad"
    settings = Settings.create(roots=[tmp_path], default_devices="cpu", comfy_lorad_dir=str(comfy))
    app = TabApp(settings, kinds={}, runner=JobRunner(JobStore(settings.jobs_dir)))
    out = tmp_path / "runs" / "cat"
    out.mkdir(parents=True)
    (out / "student.lorad.safetensors").write_bytes(b"student")
    (out / "events.jsonl").write_text(json.dumps({"event": "export", "kind": "student",
                                                  "path": str(out / "student.lorad.safetensors")}) + "\n")
    app.store.add(Job(id="j1", kind="distill", argv=[], job_dir=str(tmp_path / "j"), out_dir=str(out),
                      status="finished"))
    assert app.copy_to_comfy("j1").startswith("Copied to ")
    assert (comfy / "cat.lorad.safetensors").read_bytes() == b"student"
    assert "exists" in app.copy_to_comfy("j1")  # no silent overwrite
    (out / "student.lorad.safetensors").write_bytes(b"student v2")
    assert app.copy_to_comfy("j1", overwrite=True).startswith("Copied")
    assert (comfy / "cat.lorad.safetensors").read_bytes() == b"student v2"
    plain = TabApp(Settings.create(roots=[tmp_path / "other"], default_devices="cpu"), kinds={},
                   runner=JobRunner(JobStore(tmp_path / "other" / "jobs")))
    plain.store.add(Job(id="j1", kind="distill", argv=[], job_dir="j", out_dir=str(out), status="finished"))
    assert "not running beside ComfyUI" in plain.copy_to_comfy("j1")


def test_linked_recipe_is_listed_once_its_file_exists(tmp_path, monkeypatch):
    from wadi_lorad.trainer.tab import kinds

    recipe = tmp_path / "configs" / "tinyworld-quality.yaml"
    monkeypatch.setitem(kinds.LINKED_PRESETS, "distill", {"tinyworld-quality": recipe})
    assert "tinyworld-quality" not in kinds.preset_files("distill", tmp_path / "presets")
    recipe.parent.mkdir()
    recipe.write_text((BUILTIN_PRESETS / "distill" / "tinyworld.yaml").read_text())
    files = kinds.preset_files("distill", tmp_path / "presets")
    assert files["tinyworld-quality"] == recipe and "tinyworld" in files
