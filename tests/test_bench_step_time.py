"""bench/distill_step_time.py at toy size: one row per kind and target set, and --set reaches every row."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench" / "distill_step_time.py"
TEACHER = ROOT / "assets" / "tinyworld" / "teacher"
TOY = ["--kinds", "lorad", "--steps", "1", "--warmup", "0", "--batch", "2", "--fake-rank", "2", "--threads", "1"]

pytestmark = pytest.mark.skipif(not (TEACHER / "model_index.json").is_file(), reason="tiny-world teacher not shipped")


def _rows(*args: str) -> dict[str, int]:
    """{targets: student params} from the bench's printed table."""
    r = subprocess.run([sys.executable, str(BENCH), *TOY, *args], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if parts and parts[0] == "lorad":
            rows[parts[1]] = int(parts[2].replace(",", ""))
    return rows


def test_one_row_per_target_set_and_set_overrides_every_row():
    both = _rows("--student-rank", "2", "--targets", "paper-student,all-linear-conv")
    assert set(both) == {"paper-student", "all-linear-conv"}
    # The convolutions add angle parameters on top of the Linear layers'.
    assert both["all-linear-conv"] > both["paper-student"] > 0
    # --set comes after the bench's own flags, so it wins: rank 4 overridden to 2 gives rank 2's count,
    # and a LoRaD layer's angle count is r * (out + in/2), so rank 4 alone would give twice as many.
    overridden = _rows("--student-rank", "4", "--set", "adapter.student_rank=2", "--targets", "paper-student")
    assert overridden == {"paper-student": both["paper-student"]}


def test_bad_set_names_the_value():
    r = subprocess.run([sys.executable, str(BENCH), *TOY, "--set", "optim.conv_lr_scale"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "KEY=VALUE" in r.stderr and "optim.conv_lr_scale" in r.stderr
