"""The trainer tab in a real browser (Playwright + Debian's chromium).

Drives the page like a user: load a preset once, start a job, watch progress and a
sample image arrive, stop, resume, see it finish, reload the page and find the jobs
again.  Screenshots go to outputs/test-artifacts/tab-browser*/ (or $WADI_TEST_ARTIFACTS).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import tab_browser as tb  # noqa: E402

pytestmark = pytest.mark.skipif(tb.skip_reason() is not None, reason=tb.skip_reason() or "")

FAKE = Path(__file__).with_name("tab_fake_trainer.py")


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=tb.CHROMIUM, args=tb.FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def stop_all(app) -> None:
    """Leave no job running behind a failed test."""
    for job in app.jobs():
        if job.active:
            app.runner.stop(job.id)
    app.runner.close()
    end = time.time() + 20
    while any(j.active for j in app.runner.poll()) and time.time() < end:
        time.sleep(0.1)


def drive_job(pg: tb.Page, kind: str, total: int, stopped=("stopped",), step_s: float = 0.0,
              before_resume=None) -> tuple[int, int]:
    """Start -> progress + sample -> stop -> resume -> finish, with a screenshot at each stage.

    ``step_s`` is how long a step is expected to take (the waits scale with it); returns the
    step shown when the job had stopped.
    """
    page = pg.page
    page.click(f"#wadi-start-{kind}")
    first = pg.wait("progress to start", lambda: pg.step(f"wadi-progress-{kind}"), timeout=60 + 3 * step_s)
    assert first[1] == total
    pg.wait("progress to advance", lambda: (s := pg.step(f"wadi-progress-{kind}")) and s[0] > first[0],
            timeout=60 + 3 * step_s)
    pg.shot("running")
    pg.wait("a sample image", lambda: pg.image_src(f"wadi-sample-{kind}"), timeout=180 + 3 * step_s)
    assert pg.image_src(f"wadi-plot-{kind}")  # loss curves
    pg.shot("sample")
    page.click(f"#wadi-stop-{kind}")
    pg.wait("the stop message", lambda: "Stopping job" in pg.text(f"wadi-job-msg-{kind}"))
    if step_s:  # slow steps: the page says which step is being finished before the checkpoint
        pg.wait("'stopping: finishing step N'",
                lambda: "stopping: finishing step" in pg.text(f"wadi-status-{kind}") or
                pg.text(f"wadi-status-{kind}").split("·")[0].strip() in stopped)
        pg.shot("stopping")
    pg.wait("the job to stop", lambda: pg.text(f"wadi-status-{kind}").split("·")[0].strip() in stopped,
            timeout=60 + 4 * step_s)
    at_stop = pg.step(f"wadi-progress-{kind}")
    assert at_stop and at_stop[0] < total, at_stop
    pg.shot("stopped")
    if before_resume is not None:
        before_resume(at_stop[0])
    page.click(f"#wadi-resume-{kind}")
    pg.wait("the resume message", lambda: "resuming" in pg.text(f"wadi-job-msg-{kind}"))
    pg.wait("the resumed job to finish", lambda: "finished" in pg.text(f"wadi-status-{kind}").split("·")[0],
            timeout=300, progress=lambda: pg.step(f"wadi-progress-{kind}"))
    assert pg.step(f"wadi-progress-{kind}") == (total, total)
    assert "resumes" in pg.text(f"wadi-status-{kind}")
    pg.shot("finished")
    return at_stop[0]


def test_browser_fake_trainer_preset_stop_resume_reload(browser, tmp_path):
    """The whole page flow against a stand-in trainer (fast; every control of the Distill tab)."""
    import tab_fake_config as fc
    from wadi_lorad.trainer.jobs.runner import JobRunner
    from wadi_lorad.trainer.jobs.store import JobStore
    from wadi_lorad.trainer.tab.app import Settings, TabApp
    from wadi_lorad.trainer.tab.kinds import load_kinds
    from wadi_lorad.trainer.tab.layout import blocks

    settings = Settings.create(roots=[tmp_path], default_devices="cpu")
    preset = settings.presets_dir / "distill" / "quick.yaml"
    preset.parent.mkdir(parents=True)
    cfg = fc.to_dict(fc.FakeConfig())
    cfg["train"].update(max_steps=40, sleep=0.1, ranks=[3, 5])
    cfg["model"]["dtype"] = "bf16"
    cfg["output"].update(dir="runs/quick", sample_every=5, sample_prompts=["one", "two", "three"])
    preset.write_text(yaml.safe_dump(cfg))
    runner = JobRunner(JobStore(settings.jobs_dir), command=lambda s, a, d, py: [py, str(FAKE), *a])
    app = TabApp(settings, kinds=load_kinds({"distill": ("Distill (WaDi)", "tab_fake_config", "FakeConfig", {})}),
                 runner=runner)
    runner.start_monitor()
    demo = blocks(app)
    url = tb.launch(demo, tb.free_port())
    try:
        pg = tb.Page(browser.new_page(viewport={"width": 1400, "height": 1000}), tb.artifacts_dir("tab-browser-fake"))
        pg.page.goto(url)
        pg.page.wait_for_selector("#wadi-start-distill", timeout=60_000)
        assert pg.value("cfg-train-max-steps") == "20"
        pg.choose("wadi-preset-distill", "quick")
        pg.page.click("#wadi-load-distill")  # ONE load
        pg.wait("the preset to load", lambda: "Loaded preset" in pg.text("wadi-form-msg-distill"))
        assert pg.value("cfg-train-max-steps") == "40"
        assert pg.value("cfg-train-ranks") == "3, 5"
        assert pg.value("cfg-output-dir") == "runs/quick"
        assert pg.value("cfg-output-sample-prompts") == "one\ntwo\nthree"
        assert pg.value("cfg-model-dtype") == "bf16"
        pg.shot("preset-loaded")
        drive_job(pg, "distill", 40)
        pg.page.reload()
        pg.page.wait_for_selector("#wadi-jobs-distill", timeout=60_000)
        pg.wait("the job list after a reload", lambda: pg.text("wadi-jobs-distill").count("distill") >= 2)
        assert "finished" in pg.text("wadi-jobs-distill") and "stopped" in pg.text("wadi-jobs-distill")
        pg.shot("after-reload")
    finally:
        stop_all(app)
        demo.close()


TEACHER = tb.ROOT / "assets" / "tinyworld" / "teacher"
TINY_PROMPTS = ["a red circle on the left", "a blue square on the right", "a green triangle at the top",
                "a yellow circle at the bottom", "a small red square", "a big blue circle"]


def _base_and_prompts(tmp_path: Path) -> tuple[Path, Path]:
    """The shipped tiny-world teacher, else (before it lands) the distill tests' tiny random SD folder."""
    prompts = tmp_path / "prompts.txt"
    if (TEACHER / "model_index.json").is_file():
        from wadi_lorad.trainer.tinyworld.domain import sample_captions

        prompts.write_text("\n".join(sample_captions(64, seed=0)) + "\n")  # the domain's own captions
        return TEACHER, prompts
    prompts.write_text("\n".join(TINY_PROMPTS) + "\n")
    tiny = pytest.importorskip("tiny_models", reason="neither the tiny-world teacher nor tests/tiny_models.py is here")
    return tiny.build_tiny(tmp_path / "base", "sd", 0), prompts


SLOW_STEP_S = 20.0  # a real SDXL step at batch 16 takes seconds; the stop must not lose it


def test_browser_real_distill_start_stop_resume(browser, tmp_path, monkeypatch):
    """The real thing: `wadi distill` (the CLI subprocess) on the tiny world, driven from the page.

    Every step is slowed to 20 s (the trainer's test-only hook, trainer/events.py) until the
    stop: the stop must wait for the step in flight and its checkpoint, not kill it.  The
    resumed run goes at full speed and must start exactly where the stop saved.
    """
    C = pytest.importorskip("wadi_lorad.trainer.config", reason="the distill trainer is not here")
    from wadi_lorad.trainer.events import TEST_STEP_SLEEP_ENV
    from wadi_lorad.trainer.tab.app import Settings
    from wadi_lorad.trainer.tab.layout import build_app

    base, prompts = _base_and_prompts(tmp_path)
    slow = tmp_path / "step-sleep.txt"
    slow.write_text(str(SLOW_STEP_S))
    monkeypatch.setenv(TEST_STEP_SLEEP_ENV, str(slow))  # jobs inherit the app's environment
    settings = Settings.create(roots=[tmp_path, base.parent], default_devices="cpu")
    # No periodic checkpoint: the only one before the resume is the one the stop writes.
    total = 30
    cfg = C.apply_overrides(C.DistillConfig(), [
        ("model.base", str(base)), ("data.prompts", prompts.name), ("output.dir", "runs/tiny"),
        ("adapter.student_rank", "4"), ("adapter.fake_rank", "2"), ("train.batch_size", "2"),
        ("train.max_steps", str(total)), ("output.checkpoint_every", "1000"), ("output.sample_every", "1"),
        ("output.num_samples", "2"),
    ])
    (settings.presets_dir / "distill").mkdir(parents=True)
    C.save_yaml(cfg, settings.presets_dir / "distill" / "tiny-browser.yaml")
    demo = build_app(settings)
    url = tb.launch(demo, tb.free_port())
    try:
        pg = tb.Page(browser.new_page(viewport={"width": 1400, "height": 1000}),
                     tb.artifacts_dir("tab-browser-distill"))
        pg.page.goto(url)
        pg.page.wait_for_selector("#wadi-start-distill", timeout=60_000)
        pg.choose("wadi-preset-distill", "tiny-browser")
        pg.page.click("#wadi-load-distill")
        pg.wait("the preset to load", lambda: pg.value("cfg-train-max-steps") == str(total))
        assert pg.value("cfg-data-prompts") == "prompts.txt"
        seen = {}

        def speed_up(at_stop: int) -> None:
            seen["status"] = pg.text("wadi-status-distill")
            slow.write_text("0")

        # cooperative: the trainer finishes its 20 s step, saves, exits; never "killed"
        at_stop = drive_job(pg, "distill", total, stopped=("stopped",), step_s=SLOW_STEP_S, before_resume=speed_up)
        out = tmp_path / "runs" / "tiny"
        records = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
        events = [r["event"] for r in records]
        assert events.count("stopped") == 1 and events.count("resume") == 1 and events[-1] == "done", events
        stop_rec = next(r for r in records if r["event"] == "stopped")
        resume_rec = next(r for r in records if r["event"] == "resume")
        ckpts = [r["step"] for r in records if r["event"] == "checkpoint"]
        # No work lost: the stop checkpointed the step it showed, and the resume began there.
        assert stop_rec["step"] == at_stop == ckpts[0] == resume_rec["step"], (at_stop, stop_rec, ckpts, resume_rec)
        assert f"last checkpoint: step {at_stop}" in seen["status"], seen["status"]
        assert "killed" not in seen["status"]
        assert (out / "student.lorad.safetensors").is_file(), sorted(p.name for p in out.iterdir())
        from safetensors import safe_open

        with safe_open(str(out / "student.lorad.safetensors"), "pt") as fh:
            meta = fh.metadata()
        assert json.loads(meta["lorad.provenance.resumed_at_steps"]) == [at_stop], meta  # the resume is on record
        assert meta["lorad.provenance.steps"] == str(total)
    finally:
        stop_all(demo.wadi_app)
        demo.close()


def test_browser_first_run_from_the_preset_to_a_downloaded_file(browser, tmp_path, monkeypatch):
    """A new user: the tinyworld preset is already loaded; shorten it, Start, download the .lorad.
    The same page cannot fetch a secret planted under its root."""
    if not (TEACHER / "model_index.json").is_file():
        pytest.skip("no shipped tiny world")
    from wadi_lorad.trainer.events import TEST_STEP_SLEEP_ENV
    from wadi_lorad.trainer.tab.app import Settings
    from wadi_lorad.trainer.tab.cli import launch_options
    from wadi_lorad.trainer.tab.layout import build_app

    monkeypatch.delenv(TEST_STEP_SLEEP_ENV, raising=False)
    (tmp_path / ".env").write_text("API_TOKEN=fake-secret\n")
    settings = Settings.create(roots=[tmp_path], default_devices="cpu")
    demo = build_app(settings)
    port = tb.free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                        **launch_options(settings))
    try:
        pg = tb.Page(browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True),
                     tb.artifacts_dir("tab-browser-first-run"))
        pg.page.goto(f"http://127.0.0.1:{port}/")
        pg.page.wait_for_selector("#wadi-start-distill", timeout=60_000)
        assert pg.value("cfg-model-base") == "assets/tinyworld/teacher"  # preselected, nothing typed
        assert pg.value("cfg-data-prompts") == "assets/tinyworld/prompts.txt"
        assert pg.value("wadi-preset-distill") == "tinyworld"
        pg.shot("first-run")
        for field, value in (("train-max-steps", "3"), ("train-batch-size", "2"), ("output-sample-every", "0"),
                             ("output-checkpoint-every", "0")):
            box = pg.page.locator(f"#cfg-{field} input").first
            box.fill(value)
            box.press("Tab")
        pg.page.click("#wadi-start-distill")
        pg.wait("the job to start", lambda: "Started job" in pg.text("wadi-job-msg-distill"))
        pg.wait("the job to finish", lambda: pg.text("wadi-status-distill").split("·")[0].strip() == "finished",
                timeout=600, progress=lambda: pg.text("wadi-progress-distill"))
        link = pg.page.locator("#wadi-results-distill a[href*='student.lorad.safetensors']")
        pg.wait("the download link", lambda: link.count() > 0, timeout=60)
        pg.shot("finished-with-download")
        with pg.page.expect_download() as info:
            link.first.click()
        got = tmp_path / "downloaded.lorad.safetensors"
        info.value.save_as(got)
        out = tmp_path / "outputs" / "tinyworld"
        assert got.read_bytes() == (out / "student.lorad.safetensors").read_bytes()
        secret = pg.page.request.get(f"http://127.0.0.1:{port}/gradio_api/file={tmp_path / '.env'}")
        assert secret.status in (403, 404) and b"fake-secret" not in secret.body()
    finally:
        stop_all(demo.wadi_app)
        demo.close()
