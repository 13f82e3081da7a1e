"""The distillation run's typed configuration: one dataclass tree, YAML in/out, CLI overrides.

Every knob of ``wadi distill`` lives here, with the paper's values as defaults
(as its released training code sets them).  A YAML file and ``--key value`` / ``--section.key value``
overrides are checked against the field types, and every error names the field
(or the YAML key) and what was expected, before anything is loaded.

``config_hash`` fingerprints the fields that change the training trajectory, so
a resume checkpoint written under a different config is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

CONFIG_VERSION = 1

ADAPTER_KINDS = ("lorad", "lora", "dora", "full")


class ConfigError(ValueError):
    """A config file, key or value is wrong; the message names it."""


@dataclass
class ModelConfig:
    base: str = ""  # diffusers folder (model_index.json + components)
    backbone: Literal["auto", "sd", "sdxl", "pixart"] = "auto"
    # dtype of the frozen weights: "auto" = the mixed-precision dtype on CUDA, float32 on CPU.
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"


@dataclass
class AdapterConfig:
    kind: Literal["lorad", "lora", "dora", "full"] = "lorad"  # the student's adapter (ablations)
    # The fake score's adapter: "lorad" keeps the paper's fake for every student kind so an
    # ablation varies the student only; "same" uses the student's kind (peft LoRA/DoRA fake).
    # "full": a trainable float32 copy of the denoiser as the fake score (DMD2's choice; beyond the
    # paper, which keeps a rank-32 LoRaD fake).
    fake_kind: Literal["lorad", "same", "full"] = "lorad"
    student_rank: int = 256
    fake_rank: int = 32
    student_targets: str = "paper-student"
    fake_targets: str = "paper-fake"
    lora_alpha: float = 0.0  # LoRA/DoRA scaling numerator; 0 = the rank (scale 1)
    seed: int = 0  # init of the adapters (LoRaD B / LoRA A)


@dataclass
class VSDConfig:
    guidance_scale: float = 1.5  # teacher CFG on eps
    fake_guidance_scale: float = 1.5  # the official code applies the same CFG to the fake score
    t_min: int = 20  # VSD timesteps t ~ U{t_min..t_max}
    t_max: int = 980
    fake_t_min: int = 0  # fake-score denoising timesteps
    fake_t_max: int = 999
    null_prob: float = 0.1  # fake model: prompt replaced by the null prompt with this probability
    # The student's VSD weighting over t: "sigma2" = (1 - abar_t), the paper's; "dmd" = DMD's
    # per-sample normalisation by mean |x0 - x0_teacher| (beyond the paper).
    weighting: Literal["sigma2", "dmd"] = "sigma2"
    # Fake-score updates per student update (DMD2's two time-scale rule; the paper's loop is 1:1).
    fake_updates: int = 1
    # The fake score's denoising loss over t: "alpha_bar" = eps-MSE weighted by abar_t (the official
    # code); "uniform" = the plain eps-MSE (DMD2's fake; beyond the paper).
    fake_weighting: Literal["alpha_bar", "uniform"] = "alpha_bar"
    # DMD's regression term (beyond the paper): weight * MSE(one-step x0, the teacher's multi-step
    # latent from the same noise) on regression_pairs fixed pairs, sampled once with
    # regression_steps DDIM steps at guidance_scale and cached (trainer/regression.py).  0 = off.
    regression_weight: float = 0.0
    # How the regression weight moves over the run: "constant"; "up" = linearly from 0 at the first
    # step to regression_weight at train.max_steps; "down" = linearly from regression_weight to 0
    # (where in the run the term buys FD and where it costs alignment: docs/quality-study.md, round 13).
    regression_ramp: Literal["constant", "up", "down"] = "constant"
    regression_pairs: int = 2048
    regression_steps: int = 25
    timestep: int = 999  # the one-step generator's T
    # abar_T of the one-step formula: from the scheduler (0.0046601 for SD) or the official 0.0047.
    alpha_bar: Literal["scheduler", "official"] = "scheduler"
    resolution: int = 0  # pixels; 0 = the denoiser's sample_size x the VAE factor


@dataclass
class OptimConfig:
    student_lr: float = 1e-4
    fake_lr: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    grad_clip: float = 1.0  # per model; 0 = off
    adam_8bit: bool = False  # bitsandbytes AdamW8bit when it and CUDA are present (else a note)
    lr_scheduler: Literal["constant", "linear", "cosine"] = "constant"
    warmup_steps: int = 0
    # The decaying schedule's length in steps (0 = train.max_steps). Longer than the run, the run stops
    # part-way along the decay: the demo trains 600 steps of a 1200-step cosine, which scored better on
    # the tiny world than a cosine squeezed into the 600 (docs/quality-study.md, round 16).
    schedule_steps: int = 0
    # LoRaD student adapters on Conv2d layers (conv target presets) train at student_lr x this
    # (beyond the paper, which adapts no convolution).
    conv_lr_scale: float = 1.0


@dataclass
class DataConfig:
    prompts: str = ""  # .txt (one per line), .jsonl, or COCO captions .json
    format: Literal["auto", "txt", "jsonl", "coco"] = "auto"
    jsonl_key: str = "prompt"  # field holding the caption in each jsonl record
    max_prompts: int = 0  # 0 = all
    cache_dir: str = ""  # text-embedding cache; "" = <output.dir>/../.text_cache
    cache_text: bool = True


@dataclass
class TrainConfig:
    max_steps: int = 1000
    batch_size: int = 4  # per process and micro-batch
    grad_accum: int = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    gradient_checkpointing: bool = False
    seed: int = 0
    ema_decay: float = 0.0  # EMA of the student adapter; 0 = off.  Used for export when on.


@dataclass
class OutputConfig:
    dir: str = "outputs/distill"
    checkpoint_every: int = 500  # 0 = only at the end
    keep_checkpoints: int = 2
    sample_every: int = 500  # validation grids; 0 = off
    sample_prompts: list[str] = field(default_factory=list)  # "" = the first prompts of the data
    num_samples: int = 4
    export_fake: bool = False
    export_merged: bool = False  # a merged diffusers folder
    export_single_file: bool = False  # a single-file SD checkpoint for ComfyUI
    tensorboard: bool = False
    title: str = ""
    force: bool = False  # overwrite an existing finished run's outputs


@dataclass
class DistillConfig:
    version: int = CONFIG_VERSION
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    vsd: VSDConfig = field(default_factory=VSDConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    resume: str = ""  # "", "latest" or a checkpoint folder


# Fields that do not change what is trained (where results go, how often they are shown).
NOT_HASHED = {
    "resume", "output.dir", "output.checkpoint_every", "output.keep_checkpoints", "output.sample_every",
    "output.sample_prompts", "output.num_samples", "output.export_fake", "output.export_merged",
    "output.export_single_file", "output.tensorboard", "output.title", "output.force", "data.cache_dir",
    "data.cache_text", "train.max_steps", "model.base",
}


# Fields added after version 1 shipped: hashed only when set away from their default, so a
# checkpoint written before they existed still resumes under an otherwise equal config.
HASHED_WHEN_SET = {"vsd.fake_updates": 1, "vsd.weighting": "sigma2", "vsd.fake_weighting": "alpha_bar",
                   "optim.conv_lr_scale": 1.0, "optim.schedule_steps": 0,
                   "vsd.regression_weight": 0.0, "vsd.regression_pairs": 2048, "vsd.regression_steps": 25,
                   "vsd.regression_ramp": "constant"}


# -- type checking --------------------------------------------------------------------------------
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert one value to the field type; strings (from the CLI) are parsed."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: expected one of {list(allowed)}, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")] if value else []
        if not isinstance(value, (list, tuple)):
            raise bad
        if origin is tuple:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values ({_type_name(tp)}), got {value!r}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    raise ConfigError(f"{where}: unsupported field type {tp}")  # pragma: no cover - a bug in this file


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    unknown = [k for k in data if k not in hints]
    if unknown:
        raise ConfigError(
            f"{where or 'config'}: unknown key(s) {unknown}; valid keys: {sorted(hints)}"
        )
    kwargs = {}
    for k, v in data.items():
        tp = hints[k]
        path = f"{where}.{k}" if where else k
        if dataclasses.is_dataclass(tp):
            kwargs[k] = _from_dict(tp, v if v is not None else {}, path)
        else:
            kwargs[k] = _coerce(v, tp, path)
    return cls(**kwargs)


def typed_from_dict(cls: type, data: dict[str, Any], version: int) -> Any:
    """Any config dataclass from plain data (YAML / form values): version check, then field types."""
    found = data.get("version", version) if isinstance(data, dict) else version
    if found != version:
        raise ConfigError(f"version: this trainer reads config version {version}, the file has {found!r}")
    return _from_dict(cls, data, "")


def from_dict(data: dict[str, Any]) -> DistillConfig:
    return typed_from_dict(DistillConfig, data, CONFIG_VERSION)


def to_dict(cfg: Any) -> dict[str, Any]:
    def conv(v):
        if isinstance(v, tuple):
            return list(v)
        return v

    def walk(obj):
        out = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            out[f.name] = walk(v) if dataclasses.is_dataclass(v) else conv(v)
        return out

    return walk(cfg)


def load_yaml(path: str | Path, loader=from_dict) -> Any:
    """A YAML file through ``loader`` (default: ``DistillConfig``'s ``from_dict``), errors naming the file."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    try:
        return loader(data or {})
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def save_yaml(cfg: Any, path: str | Path) -> None:
    import yaml

    from ..lorad.fsutil import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


# -- overrides --------------------------------------------------------------------------------
def leaf_paths(cls: type = DistillConfig, prefix: str = "") -> dict[str, Any]:
    """``{"train.max_steps": int, ...}`` for every leaf field."""
    out = {}
    for name, tp in _hints(cls).items():
        path = f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            out.update(leaf_paths(tp, path + "."))
        else:
            out[path] = tp
    return out


def resolve_key(key: str, cls: type = DistillConfig) -> str:
    """``max_steps`` or ``train.max_steps`` -> the full dotted path (error if unknown/ambiguous)."""
    key = key.lstrip("-").replace("-", "_")
    leaves = leaf_paths(cls)
    if key in leaves:
        return key
    hits = [p for p in leaves if p.rsplit(".", 1)[-1] == key]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise ConfigError(f"--{key} is ambiguous; use one of {['--' + h for h in hits]}")
    raise ConfigError(f"--{key}: no such config field; fields: {', '.join(sorted(leaves))}")


def apply_overrides(cfg: Any, pairs: list[tuple[str, str]]) -> Any:
    """Apply ``(key, string value)`` pairs to any config dataclass; all are checked before any is applied."""
    cfg = dataclasses.replace(cfg)  # shallow; sections are replaced below
    sections = {f.name: dataclasses.replace(getattr(cfg, f.name))
                for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))}
    leaves = leaf_paths(type(cfg))
    planned = []
    for key, raw in pairs:
        path = resolve_key(key, type(cfg))
        planned.append((path, _coerce(raw, leaves[path], "--" + path)))
    for path, value in planned:
        if "." in path:
            sec, name = path.split(".", 1)
            setattr(sections[sec], name, value)
        else:
            setattr(cfg, path, value)
    for sec, obj in sections.items():
        setattr(cfg, sec, obj)
    return cfg


def parse_override_args(args: list[str]) -> list[tuple[str, str]]:
    """``["--train.max_steps", "10", "--flag=1"]`` -> pairs; a bare flag is an error (values are explicit)."""
    pairs, i = [], 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--"):
            raise ConfigError(f"unexpected argument {a!r}; overrides look like --section.key value")
        if "=" in a:
            k, v = a[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"{a}: missing value")
            k, v = a[2:], args[i + 1]
            i += 2
        pairs.append((k, v))
    return pairs


def schedule_length(cfg: DistillConfig) -> int:
    """The decaying learning-rate schedule's length in student steps: ``optim.schedule_steps``, else the run's."""
    return cfg.optim.schedule_steps or cfg.train.max_steps


def validate(cfg: DistillConfig) -> None:
    """Cross-field checks that a type cannot express."""
    a, v, o, t = cfg.adapter, cfg.vsd, cfg.optim, cfg.train
    checks = [
        (a.student_rank >= 1, "adapter.student_rank", "must be >= 1"),
        (a.fake_rank >= 1, "adapter.fake_rank", "must be >= 1"),
        (0 <= v.t_min <= v.t_max <= 999, "vsd.t_min/t_max", "need 0 <= t_min <= t_max <= 999"),
        (0 <= v.fake_t_min <= v.fake_t_max <= 999, "vsd.fake_t_min/fake_t_max", "need 0 <= min <= max <= 999"),
        (0.0 <= v.null_prob <= 1.0, "vsd.null_prob", "must be in [0, 1]"),
        (v.fake_updates >= 1, "vsd.fake_updates", "must be >= 1"),
        (v.regression_weight >= 0, "vsd.regression_weight", "must be >= 0 (0 = off)"),
        (v.regression_pairs >= 1, "vsd.regression_pairs", "must be >= 1"),
        (v.regression_steps >= 1, "vsd.regression_steps", "must be >= 1"),
        (0 <= v.timestep <= 999, "vsd.timestep", "must be in [0, 999]"),
        (v.resolution >= 0, "vsd.resolution", "must be >= 0"),
        (o.student_lr > 0 and o.fake_lr > 0, "optim.student_lr/fake_lr", "must be > 0"),
        (o.grad_clip >= 0, "optim.grad_clip", "must be >= 0"),
        (o.conv_lr_scale > 0, "optim.conv_lr_scale", "must be > 0"),
        (o.schedule_steps == 0 or o.schedule_steps >= t.max_steps, "optim.schedule_steps",
         f"must be 0 (the run's own length) or at least train.max_steps ({t.max_steps}); got {o.schedule_steps}"),
        (t.max_steps >= 1, "train.max_steps", "must be >= 1"),
        (t.batch_size >= 1, "train.batch_size", "must be >= 1"),
        (t.grad_accum >= 1, "train.grad_accum", "must be >= 1"),
        (0.0 <= t.ema_decay < 1.0, "train.ema_decay", "must be in [0, 1)"),
        (cfg.output.keep_checkpoints >= 1, "output.keep_checkpoints", "must be >= 1"),
        (bool(cfg.model.base), "model.base", "is required (a diffusers folder)"),
        (bool(cfg.data.prompts), "data.prompts", "is required (a .txt, .jsonl or COCO .json file)"),
    ]
    for ok, name, msg in checks:
        if not ok:
            raise ConfigError(f"{name}: {msg}")


def config_hash(cfg: Any, not_hashed: set[str] = NOT_HASHED) -> str:
    """sha256 of the trajectory-relevant fields (those not in ``not_hashed``), 16 hex digits."""
    flat = {}

    def walk(d, prefix=""):
        for k, v in d.items():
            p = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, p + ".")
            elif p not in not_hashed and not (p in HASHED_WHEN_SET and v == HASHED_WHEN_SET[p]):
                flat[p] = v

    walk(to_dict(cfg))
    if getattr(getattr(cfg, "optim", None), "lr_scheduler", "constant") != "constant":
        flat["train.max_steps"] = cfg.train.max_steps  # a decaying LR depends on the run length
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]
