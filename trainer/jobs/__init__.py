"""The contract between a training process and whoever launched it (the tab, a script, ComfyUI).

One place defines it so the trainer and the job runner cannot drift apart:

* **Stop file.**  A launcher asks a run to stop by creating a file; the trainer
  calls :func:`stop_requested` every step (and between long phases such as
  caching), then saves a checkpoint, logs a ``stopped`` event and exits 0.
  The file is ``$WADI_STOP_FILE`` when that variable is set (the tab sets it to a
  file in the job's folder), else ``<output dir>/STOP``.
* **Event log.**  ``<output dir>/events.jsonl``: one JSON object per line,
  appended and flushed, never rewritten.  Records the tab reads (all optional
  except ``event``):

  ``{"event": "start" | "resume", "max_steps": N, "step": s0, "time": t}``
  ``{"event": "step", "step": s, "loss_student": x, "loss_fake": y, "it_s": r, "eta_s": e, "time": t}``
  (losses may also come as ``"losses": {"student": x, ...}``; ``total_steps`` is read as ``max_steps``)
  ``{"event": "sample", "step": s, "path": "<png>"}``
  ``{"event": "checkpoint", "step": s, "path": "<dir>"}``
  ``{"event": "stopped" | "done" | "error", "step": s, "message": "..."}``

This package is the neutral ground between the trainer and its launchers: it imports
nothing else of the trainer, nor torch or Gradio, so the ComfyUI nodes can read jobs
through it (:mod:`.store` the job table, :mod:`.runner` start/stop, :mod:`.tail` progress)
without loading the trainer.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Protocol

STOP_FILE_ENV = "WADI_STOP_FILE"
STOP_FILE_NAME = "STOP"
EVENTS_FILE_NAME = "events.jsonl"

__all__ = ["STOP_FILE_ENV", "STOP_FILE_NAME", "EVENTS_FILE_NAME", "RunStopped", "StoppableRun", "append_event",
           "stop_file", "stop_requested", "end_stopped"]


class RunStopped(Exception):
    """Raised inside a run's set-up when the stop file appears; the run turns it into a clean exit."""


def stop_file(output_dir: str | os.PathLike[str]) -> Path:
    """Where this process looks for its stop request."""
    env = os.environ.get(STOP_FILE_ENV)
    return Path(env) if env else Path(output_dir) / STOP_FILE_NAME


def stop_requested(output_dir: str | os.PathLike[str]) -> bool:
    """True once a stop was requested for this run (a cheap ``stat``; call it every step)."""
    return stop_file(output_dir).exists()


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf
    if isinstance(v, Path):
        return str(v)
    return v


def append_event(events_file: Path, event: str, fields: dict[str, Any]) -> None:
    """Append one record (``event``, ``time`` and ``fields``) to an events file and flush it."""
    rec = {"event": event, "time": round(time.time(), 3), **{k: _json_value(v) for k, v in fields.items()}}
    with open(events_file, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()


class _Events(Protocol):
    def write(self, event: str, **fields: Any) -> None: ...
    def close(self) -> None: ...


class StoppableRun(Protocol):
    """What :func:`end_stopped` needs of a run (distill and the fine-tunes provide it)."""

    step: int
    out: Path
    main: bool  # the writing process of a multi-process run
    _ready: bool  # set-up finished (``events`` is open and there is something to save)
    events: _Events

    def log(self, msg: str) -> Any: ...
    def save_checkpoint(self) -> Any: ...


def end_stopped(run: StoppableRun) -> dict:
    """The cooperative end of a stopped run (distill and the fine-tunes alike).

    Saves a checkpoint of what was trained (so ``--resume latest`` continues), writes the
    ``stopped`` event, logs the message and returns ``{}`` (no outputs).
    """
    if run._ready and run.step > 0:
        run.save_checkpoint()  # collective in a multi-process run: every rank calls it
    msg = f"stop requested; stopped at step {run.step}" + (
        " (checkpoint saved; continue with --resume latest)" if run.step else "")
    if run.main:
        if run._ready:
            run.events.write("stopped", step=run.step, message=msg)
            run.events.close()
        else:
            Path(run.out).mkdir(parents=True, exist_ok=True)
            append_event(Path(run.out) / EVENTS_FILE_NAME, "stopped", {"step": run.step, "message": msg})
        run.log(msg)
    return {}
