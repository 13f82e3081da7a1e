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
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli_common import DTYPES, CLIError, dtype_of, progress, refuse_existing, say
from .cli_reports import cmd_analyze, cmd_extract

__all__ = ["main", "build_parser"]

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


def _target_shapes(arch: str, file, model: str | None, component: str | None) -> dict[str, tuple[int, ...]] | None:
    """File key -> weight shape of the target; None where only the keys can be checked (see cmd_validate)."""
    if model is not None:
        from .checkpoint import load_state_dict
        from .statekeys import state_layout, weight_shapes_from_state

        ck = load_state_dict(model, component)
        layout = state_layout(arch, ck.config, file.layout, model)
        return weight_shapes_from_state(arch, ck.state, component, layout)
    if file.layout is not None:
        return None
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
    if shapes is None:
        # The file records a shrunk UNet layout (e.g. the tiny world): reading it already checked
        # every key against that layout; the weight shapes are only known from the model itself.
        print(f"OK: all {len(f.layers)} layer keys of {args.file} are layers of the {arch} UNet layout recorded "
              f"in the file (lorad.layout); pass --model to check the weight shapes too")
        return 0
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
    from .statekeys import layers_for_state, ldm_prefix, state_layout, state_to_ldm

    out = Path(args.out)
    refuse_existing([out], args.force)  # before the (slow) loading
    f = load_lorad(args.lorad)
    arch = args.arch or f.arch
    if not arch:
        raise CLIError(f"{args.lorad}: no architecture in the metadata; pass --arch")
    ck = load_state_dict(args.base, args.component)
    prefix = ldm_prefix(ck.state)
    to = args.to or ("single" if prefix is not None or out.name.endswith(".safetensors") else "diffusers")
    if prefix is not None and to == "diffusers":
        raise CLIError(f"{args.base}: an ldm-key checkpoint can only be merged into a single file (--to single)")
    layout = state_layout(arch, ck.config, f.layout, str(args.base))
    layers, elsewhere = layers_for_state(arch, f.layers, ck.state, args.component, layout)
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
    merged = merge_state(ck.state, by_key, args.strength, progress=progress(args, "merge"))
    if args.dtype:
        dt = dtype_of(args.dtype)
        merged = {k: v.to(dt) if v.is_floating_point() else v for k, v in merged.items()}
    md = {"lorad.merged_from": Path(args.lorad).name, "lorad.strength": repr(float(args.strength)),
          "lorad.arch": arch}
    if to == "diffusers":
        config = ck.config
        if config is None and layout is not None:
            raise CLIError(f"{args.base} has no config.json and {args.lorad} is for a shrunk UNet layout: "
                           "write a single file (--to single) or merge into the model folder")
        if config is None:
            from .archs import load_config

            config = load_config(arch, args.component)
            print(f"note: {args.base} has no config.json; writing the {arch!r} config", file=sys.stderr)
        write_diffusers_folder(merged, out, config, force=args.force, metadata=md)
    else:
        if prefix is None:
            merged = state_to_ldm(arch, merged, prefix=args.ldm_prefix, layout=layout)
        save_safetensors(merged, out, metadata=md, force=args.force)
    say(args, f"merged {len(by_key)} layers at strength {args.strength} into {out} ({to})")
    return 0


# -- convert -------------------------------------------------------------------------------


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert_official

    dst = Path(args.dst)
    refuse_existing([dst], args.force)
    result = convert_official(args.src, dst, arch=args.arch, force=args.force)
    say(args, f"converted {args.src} -> {result if result is not None else dst}")
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
    p.add_argument("--dtype", choices=sorted(DTYPES), help="cast floating tensors of the output (default: keep)")
    p.add_argument("--allow-partial", action="store_true", help="merge the layers that match; skip the rest")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    _common(p)
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("extract", help="recover LoRaD angles from a merged (rotated) model and its base")
    p.add_argument("base", help="base model (diffusers keys): folder or state-dict file")
    p.add_argument("merged", help="merged model (diffusers keys), e.g. rotated_unet-sdv1-5.safetensors")
    p.add_argument("out", help="output .lorad.safetensors")
    p.add_argument("--arch", help="architecture id (sd15, sd21-base, sdxl, pixart-alpha, ...; default: the "
                   "lorad.arch that lorad merge wrote into MERGED)")
    p.add_argument("--rank", type=int, default=256, help="factor rank (0: dense angles everywhere; default 256)")
    p.add_argument("--tol", type=float, default=1e-3, help="dense fallback where the factored rotation differs from "
                   "the exact one by more than this relative Frobenius error (default %(default)s)")
    p.add_argument("--preset", choices=["paper-student", "paper-fake", "all-linear"],
                   help="only extract layers of this target preset (others are reported)")
    p.add_argument("--include", action="append", metavar="REGEX", help="only module names matching (repeatable)")
    p.add_argument("--include-conv", action="store_true", help="also extract Conv2d weights")
    p.add_argument("--component", help="pipeline component folder")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="storage dtype (default fp32)")
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
    p.add_argument("student", help="fine-tuned/distilled checkpoint (folder or state-dict file), or a .lorad file "
                   "(applied to TEACHER)")
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
