"""A job runner driving the stand-in trainer (tests/tab_fake_trainer.py), and a poll-until helper:
shared by the job, stop and queue tests of the trainer tab."""

from __future__ import annotations

import time
from pathlib import Path

from wadi_lorad.trainer.jobs.runner import JobRunner
from wadi_lorad.trainer.jobs.store import Job, JobStore

FAKE = Path(__file__).with_name("tab_fake_trainer.py")


def fake_command(subcommand, args, devices, python):
    return [python, str(FAKE), *args]


def make_runner(tmp_path, **kw) -> JobRunner:
    return JobRunner(JobStore(tmp_path / "jobs"), command=fake_command, **kw)


def wait_for(runner, job_id, pred, timeout=60.0) -> Job:
    """Poll the runner until ``pred(job)`` holds (a hang guard, not a speed assertion)."""
    end = time.time() + timeout
    while time.time() < end:
        runner.poll()
        job = runner.store.get(job_id)
        if pred(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"timed out; job is {runner.store.get(job_id)}")
