"""Tiny runs of bench/tinyworld_study.py for its tests (the real script, in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--eval-every", "1", "--eval-prompts", "8", "--eval-seeds", "0", "--set", "optim.lr_scheduler=cosine",
        "--set", "train.batch_size=2", "--set", "adapter.student_rank=4", "--set", "adapter.fake_rank=2",
        "--set", "data.max_prompts=8"]
TIMINGS = {"train_s", "eval_s"}  # wall-clock, differs between any two runs


def run_study(out: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    """A tiny run; ``args`` come after the tiny settings, so they win over them."""
    return subprocess.run([sys.executable, str(ROOT / "bench" / "tinyworld_study.py"), "--out", str(out),
                           "--name", name, *TINY, *args], capture_output=True, text=True, cwd=out.parent,
                          timeout=1200)


def finished_points(out: Path, name: str) -> list[dict]:
    """A finished run's points without their wall-clock timings."""
    curve = json.loads((out / name / "curve.json").read_text())
    assert curve["done"] is True
    return [{k: v for k, v in p.items() if k not in TIMINGS} for p in curve["points"]]
