"""Summary of a ``bench/gpu/run.sh`` run: it/s and peak memory per candidate, from its JSON files."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _it_s(row: dict) -> str:
    return f"{1.0 / row['time']['median']:.2f}"


def _gib(mib: float | None) -> str:
    return "-" if mib is None else f"{mib / 1024:.2f}"


def _ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def table(title: str, rows: list[dict], base: str) -> list[str]:
    out = [f"\n### {title}", "", f"| candidate | it/s | time x {base} | step peak GiB | total peak GiB | total x {base} |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['name']} | {_it_s(r)} | {r['ratio']['median']:.3f} | {_gib(r['mem_step'])} | "
                   f"{_gib(r['mem_total'])} | {_ratio(r['mem_total_ratio'])} |")
    return out


def main(folder: str) -> int:
    d = Path(folder)
    lines = []
    for name in ("adapter_cost.json", "vsd_step.json"):
        p = d / name
        if not p.is_file():
            lines.append(f"\n({name} missing)")
            continue
        data = json.loads(p.read_text())
        m, a = data["machine"], data["args"]
        where = f"{m.get('gpu', m['cpu'])}, torch {m['torch']}"
        if name == "adapter_cost.json":
            for rank, rows in data["results"].items():
                lines += table(f"Adapter fwd+bwd, {a['unet']} {a['latent']}x{a['latent']} batch {a['batch']}, "
                               f"r {rank} ({where})", rows, a["baseline"])
        else:
            for model, rows in data["results"].items():
                lines += table(f"WaDi VSD step, {model} {a['latent']}x{a['latent']} batch {a['batch']} ({where})",
                               rows, "official")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "outputs/gpu"))
