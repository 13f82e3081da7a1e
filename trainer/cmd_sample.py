"""``wadi sample``: one-step images from a base + ``.lorad`` student, with the teacher beside it.

The WaDi row is :func:`lorad.onestep.generate` (via :func:`.sampling.one_step`), the
same function the trainer's validation grids and the ComfyUI nodes use; the
timestep and abar_T come from the file's metadata, so inference matches training.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def load_student(bb, path: str | Path):
    """Attach the student of a ``.lorad`` file to ``bb.denoiser`` as adapter "student"; return the LoRaDFile."""
    from ..lorad.bridge import load_adapter
    from ..lorad.io import load_lorad

    f = load_lorad(path)
    load_adapter(bb.denoiser, "student", f)
    return f


def one_step_params(f, bb, timestep: int | None, alpha_bar: float | None) -> tuple[int, float]:
    """(T, abar_T): explicit arguments, else the file's ``wadi.*`` values, else the schedule's."""
    from ..lorad.onestep import DEFAULT_TIMESTEP, alpha_bar_at

    rec = f.one_step if f is not None else None
    t = timestep if timestep is not None else (rec.timestep if rec else DEFAULT_TIMESTEP)
    if alpha_bar is not None:
        return t, float(alpha_bar)
    if rec is not None and t == rec.timestep:
        return t, float(rec.alpha_bar_T)
    return t, alpha_bar_at(bb.alphas_cumprod, t)


def with_embeddings(bb, files: list[str], prompts: list[str]) -> list[str]:
    """Load textual-inversion files (e.g. a ``wadi relation`` token) into the text encoder and
    rewrite ComfyUI-style ``embedding:<name>`` references in the prompts to their tokens."""
    from .textinv import expand_embedding_refs, install_embedding

    if files and bb.kind != "sd":
        raise ValueError(f"--embedding: textual-inversion files are supported for SD1.x/2.x bases, not {bb.kind}")
    installed = {}
    for f in files:
        name = Path(f).name.split(".")[0]
        installed[name] = install_embedding(*bb.text[0], f, name)
    return [expand_embedding_refs(p, installed) if installed else p for p in prompts]


def parse_adapter_spec(spec: str) -> tuple[str, float]:
    """``FILE`` or ``FILE:STRENGTH`` (a trailing ``:<number>``; any other colon is part of the path)."""
    path, sep, tail = spec.rpartition(":")
    if sep:
        try:
            return path, float(tail)
        except ValueError:
            pass
    return spec, 1.0


def load_extra_adapters(bb, specs: list[str]) -> tuple[str, ...]:
    """Stack further ``.lorad`` files (personalizations, styles) as adapters ``extra0, extra1, ...``
    at their strengths; returns their names (active together with the student: angles add)."""
    from ..lorad import inject
    from ..lorad.bridge import load_adapter

    names = []
    for i, spec in enumerate(specs):
        path, strength = parse_adapter_spec(spec)
        if not Path(path).is_file():
            raise ValueError(f"--adapter {path} does not exist")
        name = f"extra{i}"
        load_adapter(bb.denoiser, name, path)
        inject.set_strength(bb.denoiser, name, strength)
        names.append(name)
    return tuple(names)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..lorad import inject
    from ..lorad.io import LoRaDFileError
    from ..lorad.onestep import generate, multistep_timesteps, renoise_noise
    from .backbones import BaseModelError, load_backbone
    from .sampling import eps_fn, save_grid, seeded_noise, teacher_multistep
    from .textinv import EmbeddingFileError

    if not args.prompt:
        print("error: give at least one --prompt", file=sys.stderr)
        return 2
    if args.lorad and not Path(args.lorad).is_file():
        print(f"error: --lorad {args.lorad} does not exist", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"error: {out} exists (use --force to overwrite)", file=sys.stderr)
        return 2
    try:
        bb = load_backbone(args.base, dtype=args.dtype)
    except BaseModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        prompts = [p for p in with_embeddings(bb, args.embedding, args.prompt) for _ in range(args.per_prompt)]
    except (EmbeddingFileError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seeds = [args.seed + i for i in range(len(prompts))]
    cond = bb.encode_prompts(prompts).float()
    null = bb.null_cond().float()
    noise = seeded_noise(seeds, bb.latent_shape(args.resolution))
    rows, labels = [], []
    try:
        f = load_student(bb, args.lorad) if args.lorad else None
        extras = load_extra_adapters(bb, args.adapter)
    except (LoRaDFileError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    T, ab = one_step_params(f, bb, args.timestep, args.alpha_bar)
    with torch.no_grad():
        tag = f" + {len(extras)} adapter(s)" if extras else ""
        if args.lorad:
            inject.set_active(bb.denoiser, ("student", *extras))
            fn = eps_fn(bb, bb.denoiser, cond, null, args.guidance)
            steps = multistep_timesteps(args.steps, T)
            renoise = renoise_noise(seeds, noise.shape[1:], len(steps))
            rows.append(bb.decode(generate(fn, noise, bb.alphas_cumprod, steps, alpha_bar_first=ab, renoise=renoise)))
            labels.append(f"WaDi {args.steps}-step{tag}")
        inject.set_active(bb.denoiser, extras or None)  # the teacher rows: the base (with the extra adapters)
        if args.compare or not args.lorad:
            fn = eps_fn(bb, bb.denoiser, cond, null, args.teacher_cfg)
            rows.append(bb.decode(generate(fn, noise, bb.alphas_cumprod, (T,), alpha_bar_first=ab)))
            labels.append(f"teacher 1-step{tag}")
            lat = teacher_multistep(bb, bb.denoiser, cond, null, noise, args.teacher_steps, args.teacher_cfg,
                                    progress=True)
            rows.append(bb.decode(lat))
            labels.append(f"teacher {args.teacher_steps}-step{tag}")
    save_grid(rows, labels, out, captions=prompts)
    print(f"wrote {out} (T={T}, abar_T={ab:.7g}, seeds {seeds[0]}..{seeds[-1]})")
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("sample", help="one-step images from a base + .lorad student (and the teacher for comparison)")
    p.add_argument("--base", required=True, help="diffusers folder of the base model")
    p.add_argument("--lorad", help="student .lorad.safetensors (omit to sample the teacher only)")
    p.add_argument("--adapter", action="append", default=[], metavar="FILE[:STRENGTH]",
                   help="a further .lorad (e.g. from wadi personalize) stacked on the student (angles add) and "
                   "on the teacher rows; repeatable")
    p.add_argument("--prompt", action="append", default=[], help="prompt (repeat for several)")
    p.add_argument("--embedding", action="append", default=[], metavar="FILE",
                   help="textual-inversion file (e.g. from wadi relation); write embedding:<file stem> in prompts")
    p.add_argument("--per-prompt", type=int, default=1, help="images per prompt")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; the others count up")
    p.add_argument("--steps", type=int, default=1, help="student steps (1 = one-step; 2-4 re-noise in between)")
    p.add_argument("--guidance", type=float, default=1.0, help="CFG for the student (WaDi students use 1.0)")
    p.add_argument("--timestep", type=int, help="override the file's one-step timestep")
    p.add_argument("--alpha-bar", type=float, help="override the file's abar_T")
    p.add_argument("--compare", action="store_true", help="add teacher 1-step and multi-step CFG rows")
    p.add_argument("--teacher-steps", type=int, default=25)
    p.add_argument("--teacher-cfg", type=float, default=7.5)
    p.add_argument("--resolution", type=int, default=0, help="pixels; 0 = the model's native size")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--out", default="outputs/sample.png", help="output grid PNG")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.set_defaults(func=run)
    return p
