"""Process-group bookkeeping for training jobs (Linux /proc first, POSIX fallbacks).

A job runs in its own session (``start_new_session=True``), so its process
group id equals the launcher's pid and every helper the trainer forks
(accelerate workers, data-loader workers) shares it.  "Resources freed" means
no live (non-zombie) process is left in that group: zombies hold no memory, and
in a container whose pid 1 does not reap they can linger for ever.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

_PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (which may contain spaces and ')')."""
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return raw[raw.rfind(")") + 2:].split()


def pid_start_time(pid: int) -> int | None:
    """Kernel start time of ``pid`` in clock ticks (None if gone); identifies a process across pid reuse."""
    f = _stat_fields(pid)
    # After the name: state(0) ppid(1) pgrp(2) session(3) ... starttime is field 22 of the full line -> index 19.
    return int(f[19]) if f and len(f) > 19 else None


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """``pid`` exists, is not a zombie, and (when given) started at ``start_time``."""
    if _PROC.is_dir():
        f = _stat_fields(pid)
        if f is None or f[0] in ("Z", "X"):
            return False
        return start_time is None or int(f[19]) == start_time
    try:  # pragma: no cover - non-Linux fallback
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    if not _PROC.is_dir():  # pragma: no cover - non-Linux fallback: cannot list, only probe
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    out = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        f = _stat_fields(int(entry.name))
        if f and f[0] not in ("Z", "X") and int(f[2]) == pgid:
            out.append(int(entry.name))
    return out


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to the whole group; False if the group is already gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True
