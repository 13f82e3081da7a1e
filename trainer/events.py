"""Append-only run log ``events.jsonl`` (the trainer tab tails it) and optional TensorBoard.

One JSON object per line, always with ``event`` and ``time`` (unix seconds):
``start``, ``resume``, ``step`` (step, loss_student, loss_fake, grad_norm_student,
grad_norm_fake, lr_student, lr_fake, it_s, eta_s), ``sample`` (step, path),
``checkpoint`` (step, path), ``export`` (path, kind), ``done``, ``stopped`` and ``error``.
Lines are flushed one by one so a reader never sees a partial record except the
last line of a crashed writer (readers skip a line that does not parse).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from .jobs import append_event


class EventLog:
    def __init__(self, path: Path, enabled: bool = True, tensorboard_dir: Path | None = None, log=print) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard_dir is not None:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(str(tensorboard_dir))
                except ImportError:
                    log("note: output.tensorboard needs the tensorboard package; logging to events.jsonl only")

    def write(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        append_event(self.path, event, fields)
        if self._tb is not None and event == "step":
            for k, v in fields.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, fields["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_events(path: Path) -> list[dict]:
    """All complete records of an events file (a torn last line is skipped)."""
    out = []
    if not Path(path).is_file():
        return out
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


# TEST ONLY: the tab's stop tests need steps of a known, long duration (>= 20 s) on any machine.
# When this variable names a file holding a number of seconds, every step sleeps that long
# before its record is written (the file is re-read each step, so a test can slow a run down
# and speed it up again).  Unset - as in every real run - it costs one dictionary lookup.
TEST_STEP_SLEEP_ENV = "WADI_TEST_STEP_SLEEP_FILE"


def _test_step_sleep() -> None:
    path = os.environ.get(TEST_STEP_SLEEP_ENV)
    if not path:
        return
    try:
        seconds = float(open(path, encoding="utf-8").read().strip() or 0)
    except (OSError, ValueError):
        return
    if seconds > 0:
        time.sleep(seconds)


def write_step(events: EventLog, step: int, max_steps: int, started: tuple[float, int], logs: dict) -> None:
    """A ``step`` record with the rate since ``started = (perf_counter, step)`` and the ETA."""
    _test_step_sleep()
    t0, s0 = started
    rate = (step - s0) / max(1e-9, time.perf_counter() - t0)
    eta = (max_steps - step) / rate if rate > 0 else math.inf
    events.write("step", step=step, **logs, it_s=round(rate, 4), eta_s=round(eta, 1))


def due(every: int, step: int, max_steps: int) -> bool:
    """Whether a periodic action (sample, checkpoint) runs after ``step`` (the last step has its own)."""
    return bool(every) and step % every == 0 and step < max_steps
