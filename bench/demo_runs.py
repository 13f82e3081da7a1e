"""Several `wadi demo` runs side by side: each run's WaDi 1-step scores, grouped, with mean and sd.

    python bench/demo_runs.py --group "cosine over 1200=outputs/demo-t1-s*" --group "cosine over 600=outputs/old-s*" \
        --plot docs/img/demo_runs.png --json docs/perf/demo_runs.json

A group is ``LABEL=GLOB``: the folders the glob matches, each holding the ``metrics.json`` that
``wadi demo`` writes.  The figure puts every run at (FD, alignment), one colour per group, with
the group's mean ± sd as a cross, and the teacher's own rows (from the first run) as references.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import harness

STUDENT = "wadi_1step"


def read_run(folder: Path) -> dict:
    """One demo run: its seed, steps, schedule, wall time and the WaDi and teacher rows' mean scores."""
    path = folder / "metrics.json"
    try:
        m = json.loads(path.read_text())
        rows = {name: {"alignment": v["alignment_mean"], "fd": v["fd_mean"]} for name, v in m["methods"].items()}
        st = m["settings"]
        return {"run": folder.name, "steps": st["steps"], "schedule_steps": st.get("schedule_steps", st["steps"]),
                "wall_s": m["wall_time_s"]["total"], "student": rows.pop(STUDENT), "others": rows}
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"error: {path}: not a `wadi demo` metrics.json with a {STUDENT} row ({e})") from None


def collect(groups: list[str]) -> dict[str, dict]:
    """``{label: {"runs": [...], "alignment": mean, "alignment_std": sd, "fd": ..., "fd_std": ...}}``."""
    out = {}
    for spec in groups:
        label, sep, pattern = spec.partition("=")
        if not sep or not label or not pattern:
            raise SystemExit(f"error: --group {spec!r}: expected LABEL=GLOB")
        folders = sorted(Path(p) for p in glob.glob(pattern) if (Path(p) / "metrics.json").is_file())
        if not folders:
            raise SystemExit(f"error: --group {label!r}: no folder with a metrics.json matches {pattern!r}")
        runs = [read_run(f) for f in folders]
        out[label] = {"runs": runs, **harness.mean_std([r["student"] for r in runs])}
    return out


def draw(groups: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for i, (label, g) in enumerate(groups.items()):
        colour = f"C{i}"
        xs = [r["student"]["fd"] for r in g["runs"]]
        ys = [r["student"]["alignment"] for r in g["runs"]]
        ax.scatter(xs, ys, color=colour, alpha=0.6, label=f"{label} ({len(xs)} runs)")
        ax.errorbar(g["fd"], g["alignment"], xerr=g["fd_std"], yerr=g["alignment_std"], color=colour, capsize=4,
                    marker="P", markersize=10)
    others = next(iter(groups.values()))["runs"][0]["others"]
    for j, (name, score) in enumerate(others.items()):
        ax.axhline(score["alignment"], color="gray", ls=[":", "--", "-."][j % 3], lw=1,
                   label=f"{name}: {score['alignment']:.3f} / FD {score['fd']:.0f}")
    ax.set_xlabel("FD (lower is better)")
    ax.set_ylabel("alignment (higher is better)")
    ax.set_title("wadi demo: the WaDi 1-step student, one dot per run; cross = mean ± sd")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--group", action="append", required=True, metavar="LABEL=GLOB",
                   help="a group of demo output folders (repeatable)")
    p.add_argument("--plot", metavar="PNG", help="draw the runs into this figure")
    p.add_argument("--json", metavar="PATH", help="write the runs and each group's mean and sd")
    a = p.parse_args(argv)
    groups = collect(a.group)
    for label, g in groups.items():
        print(f"{label}: alignment {g['alignment']:.3f} +- {g['alignment_std']:.3f}, FD {g['fd']:.0f} +- "
              f"{g['fd_std']:.0f} ({len(g['runs'])} runs)")
    if a.plot:
        draw(groups, Path(a.plot))
    if a.json:
        harness.write_json(a.json, {"groups": groups})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
