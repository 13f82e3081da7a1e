"""Persistent job store: one SQLite file under the jobs folder.

The app process writes it; other readers (a page reload, a restarted app, the
ComfyUI sidebar's ``/wadi/jobs`` route) only read it.  SQLite gives atomic
updates across those processes without a server.  Pure stdlib: importing this
module never pulls in Gradio or torch (the ComfyUI routes use it).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

DB_NAME = "jobs.sqlite"

# A job's life: queued -> running -> (stopping ->) finished | stopped | failed | killed,
# queued -> cancelled, and "lost" when the app restarts and neither the process nor
# its exit record is there any more.
ACTIVE = ("queued", "running", "stopping")
FINAL = ("finished", "stopped", "failed", "killed", "cancelled", "lost")

_COLUMNS = (
    "id", "kind", "title", "argv", "cwd", "job_dir", "out_dir", "device", "status", "pid", "pid_start",
    "created", "started", "ended", "returncode", "stop_requested", "message", "resume_of",
)


@dataclass
class Job:
    id: str
    kind: str
    argv: list[str]
    job_dir: str
    out_dir: str
    device: str = "cpu"
    title: str = ""
    cwd: str = ""
    status: str = "queued"
    pid: int | None = None
    pid_start: int | None = None  # kernel start time of ``pid``; guards against pid reuse on reattach
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    returncode: int | None = None
    stop_requested: float | None = None  # when stop was asked (the escalation clock)
    message: str = ""
    resume_of: str | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class JobStore:
    """CRUD over the ``jobs`` table; every call opens its own short connection (thread- and process-safe)."""

    def __init__(self, jobs_dir: str | Path):
        self.jobs_dir = Path(jobs_dir)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.jobs_dir / DB_NAME
        with self._conn() as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, kind TEXT, title TEXT, argv TEXT, cwd TEXT,"
                " job_dir TEXT, out_dir TEXT, device TEXT, status TEXT, pid INTEGER, pid_start INTEGER,"
                " created REAL, started REAL, ended REAL, returncode INTEGER, stop_requested REAL, message TEXT,"
                " resume_of TEXT)"
            )

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=10.0)
        try:
            with conn:  # commit on success, roll back on error
                yield conn
        finally:
            conn.close()

    @staticmethod
    def _row_to_job(row: tuple) -> Job:
        d = dict(zip(_COLUMNS, row))
        d["argv"] = json.loads(d["argv"] or "[]")
        return Job(**d)

    def add(self, job: Job) -> Job:
        d = job.to_json()
        d["argv"] = json.dumps(d["argv"])
        with self._conn() as c:
            c.execute(
                f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                [d[k] for k in _COLUMNS],
            )
        return job

    def update(self, job_id: str, **changes) -> Job:
        bad = [k for k in changes if k not in _COLUMNS or k == "id"]
        if bad:
            raise KeyError(f"unknown job field(s) {bad}")
        if "argv" in changes:
            changes["argv"] = json.dumps(changes["argv"])
        with self._conn() as c:
            cur = c.execute(
                f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in changes)} WHERE id = ?",
                [*changes.values(), job_id],
            )
            if cur.rowcount != 1:
                raise KeyError(f"no job {job_id!r} in {self.path}")
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        with self._conn() as c:
            row = c.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(f"no job {job_id!r} in {self.path}")
        return self._row_to_job(row)

    def list(self, kind: str | None = None, statuses: tuple[str, ...] | None = None) -> list[Job]:
        """Newest first."""
        sql, args = f"SELECT {', '.join(_COLUMNS)} FROM jobs", []
        where = []
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        if statuses is not None:
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            args.extend(statuses)
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._conn() as c:
            rows = c.execute(sql + " ORDER BY created DESC, rowid DESC", args).fetchall()
        return [self._row_to_job(r) for r in rows]
