"""bench/tinyworld_study.py --plot on a made-up study folder: the figure is drawn, and the JSON behind it
holds exactly the runs drawn (all of them, or those --only matches) with their points unchanged, and
--include-json adds the curves an earlier round kept in its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _curve(name: str, fds: list[float], ema: bool) -> dict:
    points = []
    for i, fd in enumerate(fds):
        p = {"step": 300 * i, "alignment": 0.1 + 0.05 * i, "fd": fd}
        if ema and i > 0:
            p.update(ema_alignment=0.11 + 0.05 * i, ema_fd=fd - 10.0 * (i % 2))  # below raw at odd points only
        points.append(p)
    return {"name": name, "seed": int(name[-1]), "points": points, "done": True}


def _study(tmp_path: Path) -> Path:
    out = tmp_path / "study"
    for name, fds, ema in (("reg-s0", [879, 500, 460], True), ("reg-s1", [879, 520, 450], True),
                           ("lora-s0", [879, 600, 550], True), ("base-s0", [879, 700], False)):
        (out / name).mkdir(parents=True)
        (out / name / "curve.json").write_text(json.dumps(_curve(name, fds, ema)))
    return out


def _study_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "tinyworld_study.py"), *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)


def _plot(out: Path, tmp_path: Path, *extra: str, stem: str = "curves") -> dict:
    png, js = tmp_path / f"{stem}.png", tmp_path / f"{stem}.json"
    proc = _study_cli(tmp_path, "--out", str(out), "--plot", str(png), "--json", str(js), *extra)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads(js.read_text())


def test_only_limits_the_json_to_the_drawn_runs(tmp_path):
    out = _study(tmp_path)
    data = _plot(out, tmp_path, "--only", "^reg")
    assert sorted(c["name"] for c in data["curves"]) == ["reg-s0", "reg-s1"]
    originals = {n: json.loads((out / n / "curve.json").read_text()) for n in ("reg-s0", "reg-s1")}
    assert {c["name"]: c["points"] for c in data["curves"]} == {n: c["points"] for n, c in originals.items()}
    # step 300 of each run has its EMA 10 below the raw FD, step 600 equal: 2 of 4 points
    assert data["summary"] == {"ema_fd_below_raw": 2, "points_with_both": 4}


def test_without_only_every_run_is_kept(tmp_path):
    data = _plot(_study(tmp_path), tmp_path)
    assert sorted(c["name"] for c in data["curves"]) == ["base-s0", "lora-s0", "reg-s0", "reg-s1"]
    assert data["summary"] == {"ema_fd_below_raw": 3, "points_with_both": 6}


def test_include_json_draws_an_earlier_rounds_curves_beside_new_runs(tmp_path):
    # round A: two seeds under one folder, kept in its JSON; round B: a fresh folder (a new machine) holding
    # one new run and a rerun of reg-s1 with other points
    first = _plot(_study(tmp_path), tmp_path, "--only", "^reg", stem="roundA")
    fresh = tmp_path / "fresh"
    for name, fds in (("new-s0", [879, 400, 380]), ("reg-s1", [879, 470, 440])):
        (fresh / name).mkdir(parents=True)
        (fresh / name / "curve.json").write_text(json.dumps(_curve(name, fds, True)))
    data = _plot(fresh, tmp_path, "--include-json", str(tmp_path / "roundA.json"), stem="roundB")
    by_name = {c["name"]: c["points"] for c in data["curves"]}
    assert sorted(by_name) == ["new-s0", "reg-s0", "reg-s1"]
    kept = {c["name"]: c["points"] for c in first["curves"]}
    assert by_name["reg-s0"] == kept["reg-s0"]  # from the JSON, unchanged
    assert by_name["reg-s1"] == json.loads((fresh / "reg-s1" / "curve.json").read_text())["points"]  # the run wins
    assert by_name["reg-s1"] != kept["reg-s1"]


def test_include_json_errors_name_the_file(tmp_path):
    bad = tmp_path / "notes.json"
    bad.write_text(json.dumps({"summary": {}}))
    proc = _study_cli(tmp_path, "--out", str(tmp_path / "none"), "--plot", str(tmp_path / "x.png"),
                      "--include-json", str(bad))
    assert proc.returncode != 0 and str(bad) in proc.stderr and "'curves'" in proc.stderr
    proc = _study_cli(tmp_path, "--name", "x", "--include-json", str(bad))
    assert proc.returncode != 0 and "--include-json only adds curves to a --plot" in proc.stderr
