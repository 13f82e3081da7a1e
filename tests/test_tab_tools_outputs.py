"""The Files/Analyze tools on the tab's own outputs: a real tiny-world distill job, then `lorad validate`,
`merge` and `analyze` filled from that job (the same path a user takes with "Fill from job")."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("wadi_lorad.trainer.config", reason="the distill trainer is not here")
from wadi_lorad.trainer.tab.app import ASSETS, Settings, TabApp  # noqa: E402
from wadi_lorad.trainer.tab.tools import (  # noqa: E402
    arg_specs,
    build_argv,
    job_files,
    job_values,
    lorad_parser,
    run_tool,
    subcommands,
)

TEACHER = ASSETS / "tinyworld" / "teacher"
pytestmark = pytest.mark.skipif(not (TEACHER / "model_index.json").is_file(), reason="no shipped tiny world")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(app, job id) of a finished 2-step tiny-world distill started from the shipped preset."""
    root = tmp_path_factory.mktemp("tab")
    app = TabApp(Settings.create(roots=[root], default_devices="cpu"))
    values = app.load_preset("distill", "tinyworld")
    index = {s.path: i for i, s in enumerate(app.specs("distill"))}
    for path, v in (("train.max_steps", 2), ("train.batch_size", 2), ("output.sample_every", 0),
                    ("output.checkpoint_every", 0), ("output.dir", "runs/tiny")):
        values[index[path]] = v
    msg, job_id = app.start("distill", values, "cpu")
    assert job_id, msg
    end = time.time() + 600
    while app.store.get(job_id).active and time.time() < end:
        app.runner.poll()
        time.sleep(0.5)
    job = app.store.get(job_id)
    assert job.status == "finished", (job, app.runner.log_tail(job))
    yield app, job_id
    app.runner.close()


def _argv(app, job_id: str, command: str) -> list[str]:
    specs = arg_specs(subcommands(lorad_parser())[command])
    values = job_values(command, specs, job_files(app, job_id))
    values = [True if s.dest == "force" else v for s, v in zip(specs, values)]
    return build_argv(specs, values, app.roots)


def test_job_files_fill_the_tools(finished):
    app, job_id = finished
    job = app.store.get(job_id)
    student = str(Path(job.out_dir) / "student.lorad.safetensors")
    assert [p.name for p in app.downloads(job_id)] == ["student.lorad.safetensors"]  # the download offered
    assert _argv(app, job_id, "validate")[:3] == [student, "--model", str(TEACHER.resolve())]
    merge = _argv(app, job_id, "merge")
    assert merge[:3] == [str(TEACHER.resolve()), student, str(Path(job.out_dir) / "merged-tab")]
    rc, text = run_tool("inspect", _argv(app, job_id, "inspect"), app.roots.base)
    assert rc == 0, text


def test_validate_the_tabs_student(finished):
    app, job_id = finished
    rc, text = run_tool("validate", _argv(app, job_id, "validate"), app.roots.base)
    assert rc == 0, text


def test_merge_then_analyze_the_tabs_student(finished):
    app, job_id = finished
    rc, text = run_tool("merge", _argv(app, job_id, "merge"), app.roots.base)
    assert rc == 0, text
    rc, text = run_tool("analyze", _argv(app, job_id, "analyze"), app.roots.base)
    assert rc == 0, text
