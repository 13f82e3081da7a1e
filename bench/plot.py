"""Plots for docs/performance.md from the bench scripts' JSON files.

    python bench/plot.py --adapter adapter_cost.json --vsd vsd_step.json --out docs/img

Each figure shows the paired time ratio (median, IQR as error bar) and the peak-memory
ratio against the script's baseline, one group per rank or model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _bars(ax, groups: dict[str, list[dict]], key: str, title: str, baseline: str) -> None:
    import numpy as np

    names = list(dict.fromkeys(r["name"] for rows in groups.values() for r in rows))
    width = 0.8 / max(1, len(groups))
    x = np.arange(len(names))
    for gi, (label, rows) in enumerate(groups.items()):
        by = {r["name"]: r for r in rows}
        vals, lo, hi = [], [], []
        for n in names:
            r = by.get(n)
            if r is None:
                vals.append(np.nan)
                lo.append(0)
                hi.append(0)
            elif key == "time":
                m = r["ratio"]["median"]
                vals.append(m)
                lo.append(m - r["ratio"]["q1"])
                hi.append(r["ratio"]["q3"] - m)
            else:
                vals.append(r.get(key) if r.get(key) is not None else np.nan)
                lo.append(0)
                hi.append(0)
        ax.bar(x + gi * width, vals, width, yerr=[lo, hi] if key == "time" else None, label=label, capsize=3)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(x + width * (len(groups) - 1) / 2, names, rotation=20)
    ax.set_ylabel(f"x {baseline}")
    ax.set_title(title)
    ax.legend(fontsize=8)


def figure(groups: dict[str, list[dict]], baseline: str, suptitle: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    _bars(axes[0], groups, "time", "time (median, IQR)", baseline)
    _bars(axes[1], groups, "mem_step_ratio", "step peak memory", baseline)
    _bars(axes[2], groups, "mem_total_ratio", "total peak memory", baseline)
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    print(f"wrote {path}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--adapter", help="adapter_cost.py JSON")
    p.add_argument("--vsd", help="vsd_step.py JSON")
    p.add_argument("--out", default="docs/img")
    p.add_argument("--tag", default="cpu")
    a = p.parse_args(argv)
    out = Path(a.out)
    for path, kind in ((a.adapter, "adapter"), (a.vsd, "vsd")):
        if not path:
            continue
        d = json.loads(Path(path).read_text())
        m, args = d["machine"], d["args"]
        where = m.get("gpu") or f"{m['cpu']} x{m['cores']}, {m['threads']} thr"
        if kind == "adapter":
            groups = {f"r {k}": v for k, v in d["results"].items()}
            title = (f"adapter fwd+bwd: {args['unet']} {args['latent']}x{args['latent']} b{args['batch']} "
                     f"({where}, torch {m['torch']})")
            figure(groups, args["baseline"], title, out / f"adapter_cost_{a.tag}.png")
        else:
            groups = dict(d["results"].items())
            title = f"WaDi VSD step vs official-style loop ({where}, torch {m['torch']})"
            figure(groups, "official", title, out / f"vsd_step_{a.tag}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
