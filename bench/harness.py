"""Shared benchmark harness: interleaved timing, robust stats, clean peak memory, reports.

Every bench script follows the same protocol so its ratios mean the same thing:

* all candidates live in ONE process and are timed round-robin (A B C, B C A, ...),
  after a warm-up, so slow drift of a shared machine hits every candidate alike;
* each round gives one time per candidate; the ratio against the baseline is taken
  *within* the round (paired) and summarised by its median and IQR;
* peak memory is measured per candidate in a fresh subprocess (see :func:`peak_rss_delta`)
  on the CPU, or with ``torch.cuda.max_memory_allocated`` on CUDA.

Scripts import this module as ``harness`` (``bench/`` is ``sys.path[0]`` when a
script there runs) and load the checkout as ``wadi_lorad`` via :func:`load_package`.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent

# glibc keeps freed heap memory resident, which hides later peaks.  With a fixed low
# mmap threshold every tensor-sized block is its own mapping and is returned to the
# OS on free, so the resident set tracks live memory (tested: a 256 MiB tensor shows
# up as +256 MiB and is gone after ``del``).  Set only in the measuring children.
MEM_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "MALLOC_ARENA_MAX": "2"}
MEM_CHILD_FLAG = "--_mem-child"


def load_package() -> ModuleType:
    """Import this checkout as ``wadi_lorad`` (the same bootstrap the tests use)."""
    spec = importlib.util.spec_from_file_location("_wadi_bootstrap", ROOT / "_bootstrap.py")
    boot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(boot)
    return boot.register()


# ----------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": device,
    }
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    for mod in ("diffusers", "peft"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional packages
            pass
    return info


def machine_line(info: Mapping[str, Any]) -> str:
    gpu = f", GPU {info['gpu']} (CUDA {info.get('cuda')})" if "gpu" in info else ""
    load = f", load {info['load_avg_1m']}" if "load_avg_1m" in info else ""
    return (
        f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
        f"{info['threads']} threads{gpu}{load}"
    )


def wait_for_quiet(max_load: float = 1.5, max_wait_s: float = 0.0) -> float:
    """Wait (up to ``max_wait_s``) until the 1-minute load average is below ``max_load``."""
    deadline = time.monotonic() + max_wait_s
    load = os.getloadavg()[0]
    while load > max_load and time.monotonic() < deadline:
        time.sleep(10)
        load = os.getloadavg()[0]
    return load


# ----------------------------------------------------------------------------- timing
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(
    candidates: Mapping[str, Callable[[], Any]],
    repeats: int = 5,
    warmup: int = 1,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, list[float]]:
    """Time each candidate ``repeats`` times, round-robin with a rotating start.

    Returns seconds per call, one list per candidate (index = round).
    """
    names = list(candidates)
    for _ in range(warmup):
        for n in names:
            candidates[n]()
            sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for rnd in range(repeats):
        order = names[rnd % len(names):] + names[: rnd % len(names)]
        for n in order:
            gc.collect()
            sync(device)
            t0 = time.perf_counter()
            candidates[n]()
            sync(device)
            times[n].append(time.perf_counter() - t0)
        if progress:
            print(f"  round {rnd + 1}/{repeats}: " + "  ".join(f"{n} {times[n][-1]:.3f}s" for n in names),
                  file=sys.stderr, flush=True)
    return times


@dataclass
class Stat:
    median: float
    q1: float
    q3: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, xs: Sequence[float]) -> Stat:
        xs = sorted(xs)
        if len(xs) >= 2:
            q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
        else:
            q1 = q3 = xs[0]
        return cls(statistics.median(xs), q1, q3, xs[0], xs[-1], len(xs))


@dataclass
class Row:
    """One candidate's result.  ``ratio`` is the median of per-round ratios to the baseline."""

    name: str
    time: Stat | None = None
    ratio: Stat | None = None
    mem_step: float | None = None  # MiB the step adds on top of what was alive before it
    mem_total: float | None = None  # MiB above an empty process: weights, optimizer state, step peak
    mem_step_ratio: float | None = None
    mem_total_ratio: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def paired_rows(times: Mapping[str, Sequence[float]], baseline: str) -> dict[str, Row]:
    base = times[baseline]
    rows = {}
    for n, ts in times.items():
        ratios = [t / b for t, b in zip(ts, base)]
        rows[n] = Row(n, Stat.of(ts), Stat.of(ratios))
    return rows


def add_memory(rows: Mapping[str, Row], mem: Mapping[str, Mapping[str, float]], baseline: str) -> None:
    """Attach :func:`measure_peak` results (``{candidate: {"step_mib", "total_mib"}}``) and ratios."""
    b = mem.get(baseline)
    for n, r in rows.items():
        if n not in mem:
            continue
        r.mem_step, r.mem_total = mem[n]["step_mib"], mem[n]["total_mib"]
        if b and b["step_mib"] > 0:
            r.mem_step_ratio = r.mem_step / b["step_mib"]
        if b and b["total_mib"] > 0:
            r.mem_total_ratio = r.mem_total / b["total_mib"]


def _f(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def fmt_table(rows: Sequence[Row], baseline: str, unit: str = "s", extra_cols: Sequence[str] = ()) -> str:
    """Markdown table: time median/IQR/min-max, paired ratio to ``baseline``, peak memory and ratios."""
    head = ["candidate", f"median {unit}", "IQR", "min-max", f"time x {baseline}", "ratio IQR"]
    has_mem = any(r.mem_step is not None for r in rows)
    if has_mem:
        head += ["step peak MiB", f"x {baseline}", "total peak MiB", f"x {baseline} "]
    head += list(extra_cols)
    lines = []
    for r in rows:
        cells = [r.name]
        if r.time is not None:
            t = r.time
            cells += [f"{t.median:.4g}", f"{t.q1:.4g}-{t.q3:.4g}", f"{t.lo:.4g}-{t.hi:.4g}",
                      f"{r.ratio.median:.3f}", f"{r.ratio.q1:.3f}-{r.ratio.q3:.3f}"]
        else:
            cells += ["-"] * 5
        if has_mem:
            cells += [_f(r.mem_step, ".0f"), _f(r.mem_step_ratio, ".3f"), _f(r.mem_total, ".0f"),
                      _f(r.mem_total_ratio, ".3f")]
        cells += [str(r.extra.get(c, "-")) for c in extra_cols]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(head)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |" for cells in lines]
    return "\n".join(out)


def rows_json(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


def _shareable_tree(value: Any) -> Any:
    """``value`` with every path reduced to its last part (``lorad.metadata.shareable``), all the way down."""
    from wadi_lorad.lorad.metadata import shareable

    if isinstance(value, Mapping):
        return {k: _shareable_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_shareable_tree(v) for v in value]
    return shareable(value)


def write_json(path: str | None, payload: Mapping[str, Any]) -> None:
    """Write ``payload`` atomically to ``path`` (and under ``$OUT`` when that is set).

    The results are committed under docs/perf, so local folders (output paths among the
    arguments) are reduced to file names first.
    """
    load_package()
    payload = _shareable_tree(payload)
    targets = [Path(path)] if path else []
    if os.environ.get("OUT") and path:
        targets.append(Path(os.environ["OUT"]) / Path(path).name)
    for p in targets:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2, default=str))
        os.replace(tmp, p)
        print(f"wrote {p}", file=sys.stderr)


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per candidate (interleaved)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--no-mem", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--max-load", type=float, default=1.5, help="wait for the 1-min load average below this")
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait at most for a quiet machine")
    p.add_argument(MEM_CHILD_FLAG, dest="mem_child", default=None, help=argparse.SUPPRESS)
    return p


def mean_std(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per key of ``rows`` (one dict per seed/run): ``key`` = mean, ``key_std`` = sample std (0 for one row)."""
    out: dict[str, float] = {}
    for k in rows[0]:
        vals = [r[k] for r in rows]
        out[k] = statistics.fmean(vals)
        out[k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return out


def setup_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


def begin(args: argparse.Namespace, mem_child: Callable[[argparse.Namespace], None] | None = None) -> dict | None:
    """The common start of a bench ``main``: threads; in a memory child run ``mem_child`` and
    return None (the caller exits); otherwise print and return the machine description."""
    setup_threads(args.threads)
    if mem_child is not None and getattr(args, "mem_child", False):
        mem_child(args)
        return None
    info = machine_info(args.device)
    print(machine_line(info))
    return info


# ----------------------------------------------------------------------------- memory
def _status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


_START: dict[str, float] = {}


def child_start(device: str = "cpu") -> None:
    """Mark the memory in use before any model is built (the zero of ``total_mib``)."""
    gc.collect()
    if device.startswith("cuda"):
        _START["bytes"] = torch.cuda.memory_allocated()
    else:
        _START["bytes"] = _status_bytes("VmRSS")


def measure_peak(step: Callable[[], Any], device: str = "cpu") -> dict[str, float]:
    """Peak memory of one ``step``: ``step_mib`` on top of what was alive just before it,
    ``total_mib`` on top of the :func:`child_start` mark (weights, optimizer state and all).

    CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats``.  CPU: the
    resident-set high-water mark (VmHWM) after resetting it to the current RSS;
    valid when the process runs with :data:`MEM_ENV` (see :func:`peak_rss_delta`).
    ``tracemalloc`` is no use here: it sees Python objects, not torch's allocations.
    """
    gc.collect()
    start = _START.get("bytes", 0.0)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        before = _status_bytes("VmRSS")
        if not _reset_peak_rss():
            raise RuntimeError("cannot reset VmHWM (/proc/self/clear_refs); peak RSS not measurable here")
        step()
        peak = _status_bytes("VmHWM")
    return {"step_mib": (peak - before) / 2**20, "total_mib": (peak - start) / 2**20}


def peak_rss_delta(script: str, candidate: str, argv: Sequence[str]) -> dict[str, Any]:
    """Run ``script`` again as a child that builds only ``candidate`` and reports its peak.

    The child prints one JSON line (the dict of :func:`measure_peak`) last (see :func:`child_report`).
    A fresh process per candidate means no allocator state leaks between candidates.
    """
    env = {**os.environ, **MEM_ENV}
    cmd = [sys.executable, script, *argv, MEM_CHILD_FLAG, candidate]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child for {candidate!r} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_report(payload: Mapping[str, Any]) -> None:
    print(json.dumps(dict(payload)), flush=True)


def strip_child_args(argv: Sequence[str]) -> list[str]:
    """argv without the memory-child flag, the JSON path and other parent-only options."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in (MEM_CHILD_FLAG, "--json"):
            skip = True
            continue
        if a.startswith(MEM_CHILD_FLAG + "=") or a.startswith("--json="):
            continue
        out.append(a)
    return out


def memory_by_subprocess(
    script: str, candidates: Sequence[str], argv: Sequence[str], device: str = "cpu", progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Peak memory per candidate, each in its own child process (CPU and CUDA alike)."""
    out = {}
    for c in candidates:
        out[c] = peak_rss_delta(script, c, strip_child_args(argv))
        if progress:
            m = out[c]
            print(f"  memory {c}: step {m['step_mib']:.1f} MiB, total {m['total_mib']:.1f} MiB",
                  file=sys.stderr, flush=True)
    return out


# ----------------------------------------------------------------------------- flops
def count_flops(fn: Callable[[], Any]) -> int:
    """Matmul/conv FLOPs of ``fn()`` (torch's FlopCounterMode; elementwise ops not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())
