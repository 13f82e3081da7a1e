"""Reading a run's ``events.jsonl`` (format: :mod:`trainer.jobs`): incremental tail, progress, loss plot.

The trainer appends while we read, so only complete lines are parsed and the
byte offset is remembered; each refresh costs what was appended since the last.
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import EVENTS_FILE_NAME


@dataclass
class Progress:
    step: int | None = None
    total: int | None = None
    it_s: float | None = None
    eta_s: float | None = None
    losses: dict[str, float] = field(default_factory=dict)
    sample: str | None = None  # newest sample grid (path as logged)
    checkpoint: str | None = None
    last_event: str | None = None
    error: str | None = None

    def text(self) -> str:
        if self.step is None:
            return "waiting for the first step..."
        parts = [f"step {self.step}" + (f" / {self.total}" if self.total else "")]
        if self.total:
            parts[0] += f" ({100.0 * self.step / self.total:.0f} %)"
        if self.it_s:
            parts.append(f"{self.it_s:.2f} it/s")
        if self.eta_s is not None:
            parts.append(f"ETA {format_seconds(self.eta_s)}")
        parts += [f"{k} {v:.4g}" for k, v in self.losses.items()]
        # No run state here ("stopped", "done"): the job's status line is the one place for it.
        if self.error:
            parts.append(f"error: {self.error}")
        return " · ".join(parts)


def format_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _flatten_losses(rec: dict) -> dict[str, float]:
    """``{"losses": {...}}`` or top-level ``loss``/``loss_*`` keys -> ``{name: value}``."""
    out = {}
    src = rec.get("losses") if isinstance(rec.get("losses"), dict) else {}
    out.update({str(k): float(v) for k, v in src.items() if isinstance(v, (int, float))})
    for k, v in rec.items():
        if (k == "loss" or k.startswith("loss_")) and isinstance(v, (int, float)):
            out[k[5:] if k.startswith("loss_") else k] = float(v)
    return out


class EventTail:
    """Follows one ``events.jsonl``; ``records`` grows as :meth:`update` is called."""

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / EVENTS_FILE_NAME
        self.records: list[dict] = []
        self._offset = 0
        self._rate: list[tuple[float, int]] = []  # (wall time, step) for it/s when the trainer gives none

    def update(self) -> int:
        """Parse what was appended; returns how many new records arrived."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return 0
        if size < self._offset:  # truncated/recreated (a --force rerun): start over
            self.records, self._offset = [], 0
        if size == self._offset:
            return 0
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read(size - self._offset)
        end = chunk.rfind(b"\n")
        if end < 0:
            return 0  # a line still being written
        self._offset += end + 1
        new = 0
        for line in chunk[: end + 1].splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a torn line from a killed writer: skip, never crash the view
            if isinstance(rec, dict):
                self.records.append(rec)
                new += 1
                if isinstance(rec.get("step"), int):
                    self._rate.append((float(rec.get("time", time.time())), rec["step"]))
        return new

    def progress(self) -> Progress:
        p = Progress()
        for rec in self.records:
            ev = rec.get("event")
            p.last_event = ev or p.last_event
            for key in ("total_steps", "max_steps"):  # the distill trainer logs max_steps
                if isinstance(rec.get(key), int):
                    p.total = rec[key]
            # A run stopped (or failed) during its set-up logs step 0 before it restored its checkpoint:
            # only records of a running trainer move the step shown.
            if isinstance(rec.get("step"), int) and ev not in ("stopped", "error"):
                p.step = rec["step"]
            if ev == "sample" and rec.get("path"):
                p.sample = str(rec["path"])
            elif rec.get("samples"):
                paths = rec["samples"]
                p.sample = str(paths[-1] if isinstance(paths, list) else paths)
            if ev == "error" and rec.get("message"):
                p.error = str(rec["message"])
            if ev == "checkpoint" and rec.get("path"):
                p.checkpoint = str(rec["path"])
            losses = _flatten_losses(rec)
            if losses:
                p.losses = losses
            if isinstance(rec.get("it_s"), (int, float)):
                p.it_s = float(rec["it_s"])
            if isinstance(rec.get("eta_s"), (int, float)):
                p.eta_s = float(rec["eta_s"])
        if p.it_s is None and len(self._rate) >= 2:
            (t0, s0), (t1, s1) = self._rate[max(0, len(self._rate) - 20)], self._rate[-1]
            if t1 > t0 and s1 > s0:
                p.it_s = (s1 - s0) / (t1 - t0)
        if p.eta_s is None and p.it_s and p.total and p.step is not None:
            p.eta_s = (p.total - p.step) / p.it_s
        return p

    def loss_series(self) -> dict[str, tuple[list[int], list[float]]]:
        series: dict[str, tuple[list[int], list[float]]] = {}
        for rec in self.records:
            if not isinstance(rec.get("step"), int):
                continue
            for name, v in _flatten_losses(rec).items():
                if math.isfinite(v):
                    xs, ys = series.setdefault(name, ([], []))
                    xs.append(rec["step"])
                    ys.append(v)
        return series


def loss_plot_png(series: dict[str, tuple[list[int], list[float]]], title: str = "") -> bytes | None:
    """One panel per loss (their scales differ by orders of magnitude); PNG bytes, None if no data."""
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display; safe in a server thread
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.0), squeeze=False)
    for ax, (name, (xs, ys)) in zip(axes[0], series.items()):
        ax.plot(xs, ys, lw=1.2)
        ax.set_title(f"{name} loss", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
