"""``lorad`` command line: inspect, validate, merge, extract, convert, analyze.

Every command reads its inputs fully and checks them before it writes anything;
writes are atomic and never replace an existing output without ``--force``.
Failures print one clear message (naming the file/key) and return exit code 1;
usage errors return 2 (argparse).  Heavy imports stay inside the commands so
``lorad --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .fsutil import atomic_write_text

__all__ = ["main", "build_parser"]

_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class CLIError(Exception):
    """A user-facing failure; the message is printed as is."""


def _dtype(name: str):
    import torch

    return getattr(torch, _DTYPES[name])


def _progress(args: argparse.Namespace, desc: str) -> Callable[[Iterable], Iterable]:
    from tqdm.auto import tqdm

    def wrap(it: Iterable) -> Iterable:
        return tqdm(it, desc=desc, unit="tensor", disable=args.quiet, file=sys.stderr, leave=False)

    return wrap


def _say(args: argparse.Namespace, msg: str) -> None:
    if not args.quiet:
        print(msg)


def _refuse_existing(paths: Sequence[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)}: already exists (pass --force to overwrite)")


def _fmt(x: float) -> str:
    return f"{x:.3g}" if math.isfinite(x) else str(x)


# -- inspect ------------------------------------------------------------------------------


def _layer_rows(file) -> list[dict]:
    from .checkpoint import layer_angles

    rows = []
    for key, t in file.layers.items():
        theta = layer_angles(t, key)
        rows.append({
            "key": key,
            "kind": "dense" if "theta" in t else f"rank {t['A'].shape[1]}",
            "out": int(theta.shape[0]),
            "pairs": int(theta.shape[1]),
            "params": int(sum(v.numel() for v in t.values())),
            "max_abs_angle": float(theta.abs().max()) if theta.numel() else 0.0,
            "mean_abs_angle": float(theta.abs().mean()) if theta.numel() else 0.0,
        })
    return rows


def cmd_inspect(args: argparse.Namespace) -> int:
    from .io import load_lorad

    f = load_lorad(args.file)
    rows = _layer_rows(f)
    totals = {
        "layers": len(rows),
        "factored": sum(r["kind"] != "dense" for r in rows),
        "dense": sum(r["kind"] == "dense" for r in rows),
        "params": sum(r["params"] for r in rows),
        "file_bytes": Path(args.file).stat().st_size,
        "max_abs_angle": max((r["max_abs_angle"] for r in rows), default=0.0),
    }
    if args.json:
        print(json.dumps({"metadata": f.metadata, "layers": rows, "totals": totals}, indent=2))
        return 0
    from .convert import describe

    print(describe(f))
    if args.metadata:
        print("metadata:")
        for k in sorted(f.metadata):
            v = f.metadata[k]
            print(f"  {k}: {v if len(v) <= 100 else v[:97] + '...'}")
    if not args.no_layers:
        w = max((len(r["key"]) for r in rows), default=3)
        print(f"per layer:\n  {'key':<{w}}  {'kind':>9}  {'out x pairs':>12}  {'params':>10}  {'max|θ|':>8}  {'mean|θ|':>8}")
        for r in rows:
            print(f"  {r['key']:<{w}}  {r['kind']:>9}  {str(r['out']) + 'x' + str(r['pairs']):>12}  "
                  f"{r['params']:>10}  {r['max_abs_angle']:>8.4f}  {r['mean_abs_angle']:>8.4f}")
    print(f"totals: {totals['layers']} layers ({totals['factored']} factored, {totals['dense']} dense), "
          f"{totals['params']:,} values ({totals['params'] / 1e6:.2f}M), {totals['file_bytes']:,} bytes, "
          f"max |θ| {totals['max_abs_angle']:.4f}")
    return 0


# -- validate ------------------------------------------------------------------------------


def _target_shapes(arch: str, file, model: str | None, component: str | None) -> dict[str, tuple[int, ...]]:
    if model is not None:
        from .checkpoint import load_state_dict
        from .statekeys import weight_shapes_from_state

        return weight_shapes_from_state(arch, load_state_dict(model, component).state, component)
    from .archs import build_meta
    from .bridge import weight_shapes_of

    shapes: dict[str, tuple[int, ...]] = {}
    for comp in file.components():
        shapes.update(weight_shapes_of(arch, build_meta(arch, comp), comp))
    return shapes


def cmd_validate(args: argparse.Namespace) -> int:
    from .io import load_lorad, validate_layers

    f = load_lorad(args.file)
    arch = args.arch or f.arch
    if not arch:
        raise CLIError(f"{args.file}: no architecture in the metadata; pass --arch")
    shapes = _target_shapes(arch, f, args.model, args.component)
    matched = validate_layers(f, shapes, allow_partial=args.allow_partial)
    against = args.model or f"architecture {arch!r}"
    unmatched = len(f.layers) - len(matched)
    print(f"OK: {len(matched)} of {len(f.layers)} layers of {args.file} fit {against}"
          + (f" ({unmatched} unmatched, allowed by --allow-partial)" if unmatched else ""))
    return 0


# -- merge ---------------------------------------------------------------------------------


def cmd_merge(args: argparse.Namespace) -> int:
    from .checkpoint import load_state_dict, merge_state, save_safetensors, write_diffusers_folder
    from .io import load_lorad
    from .statekeys import layers_for_state, ldm_prefix, state_to_ldm

    out = Path(args.out)
    _refuse_existing([out], args.force)  # before the (slow) loading
    f = load_lorad(args.lorad)
    arch = args.arch or f.arch
    if not arch:
        raise CLIError(f"{args.lorad}: no architecture in the metadata; pass --arch")
    ck = load_state_dict(args.base, args.component)
    prefix = ldm_prefix(ck.state)
    to = args.to or ("single" if prefix is not None or out.name.endswith(".safetensors") else "diffusers")
    if prefix is not None and to == "diffusers":
        raise CLIError(f"{args.base}: an ldm-key checkpoint can only be merged into a single file (--to single)")
    layers, elsewhere = layers_for_state(arch, f.layers, ck.state, args.component)
    if elsewhere:
        print(f"note: {len(elsewhere)} layer(s) of other components (e.g. {elsewhere[0]}) are not in this "
              "model and are not merged", file=sys.stderr)
    missing = [k for k in layers if k not in ck.state]
    if missing and args.allow_partial:
        print(f"note: {len(missing)} layer(s) match no weight of {args.base} and are skipped "
              f"(--allow-partial), e.g. {missing[0]}", file=sys.stderr)
        layers = {k: v for k, v in layers.items() if k in ck.state}
    # merge_state checks every key, shape and result before returning anything (all or nothing).
    by_key = layers
    merged = merge_state(ck.state, by_key, args.strength, progress=_progress(args, "merge"))
    if args.dtype:
        dt = _dtype(args.dtype)
        merged = {k: v.to(dt) if v.is_floating_point() else v for k, v in merged.items()}
    md = {"lorad.merged_from": Path(args.lorad).name, "lorad.strength": repr(float(args.strength)),
          "lorad.arch": arch}
    if to == "diffusers":
        config = ck.config
        if config is None:
            from .archs import load_config

            config = load_config(arch, args.component)
            print(f"note: {args.base} has no config.json; writing the {arch!r} config", file=sys.stderr)
        write_diffusers_folder(merged, out, config, force=args.force, metadata=md)
    else:
        if prefix is None:
            merged = state_to_ldm(arch, merged, prefix=args.ldm_prefix)
        save_safetensors(merged, out, metadata=md, force=args.force)
    _say(args, f"merged {len(by_key)} layers at strength {args.strength} into {out} ({to})")
    return 0


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


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def cmd_extract(args: argparse.Namespace) -> int:
    from .checkpoint import load_state_dict
    from .extract import extract_state
    from .io import build_metadata, layers_from_adapter_state, save_lorad
    from .statekeys import ldm_prefix

    out = Path(args.out)
    csv_path, json_path = _report_paths(out, args.report)
    _refuse_existing([out, csv_path, json_path], args.force)
    base = load_state_dict(args.base, args.component).state
    merged = load_state_dict(args.merged, args.component).state
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
                        include_conv=args.include_conv, progress=_progress(args, "extract"))
    if not res.layers:
        raise CLIError(f"{args.merged}: no rotated layer found against {args.base} (nothing written)")
    layers = layers_from_adapter_state(args.arch, res.layers, args.component)
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
    save_lorad(out, layers, md, force=args.force, dtype=_dtype(args.dtype))
    _write_rows_csv(res.report_rows(), csv_path)
    report = {"summary": summ, "layers": res.report_rows(), "other_differences": res.other_rows()}
    atomic_write_text(json_path, json.dumps(_json_safe(report), indent=2) + "\n")
    _say(args, f"extracted {summ['layers_extracted']} layers ({summ['factored']} factored at rank {args.rank}, "
               f"{summ['dense_fallback']} dense) into {out}")
    _say(args, f"  max weight error {_fmt(summ['max_weight_err'])}, max rotation residual "
               f"{_fmt(summ['max_rotation_residual'])}, {summ['zero_pairs']} zero base pairs")
    if res.others:
        _say(args, f"  {len(res.others)} other tensor(s) differ (not rotations), e.g. "
                   + ", ".join(f"{o.name} [{o.kind}]" for o in res.others[:3]))
    _say(args, f"  report: {csv_path}, {json_path}")
    return 0


# -- convert -------------------------------------------------------------------------------


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert_official

    dst = Path(args.dst)
    _refuse_existing([dst], args.force)
    result = convert_official(args.src, dst, arch=args.arch, force=args.force)
    _say(args, f"converted {args.src} -> {result if result is not None else dst}")
    return 0


# -- analyze -------------------------------------------------------------------------------


def cmd_analyze(args: argparse.Namespace) -> int:
    from . import analysis
    from .checkpoint import load_state_dict, save_safetensors, write_diffusers_folder

    if not 0 < args.frac <= 1:
        raise CLIError(f"--frac must be in (0, 1], got {args.frac}")
    outdir = Path(args.outdir)
    names = {"csv": "layers.csv", "summary": "summary.json", "fig_a": "norm_direction.png", "fig_b": "svd_energy.png"}
    targets = [outdir / n for n in names.values()]
    st = load_state_dict(args.student, args.component)
    swap_paths: list[Path] = []
    if args.write_swaps:
        suffix = "" if st.config is not None else ".safetensors"
        swap_paths = [outdir / f"norm_swapped{suffix}", outdir / f"direction_swapped{suffix}"]
    _refuse_existing(targets + swap_paths, args.force)
    te = load_state_dict(args.teacher, args.component)
    res = analysis.analyze(st.state, te.state, include=args.include, frac=args.frac, progress=_progress(args, "analyze"))
    if not res.layers:
        from .statekeys import ldm_prefix

        hint = ""
        if (ldm_prefix(st.state) is None) != (ldm_prefix(te.state) is None):
            hint = " (one uses ldm keys, the other diffusers keys: convert one so both use the same layout)"
        raise CLIError(f"{args.student} / {args.teacher}: no weight matrices with matching keys and shapes "
                       f"to compare{hint}")
    summ = res.summary()
    analysis.write_csv(res, outdir / names["csv"])
    atomic_write_text(outdir / names["summary"], json.dumps(_json_safe(
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
    _say(args, f"{summ['layers']} layers: norm change {100 * summ['norm_mean']:.3g}% (std {100 * summ['norm_std_mean']:.3g}%), "
               f"direction change {100 * summ['dir_mean']:.3g}% (std {100 * summ['dir_std_mean']:.3g}%); "
               f"SVD energy at {args.frac:.0%} rank: mean {summ['energy_mean']:.3f} "
               f"[{summ['energy_min']:.3f}, {summ['energy_max']:.3f}]")
    _say(args, f"wrote {', '.join(str(p) for p in targets + swap_paths)}")
    return 0


# -- parser --------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summaries")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorad", description="LoRaD adapter files (.lorad.safetensors): "
                                     "inspect, validate, merge, extract, convert, and weight-space analysis.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("inspect", help="summary, per-layer table and totals of a .lorad file")
    p.add_argument("file", help=".lorad.safetensors file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--metadata", action="store_true", help="also print every raw metadata entry")
    p.add_argument("--no-layers", action="store_true", help="summary and totals only")
    p.set_defaults(func=cmd_inspect, quiet=False)

    p = sub.add_parser("validate", help="check a .lorad file against an architecture or a model file")
    p.add_argument("file", help=".lorad.safetensors file")
    p.add_argument("--arch", help="architecture id (default: from the file's metadata); checked on the meta device")
    p.add_argument("--model", help="check against this model file/folder instead of the full-size architecture")
    p.add_argument("--component", help="model component folder (unet, transformer, ...)")
    p.add_argument("--allow-partial", action="store_true", help="keys that match nothing are not an error")
    p.set_defaults(func=cmd_validate, quiet=False)

    p = sub.add_parser("merge", help="rotate a base model's weights by a .lorad file and write the merged model")
    p.add_argument("base", help="diffusers model/pipeline folder, or a .safetensors/.ckpt state dict")
    p.add_argument("lorad", help=".lorad.safetensors file")
    p.add_argument("out", help="output: a diffusers model folder, or a .safetensors file (--to single)")
    p.add_argument("--strength", type=float, default=1.0, help="angle multiplier (default 1.0)")
    p.add_argument("--to", choices=["diffusers", "single"], help="output layout (default: folder for diffusers "
                   "bases unless OUT ends in .safetensors; single for ldm bases)")
    p.add_argument("--ldm-prefix", default="model.diffusion_model.", help="key prefix of a single-file output "
                   "from a diffusers base (default %(default)s)")
    p.add_argument("--arch", help="architecture id (default: from the file's metadata)")
    p.add_argument("--component", help="pipeline component folder (default unet, else transformer)")
    p.add_argument("--dtype", choices=sorted(_DTYPES), help="cast floating tensors of the output (default: keep)")
    p.add_argument("--allow-partial", action="store_true", help="merge the layers that match; skip the rest")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    _common(p)
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("extract", help="recover LoRaD angles from a merged (rotated) model and its base")
    p.add_argument("base", help="base model (diffusers keys): folder or state-dict file")
    p.add_argument("merged", help="merged model (diffusers keys), e.g. rotated_unet-sdv1-5.safetensors")
    p.add_argument("out", help="output .lorad.safetensors")
    p.add_argument("--arch", required=True, help="architecture id (sd15, sd21-base, sdxl, pixart-alpha, ...)")
    p.add_argument("--rank", type=int, default=256, help="factor rank (0: dense angles everywhere; default 256)")
    p.add_argument("--tol", type=float, default=1e-3, help="dense fallback where the factored rotation differs from "
                   "the exact one by more than this relative Frobenius error (default %(default)s)")
    p.add_argument("--preset", choices=["paper-student", "paper-fake", "all-linear"],
                   help="only extract layers of this target preset (others are reported)")
    p.add_argument("--include", action="append", metavar="REGEX", help="only module names matching (repeatable)")
    p.add_argument("--include-conv", action="store_true", help="also extract Conv2d weights")
    p.add_argument("--component", help="pipeline component folder")
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="fp32", help="storage dtype (default fp32)")
    p.add_argument("--title", help="ModelSpec title (default: the output name)")
    p.add_argument("--report", help="report path stem (writes .csv and .json; default OUT stem + .extract)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    _common(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("convert", help="official WaDi training state (theta_a/theta_b) -> .lorad.safetensors")
    p.add_argument("src", help="torch state dict with <module>.theta_a / .theta_b (loaded with weights_only=True)")
    p.add_argument("dst", help="output .lorad.safetensors")
    p.add_argument("--arch", help="architecture id (default: guessed from the layer names)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    _common(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("analyze", help="norm vs direction change between two checkpoints (the paper's Fig. 1)")
    p.add_argument("student", help="fine-tuned/distilled checkpoint (folder or state-dict file)")
    p.add_argument("teacher", help="reference checkpoint with the same keys")
    p.add_argument("outdir", help="folder for layers.csv, summary.json, norm_direction.png, svd_energy.png")
    p.add_argument("--include", action="append", metavar="REGEX", help="only keys matching (repeatable)")
    p.add_argument("--frac", type=float, default=0.3, help="rank fraction for the SVD energy (default 0.3)")
    p.add_argument("--write-swaps", action="store_true", help="also write norm-swapped and direction-swapped models")
    p.add_argument("--component", help="pipeline component folder")
    p.add_argument("--title", help="plot title")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    _common(p)
    p.set_defaults(func=cmd_analyze)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2): return instead of exiting
        return int(e.code or 0)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CLIError, OSError, ValueError, KeyError) as e:
        # KeyError's str() is the repr of its argument; print the message itself.
        msg = e.args[0] if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str) else str(e)
        lines = msg.splitlines()
        if len(lines) > 25:  # e.g. every layer of a file for another model: the first ones say enough
            msg = "\n".join(lines[:20] + [f"  ... and {len(lines) - 20} more lines"])
        print(f"lorad {args.command}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
