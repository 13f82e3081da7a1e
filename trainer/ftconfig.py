"""Config sections shared by the image fine-tunes (``wadi personalize``, ``wadi relation``).

The model and training-loop sections are the distillation's own (:class:`.config.ModelConfig`,
:class:`.config.TrainConfig`); these add what a fine-tune on a folder of captioned images
needs: the folder, one optimizer and an output section without the distiller's exports.
Parsing, overrides, YAML and hashing go through :mod:`.config`'s generic functions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ImageDataConfig:
    images: str = ""  # folder of images + same-name .txt captions, or images + metadata.jsonl
    # Captions: "files" = every image needs one (.txt or metadata.jsonl); "instance" = every image
    # uses the instance prompt; "auto" = files when any caption exists, else the instance prompt.
    captions: Literal["auto", "files", "instance"] = "auto"
    jsonl_key: str = "text"  # caption field of metadata.jsonl records (the file name is "file_name")
    resolution: int = 0  # pixels; 0 = the denoiser's sample size x the VAE factor
    center_crop: bool = True  # resize the short side then crop the centre (else squash to a square)
    cache_dir: str = ""  # text-feature cache; "" = <output.dir>/../.text_cache


@dataclass
class FTOptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 = off
    adam_8bit: bool = False  # bitsandbytes AdamW8bit when it and CUDA are present (else a note)
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0


@dataclass
class FTOutputConfig:
    dir: str = "outputs/finetune"
    name: str = ""  # output file name without suffix; "" = the command's default
    checkpoint_every: int = 200  # 0 = only at the end
    keep_checkpoints: int = 2
    sample_every: int = 200  # validation grids; 0 = off
    sample_prompts: list[str] = field(default_factory=list)  # "" = a few training captions
    num_samples: int = 4
    sample_steps: int = 25  # multi-step sampling of a base model in the grids
    sample_guidance: float = 5.0  # CFG of that multi-step sampling
    tensorboard: bool = False
    title: str = ""
    force: bool = False  # start over an existing run in output.dir (its log and checkpoints)


# Fields that do not change what is trained (shared by both fine-tunes).
FT_NOT_HASHED = {
    "resume", "model.base", "train.max_steps", "data.cache_dir", "output.dir", "output.name",
    "output.checkpoint_every", "output.keep_checkpoints", "output.sample_every", "output.sample_prompts",
    "output.num_samples", "output.sample_steps", "output.sample_guidance", "output.tensorboard",
    "output.title", "output.force",
}


def check_common(cfg) -> list[tuple[bool, str, str]]:
    """Cross-field checks of the shared sections, as ``(ok, field, message)`` rows."""
    o, t, out = cfg.optim, cfg.train, cfg.output
    return [
        (bool(cfg.model.base), "model.base", "is required (a diffusers folder)"),
        (bool(cfg.data.images), "data.images", "is required (a folder of images with captions)"),
        (cfg.data.resolution >= 0, "data.resolution", "must be >= 0"),
        (o.lr > 0, "optim.lr", "must be > 0"),
        (o.grad_clip >= 0, "optim.grad_clip", "must be >= 0"),
        (t.max_steps >= 1, "train.max_steps", "must be >= 1"),
        (t.batch_size >= 1, "train.batch_size", "must be >= 1"),
        (t.grad_accum >= 1, "train.grad_accum", "must be >= 1"),
        (0.0 <= t.ema_decay < 1.0, "train.ema_decay", "must be in [0, 1)"),
        (out.keep_checkpoints >= 1, "output.keep_checkpoints", "must be >= 1"),
        (out.num_samples >= 1, "output.num_samples", "must be >= 1"),
        (out.sample_steps >= 1, "output.sample_steps", "must be >= 1"),
        ("/" not in out.name and "\\" not in out.name, "output.name", "is a file name, not a path"),
    ]


def raise_first(checks: list[tuple[bool, str, str]]) -> None:
    from .config import ConfigError

    for ok, name, msg in checks:
        if not ok:
            raise ConfigError(f"{name}: {msg}")
