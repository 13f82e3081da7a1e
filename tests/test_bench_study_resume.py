"""bench/tinyworld_study.py --checkpoint-every: a killed run, or one stopped at --stop-at, continues
from its last checkpoint and ends with the points of a run made in one go, bit for bit.

Curves of 10,000 steps do not fit one sitting on the CPU, so they are made in pieces; that is only
honest if a piece continues the run exactly (weights, optimizer, schedule, data stream, EMA).  The
kill is made deliberately: the curve and checkpoints are put in the state a process killed after the
step-3 point leaves (no timing involved).
"""

from __future__ import annotations

import json
import shutil

from study_helpers import finished_points, run_study


def _curve(out, name) -> dict:
    return json.loads((out / name / "curve.json").read_text())


def test_a_stopped_run_continues_to_the_one_go_points(tmp_path):
    out = tmp_path / "study"
    assert run_study(out, "whole", "--steps", "4").returncode == 0
    first = run_study(out, "part", "--steps", "4", "--stop-at", "2", "--checkpoint-every", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert _curve(out, "part")["stop_at"] == 2
    again = run_study(out, "part", "--steps", "4", "--checkpoint-every", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "continuing from step 2" in again.stdout
    assert finished_points(out, "part") == finished_points(out, "whole")  # schedule, optimizer, data stream and the config's EMA
    assert "stop_at" not in _curve(out, "part")
    assert _curve(out, "part")["continued"] == [{"step": 2, "threads": 1}]
    # another run under the same name is refused, naming the curve, and nothing is touched
    before = (out / "part" / "curve.json").read_text()
    other = run_study(out, "part", "--steps", "4", "--checkpoint-every", "2", "--seed", "1")
    assert other.returncode != 0 and "part/curve.json" in other.stderr and "seed 0 (asked: 1)" in other.stderr
    assert (out / "part" / "curve.json").read_text() == before


def test_a_killed_run_continues_from_its_last_checkpoint(tmp_path):
    out = tmp_path / "study"
    # train.ema_decay 0: the study keeps its own shadow EMA, which must be checkpointed beside the trainer's state
    ref = run_study(out, "ref", "--steps", "4", "--checkpoint-every", "2", "--set", "train.ema_decay=0")
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert sorted(f.name for f in (out / "ref" / "shadow_ema").iterdir()) == [
        "step-00000002.safetensors", "step-00000004.safetensors"]
    # killed after the step-3 point: the step-4 checkpoint and shadow never written, the run not done
    shutil.copytree(out / "ref", out / "killed")
    shutil.rmtree(out / "killed" / "run" / "checkpoints" / "step-00000004")
    (out / "killed" / "shadow_ema" / "step-00000004.safetensors").unlink()
    curve = _curve(out, "killed")
    curve.update(done=False, points=[dict(p, fd=-1.0) if p["step"] == 3 else p for p in curve["points"][:4]])
    (out / "killed" / "curve.json").write_text(json.dumps(curve))
    early = run_study(out, "killed", "--steps", "4", "--stop-at", "1", "--checkpoint-every", "2",
                       "--set", "train.ema_decay=0")
    assert early.returncode != 0 and "checkpointed at step 2" in early.stderr
    go = run_study(out, "killed", "--steps", "4", "--checkpoint-every", "2", "--set", "train.ema_decay=0")
    assert go.returncode == 0, go.stderr[-3000:]
    assert "continuing from step 2" in go.stdout
    assert finished_points(out, "killed") == finished_points(out, "ref")  # the stale step-3 point was computed again


def test_checkpoints_off_the_evaluation_steps_are_refused(tmp_path):
    proc = run_study(tmp_path / "study", "x", "--steps", "4", "--eval-every", "2", "--checkpoint-every", "3")
    assert proc.returncode != 0 and "--checkpoint-every 3" in proc.stderr and "--eval-every (2)" in proc.stderr
    assert not (tmp_path / "study" / "x").exists()
