"""bench/tinyworld_study.py --plot on a made-up study folder: the figure is drawn, and the JSON behind it
holds exactly the runs drawn (all of them, or those --only matches) with their points unchanged."""

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


def _plot(out: Path, tmp_path: Path, *extra: str) -> dict:
    png, js = tmp_path / "curves.png", tmp_path / "curves.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "tinyworld_study.py"), "--out", str(out),
                           "--plot", str(png), "--json", str(js), *extra],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
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
