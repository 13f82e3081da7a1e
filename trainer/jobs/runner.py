"""Job runner: trainings as CLI subprocesses, one at a time per device, stop that really stops.

* A job is the ``wadi`` CLI (``python <pack>/__main__.py distill --config ...``;
  ``accelerate launch`` for several GPUs) wrapped by :mod:`.jobwrap`, in a new
  session, so its whole process tree is one process group.
* Stop is cooperative first: the stop file of :mod:`trainer.jobs` (checked every
  step; the trainer finishes the step in flight, writes a checkpoint and exits).
  The grace it gets scales with its own pace: ``max(grace_s, grace_steps x the
  median measured step time)`` (:func:`stop_grace`), so a run at 20 s per step is
  never killed mid-step.  Only if the group is still alive after the grace does it
  get SIGTERM, and ``term_s`` after that SIGKILL (a hung job frees its memory
  within grace + ``term_s`` + one poll interval).  Checkpoints are written to a
  hidden temp folder and renamed (:mod:`trainer.checkpoint`), so even a kill
  mid-write leaves the previous checkpoint as the latest.
* The store outlives the app: a restarted runner re-attaches to jobs whose
  process (pid *and* kernel start time) is still there and reads the exit status
  the wrapper left for those that ended meanwhile.
* Every command is an argument list; nothing reaches a shell.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from . import EVENTS_FILE_NAME, STOP_FILE_ENV, STOP_FILE_NAME, procs
from .store import Job, JobStore

PACK_ROOT = Path(__file__).resolve().parents[2]
PACK_MAIN = PACK_ROOT / "__main__.py"  # runs this very checkout, whatever is installed
WRAPPER = Path(__file__).with_name("jobwrap.py")
LOG_NAME = "log.txt"
RC_NAME = "exit_code"
CONFIG_NAME = "config.yaml"
DEFAULT_GRACE_S = 60.0  # the least a stopped job gets to finish its step and save
DEFAULT_GRACE_STEPS = 3.0  # ... or this many of its median step times, if longer
_TAIL_BYTES = 256_000  # how much of events.jsonl a stop reads to time the steps


def run_pace(out_dir: str | Path) -> tuple[int | None, float | None, int | None]:
    """(last step, median step seconds, last checkpoint step) of the newest run segment in ``events.jsonl``.

    Step times are the gaps between consecutive records of the segment that began
    at the last ``start``/``resume`` (the first gap is setup-to-first-step, so one
    finished step already gives a time).  Only the file's tail is read.
    """
    path = Path(out_dir) / EVENTS_FILE_NAME
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - _TAIL_BYTES))
            lines = fh.read().split(b"\n")
    except OSError:
        return None, None, None
    step = ckpt = None
    times: list[float] = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # the first (cut) or a torn last line
        if not isinstance(rec, dict):
            continue
        ev, t = rec.get("event"), rec.get("time")
        if ev in ("start", "resume"):
            times = [float(t)] if isinstance(t, (int, float)) else []
        elif ev == "step" and isinstance(rec.get("step"), int):
            step = rec["step"]
            if isinstance(t, (int, float)):
                times.append(float(t))
        elif ev == "checkpoint" and isinstance(rec.get("step"), int):
            ckpt = rec["step"]
    gaps = [b - a for a, b in zip(times, times[1:]) if b >= a]
    return step, (statistics.median(gaps[-50:]) if gaps else None), ckpt


def last_checkpoint_step(out_dir: str | Path) -> int | None:
    """Step of the newest complete checkpoint on disk (``checkpoints/step-XXXXXXXX/meta.json``), else None.

    The same rule as :func:`trainer.checkpoint.list_checkpoints` (hidden temp folders of an
    interrupted write do not count), without importing torch into the app.
    """
    root = Path(out_dir) / "checkpoints"
    try:
        names = [p.name for p in root.iterdir() if p.name.startswith("step-") and (p / "meta.json").is_file()]
    except OSError:
        return None
    steps = [int(n[5:]) for n in names if n[5:].isdigit()]
    return max(steps) if steps else None


def stop_grace(median_step_s: float | None, grace_s: float = DEFAULT_GRACE_S,
               grace_steps: float = DEFAULT_GRACE_STEPS) -> float:
    """Seconds a stopped job may take before SIGTERM: ``max(grace_s, grace_steps x median step)``."""
    return max(grace_s, grace_steps * median_step_s) if median_step_s else grace_s


class RunnerBusy(RuntimeError):
    """Another app already manages this jobs folder (two would both start the queued jobs)."""


class JobRefused(RuntimeError):
    """The device is busy and queueing was not asked for; the message says by what."""


def parse_devices(spec: str) -> tuple[str, ...]:
    """``"cpu"`` or GPU indices ``"0"`` / ``"0,1"`` -> a normalised tuple (error names the bad part)."""
    spec = (spec or "cpu").strip().lower()
    if spec == "cpu":
        return ("cpu",)
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    bad = [p for p in parts if not p.isdigit()]
    if bad or not parts:
        raise ValueError(f"devices: expected 'cpu' or GPU indices like '0' or '0,1', got {spec!r}")
    return tuple(sorted(set(parts), key=int))


def cli_command(subcommand: str, args: list[str], devices: tuple[str, ...], python: str = sys.executable) -> list[str]:
    """The argv of a ``wadi <subcommand>`` run; ``accelerate launch`` when several GPUs are configured."""
    gpus = [d for d in devices if d != "cpu"]
    if len(gpus) > 1:
        return [python, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(len(gpus)),
                str(PACK_MAIN), subcommand, *args]
    return [python, str(PACK_MAIN), subcommand, *args]


class JobRunner:
    def __init__(self, store: JobStore, grace_s: float = DEFAULT_GRACE_S, term_s: float = 3.0,
                 python: str = sys.executable,
                 command: Callable[[str, list[str], tuple[str, ...], str], list[str]] = cli_command,
                 attach: bool = True, exclusive: bool = False, grace_steps: float = DEFAULT_GRACE_STEPS):
        # ``command`` builds a job's argv; tests swap in a fake trainer, everything else uses the CLI.
        self.store, self.grace_s, self.term_s, self.python, self.command = store, grace_s, term_s, python, command
        self.grace_steps = grace_steps
        self._grace: dict[str, float] = {}  # job id -> its stop grace, fixed when stop was asked
        self._popen: dict[str, subprocess.Popen] = {}
        self._signalled: dict[str, signal.Signals] = {}
        self._orphaned: dict[str, float] = {}
        self._lock = threading.RLock()
        self._monitor: threading.Thread | None = None
        self._stop_monitor = threading.Event()
        self._lock_file = self._take_lock() if exclusive else None
        if attach:  # re-attach to (or close) whatever a previous app left running
            self.poll()

    def _take_lock(self):
        """An exclusive flock on ``<jobs>/runner.lock`` for this runner's lifetime (released on exit)."""
        import fcntl

        fh = open(self.store.jobs_dir / "runner.lock", "a+")  # noqa: SIM115 - held open on purpose
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().strip() or "?"
            fh.close()
            raise RunnerBusy(
                f"another trainer app (pid {owner}) manages {self.store.jobs_dir}; use that one, "
                "or start this one with another --jobs-dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        return fh

    # -- paths ---------------------------------------------------------------------------------
    @staticmethod
    def stop_path(job: Job) -> Path:
        return Path(job.job_dir) / STOP_FILE_NAME

    @staticmethod
    def config_path(job: Job) -> Path:
        return Path(job.job_dir) / CONFIG_NAME

    @staticmethod
    def log_path(job: Job) -> Path:
        return Path(job.job_dir) / LOG_NAME

    # -- submit / stop -------------------------------------------------------------------------
    def submit(self, kind: str, args: list[str], out_dir: str | Path, devices: str = "cpu", *, title: str = "",
               subcommand: str | None = None, queue: bool = True, resume_of: str | None = None,
               cwd: str | Path | None = None, config_yaml: str | None = None) -> Job:
        """Queue a ``wadi <subcommand or kind> [--config <job>/config.yaml] <args>`` job; start it if its devices are free.

        ``config_yaml`` is written into the job's folder, so each job keeps the exact
        config it ran with (a resume reuses it).
        """
        devs = parse_devices(devices)
        with self._lock:
            busy = self._busy_with(devs)
            if busy is not None and not queue:
                raise JobRefused(
                    f"device {busy.device} is busy with job {busy.id} ({busy.kind}, {busy.status}); "
                    "stop it first, or tick 'queue' to start this one after it"
                )
            job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{secrets.token_hex(3)}"
            job_dir = self.store.jobs_dir / job_id
            job_dir.mkdir(parents=True)
            args = [str(a) for a in args]
            if config_yaml is not None:
                (job_dir / CONFIG_NAME).write_text(config_yaml, encoding="utf-8")
                args = ["--config", str(job_dir / CONFIG_NAME), *args]
            job = Job(
                id=job_id, kind=kind, title=title or kind,
                argv=self.command(subcommand or kind, args, devs, self.python),
                job_dir=str(job_dir), out_dir=str(out_dir), device=",".join(devs),
                cwd=str(cwd or os.getcwd()), resume_of=resume_of,
                message=f"queued behind job {busy.id} on device {busy.device}" if busy else "queued",
            )
            self.store.add(job)
            self.poll()
            return self.store.get(job_id)

    def stop(self, job_id: str) -> Job:
        """Ask a job to stop: cancel it if queued; else create its stop file (escalation runs in :meth:`poll`)."""
        with self._lock:
            job = self.store.get(job_id)
            if job.status == "queued":
                return self.store.update(job_id, status="cancelled", ended=time.time(), message="cancelled before start")
            if job.status != "running":
                return job
            self.stop_path(job).touch()
            step, median, _ = run_pace(job.out_dir)
            grace = self._grace[job_id] = stop_grace(median, self.grace_s, self.grace_steps)
            doing = f"finishing step {step + 1}" if step is not None else "finishing its set-up"
            return self.store.update(job_id, status="stopping", stop_requested=time.time(),
                                     message=f"stopping: {doing}, then saving a checkpoint "
                                             f"(force-stopped if not done in {grace:.0f} s)")

    def grace_for(self, job: Job) -> float:
        """The stop grace of ``job`` (fixed at the stop request; recomputed after an app restart)."""
        if job.id not in self._grace:
            self._grace[job.id] = stop_grace(run_pace(job.out_dir)[1], self.grace_s, self.grace_steps)
        return self._grace[job.id]

    # -- the loop ------------------------------------------------------------------------------
    def poll(self) -> list[Job]:
        """Advance every job's state (exit, escalation, queue); returns all jobs, newest first."""
        with self._lock:
            for job in self.store.list(statuses=("running", "stopping")):
                self._check(job)
            for job in sorted(self.store.list(statuses=("queued",)), key=lambda j: j.created):
                busy = self._busy_with(parse_devices(job.device))
                if busy is None:
                    self._start(job)
                elif busy.id not in job.message:
                    self.store.update(job.id, message=f"queued behind job {busy.id} on device {busy.device}")
            return self.store.list()

    def start_monitor(self, interval_s: float = 0.5) -> None:
        """Poll in a daemon thread so queues advance and stops escalate with no page open."""
        if self._monitor is not None:
            return

        def loop() -> None:
            while not self._stop_monitor.wait(interval_s):
                try:
                    self.poll()
                except Exception as e:  # keep monitoring; a transient sqlite lock must not kill the thread
                    print(f"[wadi tab] job monitor: {e}", file=sys.stderr)

        self._monitor = threading.Thread(target=loop, name="wadi-job-monitor", daemon=True)
        self._monitor.start()

    def close(self) -> None:
        self._stop_monitor.set()
        if self._monitor is not None:
            self._monitor.join(timeout=5)
            self._monitor = None
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None

    # -- internals -----------------------------------------------------------------------------
    def _busy_with(self, devs: tuple[str, ...]) -> Job | None:
        for job in self.store.list(statuses=("running", "stopping")):
            if set(job.device.split(",")) & set(devs):
                return job
        return None

    def _start(self, job: Job) -> None:
        job_dir = Path(job.job_dir)
        self.stop_path(job).unlink(missing_ok=True)  # a resume must not see the previous stop request
        (job_dir / RC_NAME).unlink(missing_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{STOP_FILE_ENV: str(self.stop_path(job))})
        gpus = [d for d in job.device.split(",") if d != "cpu"]
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        with open(self.log_path(job), "ab") as log:
            log.write(f"$ {' '.join(job.argv)}\n".encode())
            log.flush()
            p = subprocess.Popen(
                [self.python, str(WRAPPER), str(job_dir / RC_NAME), "--", *job.argv],
                cwd=job.cwd or None, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True,
            )
        self._popen[job.id] = p
        self.store.update(job.id, status="running", pid=p.pid, pid_start=procs.pid_start_time(p.pid),
                          started=time.time(), message="running")

    def _check(self, job: Job) -> None:
        p = self._popen.get(job.id)
        if p is not None:
            p.poll()  # reap our child so it does not linger as a zombie
        if job.pid is None:
            self._finish(job)
            return
        leader = procs.pid_alive(job.pid, job.pid_start)
        group = procs.group_pids(job.pid) if (leader or job.pid_start is None or self._group_is_ours(job)) else []
        if not group:
            self._finish(job)
            return
        now = time.time()
        if job.status == "stopping" and job.stop_requested is not None:
            waited, grace = now - job.stop_requested, self.grace_for(job)
            if waited >= grace + self.term_s:
                self._signal(job, signal.SIGKILL)
            elif waited >= grace:
                self._signal(job, signal.SIGTERM)
        elif not leader:
            # The wrapper is gone but helpers survived it: clear them out like a stop would.
            since = self._orphaned.setdefault(job.id, now)
            self._signal(job, signal.SIGKILL if now - since >= self.term_s else signal.SIGTERM)

    def _group_is_ours(self, job: Job) -> bool:
        # After an app restart the leader may have exited while helpers live on; the group id
        # is only trusted for jobs this process started (no pid-reuse risk there).
        return job.id in self._popen

    def _signal(self, job: Job, sig: signal.Signals) -> None:
        if self._signalled.get(job.id) == sig:
            return
        if procs.signal_group(job.pid, sig):
            self._signalled[job.id] = sig

    def _finish(self, job: Job) -> None:
        now = time.time()
        rc_file = Path(job.job_dir) / RC_NAME
        rc = None
        if rc_file.is_file():
            try:
                rc = int(rc_file.read_text().strip())
            except ValueError:
                rc = None
        sent = self._signalled.pop(job.id, None)
        grace = self._grace.pop(job.id, None) or self.grace_s
        self._popen.pop(job.id, None)
        self._orphaned.pop(job.id, None)
        freed = f" (freed {now - job.stop_requested:.2f} s after the stop request)" if job.stop_requested else ""
        ckpt = last_checkpoint_step(job.out_dir)
        saved = f"last checkpoint: step {ckpt}" if ckpt is not None else "no checkpoint"
        if sent is not None:
            status, msg = "killed", f"did not stop in {grace:.0f} s; process group got {sent.name}{freed}; {saved}"
        elif rc is None:
            status, msg = "lost", f"the process ended while no runner watched it and left no exit status; {saved}"
        elif rc == 0:
            status = "stopped" if job.stop_requested else "finished"
            msg = f"stopped cooperatively{freed}; {saved}" if job.stop_requested else "finished"
        else:
            status = "failed"
            msg = f"exit code {rc}; see the log; {saved}"
        self.store.update(job.id, status=status, returncode=rc, ended=now, message=msg)

    # -- reading -------------------------------------------------------------------------------
    def log_tail(self, job: Job, max_lines: int = 40, max_bytes: int = 64_000) -> str:
        path = self.log_path(job)
        if not path.is_file():
            return ""
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - max_bytes))
            text = fh.read().decode("utf-8", errors="replace")
        # tqdm redraws with carriage returns: keep only the last state of each line.
        # (split on "\n" only: str.splitlines() would also split at "\r" and keep every redraw.)
        lines = [seg for ln in text.split("\n") if (seg := ln.rstrip("\r").rsplit("\r", 1)[-1].rstrip())]
        return "\n".join(lines[-max_lines:])
