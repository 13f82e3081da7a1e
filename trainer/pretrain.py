"""``wadi pretrain``: train the tiny world's VAE, teacher UNet (+ text encoder) and eval classifier.

Usage::

    wadi pretrain                                   # all stages, defaults, into outputs/pretrain
    wadi pretrain --config my.yaml --unet_steps 500 # YAML then --key value overrides
    wadi pretrain --stage unet                      # one stage (resumes if a checkpoint exists)

The products land in ``--export`` (default ``<output>/export``): ``teacher/`` (a
diffusers StableDiffusionPipeline folder) and ``classifier.safetensors``.  Writing
into a folder that already holds them (e.g. the shipped ``assets/tinyworld``) needs
``--force``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_VERSION = 1
STAGES = ("vae", "unet", "classifier")


@dataclass
class PretrainConfig:
    """Defaults = the recipe of the shipped teacher and classifier (assets/tinyworld/README.md)."""

    version: int = CONFIG_VERSION
    stage: str = "all"  # vae | unet | classifier | all (in that order)
    output: str = "outputs/pretrain"  # checkpoints, logs, latent cache
    export: str = ""  # where teacher/ and classifier.safetensors go; "" = <output>/export
    force: bool = False  # allow replacing existing products in export
    seed: int = 0
    device: str = "auto"  # auto | cpu (accelerate picks CUDA when present on "auto")
    threads: int = 0  # torch CPU threads; 0 = leave torch's default
    workers: int = 0  # data-rendering subprocesses for the VAE/classifier stages (0 = in the main process)
    checkpoint_every: int = 250
    export_fp16: bool = True  # ship weights as fp16 safetensors (loaded into fp32 by default)
    # VAE
    vae_steps: int = 1600
    vae_batch: int = 256
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6  # SD's KL weight: latents barely regularised, scale fixed afterwards
    # UNet + text encoder (trained jointly; see assets/tinyworld/README.md for why)
    unet_steps: int = 1500
    unet_batch: int = 512
    unet_lr: float = 1e-3
    unet_scenes: int = 30000  # fixed scenes whose latents are cached; captions are re-drawn every visit
    cond_dropout: float = 0.1  # null-prompt probability, what CFG needs
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0  # <= 0 disables min-SNR weighting
    unet_init: str = ""  # start UNet + text encoder from this SD folder (e.g. a GPU-trained teacher)
    snapshot_every: int = 0  # also write EMA weights as fp16 safetensors every N steps (0 = never)
    snapshot_dir: str = ""  # where snapshots go ("" = <output>/unet)
    # classifier
    clf_steps: int = 2200
    clf_batch: int = 256
    clf_lr: float = 2e-3
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes recorded in the summary

    def stages(self) -> tuple[str, ...]:
        if self.stage == "all":
            return STAGES
        if self.stage not in STAGES:
            raise ValueError(f"config field 'stage': {self.stage!r}; expected one of {STAGES + ('all',)}")
        return (self.stage,)


def _coerce(name: str, typ: Any, raw: Any) -> Any:
    """Convert ``raw`` (YAML value or CLI string) to the field's type, naming the field on error."""
    typ = {"int": int, "float": float, "str": str, "bool": bool}.get(typ, typ) if isinstance(typ, str) else typ
    try:
        if typ is bool:
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if typ is int and isinstance(raw, float) and not raw.is_integer():
            raise ValueError(raw)
        if typ in (int, float, str):
            return typ(raw)
    except (TypeError, ValueError):
        raise ValueError(f"config field {name!r}: expected {getattr(typ, '__name__', typ)}, got {raw!r}") from None
    return raw


def load_config(path: str | None, overrides: list[str]) -> PretrainConfig:
    """Defaults <- YAML file <- ``--key value`` pairs; unknown keys are errors that name the key."""
    fields = {f.name: f for f in dataclasses.fields(PretrainConfig)}
    values: dict[str, Any] = {}
    if path:
        import yaml

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p}")
        data = yaml.safe_load(p.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{p}: expected a mapping of config fields at top level, got {type(data).__name__}")
        for k, v in data.items():
            if k not in fields:
                raise ValueError(f"{p}: unknown config key {k!r}; known: {', '.join(sorted(fields))}")
            values[k] = _coerce(k, fields[k].type, v)
    if len(overrides) % 2:
        raise ValueError(f"overrides must be '--key value' pairs, got {overrides!r}")
    for flag, raw in zip(overrides[::2], overrides[1::2]):
        key = flag.lstrip("-").replace("-", "_")
        if not flag.startswith("--") or key not in fields:
            raise ValueError(f"unknown option {flag!r}; known: {', '.join('--' + k for k in sorted(fields))}")
        values[key] = _coerce(key, fields[key].type, raw)
    cfg = PretrainConfig(**values)
    if cfg.version != CONFIG_VERSION:
        raise ValueError(f"config field 'version': {cfg.version}; this wadi reads version {CONFIG_VERSION}")
    cfg.stages()  # validates 'stage'
    if not cfg.export:
        cfg.export = str(Path(cfg.output) / "export")
    return cfg


def _check_export(cfg: PretrainConfig) -> None:
    """Refuse to replace shipped/user products without --force, before any training starts."""
    export = Path(cfg.export)
    products = {"unet": export / "teacher", "classifier": export / "classifier.safetensors"}
    for stage in cfg.stages():
        p = products.get(stage)
        if p is not None and p.exists() and not cfg.force:
            raise FileExistsError(f"{p} exists; pass --force to replace it (or choose another --export)")


def run(cfg: PretrainConfig) -> dict[str, Any]:
    import torch

    from .tinyworld import stages

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    _check_export(cfg)
    Path(cfg.output).mkdir(parents=True, exist_ok=True)
    (Path(cfg.output) / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    summary: dict[str, Any] = {"config": dataclasses.asdict(cfg), "wall_s": {}}
    for stage in cfg.stages():
        t0 = time.perf_counter()
        product = {"vae": stages.train_vae, "unet": stages.train_unet, "classifier": stages.train_classifier}[stage](cfg)
        summary["wall_s"][stage] = round(time.perf_counter() - t0, 1)
        summary[stage] = str(product)
    (Path(cfg.output) / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary["wall_s"]))
    return summary


def _main(args: argparse.Namespace) -> int:
    overrides: list[str] = []
    for f in dataclasses.fields(PretrainConfig):
        raw = getattr(args, f"cfg_{f.name}", None)
        if raw is not None:
            overrides += [f"--{f.name}", raw]
    run(load_config(args.config, overrides))
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "pretrain",
        help="train the tiny world's teacher (VAE, UNet, text encoder) and eval classifier",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=None, help="YAML file of PretrainConfig fields (CLI options override it)")
    defaults = PretrainConfig()
    for f in dataclasses.fields(PretrainConfig):
        if f.name in ("version", "extra"):
            continue
        kw: dict[str, Any] = {"dest": f"cfg_{f.name}", "default": None, "metavar": f.type.upper()}
        if f.type == "bool":  # "--force" alone means true; "--export_fp16 false" also works
            kw.update(nargs="?", const="true", metavar="BOOL")
        p.add_argument(f"--{f.name}", help=f"(default: {getattr(defaults, f.name)!r})", **kw)
    p.set_defaults(func=_main)
    return p
