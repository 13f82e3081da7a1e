"""A stop that never loses work: a grace that scales with the run's own step time, and checkpoints
that a kill cannot tear (driven by the stand-in trainer and the real checkpoint writer)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from tab_runner_helpers import make_runner, wait_for
from wadi_lorad.trainer.jobs import EVENTS_FILE_NAME
from wadi_lorad.trainer.jobs.runner import last_checkpoint_step, run_pace, stop_grace
from wadi_lorad.trainer.jobs.tail import EventTail

ROOT = Path(__file__).resolve().parent.parent


def _events(path: Path, records: list[dict]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / EVENTS_FILE_NAME).write_text("".join(json.dumps(r) + "\n" for r in records) + '{"event": "st')


def test_run_pace_times_the_newest_segment(tmp_path):
    # First segment at 1 s per step, a resume at 20 s per step (its first gap is set-up to first step).
    recs = [{"event": "start", "step": 0, "time": 100.0}]
    recs += [{"event": "step", "step": s, "time": 100.0 + s} for s in range(1, 6)]
    recs += [{"event": "checkpoint", "step": 5, "time": 106.0, "path": "x"}, {"event": "stopped", "step": 5}]
    recs += [{"event": "resume", "step": 5, "time": 200.0}]
    recs += [{"event": "step", "step": 5 + i, "time": 200.0 + 20 * i} for i in (1, 2, 3)]
    _events(tmp_path, recs)
    step, median, ckpt = run_pace(tmp_path)
    assert (step, median, ckpt) == (8, 20.0, 5)
    assert stop_grace(median, grace_s=60, grace_steps=3) == 60  # max(60, 3 x 20)
    assert stop_grace(30.0, grace_s=60, grace_steps=3) == 90
    assert stop_grace(None, grace_s=60, grace_steps=3) == 60  # nothing measured yet: the floor
    assert run_pace(tmp_path / "nothing") == (None, None, None)


def test_last_checkpoint_step_counts_complete_checkpoints_only(tmp_path):
    root = tmp_path / "checkpoints"
    for name, complete in (("step-00000008", True), ("step-00000016", False), (".step-00000024.abc.tmp", True)):
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / "meta.json").write_text("{}")
    assert last_checkpoint_step(tmp_path) == 8
    assert last_checkpoint_step(tmp_path / "none") is None


@pytest.mark.parametrize("grace_steps", [3.0, 0.0])
def test_grace_scales_with_the_step_time(tmp_path, grace_steps):
    """Steps of 1.5 s and a 0.3 s floor: scaled (3 x median) the step in flight finishes and the job
    stops cooperatively; without the scaling the same stop is a SIGTERM mid-step."""
    runner = make_runner(tmp_path, grace_s=0.3, term_s=3.0, grace_steps=grace_steps)
    out = tmp_path / "run"
    job = runner.submit("distill", [], out, "cpu", config_yaml=yaml.safe_dump({"out": str(out), "steps": 1000,
                                                                                "sleep": 1.5}))
    wait_for(runner, job.id, lambda j: EventTail(j.out_dir).update() >= 3)  # start + two steps
    time.sleep(0.2)  # well inside the next step
    job = runner.stop(job.id)
    assert job.status == "stopping" and "stopping: finishing step" in job.message, job.message
    grace = runner.grace_for(job)
    job = wait_for(runner, job.id, lambda j: not j.active)
    if grace_steps:
        assert grace >= 4.5, grace  # >= 3 x 1.5 s
        assert job.status == "stopped" and job.returncode == 0, job
        assert json.loads((out / EVENTS_FILE_NAME).read_text().splitlines()[-1])["event"] == "stopped"
    else:
        assert grace == 0.3
        assert job.status == "killed" and "SIGTERM" in job.message, job


CKPT_WRITER = textwrap.dedent("""
    import importlib.util, sys, time, torch
    spec = importlib.util.spec_from_file_location("_wadi_bootstrap", sys.argv[4])
    boot = importlib.util.module_from_spec(spec); spec.loader.exec_module(boot); boot.register()
    from wadi_lorad.trainer import checkpoint as CK
    from wadi_lorad.trainer.config import DistillConfig
    root, step, hang = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "hang"
    snap = CK.Snapshot(step, {"w": torch.full((64, 64), float(step))}, None, None, {"step": step}, {"m": 1})
    if hang:  # the student is written, then the writer stalls inside the checkpoint: killed there
        def stall(*a, **k):
            print("writing", flush=True)
            time.sleep(600)
        CK.torch.save = stall
    CK.save_checkpoint(__import__("pathlib").Path(root), snap, DistillConfig(), keep=3)
""")


def test_a_kill_mid_checkpoint_leaves_the_previous_one_latest(tmp_path):
    from wadi_lorad.trainer import checkpoint

    script = tmp_path / "writer.py"
    script.write_text(CKPT_WRITER)
    root = tmp_path / "out" / "checkpoints"
    run = [sys.executable, str(script), str(root)]
    boot = str(ROOT / "_bootstrap.py")
    subprocess.run([*run, "8", "ok", boot], check=True, cwd=tmp_path)
    proc = subprocess.Popen([*run, "16", "hang", boot], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        assert any(root.glob(".step-00000016.*.tmp/student.safetensors"))  # half written
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert [p.name for p in checkpoint.list_checkpoints(root)] == ["step-00000008"]
    assert checkpoint.find_resume("latest", tmp_path / "out").name == "step-00000008"
    assert last_checkpoint_step(tmp_path / "out") == 8
    assert float(checkpoint.load_checkpoint(root / "step-00000008").student["w"][0, 0]) == 8.0
    subprocess.run([*run, "24", "ok", boot], check=True, cwd=tmp_path)
    assert not list(root.glob(".step-*")), list(root.iterdir())  # the torn temp folder is cleared
    assert [p.name for p in checkpoint.list_checkpoints(root)] == ["step-00000008", "step-00000024"]


def test_a_stop_during_setup_does_not_rewind_the_progress(tmp_path):
    """A resumed job stopped while loading its model logs ``stopped`` at step 0; the run is still at step 8."""
    recs = [{"event": "start", "step": 0, "max_steps": 80, "time": 1.0}]
    recs += [{"event": "step", "step": s, "max_steps": 80, "time": 1.0 + s} for s in range(1, 9)]
    recs += [{"event": "checkpoint", "step": 8, "path": "c"}, {"event": "stopped", "step": 8},
             {"event": "stopped", "step": 0, "message": "stop requested; stopped at step 0"}]
    _events(tmp_path, recs)
    tail = EventTail(tmp_path)
    tail.update()
    assert tail.progress().text().startswith("step 8 / 80")
    assert run_pace(tmp_path)[0] == 8 and run_pace(tmp_path)[2] == 8
