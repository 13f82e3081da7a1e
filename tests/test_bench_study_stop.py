"""bench/tinyworld_study.py --stop-at: a run stopped early is the full run's first points, bit for bit.

Time to quality is read at a fine --eval-every from runs stopped early (docs/quality-study.md, round 10);
that is only honest if stopping keeps the full run's learning-rate schedule.  A cosine schedule makes
the difference visible: a run whose schedule ends at step 2 (--steps 2) scores differently at step 2.
"""

from __future__ import annotations

import json

from study_helpers import finished_points, run_study


def test_a_stopped_run_is_the_full_runs_prefix(tmp_path):
    out = tmp_path / "study"
    for name, args in (("full", ["--steps", "4"]), ("stopped", ["--steps", "4", "--stop-at", "2"]),
                       ("short", ["--steps", "2"])):
        proc = run_study(out, name, *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
    full, stopped, short = (finished_points(out, n) for n in ("full", "stopped", "short"))
    assert [p["step"] for p in full] == [0, 1, 2, 3, 4]
    assert [p["step"] for p in stopped] == [0, 1, 2]
    assert stopped == full[:3]
    assert json.loads((out / "stopped" / "curve.json").read_text())["stop_at"] == 2
    # the same steps under a schedule that ends at step 2: step 1 (lr before the cosine's end) agrees, step 2 not
    assert short[1] == full[1]
    assert short[2]["fd"] != full[2]["fd"]
    # a finished run is kept when asked for again, and never handed back as a run of another length
    curve_before = (out / "stopped" / "curve.json").read_text()
    again = run_study(out, "stopped", "--steps", "4", "--stop-at", "2")
    assert again.returncode == 0 and "done before, kept" in again.stdout
    longer = run_study(out, "stopped", "--steps", "4")
    assert longer.returncode != 0
    assert "curve.json" in longer.stderr and "stopped at step 2" in longer.stderr and "stopped at step 4" in longer.stderr
    assert (out / "stopped" / "curve.json").read_text() == curve_before


def test_stop_at_past_the_schedule_is_refused(tmp_path):
    proc = run_study(tmp_path / "study", "x", "--steps", "4", "--stop-at", "5")
    assert proc.returncode != 0
    assert "--stop-at 5" in proc.stderr and "--steps (4)" in proc.stderr
    assert not (tmp_path / "study" / "x").exists()
