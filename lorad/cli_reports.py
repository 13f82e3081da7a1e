"""The ``lorad`` commands that write reports beside their results: ``extract`` (angles of a merged
model against its base, with a per-layer error report) and ``analyze`` (norm and direction changes of
a student against its teacher, with figures).  Parsed and dispatched by :mod:`.cli`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli_common import CLIError, dtype_of, fmt, json_safe, progress, refuse_existing, say
from .fsutil import atomic_write_text

__all__ = ["cmd_extract", "cmd_analyze"]


# -- extract -------------------------------------------------------------------------------


def _report_paths(out: Path, report: str | None) -> tuple[Path, Path]:
    if report:
        r = Path(report)
        stem = r.with_suffix("") if r.suffix in (".csv", ".json") else r
    else:
        name = out.name
        for suf in (".lorad.safetensors", ".safetensors"):
            if name.endswith(suf):
                name = name[: -len(suf)]
                break
        stem = out.with_name(name + ".extract")
    return stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".json")


def _write_rows_csv(rows: list[dict], path: Path) -> None:
    import csv
    import io as _io

    buf = _io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _merged_arch(path: Path) -> str:
    """``lorad.arch`` that ``lorad merge`` records in its output, so extract needs no ``--arch`` for it."""
    from .checkpoint import DIFFUSERS_WEIGHTS
    from .io import read_header

    weights = path / DIFFUSERS_WEIGHTS if path.is_dir() else path
    if weights.name.endswith(".safetensors") and weights.is_file():
        arch = read_header(weights).metadata.get("lorad.arch")
        if arch:
            return arch
    raise CLIError(f"{path}: no lorad.arch in its metadata (it was not written by lorad merge); pass --arch")


def cmd_extract(args: argparse.Namespace) -> int:
    from .checkpoint import load_state_dict
    from .extract import extract_state
    from .io import build_metadata, layers_from_adapter_state, save_lorad
    from .metadata import K_LAYOUT
    from .statekeys import config_layout, ldm_prefix

    out = Path(args.out)
    csv_path, json_path = _report_paths(out, args.report)
    refuse_existing([out, csv_path, json_path], args.force)
    base_ck = load_state_dict(args.base, args.component)
    merged_ck = load_state_dict(args.merged, args.component)
    base, merged = base_ck.state, merged_ck.state
    if not args.arch:
        args.arch = _merged_arch(merged_ck.path)
    layout = config_layout(args.arch, base_ck.config or merged_ck.config)
    for path, st in ((args.base, base), (args.merged, merged)):
        if ldm_prefix(st) is not None:
            raise CLIError(f"{path}: ldm keys; extract expects diffusers keys (as in the official rotated_*.safetensors)")
    include, exclude = list(args.include or []), []
    if args.preset:
        from .archs import get_arch
        from .presets import PRESETS

        t = PRESETS[args.preset][get_arch(args.arch).family]
        include += list(t.include)
        exclude += list(t.exclude)
    rank = None if args.rank == 0 else args.rank
    res = extract_state(base, merged, rank=rank, tol=args.tol, include=include or None, exclude=exclude or None,
                        include_conv=args.include_conv, progress=progress(args, "extract"))
    if not res.layers:
        raise CLIError(f"{args.merged}: no rotated layer found against {args.base} (nothing written)")
    layers = layers_from_adapter_state(args.arch, res.layers, args.component, layout)
    summ = res.summary()
    ranks = {t["A"].shape[1] for t in res.layers.values() if "A" in t}
    file_rank = ranks.pop() if len(ranks) == 1 and summ["dense_fallback"] == 0 else None
    md = build_metadata(
        arch=args.arch, rank=file_rank, target_preset=args.preset or "extracted",
        title=args.title or out.name.split(".")[0],
        provenance={"extracted_from": Path(args.merged).name, "extraction_base": Path(args.base).name,
                    "extraction_rank": args.rank, "extraction_tol": args.tol,
                    "extraction_max_weight_err": summ["max_weight_err"]},
    )
    if layout is not None:
        md[K_LAYOUT] = json.dumps(layout, sort_keys=True)
    save_lorad(out, layers, md, force=args.force, dtype=dtype_of(args.dtype))
    _write_rows_csv(res.report_rows(), csv_path)
    report = {"summary": summ, "layers": res.report_rows(), "other_differences": res.other_rows()}
    atomic_write_text(json_path, json.dumps(json_safe(report), indent=2) + "\n")
    say(args, f"extracted {summ['layers_extracted']} layers ({summ['factored']} factored at rank {args.rank}, "
               f"{summ['dense_fallback']} dense) into {out}")
    say(args, f"  max weight error {fmt(summ['max_weight_err'])}, max rotation residual "
               f"{fmt(summ['max_rotation_residual'])}, {summ['zero_pairs']} zero base pairs")
    if res.others:
        say(args, f"  {len(res.others)} other tensor(s) differ (not rotations), e.g. "
                   + ", ".join(f"{o.name} [{o.kind}]" for o in res.others[:3]))
    say(args, f"  report: {csv_path}, {json_path}")
    return 0


# -- analyze -------------------------------------------------------------------------------


def _is_lorad(path: Path) -> bool:
    """A ``.lorad`` file (its header says so), as opposed to a model state dict."""
    if not (path.is_file() and path.name.endswith(".safetensors")):
        return False
    from .io import read_header
    from .metadata import K_VERSION

    return K_VERSION in read_header(path).metadata


def _lorad_student(args: argparse.Namespace, teacher):
    """The student as ``teacher`` rotated by a ``.lorad`` file (any layout the file records)."""
    from .checkpoint import Checkpoint, merge_state
    from .io import load_lorad
    from .statekeys import layers_for_state, state_layout

    f = load_lorad(args.student)
    layout = state_layout(f.arch, teacher.config, f.layout, str(args.teacher))
    layers, _ = layers_for_state(f.arch, f.layers, teacher.state, args.component, layout)
    return Checkpoint(merge_state(teacher.state, layers), Path(args.student), teacher.config)


def cmd_analyze(args: argparse.Namespace) -> int:
    from . import analysis
    from .checkpoint import load_state_dict, save_safetensors, write_diffusers_folder

    if not 0 < args.frac <= 1:
        raise CLIError(f"--frac must be in (0, 1], got {args.frac}")
    outdir = Path(args.outdir)
    names = {"csv": "layers.csv", "summary": "summary.json", "fig_a": "norm_direction.png", "fig_b": "svd_energy.png"}
    targets = [outdir / n for n in names.values()]
    te = load_state_dict(args.teacher, args.component)
    st = _lorad_student(args, te) if _is_lorad(Path(args.student)) else load_state_dict(args.student, args.component)
    swap_paths: list[Path] = []
    if args.write_swaps:
        suffix = "" if st.config is not None else ".safetensors"
        swap_paths = [outdir / f"norm_swapped{suffix}", outdir / f"direction_swapped{suffix}"]
    refuse_existing(targets + swap_paths, args.force)
    res = analysis.analyze(st.state, te.state, include=args.include, frac=args.frac, progress=progress(args, "analyze"))
    if not res.layers:
        from .statekeys import ldm_prefix

        hint = ""
        if (ldm_prefix(st.state) is None) != (ldm_prefix(te.state) is None):
            hint = " (one uses ldm keys, the other diffusers keys: convert one so both use the same layout)"
        raise CLIError(f"{args.student} / {args.teacher}: no weight matrices with matching keys and shapes "
                       f"to compare{hint}")
    summ = res.summary()
    analysis.write_csv(res, outdir / names["csv"])
    atomic_write_text(outdir / names["summary"], json.dumps(json_safe(
        {"student": str(args.student), "teacher": str(args.teacher), **summ, "skipped": res.skipped}), indent=2) + "\n")
    title = args.title or f"{Path(args.student).name} vs {Path(args.teacher).name}"
    analysis.plot_norm_direction(res, outdir / names["fig_a"], title=title)
    analysis.plot_svd_energy(res, outdir / names["fig_b"], title=f"{title}: direction residual SVD energy")
    for path, fn in zip(swap_paths, (analysis.norm_swapped, analysis.direction_swapped)):
        swapped = fn(st.state, te.state, include=args.include)
        if st.config is not None:
            write_diffusers_folder(swapped, path, st.config, force=args.force)
        else:
            save_safetensors(swapped, path, force=args.force)
    say(args, f"{summ['layers']} layers: norm change {100 * summ['norm_mean']:.3g}% (std {100 * summ['norm_std_mean']:.3g}%), "
               f"direction change {100 * summ['dir_mean']:.3g}% (std {100 * summ['dir_std_mean']:.3g}%); "
               f"SVD energy at {args.frac:.0%} rank: mean {summ['energy_mean']:.3f} "
               f"[{summ['energy_min']:.3f}, {summ['energy_max']:.3f}]")
    say(args, f"wrote {', '.join(str(p) for p in targets + swap_paths)}")
    return 0
