"""bench/demo_runs.py on made-up `wadi demo` folders: each group's mean and sd are those of its runs'
WaDi 1-step scores (against the statistics module), the figure is drawn, and bad input is named."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _demo(folder: Path, alignment: float, fd: float, schedule: int | None) -> None:
    folder.mkdir(parents=True)
    settings = {"steps": 600, **({"schedule_steps": schedule} if schedule else {})}
    methods = {"teacher_1step": {"alignment_mean": 0.09, "fd_mean": 879.0},
               "teacher_25step_cfg3": {"alignment_mean": 0.391, "fd_mean": 331.0},
               "wadi_1step": {"alignment_mean": alignment, "fd_mean": fd}}
    (folder / "metrics.json").write_text(json.dumps({"settings": settings, "methods": methods,
                                                     "wall_time_s": {"total": 400.0, "distill": 300.0}}))


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "demo_runs.py"), *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)


def test_groups_hold_their_runs_mean_and_sd(tmp_path):
    new = [(0.285, 498.0), (0.291, 537.0), (0.287, 481.0)]
    old = [(0.285, 539.0), (0.240, 541.0)]
    for i, (a, f) in enumerate(new):
        _demo(tmp_path / f"new-s{i}", a, f, 1200)
    for i, (a, f) in enumerate(old):
        _demo(tmp_path / f"old-s{i}", a, f, None)  # an older metrics.json: no schedule_steps
    (tmp_path / "new-s9").mkdir()  # a folder the glob matches without a metrics.json is not a run
    r = _cli(tmp_path, "--group", "long=new-s*", "--group", "short=old-s*", "--plot", "runs.png", "--json", "runs.json")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "runs.png").stat().st_size > 10_000
    groups = json.loads((tmp_path / "runs.json").read_text())["groups"]
    assert list(groups) == ["long", "short"]
    for label, runs in (("long", new), ("short", old)):
        g = groups[label]
        prefix = "new" if label == "long" else "old"
        assert [r["run"] for r in g["runs"]] == [f"{prefix}-s{i}" for i in range(len(runs))]
        assert g["alignment"] == pytest.approx(statistics.mean(a for a, _ in runs), rel=1e-12)
        assert g["fd_std"] == pytest.approx(statistics.stdev(f for _, f in runs), rel=1e-12)
    assert [r["schedule_steps"] for r in groups["short"]["runs"]] == [600, 600]
    assert groups["long"]["runs"][0]["others"]["teacher_1step"] == {"alignment": 0.09, "fd": 879.0}
    assert "long: alignment 0.288 +- 0.003, FD 505 +- 29 (3 runs)" in r.stdout


def test_bad_input_is_named(tmp_path):
    r = _cli(tmp_path, "--group", "none=nowhere-*")
    assert r.returncode != 0 and "'none'" in r.stderr and "nowhere-*" in r.stderr
    r = _cli(tmp_path, "--group", "no-label")
    assert r.returncode != 0 and "LABEL=GLOB" in r.stderr
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text(json.dumps({"methods": {}}))
    r = _cli(tmp_path, "--group", "b=broken")
    assert r.returncode != 0 and "broken/metrics.json" in r.stderr and "wadi_1step" in r.stderr
