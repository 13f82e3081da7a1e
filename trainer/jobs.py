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

Kept free of torch/gradio imports: the trainer imports it on every run.
"""

from __future__ import annotations

import os
from pathlib import Path

STOP_FILE_ENV = "WADI_STOP_FILE"
STOP_FILE_NAME = "STOP"
EVENTS_FILE_NAME = "events.jsonl"

__all__ = ["STOP_FILE_ENV", "STOP_FILE_NAME", "EVENTS_FILE_NAME", "RunStopped", "stop_file", "stop_requested",
           "end_stopped"]


class RunStopped(Exception):
    """Raised inside a run's set-up when the stop file appears; the run turns it into a clean exit."""


def stop_file(output_dir: str | os.PathLike[str]) -> Path:
    """Where this process looks for its stop request."""
    env = os.environ.get(STOP_FILE_ENV)
    return Path(env) if env else Path(output_dir) / STOP_FILE_NAME


def stop_requested(output_dir: str | os.PathLike[str]) -> bool:
    """True once a stop was requested for this run (a cheap ``stat``; call it every step)."""
    return stop_file(output_dir).exists()


def end_stopped(run) -> dict:
    """The cooperative end of a stopped run (distill and the fine-tunes alike).

    Saves a checkpoint of what was trained (so ``--resume latest`` continues), writes the
    ``stopped`` event, logs the message and returns ``{}`` (no outputs).  ``run`` provides
    ``step``, ``out``, ``log``, ``save_checkpoint()``, ``_ready`` (set-up finished) and
    ``events`` (its open EventLog once ready); ``main`` (default True) marks the writing
    process of a multi-process run.
    """
    from .events import EventLog

    main = getattr(run, "main", True)
    if run._ready and run.step > 0:
        run.save_checkpoint()  # collective in a multi-process run: every rank calls it
    msg = f"stop requested; stopped at step {run.step}" + (
        " (checkpoint saved; continue with --resume latest)" if run.step else "")
    if main:
        if run._ready:
            run.events.write("stopped", step=run.step, message=msg)
            run.events.close()
        else:
            Path(run.out).mkdir(parents=True, exist_ok=True)
            EventLog(Path(run.out) / EVENTS_FILE_NAME, log=run.log).write("stopped", step=run.step, message=msg)
        run.log(msg)
    return {}
